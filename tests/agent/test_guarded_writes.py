"""Guarded writes (expected_last_seq=) on save_message, save_messages and save_and_get_history:
written only while the newest stored message is the expected seq; otherwise ConcurrentUpdate with
the actual seq and nothing written; "newest stored" after pop and clear; a writer racing the
guard; keyed retries; bad input; round trips counted from the server log."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from convdb import ConcurrentUpdate, ConvDBError, ConversationNotFound, ConversationStore, InvalidInput
from tests.agent.test_agent_round_trips import StatementLog, _count, logged

__all__ = ["logged"]  # the fixture, imported for pytest

U = "alice"
MSG = {"role": "user", "content": "x"}

Save = Callable[[ConversationStore, str, int | None], Awaitable[Any]]
SAVES: dict[str, Save] = {
    "save_message": lambda s, c, e: s.save_message(c, U, "user", "x", expected_last_seq=e),
    "save_messages": lambda s, c, e: s.save_messages(c, U, [MSG, MSG], expected_last_seq=e),
    "save_and_get_history": lambda s, c, e: s.save_and_get_history(c, U, MSG, expected_last_seq=e),
}


async def _state(db: asyncpg.Connection, cid: str) -> tuple[Any, ...]:
    row = await db.fetchrow(
        "SELECT next_seq, updated_at, (SELECT count(*) FROM messages WHERE conversation_id = $1)"
        " FROM conversations WHERE id = $1",
        cid,
    )
    assert row is not None
    return tuple(row)


@pytest.mark.parametrize("name", sorted(SAVES))
async def test_the_guard_writes_on_a_match_and_refuses_a_mismatch_writing_nothing(
    store: ConversationStore, db: asyncpg.Connection, name: str
) -> None:
    save = SAVES[name]
    cid = (await store.get_or_create_conversation(None, U)).id
    await save(store, cid, 0)  # empty conversation: 0
    last = (await store.get_history(cid, U))[-1].seq
    await save(store, cid, last)
    newest = (await store.get_history(cid, U))[-1].seq
    assert newest > last
    before = await _state(db, cid)
    for stale in (last, 0, newest + 1):
        with pytest.raises(ConcurrentUpdate) as info:
            await save(store, cid, stale)
        assert (info.value.expected_last_seq, info.value.last_seq) == (stale, newest)
        assert isinstance(info.value, ConvDBError)
    assert await _state(db, cid) == before


@pytest.mark.parametrize("name", sorted(SAVES))
async def test_newest_stored_means_the_messages_that_exist_after_pop_and_clear(
    store: ConversationStore, name: str
) -> None:
    save = SAVES[name]
    cid = (await store.get_or_create_conversation(None, U)).id
    await store.save_messages(cid, U, [MSG, MSG, MSG])
    await store.pop_last_message(cid, U)  # seq 3 is gone (and never reused)
    with pytest.raises(ConcurrentUpdate) as info:
        await save(store, cid, 3)
    assert info.value.last_seq == 2
    await save(store, cid, 2)
    await store.clear_conversation(cid, U)
    with pytest.raises(ConcurrentUpdate) as info:
        await save(store, cid, 2)
    assert info.value.last_seq == 0
    await save(store, cid, 0)
    assert (await store.get_history(cid, U))[0].seq >= 4


@pytest.mark.parametrize("name", sorted(SAVES))
async def test_a_writer_committing_while_the_guard_waits_for_the_lock_is_seen(
    store: ConversationStore, db: asyncpg.Connection, race_row_lock: Callable[..., Awaitable[Any]], name: str
) -> None:
    """The other transaction appends seq 2 and commits while our statement waits for the row lock:
    the statement's snapshot still says 1, so only the fresh-view check (and the re-run under the
    lock) can refuse it."""
    cid = (await store.get_or_create_conversation(None, U)).id
    await store.save_message(cid, U, "user", "one")
    with pytest.raises(ConcurrentUpdate) as info:
        await race_row_lock(
            SAVES[name](store, cid, 1),
            ("UPDATE conversations SET next_seq = next_seq + 1, updated_at = now() WHERE id = $1", cid),
            (
                "INSERT INTO messages (conversation_id, seq, role, content) VALUES ($1, 2, 'assistant', 'two')",
                cid,
            ),
        )
    assert info.value.last_seq == 2
    assert [m.content for m in await store.get_history(cid, U)] == ["one", "two"]


async def test_concurrent_guarded_writers_with_the_same_expectation_one_wins(
    store: ConversationStore,
) -> None:
    cid = (await store.get_or_create_conversation(None, U)).id
    await store.save_message(cid, U, "user", "start")
    writers = 6
    results = await asyncio.gather(
        *(store.save_message(cid, U, "assistant", f"w{i}", expected_last_seq=1) for i in range(writers)),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, ConcurrentUpdate)]
    assert len(won) == 1 and len(lost) == writers - 1
    assert {e.last_seq for e in lost} == {2}
    assert [m.seq for m in await store.get_history(cid, U)] == [1, 2]


@pytest.mark.parametrize("name", ["save_message", "save_and_get_history"])
async def test_a_retried_keyed_guarded_save_returns_the_stored_message(
    store: ConversationStore, db: asyncpg.Connection, name: str
) -> None:
    cid = (await store.get_or_create_conversation(None, U)).id
    await store.save_message(cid, U, "user", "one")

    async def attempt() -> Any:
        if name == "save_message":
            return await store.save_message(cid, U, "user", "k", idempotency_key="k1", expected_last_seq=1)
        saved, _ = await store.save_and_get_history(
            cid, U, {"role": "user", "content": "k", "idempotency_key": "k1"}, expected_last_seq=1
        )
        return saved

    first, again = await attempt(), await attempt()  # the retry's guard no longer matches
    assert first == again and first.seq == 2
    assert await db.fetchval("SELECT count(*) FROM messages") == 2


async def test_a_keyed_guarded_batch_replay_writes_nothing(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    cid = (await store.get_or_create_conversation(None, U)).id
    batch = [
        {"role": "user", "content": "a", "idempotency_key": "a"},
        {"role": "assistant", "content": "b", "idempotency_key": "b"},
    ]
    first = await store.save_messages(cid, U, batch, expected_last_seq=0)
    assert await store.save_messages(cid, U, batch, expected_last_seq=0) == first
    assert await db.fetchval("SELECT count(*) FROM messages") == 2


@pytest.mark.parametrize("bad", [-1, True, 1.0, "1", 2**63])
@pytest.mark.parametrize("name", sorted(SAVES))
async def test_bad_expected_last_seq_is_refused_before_any_io(
    store: ConversationStore, db: asyncpg.Connection, name: str, bad: Any
) -> None:
    cid = (await store.get_or_create_conversation(None, U)).id
    before = await _state(db, cid)
    with pytest.raises(InvalidInput) as info:
        await SAVES[name](store, cid, bad)
    assert info.value.field == "expected_last_seq"
    assert await _state(db, cid) == before


@pytest.mark.parametrize("name", sorted(SAVES))
async def test_a_guarded_write_to_a_foreign_conversation_is_not_found(
    store: ConversationStore, name: str
) -> None:
    cid = (await store.get_or_create_conversation(None, "bob")).id
    with pytest.raises(ConversationNotFound) as foreign:
        await SAVES[name](store, cid, 0)
    with pytest.raises(ConversationNotFound) as unknown:
        await SAVES[name](store, "no-such", 0)
    assert str(foreign.value) == str(unknown.value)


@pytest.mark.engine_specific("postgresql", "counts every statement of the database in one node's server log")
async def test_guarded_writes_cost_no_extra_round_trip(
    logged: tuple[ConversationStore, StatementLog],
) -> None:
    """Counted from the single node's log, every statement of the test's database. On Citus the
    coordinator's log also holds the steps it runs itself (save_message's CTE is pulled to the
    coordinator): the twin below leaves those out."""
    await _guarded_round_trips(*logged)


@pytest.mark.engine_specific("citus", "counts the client's statements in the coordinator's log")
async def test_guarded_writes_cost_no_extra_round_trip_through_the_coordinator(
    logged: tuple[ConversationStore, StatementLog],
) -> None:
    """The Citus twin: what the client sends the coordinator is the same count as on one node; the
    steps the coordinator runs itself are no round trips of the client's (the routing of the
    statements is checked by tests/core/test_citus.py)."""
    store, log = logged
    await log.count_client_statements_only(store)
    await _guarded_round_trips(store, log)


async def _guarded_round_trips(store: ConversationStore, log: StatementLog) -> None:
    cid = (await store.get_or_create_conversation(None, U)).id
    await store.save_message(cid, U, "user", "start")

    async def last() -> int:
        return (await store.get_history(cid, U, limit=1))[-1].seq

    async def guarded_message() -> None:
        await store.save_message(cid, U, "user", "g", expected_last_seq=await last())

    async def guarded_turn() -> None:
        await store.save_and_get_history(cid, U, MSG, expected_last_seq=await last())

    # Each op reads the newest seq first (one round trip) and then writes guarded (one round trip).
    assert len(await _count(log, guarded_message)) == 2
    assert len(await _count(log, guarded_turn)) == 2
    batch = await _count(log, lambda: _guarded_batch(store, cid, last))
    # get_history, then BEGIN, the guarded reservation, the pipelined inserts, COMMIT (as unguarded).
    unguarded = await _count(log, lambda: store.save_messages(cid, U, [MSG, MSG]))
    assert len(batch) == 1 + len(unguarded)


async def _guarded_batch(store: ConversationStore, cid: str, last: Callable[[], Awaitable[int]]) -> None:
    await store.save_messages(cid, U, [MSG, MSG], expected_last_seq=await last())
