"""Conversation rows: load-or-create, read, list, update, delete, clear."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import asyncpg

from ..errors import ConversationNotFound
from ..listing import ListingQuery, encode_cursor
from ..records import Conversation, Page
from ..sql import QUERIES
from . import Begin, Conn, begin
from .forms import STATEMENTS, Forms

_GET_OR_CREATE_LOCKED: Final = QUERIES["get_or_create_conversation_locked"]
_GET_CONVERSATION: Final = QUERIES["get_conversation"]
_UPDATE_CONVERSATION: Final = QUERIES["update_conversation"]
_DELETE_CONVERSATION: Final = QUERIES["delete_conversation"]
_CLEAR_CONVERSATION: Final = QUERIES["clear_conversation"]
_LOCK_CONVERSATION: Final = QUERIES["lock_conversation"]


@dataclass(frozen=True, slots=True)
class Retention:
    """A new conversation's retention, as get_or_create_conversation's statements take it: a fixed
    ``expires_at``, else now() + ``ttl`` (stored as the sliding TTL when ``sliding``), the
    ``temporary`` flag and the message cap."""

    expires_at: datetime | None = None
    ttl: timedelta | None = None
    sliding: bool = False
    temporary: bool = False
    max_messages: int | None = None

    def args(self) -> tuple[object, ...]:
        return (self.expires_at, self.ttl, self.sliding, self.temporary, self.max_messages)


NO_RETENTION: Final = Retention()


async def get_or_create(
    conn: Conn,
    cid: str,
    uid: str,
    title: str | None,
    metadata_json: str | None,
    retention: Retention = NO_RETENTION,
    forms: Forms = STATEMENTS,
    *,
    load_first: bool = True,
) -> Conversation:
    """``load_first``: try the plain ownership-checked read before the create statement, the path
    of almost every call (a request loads the conversation it continues). The read is the cheapest
    statement there is: on one node 1.6x the create statement's rate for an existing row at c = 8,
    on Citus a fast-path router query at 3.8x the delegated call's (docs/citus.md). Creating by a
    given id then takes two round trips; a new generated id (``load_first=False``) skips the read."""
    if load_first:
        row = await conn.fetchrow(_GET_CONVERSATION, cid, uid)
        if row is not None:
            return Conversation.from_record(row)
    statement = forms.get_or_create_conversation
    row = await conn.fetchrow(statement, cid, uid, title, metadata_json, *retention.args())
    if row is None:
        # Another user owns the id, or a concurrent creator or delete changed the row after our
        # snapshot. A re-read is not enough (the row can be deleted between the two statements:
        # ~45 of 1,800 racing calls then told the owner "not found"); the locking variant decides
        # on the newest row version instead.
        row = await conn.fetchrow(_GET_OR_CREATE_LOCKED, cid, uid, title, metadata_json, *retention.args())
        if row is None:
            raise ConversationNotFound()
    return Conversation.from_record(row)


async def get(conn: Conn, cid: str, uid: str) -> Conversation:
    row = await conn.fetchrow(_GET_CONVERSATION, cid, uid)
    if row is None:
        raise ConversationNotFound()
    return Conversation.from_record(row)


async def list_page(conn: Conn, query: ListingQuery) -> Page[Conversation]:
    """One page of a listing built by ``convdb.listing.build_listing`` (it fetches limit + 1 rows)."""
    records = await conn.fetch(query.sql, *query.args)
    items = [Conversation.from_record(r) for r in records[: query.limit]]
    last = items[-1] if len(records) > query.limit else None
    next_cursor = None if last is None else encode_cursor(last.updated_at, last.id, query.context)
    return Page(items, next_cursor)


async def update(
    conn: Conn,
    cid: str,
    uid: str,
    *,
    set_title: bool,
    title: str | None,
    set_metadata: bool,
    metadata_json: str | None,
    set_expiry: bool = False,
    expires_at: datetime | None = None,
    ttl: timedelta | None = None,
    sliding: bool = False,
) -> Conversation:
    row = await conn.fetchrow(
        _UPDATE_CONVERSATION,
        cid,
        uid,
        set_title,
        title,
        set_metadata,
        metadata_json,
        set_expiry,
        expires_at,
        ttl,
        sliding,
    )
    if row is None:
        raise ConversationNotFound()
    return Conversation.from_record(row)


async def owned_count(conn: Conn, sql: str, cid: str, uid: str) -> int:
    """The count a statement returns for this user's conversation; no row: not theirs."""
    row = await conn.fetchrow(sql, cid, uid)
    if row is None:
        raise ConversationNotFound()
    count: int = row[0]
    return count


async def delete(conn: Conn, cid: str, uid: str) -> int:
    """Delete the conversation (its messages by cascade); returns the messages deleted.

    A "fresh view" statement, re-run behind the row lock when a writer raced it, so the count
    includes a batch that committed while the delete waited for the lock (a plain DELETE
    returned 3 while 8 messages went).
    """
    records = await run_fresh(conn, _DELETE_CONVERSATION, cid, uid)
    deleted: int = records[0]["deleted"]
    return deleted


async def lock(conn: Conn, cid: str, uid: str) -> None:
    """Inside a transaction: hold this user's conversation row's lock until it ends."""
    if await conn.fetchrow(_LOCK_CONVERSATION, cid, uid) is None:
        raise ConversationNotFound()


async def run_fresh(
    conn: Conn, statement: str, cid: str, uid: str, *, args: tuple[object, ...] = (), begin: Begin = begin
) -> list[asyncpg.Record]:
    """Run a "fresh view" statement (queries.sql explains them): one round trip when nothing races.

    When another writer committed between the statement's snapshot and its lock, the statement
    changes nothing and says so (``fresh`` false); it then runs again inside a transaction that
    holds the conversation row's lock first, so its snapshot is the newest state.
    """
    records = await conn.fetch(statement, cid, uid, *args)
    if not records:
        raise ConversationNotFound()
    if records[0]["fresh"]:
        return records
    async with begin(conn):
        await lock(conn, cid, uid)
        records = await conn.fetch(statement, cid, uid, *args)
    if not records:
        raise ConversationNotFound()
    assert records[0]["fresh"], "the conversation row is locked: nothing can change it meanwhile"
    return records


async def clear(conn: Conn, cid: str, uid: str) -> int:
    """Delete every message, keep the conversation; returns how many were deleted."""
    records = await run_fresh(conn, _CLEAR_CONVERSATION, cid, uid)
    deleted: int = records[0]["deleted"]
    return deleted
