"""Export and import of whole conversations (the format is ``convdb.export_format``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any, Final

import asyncpg

from ..errors import ConversationExists, ConversationNotFound, InvalidInput
from ..export_format import ImportHeader, MessageParser
from ..records import Feedback
from ..sql import QUERIES
from ..validation import MessageRow
from . import Begin, Conn, begin

IMPORT_CHUNK: Final = 1000
"""Messages per pipelined ``executemany`` of an import (and validated before any I/O)."""

_EXPORT_HEADER: Final = QUERIES["export_header"]
_EXPORT_MESSAGES: Final = QUERIES["export_messages"]
_IMPORT_ROW: Final = QUERIES["import_conversation_row"]
_IMPORT_OWNER: Final = QUERIES["import_owner_check"]
_IMPORT_CLEAR: Final = QUERIES["import_clear_messages"]
_IMPORT_MESSAGE: Final = QUERIES["import_message"]
_IMPORT_FINISH: Final = QUERIES["import_finish"]
_IMPORT_FEEDBACK: Final = QUERIES["import_feedback"]
_EXPORT_FEEDBACK: Final = QUERIES["export_feedback"]


async def export_header(conn: Conn, cid: str, uid: str) -> asyncpg.Record:
    """The conversation row with its next_seq (which bounds the messages an export covers)."""
    row = await conn.fetchrow(_EXPORT_HEADER, cid, uid)
    if row is None:
        raise ConversationNotFound()
    return row


async def export_chunk(
    conn: Conn, cid: str, uid: str, after: int, bound: int, size: int
) -> list[asyncpg.Record]:
    """Up to ``size`` message rows with ``after < seq < bound``, in seq order ([] when none)."""
    records = await conn.fetch(_EXPORT_MESSAGES, cid, uid, after, bound, size)
    if not records:
        raise ConversationNotFound()
    return [] if records[0][0] is None else records


async def import_conversation(
    conn: Conn,
    cid: str,
    uid: str,
    header: ImportHeader,
    parser: MessageParser,
    first: list[tuple[int, MessageRow, datetime]],
    rest: AsyncIterator[tuple[int, Any]],
    *,
    replace: bool,
    chunk_seconds: float,
    policy: tuple[timedelta | None, bool, int | None] = (None, False, None),
    begin: Begin = begin,
) -> asyncpg.Record:
    """Restore one conversation in one transaction. ``first`` is pre-validated; ``rest`` is parsed
    (validated) chunk by chunk as it is sent; ``chunk_seconds`` bounds each pipelined chunk.
    ``policy``: the store's (default_ttl, sliding, max_messages), for a conversation the import
    creates (a replaced one keeps its own). Returns the row's retention columns."""
    default_ttl, sliding, max_messages = policy
    async with begin(conn):
        row = await conn.fetchrow(
            _IMPORT_ROW,
            cid,
            uid,
            header.title,
            header.metadata_json,
            header.next_seq or 1,
            header.created_at,
            header.updated_at,
            replace,
            default_ttl,
            sliding,
            max_messages,
        )
        if row is None:
            if await conn.fetchval(_IMPORT_OWNER, cid, uid):
                raise ConversationExists(cid)
            raise ConversationNotFound()
        if not row["created"]:
            # A replace: the row's expiry is checked here, in this transaction (queries.sql says
            # why not in import_conversation_row); an expired one is unknown, and rolled back.
            if row["expires_at"] is not None and not await conn.fetchval(_IMPORT_OWNER, cid, uid):
                raise ConversationNotFound()
            await conn.execute(_IMPORT_CLEAR, cid, uid)

        def args(seq: int, record: MessageRow, created_at: datetime) -> tuple[Any, ...]:
            return (cid, seq, *record, created_at, uid)

        chunk = [args(*item) for item in first]
        async for index, record in rest:
            parsed = parser.parse(record, index)
            if parsed is None:  # a feedback record: sent after the messages
                continue
            chunk.append(args(*parsed))
            if len(chunk) >= IMPORT_CHUNK:
                await conn.executemany(_IMPORT_MESSAGE, chunk, timeout=chunk_seconds)
                chunk = []
        if chunk:
            await conn.executemany(_IMPORT_MESSAGE, chunk, timeout=chunk_seconds)
        if header.next_seq is None and parser.last_seq > 0:
            await conn.execute(_IMPORT_FINISH, cid, uid, parser.last_seq + 1)
        if parser.feedback:
            try:
                await conn.executemany(
                    _IMPORT_FEEDBACK, [(cid, *f, uid) for f in parser.feedback], timeout=chunk_seconds
                )
            except asyncpg.ForeignKeyViolationError as exc:
                raise InvalidInput("seq", "a feedback record names a seq with no message record") from exc
    return row


async def export_feedback(conn: Conn, cid: str, uid: str, bound: int) -> list[Feedback]:
    """The conversation's feedback on messages below ``bound``, in seq order."""
    records = await conn.fetch(_EXPORT_FEEDBACK, cid, uid, bound)
    if not records:
        raise ConversationNotFound()
    return [Feedback.from_record(cid, r) for r in records if r["seq"] is not None]
