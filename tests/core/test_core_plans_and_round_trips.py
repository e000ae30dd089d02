"""The hot paths' plans (EXPLAIN) and their round trips, counted from the server's statement log."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from convdb import ConversationNotFound, ConversationStore
from convdb.sql import QUERIES


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


@pytest.fixture
async def seeded(store: ConversationStore, db: asyncpg.Connection) -> str:
    """12,000 messages over 12 conversations, one of them 6,000 long, ANALYZEd."""
    big = await store.get_or_create_conversation("big", "alice")
    for _ in range(6):
        await store.save_messages(
            big.id, "alice", [{"role": "user", "content": f"m{i}"} for i in range(1000)]
        )
    for n in range(11):
        other = await store.get_or_create_conversation(f"other-{n}", f"user-{n}")
        await store.save_messages(other.id, f"user-{n}", [{"role": "assistant", "content": "x"}] * 545)
    await db.execute("ANALYZE conversations; ANALYZE messages")
    assert await db.fetchval("SELECT count(*) FROM messages") >= 10_000
    return big.id


@pytest.mark.engine_specific("postgresql", "a single-node EXPLAIN shape")
@pytest.mark.parametrize("plan_mode", ["force_custom_plan", "force_generic_plan"])
@pytest.mark.parametrize("limit", [1, 50, 500])
async def test_history_walks_the_primary_key_backwards(
    db: asyncpg.Connection, seeded: str, plan_mode: str, limit: int
) -> None:
    """Engine-specific: its Citus twin is test_citus.py's
    test_history_walks_the_shards_primary_key_backwards (custom plans only: Citus's default
    plan_cache_mode=auto keeps custom plans for these statements)."""
    await db.execute(f"SET plan_cache_mode = {plan_mode}")
    raw = await db.fetchval(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + QUERIES["get_history"], seeded, "alice", limit
    )
    plan = (raw if isinstance(raw, list) else __import__("json").loads(raw))[0]["Plan"]
    nodes = _nodes(plan)
    scans = [n for n in nodes if n.get("Relation Name") == "messages"]
    assert len(scans) == 1, scans
    scan = scans[0]
    assert scan["Node Type"] in {"Index Scan", "Index Only Scan"}
    assert scan["Index Name"] == "messages_pkey"
    assert scan["Scan Direction"] == "Backward"
    assert scan["Actual Rows"] <= limit, "the scan stops after limit rows"
    sorts = [n for n in nodes if n["Node Type"] == "Sort"]
    assert all(n["Actual Rows"] <= limit for n in sorts), "no more than limit rows are sorted"
    assert not any(n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "messages" for n in nodes)


@pytest.mark.engine_specific("postgresql", "buffers of a single-node plan")
async def test_history_plan_for_newest_messages_reads_few_buffers(
    db: asyncpg.Connection, seeded: str
) -> None:
    """Engine-specific: on Citus the coordinator's plan reads no buffers at all (it would pass
    vacuously); the twin checks the shard's buffers (test_citus.py)."""
    raw = await db.fetchval(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + QUERIES["get_history"], seeded, "alice", 50
    )
    plan = (raw if isinstance(raw, list) else __import__("json").loads(raw))[0]["Plan"]
    touched = plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
    assert touched < 50, f"{touched} buffers for 50 rows: the fetch is not reading only the newest rows"


# -- round trips from the statement log --------------------------------------------------------
# log_min_duration_statement = 0 logs every protocol step with its duration: "parse", "bind" and
# "execute" for the extended protocol, "statement" for simple queries. A round trip is a simple
# statement, a parse (asyncpg prepares in its own round trip), or one pipelined group of
# bind/execute steps (executemany sends many executes before one Sync).


class StatementLog:
    def __init__(self, admin: asyncpg.Connection, database: str) -> None:
        self.admin = admin
        self.database = database
        self.file = ""
        self.offset = 0

    async def start(self) -> None:
        file = await self.admin.fetchval("SELECT pg_current_logfile()")
        if file is None:
            pytest.fail(
                "the round-trip tests read the server log: run the server with logging_collector=on "
                "(the embedded test server does)",
                pytrace=False,
            )
        self.file = file
        self.offset = await self.admin.fetchval("SELECT size FROM pg_stat_file($1)", file)

    async def steps(self, pid: int, begin: str, end: str) -> list[str]:
        """Protocol steps logged by backend ``pid`` between the two marker queries.

        The logging collector writes asynchronously, so lines of earlier calls can land after the
        offset taken in start(): only what lies between the markers counts.
        """
        for _ in range(200):
            size = await self.admin.fetchval("SELECT size FROM pg_stat_file($1)", self.file)
            text = await self.admin.fetchval(
                "SELECT pg_read_file($1, $2, $3)", self.file, self.offset, size - self.offset
            )
            if end in text:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("marker never reached the server log")
        lines = text.splitlines()
        first = next(i for i, line in enumerate(lines) if begin in line and "execute" in line)
        steps = []
        for line in lines[first + 1 :]:
            if end in line:
                break
            m = re.search(
                rf"\[{pid}\] {re.escape(self.database)} LOG:  duration: [0-9.]+ ms  (\w+)"
                r"(?: [^:]*)?: (.*)",
                line,
            )
            if m:
                steps.append(f"{m.group(1)} {' '.join(m.group(2).split())}")
        return steps


def round_trips(steps: list[str]) -> int:
    """Round trips in a list of logged steps.

    The log shows no Sync messages, so a pipelined group is recognised as consecutive bind/execute
    steps of the same statement (executemany). Two separate calls of one statement in a row would
    be counted as one; none of the operations measured here does that.
    """
    trips = 0
    group = ""
    for step in steps:
        kind, _, statement = step.partition(" ")
        if kind in {"statement", "parse"}:
            trips += 1
            group = ""
        elif kind == "bind" and statement != group:
            trips += 1
            group = statement
    return trips


