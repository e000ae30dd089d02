"""Erasure of a user's data (``delete_user_data``), in short steps that each commit on their own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from ..sql import QUERIES
from . import Begin, Conn, begin

_ERASE_LIST: Final = QUERIES["erase_list_conversations"]
_ERASE_MESSAGES: Final = QUERIES["erase_messages_chunk"]
_ERASE_CONVERSATIONS: Final = QUERIES["erase_conversations"]


async def next_conversations(conn: Conn, uid: str, after: str, count: int) -> list[str]:
    """The ids of the user's next ``count`` conversations after ``after``, in id order."""
    return [r[0] for r in await conn.fetch(_ERASE_LIST, uid, after, count)]


async def erase_conversations(
    conn: Conn, uid: str, ids: Sequence[str], chunk: int, *, begin: Begin = begin
) -> tuple[int, int]:
    """Delete these conversations of ``uid``: messages ``chunk`` at a time, then the rows.

    Every chunk is its own transaction, one statement opened with ``begin`` (``ops.autocommit``
    without row-level security: the statement alone; with it, a transaction that names the user
    first), so no transaction outlives one chunk, a lock wait or an error midway keeps what the
    earlier chunks deleted, and re-running after an interruption continues where it stopped.
    Returns (conversations, messages) deleted.
    """
    targets = list(ids)
    messages = 0
    while True:
        async with begin(conn):
            deleted: int = await conn.fetchval(_ERASE_MESSAGES, uid, targets, chunk)
        messages += deleted
        if deleted < chunk:
            break
    async with begin(conn):
        conversations: int = await conn.fetchval(_ERASE_CONVERSATIONS, uid, targets)
    return conversations, messages
