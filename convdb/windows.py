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
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from .records import Message


def trim_orphan_tool_results(window: list[Message]) -> list[Message]:
    """The window without its leading ``tool`` messages (their assistant call is outside it).

    Returns ``window`` itself when nothing is trimmed (the common case: no copy).
    """
    start = 0
    while start < len(window) and window[start].role == "tool":
        start += 1
    return window[start:] if start else window


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
