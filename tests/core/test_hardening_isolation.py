"""convdb's statements need READ COMMITTED (a row re-checked after a lock wait), whatever the
database's default isolation.

Every transaction convdb opens says ``BEGIN ISOLATION LEVEL READ COMMITTED``; single statements
run at the server's default, so ``connect()`` (through ``verify_schema``) refuses another default
with ``UnsupportedIsolation``, unless row-level security puts every call in a transaction.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from convdb import ConversationStore, SchemaMismatch, UnsupportedIsolation
from tests.support.surface import enable_rls

HANG = 120.0
WRITERS = 8
ROUNDS = 6


async def _set_default_isolation(dsn: str, level: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_isolation = "
            f"''{level}''', current_database()); END $$"
        )
    finally:
        await conn.close()


def _assert_gap_free(seqs: list[int]) -> None:
    assert sorted(seqs) == list(range(1, len(seqs) + 1))


@pytest.mark.guarantee(12)
@pytest.mark.parametrize("level", ["repeatable read", "serializable"])
async def test_connect_refuses_another_default_isolation(dsn: str, level: str) -> None:
    await _set_default_isolation(dsn, level)
    with pytest.raises(UnsupportedIsolation) as refused:
        await ConversationStore.connect(dsn, min_size=1, max_size=1)
    assert isinstance(refused.value, SchemaMismatch)
    assert level in str(refused.value)
    assert "default_transaction_isolation = 'read committed'" in str(refused.value)


@pytest.mark.guarantee(12)
@pytest.mark.parametrize("level", ["repeatable read", "serializable"])
async def test_batches_are_read_committed_whatever_the_default(dsn: str, level: str) -> None:
    """Concurrent batches to one conversation, the database defaulting to ``level``: each batch is a
    transaction convdb opens, so each names READ COMMITTED and none fails to serialize."""
    await _set_default_isolation(dsn, level)
    async with await ConversationStore.connect(
        dsn, min_size=WRITERS, max_size=WRITERS, verify_schema=False
    ) as store:
        conv = await store.get_or_create_conversation("contended", "alice")

        async def writer(w: int) -> list[int]:
            seqs = []
            for r in range(ROUNDS):
                stored = await store.save_messages(
                    conv.id, "alice", [{"role": "user", "content": f"w{w} r{r} m{j}"} for j in range(3)]
                )
                seqs += [m.seq for m in stored]
            return seqs

        results = await asyncio.wait_for(asyncio.gather(*(writer(w) for w in range(WRITERS))), HANG)
        _assert_gap_free([seq for seqs in results for seq in seqs])
        assert await store.count_messages(conv.id, "alice") == WRITERS * ROUNDS * 3


@pytest.mark.guarantee(12)
async def test_row_level_security_runs_every_call_read_committed(dsn: str) -> None:
    """With row_level_security every call is a READ COMMITTED transaction of convdb's own: connect
    accepts a serializable default, and concurrent single-statement writes all succeed."""
    app_dsn = await enable_rls(dsn)
    await _set_default_isolation(dsn, "serializable")
    async with await ConversationStore.connect(
        app_dsn, min_size=WRITERS, max_size=WRITERS, row_level_security=True
    ) as store:
        conv = await store.get_or_create_conversation("contended", "alice")

        async def writer(w: int) -> list[int]:
            seqs = []
            for r in range(ROUNDS):
                saved = await store.save_message(conv.id, "alice", "user", f"w{w} r{r}")
                turn, _ = await store.save_and_get_history(
                    conv.id, "alice", {"role": "assistant", "content": "ok"}
                )
                seqs += [saved.seq, turn.seq]
            return seqs

        results = await asyncio.wait_for(asyncio.gather(*(writer(w) for w in range(WRITERS))), HANG)
        _assert_gap_free([seq for seqs in results for seq in seqs])
        popped = await asyncio.wait_for(
            asyncio.gather(*(store.pop_last_message(conv.id, "alice") for _ in range(WRITERS))), HANG
        )
        assert len({m.seq for m in popped if m is not None}) == WRITERS
