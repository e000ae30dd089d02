"""Usage and cost per message: typed columns given at save time on every save path and returned on
the message; validated before any I/O; exported and imported exactly; usage_report's four
groupings computed in SQL in one round trip, per user, per conversation, per model, per day in a
time zone, over a half-open time range; and the partial index the report reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypedDict

import asyncpg
import pytest

from convdb import ConversationNotFound, ConversationStore, InvalidInput, Usage
from convdb.sql import QUERIES
from tests.agent.test_agent_round_trips import StatementLog, _count, logged

__all__ = ["logged"]  # the fixture, imported for pytest

U = "alice"
GPT = Usage(
    model="gpt-x",
    input_tokens=100,
    output_tokens=20,
    cached_tokens=30,
    reasoning_tokens=5,
    cost=Decimal("0.001250"),
    latency_ms=812,
)


async def test_usage_round_trips_on_every_save_path_and_read(store: ConversationStore) -> None:
    cid = (await store.get_or_create_conversation(None, U)).id
    one = await store.save_message(cid, U, "assistant", "a", usage=GPT)
    batch = await store.save_messages(
        cid,
        U,
        [
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "b", "usage": {"model": "m2", "input_tokens": 1, "cost": "0.5"}},
        ],
    )
    saved, window = await store.save_and_get_history(
        cid, U, {"role": "assistant", "content": "c", "usage": Usage(output_tokens=7)}
    )
    assert one.usage == GPT
    assert batch[0].usage is None
    assert batch[1].usage == Usage(model="m2", input_tokens=1, cost=Decimal("0.5"))
    assert saved.usage == Usage(output_tokens=7)
    history = await store.get_history(cid, U)
    assert [m.usage for m in history] == [GPT, None, batch[1].usage, saved.usage]
    assert [m.usage for m in window] == [m.usage for m in history]
    assert [m.usage for m in await store.get_history(cid, U, max_tokens=10_000)] == [m.usage for m in history]
    popped = await store.pop_last_message(cid, U)
    assert popped is not None and popped.usage == saved.usage


async def test_usage_is_exported_and_imported_exactly(store: ConversationStore) -> None:
    cid = (await store.get_or_create_conversation(None, U)).id
    await store.save_message(cid, U, "assistant", "a", usage=GPT)
    await store.save_message(cid, U, "user", "b")
    records = [r async for r in store.export_conversation(cid, U)]
    assert records[1]["usage"]["cost"] == "0.001250" and records[2]["usage"] is None
    json.dumps(records)  # JSON-serialisable as exported
    await store.import_conversation("bob", json.loads(json.dumps(records)), conversation_id="copy")
    assert [m.usage for m in await store.get_history("copy", "bob")] == [GPT, None]


@pytest.mark.parametrize(
    ("usage", "field"),
    [
        ("gpt", "usage"),
        ({"tokens": 1}, "usage.tokens"),
        ({"input_tokens": -1}, "usage.input_tokens"),
        ({"output_tokens": 2**31}, "usage.output_tokens"),
        ({"cached_tokens": 1.5}, "usage.cached_tokens"),
        ({"reasoning_tokens": True}, "usage.reasoning_tokens"),
        ({"cost": Decimal("-0.01")}, "usage.cost"),
        ({"cost": float("inf")}, "usage.cost"),
        ({"cost": Decimal("NaN")}, "usage.cost"),
        ({"cost": "abc"}, "usage.cost"),
        ({"cost": [1]}, "usage.cost"),
        ({"latency_ms": -5}, "usage.latency_ms"),
        ({"model": ""}, "usage.model"),
        ({"model": "m" * 256}, "usage.model"),
        ({"model": "a\x00"}, "usage.model"),
        (Usage(input_tokens=-1), "usage.input_tokens"),
    ],
)
async def test_bad_usage_is_refused_before_any_io(
    store: ConversationStore, db: asyncpg.Connection, usage: Any, field: str
) -> None:
    cid = (await store.get_or_create_conversation(None, U)).id
    for call in (
        lambda: store.save_message(cid, U, "assistant", "a", usage=usage),
        lambda: store.save_messages(
            cid, U, [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "a", "usage": usage}]
        ),
        lambda: store.save_and_get_history(cid, U, {"role": "assistant", "content": "a", "usage": usage}),
    ):
        with pytest.raises(InvalidInput) as info:
            await call()
        assert info.value.field == field
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert await db.fetchval("SELECT next_seq FROM conversations") == 1


async def test_the_check_refuses_what_validation_refuses(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO conversations (id, user_id) VALUES ('c', 'u')")
    for columns, values in [
        ("input_tokens", "-1"),
        ("cost", "1"),
        ("model", "'m'"),
        ("input_tokens, output_tokens", "1, 1"),
    ]:
        with pytest.raises(asyncpg.CheckViolationError, match="messages_usage_valid"):
            await db.execute(
                f"INSERT INTO messages (conversation_id, seq, role, {columns}) "
                f"VALUES ('c', 1, 'user', {values})"
            )


async def _seed(store: ConversationStore, db: asyncpg.Connection) -> tuple[str, str]:
    a = (await store.get_or_create_conversation(None, U)).id
    b = (await store.get_or_create_conversation(None, U)).id
    other = (await store.get_or_create_conversation(None, "bob")).id
    rows = [  # conversation, model, input, output, cost, created_at (UTC)
        (a, "m1", 10, 1, "0.10", "2026-03-01 10:00"),
        (a, "m1", 20, 2, "0.20", "2026-03-01 23:30"),  # 2026-03-02 in Europe/Paris
        (a, "m2", 30, 3, None, "2026-03-02 09:00"),
        (b, "m1", 40, 4, "0.40", "2026-03-02 12:00"),
        (b, "m2", 50, 5, "0.50", "2026-03-31 23:59:59.999999"),
        (b, "m2", 60, 6, "0.60", "2026-04-01 00:00"),  # outside [March)
        (other, "m1", 1000, 100, "9", "2026-03-01 12:00"),  # another user
    ]
    for cid, model, inp, out, cost, at in rows:
        message = await store.save_message(
            cid,
            U if cid != other else "bob",
            "assistant",
            "a",
            usage=Usage(
                model=model,
                input_tokens=inp,
                output_tokens=out,
                cost=None if cost is None else Decimal(cost),
                latency_ms=inp,
            ),
        )
        await db.execute(
            "UPDATE messages SET created_at = $3::text::timestamp AT TIME ZONE 'UTC' "
            "WHERE conversation_id = $1 AND seq = $2",
            cid,
            message.seq,
            at,
        )
    await store.save_message(a, U, "user", "no usage")  # not counted
    return a, b


class _Range(TypedDict):
    since: datetime
    until: datetime


MARCH: _Range = {"since": datetime(2026, 3, 1, tzinfo=UTC), "until": datetime(2026, 4, 1, tzinfo=UTC)}


async def test_report_groups_by_day_and_model_in_sql(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    await _seed(store, db)
    report = await store.usage_report(U, **MARCH)
    assert [
        (t.day.isoformat() if t.day else None, t.model, t.messages, t.input_tokens, t.cost)
        for t in report.by_day_and_model
    ] == [
        ("2026-03-01", "m1", 2, 30, Decimal("0.30")),
        ("2026-03-02", "m1", 1, 40, Decimal("0.40")),
        ("2026-03-02", "m2", 1, 30, None),
        ("2026-03-31", "m2", 1, 50, Decimal("0.50")),
    ]
    assert [(str(t.day), t.input_tokens) for t in report.by_day] == [
        ("2026-03-01", 30),
        ("2026-03-02", 70),
        ("2026-03-31", 50),
    ]
    assert [(t.model, t.messages, t.output_tokens, t.latency_ms) for t in report.by_model] == [
        ("m1", 3, 7, 70),
        ("m2", 2, 8, 80),
    ]
    total = report.total
    assert (total.day, total.model, total.messages, total.input_tokens, total.output_tokens, total.cost) == (
        None,
        None,
        5,
        150,
        15,
        Decimal("1.20"),
    )


async def test_report_per_conversation_model_and_time_zone(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    a, b = await _seed(store, db)
    assert (await store.usage_report(U, conversation_id=a, **MARCH)).total.input_tokens == 60
    assert (await store.usage_report(U, conversation_id=b, model="m2", **MARCH)).total.input_tokens == 50
    paris = await store.usage_report(U, conversation_id=a, time_zone="Europe/Paris", **MARCH)
    assert [(str(t.day), t.input_tokens) for t in paris.by_day] == [("2026-03-01", 10), ("2026-03-02", 50)]
    nothing = await store.usage_report(
        U, since=datetime(2020, 1, 1, tzinfo=UTC), until=datetime(2020, 2, 1, tzinfo=UTC)
    )
    assert nothing.by_day == [] and nothing.total.messages == 0 and nothing.total.cost is None
    assert (await store.usage_report("nobody", **MARCH)).total.messages == 0
    with pytest.raises(ConversationNotFound) as foreign:
        await store.usage_report("bob", conversation_id=a, **MARCH)
    with pytest.raises(ConversationNotFound) as unknown:
        await store.usage_report(U, conversation_id="no-such", **MARCH)
    assert str(foreign.value) == str(unknown.value)


async def test_the_two_stage_user_report_equals_the_one_stage_conversation_report(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    """usage_report_user sums per (day, model) first and rolls up after (Citus refuses GROUPING
    SETS over several shards); usage_report_conversation groups the messages in one pass. For a
    user with one conversation both must give the same rows, value for value and type for type,
    on both engines: NULL costs, several days and models, a time zone, a model filter, an empty
    range."""
    a, _ = await _seed(store, db)
    await db.execute("DELETE FROM conversations WHERE user_id = $1 AND id <> $2", U, a)

    def typed(records: list[asyncpg.Record]) -> list[list[tuple[type, object]]]:
        return [[(type(v), v) for k, v in r.items() if k != "owned"] for r in records]

    empty = {"since": datetime(2020, 1, 1, tzinfo=UTC), "until": datetime(2020, 2, 1, tzinfo=UTC)}
    for window, time_zone, model in [
        (MARCH, "UTC", None),
        (MARCH, "Europe/Paris", None),
        (MARCH, "Asia/Tokyo", "m1"),
        (empty, "UTC", None),
    ]:
        args = (U, window["since"], window["until"], time_zone, model)
        two_stage = await db.fetch(QUERIES["usage_report_user"], *args)
        one_stage = await db.fetch(QUERIES["usage_report_conversation"], *args, a)
        assert typed(two_stage) == typed(one_stage), (time_zone, model)
        assert len(one_stage) > 1 or window is empty


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"since": datetime(2026, 3, 1)}, "since"),
        ({"until": "2026-04-01"}, "until"),
        ({"until": datetime(2026, 3, 1, tzinfo=UTC)}, "until"),
        ({"time_zone": "Mars/Olympus"}, "time_zone"),
        ({"time_zone": ""}, "time_zone"),
        ({"model": ""}, "model"),
        ({"conversation_id": ""}, "conversation_id"),
    ],
)
async def test_bad_report_arguments_are_refused(
    store: ConversationStore, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        await store.usage_report(U, **{**MARCH, **kwargs})
    assert info.value.field == field


async def test_the_report_reads_the_partial_usage_index(db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO conversations (id, user_id) SELECT 'c' || i, 'u' || (i % 100) "
        "FROM generate_series(1, 2000) i"
    )
    await db.execute(
        "INSERT INTO messages (conversation_id, seq, role, input_tokens, output_tokens, "
        "cached_tokens, reasoning_tokens, created_at) "
        "SELECT 'c' || (i % 2000 + 1), i, 'assistant', "
        "CASE WHEN i % 4 = 0 THEN 1 END, CASE WHEN i % 4 = 0 THEN 1 END, "
        "CASE WHEN i % 4 = 0 THEN 0 END, CASE WHEN i % 4 = 0 THEN 0 END, "
        "now() - (i % 90) * interval '1 day' FROM generate_series(1, 40000) i"
    )
    await db.execute("ANALYZE")
    since, until = datetime.now(UTC) - timedelta(days=30), datetime.now(UTC)
    for name, args in (
        ("usage_report_user", ("u7", since, until, "UTC", None)),
        ("usage_report_conversation", ("u7", since, until, "UTC", None, "c7")),
    ):
        plan = await db.fetchval(f"EXPLAIN (FORMAT JSON) {QUERIES[name]}", *args)
        assert "messages_usage" in json.dumps(plan), (name, plan)


@pytest.mark.engine_specific("postgresql", "counts every statement of the database in one node's server log")
async def test_a_report_is_one_round_trip(logged: tuple[ConversationStore, StatementLog]) -> None:
    """Counted from the single node's log, every statement of the test's database. On Citus the
    coordinator also logs the rollup it runs over the per-shard sums: the twin counts the store's
    backend."""
    await _report_round_trips(*logged)


@pytest.mark.engine_specific("citus", "counts the client's statements in the coordinator's log")
async def test_a_report_is_one_round_trip_through_the_coordinator(
    logged: tuple[ConversationStore, StatementLog],
) -> None:
    """The Citus twin: one statement from the client to the coordinator per report, as on one node."""
    store, log = logged
    await log.count_client_statements_only(store)
    await _report_round_trips(store, log)


async def _report_round_trips(store: ConversationStore, log: StatementLog) -> None:
    cid = (await store.get_or_create_conversation(None, U)).id
    await store.save_message(cid, U, "assistant", "a", usage=GPT)
    window: _Range = {
        "since": datetime.now(UTC) - timedelta(days=1),
        "until": datetime.now(UTC) + timedelta(days=1),
    }
    assert len(await _count(log, lambda: store.usage_report(U, **window))) == 1
    assert len(await _count(log, lambda: store.usage_report(U, conversation_id=cid, **window))) == 1
    assert len(await _count(log, lambda: store.save_message(cid, U, "assistant", "b", usage=GPT))) == 1
