"""Retention: purge_expired's two steps (list, then claim and delete one conversation)."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from asyncpg import Record

from ..sql import QUERIES
from . import Conn
from .erasure import ErasureProgress

_LIST: Final = QUERIES["purge_expired_list"]
_PURGE: Final = QUERIES["purge_expired_conversation"]
_CAP: Final = QUERIES["cap_messages"]

# A purge statement that found its snapshot stale (a writer committed to the conversation between
# the snapshot and the claim: only one that began before the expiry can) runs again; after this
# many times the conversation is left for the next pass.
_FRESH_ATTEMPTS: Final = 3


async def list_expired(conn: Conn, after: tuple[datetime, str], count: int) -> list[tuple[datetime, str]]:
    """The next ``count`` expired conversations after ``after``, as (expires_at, id), in that order."""
    rows = await conn.fetch(_LIST, after[0], after[1], count)
    return [(r["expires_at"], r["id"]) for r in rows]


async def purge_conversation(conn: Conn, cid: str, chunk: int, progress: ErasureProgress) -> bool:
    """Claim one expired conversation and delete it with its messages, at most ``chunk`` messages
    per statement (each statement its own transaction, so every step is short and a lost
    connection loses no counted step). What each statement deleted is added to ``progress`` as
    it commits, so a retry of this step counts what the first attempt deleted. Returns whether
    the conversation was deleted; False when it was not claimed (another purger holds it, it is
    gone, or it no longer expires) or stayed stale: it is left for a later pass."""
    stale = 0
    while True:
        row = await conn.fetchrow(_PURGE, cid, chunk)
        if row is None:
            return False
        if not row["fresh"]:
            stale += 1
            if stale >= _FRESH_ATTEMPTS:
                return False
            continue
        if _counted(row, progress):
            return True


def _counted(row: Record, progress: ErasureProgress) -> bool:
    """Add what a fresh purge step deleted to ``progress``; whether it deleted the conversation
    (False: it deleted a chunk of its messages, and the conversation needs another step)."""
    progress.messages += row["chunk"]
    if row["conversations"]:
        progress.conversations += 1
        progress.messages += row["messages"]
        return True
    return False


async def purge_listed(conn: Conn, cids: list[str], chunk: int, progress: ErasureProgress) -> int:
    """Claim and delete the listed conversations: one pipelined round trip for the whole batch
    (``fetchmany``: the statements run in one implicit transaction, short, claiming with SKIP
    LOCKED so it waits for no one), then one conversation at a time for those that need more
    statements (stale snapshot, or more than ``chunk`` messages). Returns how many it deleted."""
    rows = await conn.fetchmany(_PURGE, [(cid, chunk) for cid in cids])
    deleted, again = 0, []
    for row in rows:  # one row per claimed conversation; none for a skipped one
        if not row["fresh"]:
            again.append(row["id"])
            continue
        if _counted(row, progress):
            deleted += 1
        else:
            again.append(row["id"])
    for cid in again:
        deleted += await purge_conversation(conn, cid, chunk, progress)
    return deleted


async def cap(conn: Conn, cid: str, uid: str, through_seq: int) -> None:
    """Inside a batch's transaction: delete the messages with seq <= ``through_seq``."""
    await conn.execute(_CAP, cid, uid, through_seq)
