"""Usage reports: usage and cost summed in SQL over a time range, per day and per model."""

from __future__ import annotations

from datetime import datetime
from typing import Final

import asyncpg

from ..errors import ConversationNotFound
from ..records import UsageReport, UsageTotals
from ..sql import QUERIES
from . import Conn

_USAGE_REPORT_USER: Final = QUERIES["usage_report_user"]
_USAGE_REPORT_CONVERSATION: Final = QUERIES["usage_report_conversation"]
_RECORD_USAGE: Final = QUERIES["record_usage"]


async def record(conn: Conn, cid: str, uid: str, seq: int, usage: tuple[object, ...]) -> bool:
    """Set the usage of a stored message that has none; False when there is no such message or it
    already has usage."""
    row = await conn.fetchrow(_RECORD_USAGE, cid, uid, seq, *usage)
    if row is None:
        raise ConversationNotFound()
    recorded: bool = row[0]
    return recorded


def _totals(r: asyncpg.Record) -> UsageTotals:
    return UsageTotals(
        day=None if r["all_days"] else r["day"],
        model=None if r["all_models"] else r["model"],
        messages=r["messages"],
        input_tokens=r["input_tokens"],
        output_tokens=r["output_tokens"],
        cached_tokens=r["cached_tokens"],
        reasoning_tokens=r["reasoning_tokens"],
        cost=r["cost"],
        latency_ms=r["latency_ms"],
    )


async def report(
    conn: Conn, uid: str, cid: str | None, since: datetime, until: datetime, time_zone: str, model: str | None
) -> UsageReport:
    """One statement: the user's (or one conversation's) usage grouped four ways."""
    if cid is None:
        records = await conn.fetch(_USAGE_REPORT_USER, uid, since, until, time_zone, model)
    else:
        records = await conn.fetch(_USAGE_REPORT_CONVERSATION, uid, since, until, time_zone, model, cid)
        if not records[-1]["owned"]:
            raise ConversationNotFound()
    by_day_and_model, by_day, by_model = [], [], []
    total: UsageTotals | None = None
    for r in records:
        totals = _totals(r)
        if r["all_days"] and r["all_models"]:
            total = totals
        elif r["all_models"]:
            by_day.append(totals)
        elif r["all_days"]:
            by_model.append(totals)
        else:
            by_day_and_model.append(totals)
    assert total is not None, "GROUPING SETS (()) always yields the total row"
    return UsageReport(by_day_and_model, by_day, by_model, total)
