"""Batches are all-or-nothing under a bad message, a cancelled task and a killed backend.

The fault tests stall a multi-megabyte executemany for real: another session holds a SHARE lock on
messages, so the first INSERT waits on it, the server stops reading, and the client is left with
megabytes still to send. That is the state in which asyncpg's executemany can wait forever.
The INSERT must already be prepared on the connection: otherwise the lock stops the Parse round
trip and nothing of the batch is sent yet, which is a much easier case. ``warm`` prepares it on
every pooled connection first, and the tests check that the client really has bytes left to send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from convdb import ConvDBError, ConversationStore, DatabaseUnavailable, InvalidInput, QueryTimeout
from convdb.sql import QUERIES
from tests.support import delegated
from tests.support.fix_server import VIA_CITUS

BIG_BATCH = [{"role": "user", "content": f"{i:06d}" + "x" * 20_000} for i in range(400)]  # ~8 MB
BOUND_SECONDS = 20


async def _wait_for_stalled_insert(db: asyncpg.Connection, delegated: bool = False) -> int:
    """The pid of the store's backend once its batch waits on the lock (really in flight).

    The statements: the backend's own INSERT waits. The delegated call (schema_citus.sql's
    convdb_save_messages): its INSERT runs inside the call, on one node in the same backend, on
    Citus in the worker's backend that the call was delegated to (citus_stat_activity sees it).
    """
    running = "%convdb_save_messages(%" if delegated else "INSERT INTO messages%"
    elsewhere = delegated and VIA_CITUS
    waits = "citus_stat_activity w" if elsewhere else "pg_stat_activity w"
    same_backend = "" if elsewhere else "AND w.pid = a.pid"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pid = await db.fetchval(
            f"""SELECT a.pid FROM pg_stat_activity a
                 WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
                   AND a.query LIKE $1 AND a.state = 'active'
                   AND EXISTS (SELECT FROM {waits} WHERE w.query LIKE $1 AND w.state = 'active'
                                  AND w.wait_event_type = 'Lock' {same_backend})""",
            running,
        )
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.05)
    raise AssertionError("the batch INSERT never showed up in pg_stat_activity")


async def warm(store: ConversationStore, size: int) -> str:
    """Prepare the batch INSERT on every pooled connection (held at once, so each is used)."""
    conv = await store.get_or_create_conversation("warm-up", "alice")
    gate = asyncio.Event()

    async def hold_and_save(i: int) -> None:
        async with store.pool.acquire() as conn:
            if i == size - 1:
                gate.set()
            await gate.wait()
            await conn.executemany(
                QUERIES["insert_message_at"],
                [(conv.id, 1000 + i, "user", "w", None, None, None, None, 0, None, *(None,) * 7)],
            )

    await asyncio.gather(*(hold_and_save(i) for i in range(size)))
    await store.pool.execute("DELETE FROM messages WHERE conversation_id = 'warm-up'")
    return conv.id


@pytest.fixture
async def locker(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A session ready to block INSERTs into messages: the test calls ``lock(locker)`` when ready."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def lock(conn: asyncpg.Connection) -> None:
    await conn.execute("BEGIN; LOCK TABLE messages IN SHARE MODE")


async def assert_client_still_sending(store: ConversationStore) -> None:
    """The stalled batch has not been fully handed to the kernel: the hazardous state."""
    for _ in range(100):
        # asyncpg's private pool internals: the only place the unsent bytes are visible.
        holders: list[Any] = store.pool._holders  # type: ignore[attr-defined]
        pending = [
            c
            for c in holders
            if c._con is not None and c._in_use is not None and c._con._transport.get_write_buffer_size() > 0
        ]
        if pending:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the batch was fully sent; the test would not exercise the stalled-send case")


async def _assert_nothing_stored_and_pool_whole(
    store: ConversationStore, db: asyncpg.Connection, conversation_id: str, size: int
) -> None:
    assert await db.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", conversation_id) == 0
    assert await db.fetchval("SELECT next_seq FROM conversations WHERE id = $1", conversation_id) == 1
    # Every pool slot can still be held at once: nothing leaked.
    held = [await store.pool.acquire(timeout=10) for _ in range(size)]
    try:
        assert [await c.fetchval("SELECT 1") for c in held] == [1] * size
    finally:
        for c in held:
            await store.pool.release(c)
    saved = await store.save_messages(conversation_id, "alice", BIG_BATCH[:3])
    assert [m.seq for m in saved] == [1, 2, 3]


FORMS = pytest.mark.parametrize("form", ["statements", "delegated"])


async def _connect(dsn: str, db: asyncpg.Connection, form: str, **options: Any) -> ConversationStore:
    """A store sending the batch as the statements' transaction, or as the delegated call (the
    functions of schema_citus.sql, created on a single node without their distribution)."""
    if form == "delegated":
        await delegated.install(db)
    store = await ConversationStore.connect(dsn, **options)
    if form == "statements":
        delegated.send_statements(store)
    assert store.delegated == (form == "delegated")
    return store


@pytest.fixture
async def small_store(dsn: str, db: asyncpg.Connection, form: str) -> AsyncIterator[ConversationStore]:
    async with await _connect(dsn, db, form, min_size=2, max_size=2) as s:
        yield s


@pytest.mark.parametrize("fault", ["cancel the task", "kill the backend"])
@FORMS
@pytest.mark.guarantee(4)
async def test_fault_while_batch_insert_in_flight(
    small_store: ConversationStore, db: asyncpg.Connection, locker: asyncpg.Connection, fault: str, form: str
) -> None:
    await warm(small_store, 2)
    conv = await small_store.get_or_create_conversation(None, "alice")
    await lock(locker)
    task = asyncio.create_task(small_store.save_messages(conv.id, "alice", BIG_BATCH))
    pid = await _wait_for_stalled_insert(db, delegated=form == "delegated")
    if form == "statements":
        # The delegated call is one message, which the server reads whole before it runs it: it
        # has no stalled send, only the stalled INSERT inside it.
        await assert_client_still_sending(small_store)
    started = time.monotonic()
    if fault == "cancel the task":
        task.cancel()
        expected: type[BaseException] = asyncio.CancelledError
    else:
        assert await db.fetchval(
            "SELECT pg_terminate_backend($1::integer)", pid
        )  # Citus adds a bigint overload
        expected = DatabaseUnavailable
    with pytest.raises(expected):
        await asyncio.wait_for(task, BOUND_SECONDS)
    assert time.monotonic() - started < BOUND_SECONDS
    await locker.execute("ROLLBACK")  # let the server go on; the batch must still not appear
    await _assert_nothing_stored_and_pool_whole(small_store, db, conv.id, 2)


@FORMS
@pytest.mark.guarantee(4)
async def test_stalled_batch_times_out_with_nothing_stored(
    dsn: str, db: asyncpg.Connection, locker: asyncpg.Connection, form: str
) -> None:
    """Also the delegated call: were it sent bare, it would commit on the worker once the lock
    goes, after the caller was told nothing was stored (found on Citus: 400 messages appeared)."""
    async with await _connect(
        dsn, db, form, min_size=1, max_size=1, batch_timeout=1.0, batch_timeout_per_mib=0.1
    ) as store:
        await warm(store, 1)
        conv = await store.get_or_create_conversation(None, "alice")
        await lock(locker)
        with pytest.raises(QueryTimeout, match="nothing was stored"):
            await asyncio.wait_for(store.save_messages(conv.id, "alice", BIG_BATCH), BOUND_SECONDS)
        await locker.execute("ROLLBACK")
        await _assert_nothing_stored_and_pool_whole(store, db, conv.id, 1)


@pytest.mark.parametrize("bad_index", [0, 57, 399])
@pytest.mark.guarantee(4)
async def test_bad_message_anywhere_stores_nothing(
    store: ConversationStore, db: asyncpg.Connection, bad_index: int
) -> None:
    conv = await store.get_or_create_conversation(None, "alice")
    batch: list[dict[str, Any]] = [dict(m) for m in BIG_BATCH]
    batch[bad_index] = {"role": "tool", "content": "no call id"}
    with pytest.raises(InvalidInput) as info:
        await store.save_messages(conv.id, "alice", batch)
    assert info.value.index == bad_index
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


@pytest.mark.guarantee(4)
async def test_database_refusal_mid_batch_rolls_back(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    # A constraint only the database knows (added here by the test, as a stricter DBA might) fails
    # row 300 of the executemany: rows 0..299 must disappear with it.
    await db.execute(
        "ALTER TABLE messages ADD CONSTRAINT no_poison CHECK (content IS DISTINCT FROM 'poison')"
    )
    conv = await store.get_or_create_conversation(None, "alice")
    batch: list[dict[str, Any]] = [dict(m) for m in BIG_BATCH]
    batch[300] = {"role": "user", "content": "poison"}
    with pytest.raises(ConvDBError) as info:
        await store.save_messages(conv.id, "alice", batch)
    assert getattr(info.value, "constraint", None) == "no_poison"
    assert isinstance(info.value.__cause__, asyncpg.CheckViolationError)
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert await db.fetchval("SELECT next_seq FROM conversations") == 1
    assert [m.seq for m in await store.save_messages(conv.id, "alice", BIG_BATCH[:2])] == [1, 2]


@pytest.mark.guarantee(6)
async def test_many_cancellations_leak_no_connection(dsn: str, db: asyncpg.Connection) -> None:
    async with await ConversationStore.connect(dsn, min_size=4, max_size=4) as store:
        conv = await store.get_or_create_conversation(None, "alice")
        batch = [{"role": "user", "content": "y" * 2000} for _ in range(50)]
        for i in range(60):
            tasks = [asyncio.create_task(store.save_messages(conv.id, "alice", batch)) for _ in range(4)]
            await asyncio.sleep(0.001 * (i % 7))
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        held = [await store.pool.acquire(timeout=10) for _ in range(4)]
        for c in held:
            await store.pool.release(c)
        count = await db.fetchval("SELECT count(*) FROM messages")
        assert count % 50 == 0, "only whole batches were stored"
        seqs = [r[0] for r in await db.fetch("SELECT seq FROM messages ORDER BY seq")]
        assert seqs == list(range(1, count + 1))