@pytest.fixture
async def logged(
    dsn: str, db: asyncpg.Connection, db_name: str
) -> AsyncIterator[tuple[ConversationStore, int]]:
    await db.execute(f'ALTER DATABASE "{db_name}" SET log_min_duration_statement = 0')
    async with await ConversationStore.connect(dsn, min_size=1, max_size=1) as store:
        pid = await store.pool.fetchval("SELECT pg_backend_pid()")
        yield store, pid


async def _measure(
    store: ConversationStore, db: asyncpg.Connection, db_name: str, pid: int, op: Any
) -> list[str]:
    log = StatementLog(db, db_name)
    await log.start()
    # The markers are literals, not parameters, so each is its own (unprepared) statement; their
    # parse and bind lines fall outside the window that is counted.
    begin, end = f"begin_{uuid.uuid4().hex}", f"end_{uuid.uuid4().hex}"
    await store.pool.fetchval(f"SELECT '{begin}'")
    await op()
    await store.pool.fetchval(f"SELECT '{end}'")
    return await log.steps(pid, begin, end)


async def test_round_trips_per_operation(
    logged: tuple[ConversationStore, int], db: asyncpg.Connection, db_name: str
) -> None:
    store, pid = logged
    conv = await store.get_or_create_conversation("rt", "alice")
    batch = [{"role": "user", "content": str(i)} for i in range(5)]
    keyed = [{"role": "user", "content": str(i), "idempotency_key": f"k{i}"} for i in range(5)]
    fresh = iter(range(1_000_000))

    def new_keys() -> list[dict[str, Any]]:
        n = next(fresh)
        return [{"role": "user", "content": str(i), "idempotency_key": f"n{n}-{i}"} for i in range(5)]

    operations: dict[str, Callable[[], Awaitable[Any]]] = {
        "get_or_create_conversation (existing)": lambda: store.get_or_create_conversation("rt", "alice"),
        "get_or_create_conversation (new)": lambda: store.get_or_create_conversation(None, "alice"),
        "get_or_create_conversation (new, given id)": lambda: store.get_or_create_conversation(
            f"given-{next(fresh)}", "alice"
        ),
        "get_or_create_conversation (another user's)": lambda: _not_found(
            store.get_or_create_conversation("rt", "bob")
        ),
        "get_conversation": lambda: store.get_conversation("rt", "alice"),
        "save_message": lambda: store.save_message(conv.id, "alice", "user", "hi"),
        "save_message (replayed key)": lambda: store.save_message(
            conv.id, "alice", "user", "k", idempotency_key="same"
        ),
        "save_messages (5)": lambda: store.save_messages(conv.id, "alice", batch),
        "save_messages (5, new keys)": lambda: store.save_messages(conv.id, "alice", new_keys()),
        "save_messages (5, replayed keys)": lambda: store.save_messages(conv.id, "alice", keyed),
        "get_history": lambda: store.get_history(conv.id, "alice", limit=50),
    }
    expected = {
        "get_or_create_conversation (existing)": 1,
        "get_or_create_conversation (new)": 1,
        # The read misses, then the create statement (an existing row is the one-read path above).
        "get_or_create_conversation (new, given id)": 2,
        # The read, the create statement, the locked fallback: each finds the row is not bob's.
        "get_or_create_conversation (another user's)": 3,
        "get_conversation": 1,
        "save_message": 1,
        "save_message (replayed key)": 2,
        "save_messages (5)": 4,
        "save_messages (5, new keys)": 5,
        "save_messages (5, replayed keys)": 3,
        "get_history": 1,
    }
    if store.delegated:  # Citus with schema_citus.sql's functions: the batch is BEGIN, one call, COMMIT
        expected |= {
            "save_messages (5)": 3,
            "save_messages (5, new keys)": 3,
            "save_messages (5, replayed keys)": 3,
        }
    measured: dict[str, int] = {}
    for name, op in operations.items():
        await op()  # warm twice: statements are prepared once per connection, and the
        await op()  # replayed-key path first runs on the second call
        steps = await _measure(store, db, db_name, pid, op)
        assert not any(s.startswith("parse") for s in steps), f"{name} re-prepared: {steps}"
        assert not any(w in " ".join(steps) for w in ("RESET", "UNLISTEN", "CLOSE", "PG_ADVISORY")), steps
        measured[name] = round_trips(steps)
        if name == "get_or_create_conversation (existing)":
            # The per-request path is the plain read alone (the log shows each text's first line).
            read = " ".join(QUERIES["get_conversation"].splitlines()[0].split())
            assert steps == [f"bind {read}", f"execute {read}"], steps
    print("round trips per operation:", measured)
    assert measured == expected


async def _not_found(call: Awaitable[Any]) -> None:
    with pytest.raises(ConversationNotFound):
        await call


async def test_batch_is_one_pipelined_round_trip_for_the_inserts(
    logged: tuple[ConversationStore, int], db: asyncpg.Connection, db_name: str
) -> None:
    store, pid = logged
    conv = await store.get_or_create_conversation("rt", "alice")
    batch = [{"role": "user", "content": str(i)} for i in range(100)]
    await store.save_messages(conv.id, "alice", batch)
    steps = await _measure(store, db, db_name, pid, lambda: store.save_messages(conv.id, "alice", batch))
    kinds = [s.split()[0] for s in steps]
    # reserve + 100 inserts (BEGIN/COMMIT are statements); delegated (Citus): the call alone
    assert kinds.count("execute") == (1 if store.delegated else 101), steps[:6]
    assert kinds.count("statement") == 2
    assert round_trips(steps) == (3 if store.delegated else 4)
