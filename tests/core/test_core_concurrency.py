"""Concurrent writers and racing creators against one real server."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from convdb import ConversationNotFound, ConversationStore


@pytest.mark.guarantee(5)
async def test_concurrent_writers_get_gap_free_unique_seqs(dsn: str, db: asyncpg.Connection) -> None:
    async with await ConversationStore.connect(dsn, min_size=8, max_size=8) as store:
        conv = await store.get_or_create_conversation(None, "alice")

        async def writer(w: int) -> list[int]:
            seqs: list[int] = []
            for i in range(25):
                if i % 5 == 0:
                    batch = await store.save_messages(
                        conv.id, "alice", [{"role": "user", "content": f"{w}:{i}:{j}"} for j in range(3)]
                    )
                    seqs += [m.seq for m in batch]
                else:
                    seqs.append((await store.save_message(conv.id, "alice", "user", f"{w}:{i}")).seq)
            return seqs

        results = await asyncio.gather(*(writer(w) for w in range(16)))
    returned = sorted(s for seqs in results for s in seqs)
    total = 16 * (20 + 5 * 3)
    assert returned == list(range(1, total + 1)), "every acknowledged seq unique, none missing"
    stored = [r["seq"] for r in await db.fetch("SELECT seq FROM messages ORDER BY seq")]
    assert stored == list(range(1, total + 1))
    assert await db.fetchval("SELECT next_seq FROM conversations") == total + 1
    for seqs in results:  # each writer's own messages were ordered as it saved them
        assert seqs == sorted(seqs)


async def test_racing_get_or_create_same_user_makes_one_row(dsn: str, db: asyncpg.Connection) -> None:
    async with await ConversationStore.connect(dsn, min_size=10, max_size=10) as store:
        for round_ in range(5):
            cid = f"race-{round_}"
            results = await asyncio.gather(
                *(store.get_or_create_conversation(cid, "alice", title=f"t{i}") for i in range(20))
            )
            assert len({(c.id, c.user_id, c.created_at, c.title) for c in results}) == 1
    assert await db.fetchval("SELECT count(*) FROM conversations") == 5


async def test_racing_get_or_create_different_users_one_winner(dsn: str, db: asyncpg.Connection) -> None:
    async with await ConversationStore.connect(dsn, min_size=10, max_size=10) as store:
        for round_ in range(5):
            cid = f"contested-{round_}"
            outcomes = await asyncio.gather(
                *(store.get_or_create_conversation(cid, f"user-{i}") for i in range(10)),
                return_exceptions=True,
            )
            winners = [o for o in outcomes if not isinstance(o, BaseException)]
            losers = [o for o in outcomes if isinstance(o, BaseException)]
            assert len(winners) == 1, outcomes
            assert all(isinstance(e, ConversationNotFound) for e in losers), losers
            owner = await db.fetchval("SELECT user_id FROM conversations WHERE id = $1", cid)
            assert owner == winners[0].user_id


async def test_history_reads_during_writes_see_prefixes(dsn: str) -> None:
    async with await ConversationStore.connect(dsn, min_size=4, max_size=4) as store:
        conv = await store.get_or_create_conversation(None, "alice")
        stop = asyncio.Event()

        async def write() -> None:
            for i in range(200):
                await store.save_message(conv.id, "alice", "user", str(i))
            stop.set()

        async def read() -> int:
            reads = 0
            while not stop.is_set():
                history = await store.get_history(conv.id, "alice", limit=30)
                seqs = [m.seq for m in history]
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True
                reads += 1
            return reads

        _, reads = await asyncio.gather(write(), read())
        assert reads > 0


@pytest.mark.parametrize("keyed", [False, True])
@pytest.mark.guarantee(2)
async def test_concurrent_same_key_saves_store_once(dsn: str, db: asyncpg.Connection, keyed: bool) -> None:
    async with await ConversationStore.connect(dsn, min_size=8, max_size=8) as store:
        conv = await store.get_or_create_conversation(None, "alice")
        if keyed:
            results = await asyncio.gather(
                *(
                    store.save_messages(
                        conv.id,
                        "alice",
                        [
                            {"role": "user", "content": "once", "idempotency_key": "k"},
                            {"role": "user", "content": "twice", "idempotency_key": "k2"},
                        ],
                    )
                    for _ in range(12)
                )
            )
            assert len({tuple(m.seq for m in r) for r in results}) == 1
        else:
            single = await asyncio.gather(
                *(
                    store.save_message(conv.id, "alice", "user", "once", idempotency_key="k")
                    for _ in range(12)
                )
            )
            assert len({m.seq for m in single}) == 1
    expected = 2 if keyed else 1
    assert await db.fetchval("SELECT count(*) FROM messages") == expected
    assert await db.fetchval("SELECT next_seq FROM conversations") == expected + 1
