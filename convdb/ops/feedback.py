"""Feedback on messages: set, clear, read, aggregate. Never touches message content."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Final

import asyncpg

from ..errors import ConversationNotFound, MessageNotFound
from ..records import Feedback, FeedbackSummary
from ..sql import QUERIES
from . import Conn

_SET: Final = QUERIES["set_feedback"]
_CLEAR: Final = QUERIES["clear_feedback"]
_GET: Final = QUERIES["get_feedback"]
_SUMMARY_USER: Final = QUERIES["feedback_summary_user"]
_SUMMARY_CONVERSATION: Final = QUERIES["feedback_summary_conversation"]
_MESSAGE_FKEY: Final = "message_feedback_message_fkey"


async def set_(
    conn: Conn, cid: str, uid: str, seq: int, rating: int, comment: str | None, tags: list[str]
) -> Feedback:
    try:
        row = await conn.fetchrow(_SET, cid, uid, seq, rating, comment, tags)
    except asyncpg.ForeignKeyViolationError as exc:
        # The message was popped or cleared between the statement's read and its insert.
        if exc.constraint_name is None or exc.constraint_name.startswith(_MESSAGE_FKEY):
            raise MessageNotFound(seq) from exc
        raise
    if row is None:
        raise ConversationNotFound()
    if row["seq"] is None:
        raise MessageNotFound(seq)
    return Feedback.from_record(cid, row)


async def clear(conn: Conn, cid: str, uid: str, seq: int) -> bool:
    row = await conn.fetchrow(_CLEAR, cid, uid, seq)
    if row is None:
        raise ConversationNotFound()
    return bool(row[0])


async def get(conn: Conn, cid: str, uid: str) -> list[Feedback]:
    records = await conn.fetch(_GET, cid, uid)
    if not records:
        raise ConversationNotFound()
    return [Feedback.from_record(cid, r) for r in records if r["seq"] is not None]


def _summary(row: asyncpg.Record) -> FeedbackSummary:
    return FeedbackSummary(
        count=row["count"],
        positive=row["positive"],
        neutral=row["neutral"],
        negative=row["negative"],
        mean=row["mean"],
        tags=json.loads(row["tags"]),
    )


async def summary(
    conn: Conn, uid: str, cid: str | None, after: datetime | None, before: datetime | None
) -> FeedbackSummary:
    if cid is None:
        row = await conn.fetchrow(_SUMMARY_USER, uid, after, before)
    else:
        row = await conn.fetchrow(_SUMMARY_CONVERSATION, cid, uid, after, before)
        if row is None:
            raise ConversationNotFound()
    assert row is not None, "the per-user aggregate always returns one row"
    return _summary(row)
