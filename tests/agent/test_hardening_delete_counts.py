"""Issue 10 item 11: delete_conversation and delete_user_data return what was really deleted, also
when a batch commits while they wait for the conversation's row lock (race_row_lock)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from convdb import ConversationNotFound, ConversationStore, ErasureCounts
from tests.support.fix_server import ENGINE

U = "alice"
RaceRowLock = Callable[..., Awaitable[Any]]


def _batch(cid: str, first_seq: int, count: int) -> list[tuple[Any, ...]]:
    """The statements of a convdb batch: the row update (its lock), then the inserts."""
    return [
        ("UPDATE conversations SET next_seq = next_seq + $2, updated_at = now() WHERE id = $1", cid, count),
        *(
            (
                "INSERT INTO messages (conversation_id, seq, role, content) VALUES ($1, $2, 'user', 'racing')",
                cid,
                first_seq + i,
            )
            for i in range(count)
        ),
    ]


async def _conversation(store: ConversationStore, cid: str, messages: int) -> None:
    await store.get_or_create_conversation(cid, U)
    await store.save_messages(cid, U, [{"role": "user", "content": str(i)} for i in range(messages)])


async def test_delete_conversation_counts_a_batch_that_commits_during_its_lock_wait(
    store: ConversationStore, db: asyncpg.Connection, race_row_lock: RaceRowLock
) -> None:
    await _conversation(store, "c", 3)
    deleted = await race_row_lock(store.delete_conversation("c", U), *_batch("c", 4, 5))
    assert deleted == 8  # 3 before, 5 committed while the delete waited for the row lock
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0


async def test_delete_conversation_without_a_race_is_one_statement_and_stays_exact(
    store: ConversationStore,
) -> None:
    await _conversation(store, "c", 4)
    await _conversation(store, "other", 2)
    assert await store.delete_conversation("c", U) == 4
    try:
        await store.delete_conversation("c", U)
    except ConversationNotFound:
        pass
    else:
        raise AssertionError("a deleted conversation must read as not found")
    assert await store.count_messages("other", U) == 2


async def test_delete_user_data_counts_a_batch_that_commits_during_its_lock_wait(
    store: ConversationStore, db: asyncpg.Connection, race_row_lock: RaceRowLock
) -> None:
    await _conversation(store, "a", 3)
    await _conversation(store, "b", 2)
    counts = await race_row_lock(store.delete_user_data(U), *_batch("b", 3, 6))
    assert counts == ErasureCounts(conversations=2, messages=3 + 2 + 6)
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0


# The backend of the erasing session while its statement waits on a row lock. On Citus the wait is
# on the worker holding the shard (citus_stat_activity, every node's backends); the session to
# kill is the coordinator backend that sent it, the one with the same global pid.
_ERASING_BACKEND_WAITING = {
    "postgresql": (
        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
    ),
    "citus": (
        "SELECT c.pid FROM citus_stat_activity w "
        "JOIN citus_stat_activity c ON c.global_pid = w.global_pid AND NOT c.is_worker_query "
        "WHERE w.is_worker_query AND w.wait_event_type = 'Lock' AND w.datname = current_database() "
        "AND c.datname = current_database()"
    ),
}


async def _kill_erasure_mid_way(store: ConversationStore, dsn: str, *, chunk: int) -> tuple[Any, int]:
    """Run delete_user_data while another transaction holds a lock on the last message, so a
    later chunk waits for it; terminate the erasing backend then, and release the lock.

    Returns the call's outcome and how many messages were left when the backend was killed."""
    import asyncio

    other = await asyncpg.connect(dsn)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute("SELECT 1 FROM messages WHERE conversation_id = 'big' AND seq = 25 FOR UPDATE")
        task = asyncio.ensure_future(store.delete_user_data(U, messages_per_batch=chunk))
        for _ in range(1000):
            pid = await other.fetchval(_ERASING_BACKEND_WAITING[ENGINE])
            if pid is not None:
                break
            await asyncio.sleep(0.01)
        else:
            task.cancel()
            raise AssertionError("the erasure never waited for the locked message")
        left = await other.fetchval("SELECT count(*) FROM messages")  # our snapshot: committed chunks
        assert await other.fetchval("SELECT pg_terminate_backend($1::integer)", pid)
        await tx.rollback()
        outcome = await asyncio.gather(task, return_exceptions=True)
        return outcome[0], left
    finally:
        await other.close()


async def test_delete_user_data_retry_counts_what_the_interrupted_attempt_deleted(
    dsn: str, db: asyncpg.Connection
) -> None:
    async with await ConversationStore.connect(dsn, min_size=1, max_size=2) as store:
        await _conversation(store, "big", 25)
        counts, left = await _kill_erasure_mid_way(store, dsn, chunk=10)
    assert left < 25, "some chunks had committed before the backend was killed"
    assert counts == ErasureCounts(conversations=1, messages=25)
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_delete_user_data_does_not_retry_when_retries_are_off(dsn: str, db: asyncpg.Connection) -> None:
    from convdb import DatabaseUnavailable

    async with await ConversationStore.connect(
        dsn, min_size=1, max_size=2, retry_keyed_writes=False
    ) as store:
        await _conversation(store, "big", 25)
        outcome, left = await _kill_erasure_mid_way(store, dsn, chunk=10)
        assert isinstance(outcome, DatabaseUnavailable), outcome
        assert await db.fetchval("SELECT count(*) FROM messages") == left < 25
        # Calling again finishes the job and counts what that call deleted.
        assert await store.delete_user_data(U) == ErasureCounts(conversations=1, messages=left)
