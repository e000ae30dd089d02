"""Erasure of a user's data (``delete_user_data``), in short steps that each commit on their own."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Final

from ..sql import QUERIES
from . import Begin, Conn, begin, transaction_of

_ERASE_LIST: Final = QUERIES["erase_list_conversations"]
_ERASE_MESSAGES: Final = QUERIES["erase_messages_chunk"]
_ERASE_LOCK: Final = QUERIES["erase_lock_conversations"]
_ERASE_CONVERSATIONS: Final = QUERIES["erase_conversations"]


@dataclasses.dataclass(slots=True)
class ErasureProgress:
    """What one ``delete_user_data`` call has deleted so far, added to as each step commits.

    Kept across the retry of a step whose connection was lost, so the counts include what the
    interrupted attempt had already committed (a retry used to start them again from zero).
    Internal and mutable; the caller gets a frozen ``ErasureCounts``.
    """

    conversations: int = 0
    messages: int = 0


async def next_conversations(conn: Conn, uid: str, after: str, count: int) -> list[str]:
    """The ids of the user's next ``count`` conversations after ``after``, in id order."""
    return [r[0] for r in await conn.fetch(_ERASE_LIST, uid, after, count)]


async def erase_conversations(
    conn: Conn, uid: str, ids: Sequence[str], chunk: int, progress: ErasureProgress, *, begin: Begin = begin
) -> None:
    """Delete these conversations of ``uid``: messages ``chunk`` at a time, then the rows.

    Every message chunk is its own transaction, one statement opened with ``begin``
    (``ops.autocommit`` without row-level security: the statement alone; with it, a transaction
    that names the user first), so no transaction outlives one chunk, a lock wait or an error
    midway keeps what the earlier chunks deleted, and re-running after an interruption continues
    where it stopped. The rows then go in one short transaction that locks them first, so the
    messages a concurrent writer added since the last chunk are counted too (the count of a
    bare cascading DELETE comes from a snapshot taken before its lock wait). Each step's counts
    are added to ``progress`` once that step has committed.
    """
    targets = list(ids)
    while True:
        async with begin(conn):
            deleted: int = await conn.fetchval(_ERASE_MESSAGES, uid, targets, chunk)
        progress.messages += deleted
        if deleted < chunk:
            break
    # Two statements: READ COMMITTED gives the delete a snapshot taken after the lock is held.
    async with transaction_of(begin)(conn):
        await conn.execute(_ERASE_LOCK, uid, targets)
        row = await conn.fetchrow(_ERASE_CONVERSATIONS, uid, targets)
    assert row is not None  # an aggregate: always one row
    progress.conversations += row["conversations"]
    progress.messages += row["messages"]
