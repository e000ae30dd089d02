"""Round trips per agent operation, counted from the server's statement log (log_statement=all).

Prepared statements are warmed up first (asyncpg prepares a statement once per connection), so
what is counted is the steady state: one logged execution per round trip, except executemany,
which pipelines many executions into one round trip per chunk.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from convdb import ConversationStore

U = "alice"
_ENTRY = re.compile(r"^\S+ \S+ \S+ \[(\d+)\] (\S+) LOG:  (execute [^:]+|statement): (.*)$", re.MULTILINE)
# Citus's deparsed text of a task (operators schema-qualified, intermediate results read back).
_CITUS_TASK = re.compile(r"OPERATOR\(pg_catalog\.|read_intermediate_result\(")


class StatementLog:
    """The statements this database executed, read back through SQL from the server's log."""

    def __init__(self, db: asyncpg.Connection, name: str) -> None:
        self.db, self.name, self.offset = db, name, 0
        self.client: int | None = None

    async def count_client_statements_only(self, store: ConversationStore) -> None:
        """On Citus, count what the store's one connection (``max_size=1``) sends, and only that.
        The coordinator's log also holds the statements of Citus's own connections to it (its
        maintenance daemon's deadlock detector polls ``dump_local_wait_edges()`` in every
        database), and, in the client's backend, the tasks the coordinator runs itself (it holds
        no shard, so these are steps over intermediate results: a CTE pulled to the coordinator
        read back, a rollup over per-shard sums), logged as a ``statement:`` in Citus's deparsed
        text but never sent by the client."""
        async with store.pool.acquire() as conn:
            self.client = await conn.fetchval("SELECT pg_backend_pid()")

    async def mark(self) -> None:
        await asyncio.sleep(0.05)
        self.offset = await self._size()

    async def _size(self) -> int:
        size: int = await self.db.fetchval("SELECT size FROM pg_stat_file(pg_current_logfile())")
        return size

    async def since_mark(self) -> list[str]:
        await asyncio.sleep(0.1)
        size = await self._size()
        text: str = await self.db.fetchval(
            "SELECT pg_read_file(pg_current_logfile(), $1, $2)", self.offset, size - self.offset
        )
        entries = [m for m in _ENTRY.finditer(text) if m.group(2) == self.name]
        if self.client is not None:
            entries = [
                m
                for m in entries
                if int(m.group(1)) == self.client
                and not (m.group(3) == "statement" and _CITUS_TASK.search(m.group(4)))
            ]
        return [m.group(4) for m in entries]


@pytest.fixture
async def logged(dsn: str, db: asyncpg.Connection) -> AsyncIterator[tuple[ConversationStore, StatementLog]]:
    name = await db.fetchval("SELECT current_database()")
    if await db.fetchval("SELECT pg_current_logfile()") is None:
        pytest.fail(
            "the test server has no logging collector: run it with logging_collector=on "
            "(the embedded test server does)"
        )
    await db.execute(f"ALTER DATABASE \"{name}\" SET log_statement = 'all'")
    async with await ConversationStore.connect(dsn, min_size=1, max_size=1) as store:
        yield store, StatementLog(db, name)


async def _count(log: StatementLog, op: Callable[[], Awaitable[Any]]) -> list[str]:
    await op()  # warm the statement cache
    await log.mark()
    await op()
    return await log.since_mark()


@pytest.mark.engine_specific("postgresql", "counts every statement of the database in one node's server log")
async def test_one_round_trip_per_call(logged: tuple[ConversationStore, StatementLog]) -> None:
    """Counted from the single node's log, every statement of the test's database; the twin
    below counts what the client sends the coordinator."""
    await _single_round_trips(*logged)


@pytest.mark.engine_specific("citus", "counts the client's statements in the coordinator's log")
async def test_one_round_trip_per_call_through_the_coordinator(
    logged: tuple[ConversationStore, StatementLog],
) -> None:
    """The Citus twin: the client sends the coordinator as many statements as it sends one node;
    the steps the coordinator runs for them (multi-shard, or pulled to it) are no round trips."""
    store, log = logged
    await log.count_client_statements_only(store)
    await _single_round_trips(store, log)


async def _single_round_trips(store: ConversationStore, log: StatementLog) -> None:
    cid = (await store.get_or_create_conversation(None, U)).id
    await store.save_messages(cid, U, [{"role": "user", "content": str(i)} for i in range(20)])
    turn = {"role": "user", "content": "turn"}
    single: dict[str, Callable[[], Awaitable[Any]]] = {
        "get_history": lambda: store.get_history(cid, U),
        "get_history(max_tokens)": lambda: store.get_history(cid, U, max_tokens=50),
        "save_and_get_history": lambda: store.save_and_get_history(cid, U, turn),
        "save_and_get_history(max_tokens)": lambda: store.save_and_get_history(cid, U, turn, max_tokens=9),
        "list_conversations": lambda: store.list_conversations(U, title_contains="x"),
        "update_conversation": lambda: store.update_conversation(cid, U, title="t"),
        "pop_last_message": lambda: store.pop_last_message(cid, U),
        "count_messages": lambda: store.count_messages(cid, U),
        "clear_conversation": lambda: store.clear_conversation(cid, U),
    }
    counts = {name: len(await _count(log, op)) for name, op in single.items()}
    assert counts == dict.fromkeys(single, 1)

    other = (await store.get_or_create_conversation(None, U)).id
    await log.mark()
    await store.delete_conversation(other, U)
    assert len(await log.since_mark()) == 1


