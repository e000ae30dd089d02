"""Summaries: record one, list them. The summarized windows are in ``ops.messages``."""

from __future__ import annotations

import json
from typing import Final, cast

from ..errors import ConversationNotFound, InvalidInput
from ..records import Role, Summary
from ..sql import QUERIES
from . import Conn
from .conversations import run_fresh

_SAVE_SUMMARY: Final = QUERIES["save_summary"]
_LIST_SUMMARIES: Final = QUERIES["list_summaries"]


async def save(
    conn: Conn,
    cid: str,
    uid: str,
    *,
    through_seq: int,
    role: str,
    content: str,
    metadata_json: str | None,
    token_count: int,
) -> Summary:
    """Record a summary (one statement; two when a writer raced it). Refusals that depend on what is
    stored (beyond the newest message, older than the newest summary) come from the statement,
    which then wrote nothing, as ``InvalidInput``."""

    records = await run_fresh(
        conn, _SAVE_SUMMARY, cid, uid, args=(through_seq, role, content, metadata_json, token_count)
    )
    head = records[0]
    if head["through_seq"] is None:
        if through_seq > head["last_seq"]:
            raise InvalidInput(
                "through_seq",
                f"is {through_seq}, beyond the newest stored message "
                f"(seq {head['last_seq']}); nothing was written",
            )
        raise InvalidInput(
            "through_seq",
            f"is {through_seq}, older than the newest summary (through "
            f"seq {head['newest']}); nothing was written",
        )
    metadata = {} if metadata_json is None else json.loads(metadata_json)
    return Summary(cid, through_seq, cast(Role, role), content, token_count, metadata, head["created_at"])


async def list_all(conn: Conn, cid: str, uid: str) -> list[Summary]:
    records = await conn.fetch(_LIST_SUMMARIES, cid, uid)
    if not records:
        raise ConversationNotFound()
    return [
        Summary(cid, r[0], r[1], r[2], r[3], json.loads(r[4]) if isinstance(r[4], str) else r[4], r[5])
        for r in records
        if r[0] is not None
    ]
