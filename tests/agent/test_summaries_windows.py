"""Summaries that keep the originals: save_summary's rules (checked in the statement), the
summarized windows of get_history and save_and_get_history (limit, budget, tool-call integrity),
pop/clear semantics, a racing writer, and round trips counted from the server log."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from convdb import ConversationNotFound, ConversationStore, InvalidInput, build_message_array
from convdb.runner import set_rls_user
from tests.agent.test_agent_round_trips import StatementLog, _count, logged

__all__ = ["logged"]  # the fixture, imported for pytest

U = "alice"


async def _conv(store: ConversationStore, n: int = 0) -> str:
    cid = (await store.get_or_create_conversation(None, U)).id
    if n:
        await store.save_messages(
            cid,
            U,
            [
                {"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i + 1}", "token_count": 10}
                for i in range(n)
            ],
        )
    return cid


def _shape(window: list[Any]) -> list[tuple[int, str | None, int | None]]:
    return [(m.seq, m.content, m.summary_through) for m in window]


async def test_a_summary_stands_in_for_what_it_covers_and_the_originals_stay(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    cid = await _conv(store, 6)
    summary = await store.save_summary(cid, U, "S1-4", through_seq=4, token_count=3, metadata={"by": "t"})
    assert (summary.through_seq, summary.role, summary.content, summary.token_count, summary.metadata) == (
        4,
        "system",
        "S1-4",
        3,
        {"by": "t"},
    )
    window = await store.get_history(cid, U, summarized=True)
    assert _shape(window) == [(4, "S1-4", 4), (5, "m5", None), (6, "m6", None)]
    assert window[0].role == "system" and window[0].is_summary and not window[1].is_summary
    # Nothing was rewritten: the plain window, the count and the table hold every original.
    assert [m.content for m in await store.get_history(cid, U)] == [f"m{i}" for i in range(1, 7)]
    assert await store.count_messages(cid, U) == 6
    assert await db.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", cid) == 6
    assert [s.through_seq for s in await store.list_summaries(cid, U)] == [4]
    # The model sees the summary as a message of its role.
    assert build_message_array(window, "next")[0] == {"role": "system", "content": "S1-4"}


async def test_the_newest_summary_wins_and_an_equal_through_seq_replaces_it(store: ConversationStore) -> None:
    cid = await _conv(store, 6)
    await store.save_summary(cid, U, "S1-2", through_seq=2)
    await store.save_summary(cid, U, "S1-5", through_seq=5)
    assert _shape(await store.get_history(cid, U, summarized=True)) == [(5, "S1-5", 5), (6, "m6", None)]
    await store.save_summary(cid, U, "S1-5 again", through_seq=5, role="assistant")
    window = await store.get_history(cid, U, summarized=True)
    assert _shape(window) == [(5, "S1-5 again", 5), (6, "m6", None)] and window[0].role == "assistant"
    assert [s.content for s in await store.list_summaries(cid, U)] == ["S1-2", "S1-5 again"]


async def test_limit_and_budget_count_the_summary_like_a_message(store: ConversationStore) -> None:
    cid = await _conv(store, 8)  # 10 tokens each
    await store.save_summary(cid, U, "S", through_seq=4, token_count=15)
    assert _shape(await store.get_history(cid, U, summarized=True, limit=5)) == [
        (4, "S", 4),
        (5, "m5", None),
        (6, "m6", None),
        (7, "m7", None),
        (8, "m8", None),
    ]
    # One row fewer: the summary no longer fits, and the messages it covers stay out.
    assert [m.seq for m in await store.get_history(cid, U, summarized=True, limit=4)] == [5, 6, 7, 8]
    assert _shape(await store.get_history(cid, U, summarized=True, max_tokens=55))[0] == (4, "S", 4)
    assert [m.seq for m in await store.get_history(cid, U, summarized=True, max_tokens=54)] == [5, 6, 7, 8]
    assert [m.seq for m in await store.get_history(cid, U, summarized=True, max_tokens=25)] == [7, 8]
    # Without summarized=True, windows are exactly as before.
    assert [m.seq for m in await store.get_history(cid, U, limit=5)] == [4, 5, 6, 7, 8]


async def test_a_summary_through_the_newest_message_is_the_whole_window(store: ConversationStore) -> None:
    cid = await _conv(store, 3)
    await store.save_summary(cid, U, "all", through_seq=3)
    assert _shape(await store.get_history(cid, U, summarized=True)) == [(3, "all", 3)]
    assert await store.get_history(cid, U, summarized=True, max_tokens=0) == []


async def test_a_summary_never_leaves_an_orphan_tool_result_after_it(store: ConversationStore) -> None:
    cid = await _conv(store)
    await store.save_messages(
        cid,
        U,
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "a"}, {"id": "b"}]},
            {"role": "tool", "content": "ra", "tool_call_id": "a"},
            {"role": "tool", "content": "rb", "tool_call_id": "b"},
            {"role": "assistant", "content": "done"},
        ],
    )
    await store.save_summary(cid, U, "S", through_seq=2)  # covers the call, not its results
    window = await store.get_history(cid, U, summarized=True)
    assert _shape(window) == [(2, "S", 2), (5, "done", None)]
    chat = build_message_array(window, None)
    assert [m["role"] for m in chat] == ["system", "assistant"]
    saved, turn = await store.save_and_get_history(
        cid, U, {"role": "user", "content": "more"}, summarized=True
    )
    assert _shape(turn) == [(2, "S", 2), (5, "done", None), (6, "more", None)] and turn[-1] == saved


async def test_save_and_get_history_summarized_matches_get_history(store: ConversationStore) -> None:
    cid = await _conv(store, 6)
    await store.save_summary(cid, U, "S", through_seq=3, token_count=5)
    for limit, budget in [(50, None), (4, None), (3, None), (50, 35), (50, 34), (2, 100)]:
        saved, window = await store.save_and_get_history(
            cid,
            U,
            {"role": "user", "content": "t", "token_count": 10},
            limit=limit,
            max_tokens=budget,
            summarized=True,
        )
        assert _shape(window) == _shape(
            await store.get_history(cid, U, limit=limit, max_tokens=budget, summarized=True)
        ), (limit, budget)
        assert window[-1] == saved


async def test_refusals_are_checked_against_what_is_stored_and_write_nothing(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    cid = await _conv(store, 4)
    await store.save_summary(cid, U, "S", through_seq=3)
    before = await db.fetch(
        "SELECT * FROM conversation_summaries UNION ALL "
        "SELECT c.id, c.next_seq, 'x', c.updated_at::text, '{}', 0, now() FROM conversations c"
    )
    with pytest.raises(InvalidInput, match=r"through_seq: is 5, beyond the newest stored message \(seq 4\)"):
        await store.save_summary(cid, U, "later", through_seq=5)
    with pytest.raises(
        InvalidInput, match=r"through_seq: is 2, older than the newest summary \(through seq 3\)"
    ):
        await store.save_summary(cid, U, "older", through_seq=2)
    after = await db.fetch(
        "SELECT * FROM conversation_summaries UNION ALL "
        "SELECT c.id, c.next_seq, 'x', c.updated_at::text, '{}', 0, now() FROM conversations c"
    )
    assert [tuple(r)[:6] for r in after] == [tuple(r)[:6] for r in before]
    empty = await _conv(store)
    with pytest.raises(InvalidInput, match="beyond the newest stored message"):
        await store.save_summary(empty, U, "nothing yet", through_seq=1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"through_seq": 0}, "through_seq"),
        ({"through_seq": True}, "through_seq"),
        ({"through_seq": "1"}, "through_seq"),
        ({"through_seq": 1, "role": "tool"}, "role"),
        ({"through_seq": 1, "token_count": -1}, "token_count"),
        ({"through_seq": 1, "metadata": {"x": float("nan")}}, "metadata"),
        ({"through_seq": 1, "content": None}, "content"),
        ({"through_seq": 1, "content": "a\x00"}, "content"),
    ],
)
async def test_bad_summary_arguments_are_refused_before_any_io(
    store: ConversationStore, db: asyncpg.Connection, kwargs: dict[str, Any], field: str
) -> None:
    cid = await _conv(store, 2)
    before = await db.fetchval("SELECT updated_at FROM conversations WHERE id = $1", cid)
    args = {"content": "S", **kwargs}
    content = args.pop("content")
    with pytest.raises(InvalidInput) as info:
        await store.save_summary(cid, U, content, **args)
    assert info.value.field == field
    assert await db.fetchval("SELECT count(*) FROM conversation_summaries") == 0
    assert await db.fetchval("SELECT updated_at FROM conversations WHERE id = $1", cid) == before
    with pytest.raises(InvalidInput, match="summarized"):
        await store.get_history(cid, U, summarized=1)  # type: ignore[arg-type]


async def test_pop_removes_the_summaries_that_stand_for_the_popped_message(store: ConversationStore) -> None:
    cid = await _conv(store, 5)
    await store.save_summary(cid, U, "S3", through_seq=3)
    await store.save_summary(cid, U, "S5", through_seq=5)
    popped = await store.pop_last_message(cid, U)
    assert popped is not None and popped.seq == 5
    # S5 carried m5's content: gone with it; S3 still stands for m1..m3.
    assert [s.through_seq for s in await store.list_summaries(cid, U)] == [3]
    assert _shape(await store.get_history(cid, U, summarized=True)) == [(3, "S3", 3), (4, "m4", None)]


async def test_clear_removes_every_summary_and_delete_cascades(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    cid = await _conv(store, 3)
    await store.save_summary(cid, U, "S", through_seq=2)
    assert await store.clear_conversation(cid, U) == 3
    assert await store.list_summaries(cid, U) == []
    assert await store.get_history(cid, U, summarized=True) == []
    other = await _conv(store, 2)
    await store.save_summary(other, U, "S", through_seq=2)
    await store.delete_conversation(other, U)
    assert await db.fetchval("SELECT count(*) FROM conversation_summaries") == 0


async def test_foreign_and_unknown_ids_are_indistinguishable(store: ConversationStore) -> None:
    cid = await _conv(store, 2)
    await store.save_summary(cid, U, "S", through_seq=1)
    for call in (
        lambda c, u: store.save_summary(c, u, "x", through_seq=1),
        lambda c, u: store.list_summaries(c, u),
        lambda c, u: store.get_history(c, u, summarized=True),
    ):
        with pytest.raises(ConversationNotFound) as foreign:
            await call(cid, "mallory")
        with pytest.raises(ConversationNotFound) as unknown:
            await call("no-such", U)
        assert str(foreign.value) == str(unknown.value)
    assert [s.content for s in await store.list_summaries(cid, U)] == ["S"]


async def test_two_racing_summaries_never_store_an_older_one_after_a_newer(
    store: ConversationStore, race_row_lock: Callable[..., Awaitable[Any]]
) -> None:
    """The newer summary commits while save_summary waits for the row lock; its snapshot saw no
    summary, so only the fresh-view re-run under the lock can see the newer one and refuse."""
    cid = await _conv(store, 5)
    with pytest.raises(InvalidInput, match="older than the newest summary"):
        await race_row_lock(
            store.save_summary(cid, U, "older", through_seq=2),
            ("UPDATE conversations SET updated_at = now() WHERE id = $1", cid),
            (
                "INSERT INTO conversation_summaries (conversation_id, through_seq, content) VALUES ($1, 4, 'newer')",
                cid,
            ),
        )
    assert [s.content for s in await store.list_summaries(cid, U)] == ["newer"]


async def test_a_summary_racing_new_messages_covers_what_it_says(
    store: ConversationStore, race_row_lock: Callable[..., Awaitable[Any]]
) -> None:
    cid = await _conv(store, 3)
    summary = await race_row_lock(
        store.save_summary(cid, U, "S", through_seq=3),
        ("UPDATE conversations SET next_seq = next_seq + 1, updated_at = now() WHERE id = $1", cid),
        ("INSERT INTO messages (conversation_id, seq, role, content) VALUES ($1, 4, 'user', 'm4')", cid),
    )
    assert summary.through_seq == 3
    assert _shape(await store.get_history(cid, U, summarized=True)) == [(3, "S", 3), (4, "m4", None)]


@pytest.mark.engine_specific("postgresql", "counts every statement of the database in one node's server log")
async def test_summarized_reads_and_turns_take_one_round_trip(
    logged: tuple[ConversationStore, StatementLog],
) -> None:
    """Counted from the single node's log, every statement of the test's database. On Citus the
    coordinator's log also holds the steps it runs itself (save_summary's and save_and_get_history's
    CTEs are pulled to the coordinator): the twin leaves those out."""
    await _summarized_round_trips(*logged)


@pytest.mark.engine_specific("citus", "counts the client's statements in the coordinator's log")
async def test_summarized_reads_and_turns_take_one_round_trip_through_the_coordinator(
    logged: tuple[ConversationStore, StatementLog],
) -> None:
    """The Citus twin: one statement from the client to the coordinator per call, as on one node."""
    store, log = logged
    await log.count_client_statements_only(store)
    await _summarized_round_trips(store, log)


async def _summarized_round_trips(store: ConversationStore, log: StatementLog) -> None:
    cid = await _conv(store, 20)
    await store.save_summary(cid, U, "S", through_seq=10)
    turn = {"role": "user", "content": "turn"}
    single: dict[str, Callable[[], Awaitable[Any]]] = {
        "get_history(summarized)": lambda: store.get_history(cid, U, summarized=True),
        "get_history(summarized, max_tokens)": lambda: store.get_history(
            cid, U, summarized=True, max_tokens=40
        ),
        "save_and_get_history(summarized)": lambda: store.save_and_get_history(cid, U, turn, summarized=True),
        "save_summary": lambda: store.save_summary(cid, U, "S2", through_seq=15),
        "list_summaries": lambda: store.list_summaries(cid, U),
    }
    counts = {name: len(await _count(log, op)) for name, op in single.items()}
    assert counts == dict.fromkeys(single, 1)


async def test_raw_sql_under_the_app_role_cannot_reach_another_users_summaries(
    dsn: str, db: asyncpg.Connection
) -> None:
    from tests.support.surface import enable_rls

    app_dsn = await enable_rls(dsn)
    async with await ConversationStore.connect(dsn) as owner:
        cid = await _conv(owner, 2)
        await owner.save_summary(cid, U, "secret summary", through_seq=2)
        await owner.get_or_create_conversation("mallory-own", "mallory")
    conn = await asyncpg.connect(app_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM conversation_summaries") == 0
        async with conn.transaction():
            await conn.execute(set_rls_user("mallory"))
            assert await conn.fetchval("SELECT count(*) FROM conversation_summaries") == 0
            assert await conn.execute("DELETE FROM conversation_summaries") == "DELETE 0"
        forge = "INSERT INTO conversation_summaries (conversation_id, through_seq, content) VALUES ($1, 3, 'forged')"
        async with conn.transaction():
            await conn.execute(set_rls_user("mallory"))
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # the policy's WITH CHECK
                await conn.execute(forge, cid)
    finally:
        await conn.close()
    assert await db.fetchval("SELECT array_agg(content) FROM conversation_summaries") == ["secret summary"]