@pytest.mark.engine_specific("postgresql", "counts every statement of the database in one node's server log")
async def test_round_trips_of_streaming_and_batched_operations(
    logged: tuple[ConversationStore, StatementLog],
) -> None:
    """Counted from the single node's log, every statement of the test's database; the twin
    below counts what the client sends the coordinator."""
    await _streaming_round_trips(*logged)


@pytest.mark.engine_specific("citus", "counts the client's statements in the coordinator's log")
async def test_round_trips_of_streaming_and_batched_operations_through_the_coordinator(
    logged: tuple[ConversationStore, StatementLog],
) -> None:
    """The Citus twin: the client sends the coordinator as many statements as it sends one node;
    the steps the coordinator runs for them (multi-shard, or pulled to it) are no round trips."""
    store, log = logged
    await log.count_client_statements_only(store)
    await _streaming_round_trips(store, log)


async def _streaming_round_trips(store: ConversationStore, log: StatementLog) -> None:
    cid = (await store.get_or_create_conversation(None, U)).id
    await store.save_messages(cid, U, [{"role": "user", "content": str(i)} for i in range(25)])

    # export: the conversation row, then one per chunk (the short last chunk ends it), then the
    # conversation's feedback
    statements = await _count(log, lambda: _drain(store.export_conversation(cid, U, chunk_size=10)))
    assert len(statements) == 1 + 3 + 1

    # import: BEGIN, the conversation row, one pipelined executemany (25 logged executions), COMMIT
    records = [r async for r in store.export_conversation(cid, U)]
    await log.mark()
    await store.import_conversation("bob", records, conversation_id="copy")
    statements = await log.since_mark()
    assert statements[0].startswith("BEGIN")
    assert statements[-1].startswith("COMMIT")
    assert sum("INSERT INTO conversations" in s for s in statements) == 1
    assert sum("INSERT INTO messages" in s for s in statements) == 25
    assert len(statements) == 3 + 25

    # erasure of one user with 2 conversations (25 + 25 messages), chunks of 10 messages:
    # list, message chunks until one is short (10, 10, 10, 10, 10, 0), delete the rows (BEGIN,
    # lock them, delete, COMMIT: the lock makes the count exact), list again
    await store.import_conversation(U, records, conversation_id="second")
    await log.mark()
    counts = await store.delete_user_data(U, messages_per_batch=10)
    assert (counts.conversations, counts.messages) == (2, 50)
    statements = await log.since_mark()
    assert len(statements) == 1 + 6 + 4 + 1


async def _drain(iterator: AsyncIterator[Any]) -> list[Any]:
    return [x async for x in iterator]


# Issue 11's methods (branches, feedback, search), by the same steady-state method.
@pytest.mark.engine_specific("postgresql", "counts every statement of the database in one node's server log")
async def test_one_round_trip_each_branch_feedback_search_call(
    logged: tuple[ConversationStore, StatementLog],
) -> None:
    """Counted from the single node's log, every statement of the test's database; the twin
    below counts what the client sends the coordinator."""
    await _branch_feedback_search_round_trips(*logged)


@pytest.mark.engine_specific("citus", "counts the client's statements in the coordinator's log")
async def test_one_round_trip_each_branch_feedback_search_call_through_the_coordinator(
    logged: tuple[ConversationStore, StatementLog],
) -> None:
    """The Citus twin: the client sends the coordinator as many statements as it sends one node;
    the steps the coordinator runs for them (multi-shard, or pulled to it) are no round trips."""
    store, log = logged
    await log.count_client_statements_only(store)
    await _branch_feedback_search_round_trips(store, log)


async def _branch_feedback_search_round_trips(store: ConversationStore, log: StatementLog) -> None:
    cid = (await store.get_or_create_conversation(None, U, title="needle title")).id
    await store.save_messages(cid, U, [{"role": "user", "content": f"needle {i}"} for i in range(30)])
    await store.set_feedback(cid, U, 3, rating=1)
    single: dict[str, Callable[[], Awaitable[Any]]] = {
        "fork_conversation": lambda: store.fork_conversation(cid, U, at_seq=20),
        "set_feedback": lambda: store.set_feedback(cid, U, 2, rating=-1, tags=["x"]),
        "clear_feedback": lambda: store.clear_feedback(cid, U, 2),
        "get_feedback": lambda: store.get_feedback(cid, U),
        "feedback_summary(user)": lambda: store.feedback_summary(U),
        "feedback_summary(conversation)": lambda: store.feedback_summary(U, conversation_id=cid),
        "search_messages": lambda: store.search_messages(U, "needle", limit=5),
        "search_messages(conversation)": lambda: store.search_messages(U, "needle", conversation_id=cid),
        "list_conversations(parent_id)": lambda: store.list_conversations(U, parent_id=cid),
    }
    counts = {name: len(await _count(log, op)) for name, op in single.items()}
    assert counts == dict.fromkeys(single, 1)
    # A fork's window is the ordinary one-statement window, whatever its lineage.
    fork = await store.fork_conversation(cid, U, at_seq=30)
    deeper = await store.fork_conversation(fork.id, U, at_seq=30)
    assert len(await _count(log, lambda: store.get_history(deeper.id, U, limit=10))) == 1
