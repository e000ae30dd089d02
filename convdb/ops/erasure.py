"""Erasure of a user's data (``delete_user_data``), in short steps that each commit on their own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from ..sql import QUERIES
from . import Conn

_ERASE_LIST: Final = QUERIES["erase_list_conversations"]
_ERASE_MESSAGES: Final = QUERIES["erase_messages_chunk"]
_ERASE_CONVERSATIONS: Final = QUERIES["erase_conversations"]


async def next_conversations(conn: Conn, uid: str, after: str, count: int) -> list[str]:
    """The ids of the user's next ``count`` conversations after ``after``, in id order."""
    return [r[0] for r in await conn.fetch(_ERASE_LIST, uid, after, count)]


async def erase_conversations(conn: Conn, uid: str, ids: Sequence[str], chunk: int) -> tuple[int, int]:
    """Delete these conversations of ``uid``: messages ``chunk`` at a time, then the rows.

    Every statement commits on its own, so no transaction outlives one chunk; re-running after an
    interruption continues where it stopped. Returns (conversations, messages) deleted.
    """
    messages = 0
    while True:
        deleted: int = await conn.fetchval(_ERASE_MESSAGES, uid, list(ids), chunk)
        messages += deleted
        if deleted < chunk:
            break
    conversations: int = await conn.fetchval(_ERASE_CONVERSATIONS, uid, list(ids))
    return conversations, messages
