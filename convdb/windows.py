"""History windows a chat model accepts.

**Tool-call integrity: convdb trims.** A window is the newest messages of a conversation, so it
can start in the middle of a tool exchange: with ``tool`` results whose assistant ``tool_calls``
message is older than the window. Chat APIs reject such a history (a tool result must answer a
call that precedes it). convdb drops those leading ``tool`` messages rather than extending the
window backwards to the assistant call, because ``limit`` and ``max_tokens`` are then hard
bounds: a window never holds more messages or tokens than asked for, whatever the shape of the
conversation (a 40-result parallel tool call would otherwise blow a token budget). The cost is
that a window can hold fewer messages than ``limit``, or none when it would hold only results.

An assistant message with ``tool_calls`` as the first message of a window is kept: its results
are newer, so they are inside the window too. A window may end with an assistant ``tool_calls``
message whose results are not stored yet: that is an agent loop in progress, not an error.

**Summaries** (``summarized=True``): a summary stands for every message up to its
``through_seq``, tool calls included. ``tool`` results right after it answer calls the summary
covers, so they are trimmed the same way: a summary never leaves an orphan tool result after it.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from .records import Message, summary_or_message_from_row


def trim_orphan_tool_results(window: list[Message]) -> list[Message]:
    """The window without its leading ``tool`` messages (their assistant call is outside it), or
    without the ``tool`` messages right after a leading summary (their call is inside it).

    Returns ``window`` itself when nothing is trimmed (the common case: no copy).
    """
    first = 1 if window and window[0].summary_through is not None else 0
    end = first
    while end < len(window) and window[end].role == "tool":
        end += 1
    if end == first:
        return window
    return window[end:] if first == 0 else [window[0], *window[end:]]


def history_from_records(
    conversation_id: str, records: Sequence[asyncpg.Record], *, trim: bool = True
) -> list[Message] | None:
    """Rows of a get_history-shaped statement as a window (trimmed unless ``trim`` is False);
    None when no row (not found)."""
    if not records:
        return None
    if records[0][0] is None:
        return []
    window = [Message.from_record(conversation_id, r) for r in records]
    return trim_orphan_tool_results(window) if trim else window


def summarized_from_records(
    conversation_id: str, records: Sequence[asyncpg.Record], *, trim: bool = True
) -> list[Message] | None:
    """Rows of get_history_summarized as a window (a summary first, when it fits), trimmed unless
    ``trim`` is False."""
    if not records:
        return None
    if records[0][0] is None:
        return []
    window = [summary_or_message_from_row(conversation_id, r) for r in records]
    return trim_orphan_tool_results(window) if trim else window
