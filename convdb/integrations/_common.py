"""What the framework adapters share: appending with lazy creation, whole histories and windows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConversationNotFound
from ..records import Message
from ..store import ConversationStore
from ..validation import MAX_HISTORY_LIMIT
from ..windows import trim_orphan_tool_results


async def append(
    store: ConversationStore,
    conversation_id: str,
    user_id: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    title: str | None,
) -> list[Message]:
    """Save ``rows`` as one atomic batch, creating the conversation on first use.

    The common case (the conversation exists) is one ``save_messages`` call. A batch refused with
    ``ConversationNotFound`` stored nothing, so creating the conversation and saving again is
    safe; for an id owned by another user the creation raises ``ConversationNotFound`` itself.
    """
    if not rows:
        return []
    try:
        return await store.save_messages(conversation_id, user_id, rows)
    except ConversationNotFound:
        await store.get_or_create_conversation(conversation_id, user_id, title=title)
        return await store.save_messages(conversation_id, user_id, rows)


async def read_all(store: ConversationStore, conversation_id: str, user_id: str) -> list[Message]:
    """Every stored message, oldest first, untrimmed: what the framework wrote is what it reads.

    ``export_messages`` in chunks of ``MAX_HISTORY_LIMIT`` (10,000) messages: two round trips for
    a history up to that size, one more per further 10,000. ``get_history`` is not used here
    because its window trims leading tool results, and a whole history must come back whole.
    An unknown or foreign conversation reads as empty: frameworks read before their first write,
    and convdb never tells the two cases apart.
    """
    try:
        return [
            m async for m in store.export_messages(conversation_id, user_id, chunk_size=MAX_HISTORY_LIMIT)
        ]
    except ConversationNotFound:
        return []


async def read_window(
    store: ConversationStore,
    conversation_id: str,
    user_id: str,
    limit: int,
    max_tokens: int | None = None,
    *,
    trim: bool = True,
) -> list[Message]:
    """The newest ``limit`` messages (within ``max_tokens``) as a ``get_history`` window.

    With ``trim`` (convdb's own windows) leading tool results whose call fell outside the window
    are left out, so the window may hold fewer than ``limit`` messages (``convdb.windows``);
    without it the newest messages come back exactly. One round trip up to
    ``MAX_HISTORY_LIMIT`` messages; a larger window without a token budget is cut from the whole
    history, and one with a budget is capped at ``MAX_HISTORY_LIMIT`` messages.
    """
    if limit <= 0:
        return []
    if limit > MAX_HISTORY_LIMIT and max_tokens is None:
        newest = (await read_all(store, conversation_id, user_id))[-limit:]
        return trim_orphan_tool_results(newest) if trim else newest
    try:
        return await store.get_history(
            conversation_id, user_id, limit=min(limit, MAX_HISTORY_LIMIT), max_tokens=max_tokens, trim=trim
        )
    except ConversationNotFound:
        return []
