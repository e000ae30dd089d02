"""Branches: fork a conversation (a copy of its history up to a seq), in one statement."""

from __future__ import annotations

from typing import Final

import asyncpg

from ..errors import ConversationExists, ConversationNotFound, InvalidInput
from ..records import Conversation
from ..sql import QUERIES
from . import Conn

_FORK: Final = QUERIES["fork_conversation"]
_FORK_CREATE: Final = QUERIES["fork_create"]
_FORK_COPY: Final = QUERIES["fork_copy"]
_OWNER_CHECK: Final = QUERIES["import_owner_check"]


async def fork(
    conn: Conn, cid: str, uid: str, new_cid: str, at_seq: int, title: str | None, metadata_json: str | None
) -> Conversation:
    """One statement; inside a transaction (row-level security) two, fork_create and fork_copy
    (queries.sql says why), for one more round trip."""
    if not conn.is_in_transaction():
        return _forked(
            await conn.fetchrow(_FORK, cid, uid, new_cid, title, at_seq, metadata_json), at_seq
        ) or await _taken(conn, new_cid, uid)
    async with conn.transaction():  # a savepoint: a refused fork leaves the caller's transaction usable
        forked = _forked(
            await conn.fetchrow(_FORK_CREATE, cid, uid, new_cid, title, at_seq, metadata_json), at_seq
        )
        if forked is not None:
            await conn.fetchrow(_FORK_COPY, cid, uid, new_cid, at_seq)
    return forked or await _taken(conn, new_cid, uid)


async def _taken(conn: Conn, new_cid: str, uid: str) -> Conversation:
    if await conn.fetchval(_OWNER_CHECK, new_cid, uid):
        raise ConversationExists(new_cid)
    raise ConversationNotFound()


def _forked(row: asyncpg.Record | None, at_seq: int) -> Conversation | None:
    """The fork, or None when the new id is taken; raises for a foreign source or a bad at_seq."""
    if row is None:
        raise ConversationNotFound()
    if row["id"] is None:
        if at_seq >= row["source_next_seq"]:
            # Known only once the source is read; the statement wrote nothing.
            raise InvalidInput(
                "at_seq", f"is {at_seq}, past the source's newest seq {row['source_next_seq'] - 1}"
            )
        return None
    return Conversation.from_record(row)
