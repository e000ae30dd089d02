"""Branches: fork_conversation copies a history prefix into a new conversation of the same user, in
one statement; the fork is an ordinary conversation afterwards, independent of its source."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import asyncpg
import pytest

from convdb import ConversationExists, ConversationNotFound, ConversationStore, InvalidInput, Usage


async def seeded(store: ConversationStore, cid: str = "src", uid: str = "alice", n: int = 5) -> None:
    await store.get_or_create_conversation(cid, uid, title="source", metadata={"m": 1})
    await store.save_messages(
        cid,
        uid,
        [
            {
                "role": "user" if i % 2 == 0 else "assistant",
                "content": f"m{i + 1}",
                "idempotency_key": f"k{i + 1}",
                "token_count": i + 1,
                "metadata": {"i": i + 1},
            }
            for i in range(n)
        ],
    )


async def test_fork_copies_the_prefix_and_continues_at_at_seq_plus_one(store: ConversationStore) -> None:
    await seeded(store)
    source = {m.seq: m for m in await store.get_history("src", "alice")}
    fork = await store.fork_conversation("src", "alice", at_seq=3, new_conversation_id="f1")
    assert (fork.id, fork.user_id, fork.parent_id, fork.forked_at_seq, fork.root_id) == (
        "f1",
        "alice",
        "src",
        3,
        "src",
    )
    assert (fork.title, fork.metadata) == ("source", {"m": 1})  # the source's by default
    history = await store.get_history("f1", "alice")
    assert [m.seq for m in history] == [1, 2, 3]
    for m in history:  # every column copied exactly, created_at included
        s = source[m.seq]
        assert (m.role, m.content, m.metadata, m.token_count, m.idempotency_key, m.created_at) == (
            s.role,
            s.content,
            s.metadata,
            s.token_count,
            s.idempotency_key,
            s.created_at,
        )
        assert m.conversation_id == "f1"
    saved = await store.save_message("f1", "alice", "user", "edited m4")
    assert saved.seq == 4
    assert (await store.get_conversation("f1", "alice")).parent_id == "src"
    # The source is unchanged.
    assert [m.content for m in await store.get_history("src", "alice")] == ["m1", "m2", "m3", "m4", "m5"]


async def test_fork_copies_every_message_column_usage_included_and_the_prefix_summaries(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    """Every column of the copied rows, read from the tables (so a column added later and not
    copied fails here): usage (issue 12) included; the summaries within the prefix come along,
    so the fork's summarized window is the source's, and one past the fork point does not."""
    await store.get_or_create_conversation("src", "alice")
    for i in range(1, 7):
        usage = (
            Usage(
                model="m-1",
                input_tokens=i,
                output_tokens=2 * i,
                cached_tokens=1,
                reasoning_tokens=0,
                cost=Decimal("0.0125") * i,
                latency_ms=10 * i,
            )
            if i % 2 == 0
            else None
        )
        await store.save_message("src", "alice", "assistant" if usage else "user", f"m{i}", usage=usage)
    await store.save_summary("src", "alice", "up to 2", through_seq=2)
    await store.save_summary("src", "alice", "up to 4", through_seq=4)
    await store.save_summary("src", "alice", "up to 5", through_seq=5)
    await store.fork_conversation("src", "alice", at_seq=4, new_conversation_id="f")

    rows = "SELECT seq, to_jsonb(t) - 'conversation_id' AS r FROM {} t WHERE conversation_id = $1 ORDER BY 1"
    for table, key in (("messages", "seq"), ("conversation_summaries", "through_seq")):
        sql = rows.replace("seq,", f"{key},").format(table)
        source = [r["r"] for r in await db.fetch(sql, "src") if r[key] <= 4]
        assert source and [r["r"] for r in await db.fetch(sql, "f")] == source, table
    copied = await store.get_history("f", "alice")
    assert [m.usage for m in copied] == [
        m.usage for m in await store.get_history("src", "alice") if m.seq <= 4
    ]
    assert copied[3].usage == Usage("m-1", 4, 8, 1, 0, Decimal("0.0500"), 40)
    window = await store.get_history("f", "alice", limit=10, summarized=True)
    assert [(m.seq, m.content, m.summary_through) for m in window] == [(4, "up to 4", 4)]
    assert [
        (m.seq, m.content) for m in await store.get_history("src", "alice", limit=10, summarized=True)
    ] == [
        (5, "up to 5"),
        (6, "m6"),
    ]
    # The fork's own summaries are its own: a newer one on the fork leaves the source alone.
    await store.save_message("f", "alice", "user", "f5")
    await store.save_summary("f", "alice", "fork up to 5", through_seq=5)
    assert (await store.get_history("src", "alice", limit=10, summarized=True))[0].content == "up to 5"


async def test_fork_title_metadata_and_generated_id(store: ConversationStore) -> None:
    await seeded(store)
    fork = await store.fork_conversation("src", "alice", at_seq=0, title="edit", metadata={"b": [1]})
    assert fork.id != "src" and len(fork.id) > 0
    assert (fork.title, fork.metadata, fork.forked_at_seq) == ("edit", {"b": [1]}, 0)
    assert await store.get_history(fork.id, "alice") == []
    assert (await store.save_message(fork.id, "alice", "user", "first")).seq == 1


async def test_a_copied_idempotency_key_replays_to_the_copied_message(store: ConversationStore) -> None:
    await seeded(store)
    await store.fork_conversation("src", "alice", at_seq=2, new_conversation_id="f")
    replay = await store.save_message("f", "alice", "user", "m1", idempotency_key="k1")
    assert (replay.seq, replay.content) == (1, "m1")
    assert await store.count_messages("f", "alice") == 2
    # A key of the source's suffix (not copied) is a new message on the fork.
    new = await store.save_message("f", "alice", "assistant", "other", idempotency_key="k4")
    assert new.seq == 3
    turn, _ = await store.save_and_get_history(
        "f", "alice", {"role": "user", "content": "m1", "idempotency_key": "k1"}
    )
    assert turn.seq == 1


@pytest.mark.parametrize("at_seq", [-1, True, 1.5, "2", None, 2**63 - 1])
async def test_bad_at_seq_is_refused_before_io(store: ConversationStore, at_seq: object) -> None:
    with pytest.raises(InvalidInput, match="at_seq"):
        await store.fork_conversation("never-read", "alice", at_seq=at_seq)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"new_conversation_id": ""}, "new_conversation_id"),
        ({"new_conversation_id": "x" * 256}, "new_conversation_id"),
        ({"title": "a\x00b"}, "title"),
        ({"metadata": ["not", "a", "dict"]}, "metadata"),
        ({"metadata": {"x": float("nan")}}, "metadata"),
    ],
)
async def test_bad_fork_arguments_are_refused_before_io(
    store: ConversationStore, db: asyncpg.Connection, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidInput, match=field):
        await store.fork_conversation("nobody", "alice", at_seq=0, **kwargs)  # type: ignore[arg-type]
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0


async def test_at_seq_past_the_newest_is_refused_and_writes_nothing(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    await seeded(store, n=3)
    await store.pop_last_message("src", "alice")  # newest allocated seq stays 3
    fork = await store.fork_conversation("src", "alice", at_seq=3, new_conversation_id="ok")
    assert [m.seq for m in await store.get_history(fork.id, "alice")] == [1, 2]
    assert (await store.save_message("ok", "alice", "user", "x")).seq == 4
    with pytest.raises(InvalidInput, match="at_seq: is 4, past the source's newest seq 3"):
        await store.fork_conversation("src", "alice", at_seq=4, new_conversation_id="no")
    assert await db.fetchval("SELECT count(*) FROM conversations WHERE id = 'no'") == 0


async def test_taken_ids_and_foreign_sources(store: ConversationStore, db: asyncpg.Connection) -> None:
    await seeded(store)
    await store.get_or_create_conversation("bobs", "bob")
    await store.save_message("bobs", "bob", "user", "bob's secret")
    with pytest.raises(ConversationExists):
        await store.fork_conversation("src", "alice", at_seq=1, new_conversation_id="src")
    with pytest.raises(ConversationNotFound):  # another user's id, as import_conversation does
        await store.fork_conversation("src", "alice", at_seq=1, new_conversation_id="bobs")
    with pytest.raises(ConversationNotFound):  # another user's source, into a new id
        await store.fork_conversation("bobs", "alice", at_seq=1, new_conversation_id="stolen")
    assert await db.fetchval("SELECT count(*) FROM conversations WHERE id = 'stolen'") == 0
    assert await db.fetchval("SELECT count(*) FROM messages WHERE conversation_id = 'bobs'") == 1


async def test_the_fork_never_changes_with_its_source(store: ConversationStore) -> None:
    await seeded(store)
    fork = await store.fork_conversation("src", "alice", at_seq=4)
    expected = [m.content for m in await store.get_history(fork.id, "alice")]
    await store.save_message("src", "alice", "user", "later")
    await store.pop_last_message("src", "alice")
    await store.pop_last_message("src", "alice")
    assert await store.clear_conversation("src", "alice") == 4
    assert [m.content for m in await store.get_history(fork.id, "alice")] == expected
    assert await store.delete_conversation("src", "alice") == 0
    assert [m.content for m in await store.get_history(fork.id, "alice")] == expected
    assert (await store.get_conversation(fork.id, "alice")).parent_id == "src"  # names a deleted conversation


async def test_forks_of_forks_keep_the_root_and_listing_finds_them(store: ConversationStore) -> None:
    await seeded(store)
    a = await store.fork_conversation("src", "alice", at_seq=2, new_conversation_id="a")
    b = await store.fork_conversation("src", "alice", at_seq=4, new_conversation_id="b")
    await store.save_message("a", "alice", "user", "a3")
    aa = await store.fork_conversation("a", "alice", at_seq=3, new_conversation_id="aa")
    assert (aa.parent_id, aa.root_id, aa.root, a.root, b.root_id) == ("a", "src", "src", "src", "src")
    assert [m.content for m in await store.get_history("aa", "alice")] == ["m1", "m2", "a3"]
    source = await store.get_conversation("src", "alice")
    assert (source.parent_id, source.root_id, source.root) == (None, None, "src")
    assert {c.id for c in (await store.list_conversations("alice", parent_id="src")).items} == {"a", "b"}
    assert {c.id for c in (await store.list_conversations("alice", parent_id="a")).items} == {"aa"}
    assert {c.id for c in (await store.list_conversations("alice", root_id="src")).items} == {"a", "b", "aa"}
    assert (await store.list_conversations("bob", root_id="src")).items == []
    listed = {c.id: c for c in (await store.list_conversations("alice", limit=10)).items}
    assert (listed["aa"].parent_id, listed["aa"].forked_at_seq, listed["aa"].root_id) == ("a", 3, "src")
    page = await store.list_conversations("alice", root_id="src", limit=2)
    assert page.next_cursor is not None
    with pytest.raises(InvalidInput, match="cursor"):  # a cursor belongs to its filters
        await store.list_conversations("alice", parent_id="src", cursor=page.next_cursor)
    rest = await store.list_conversations("alice", root_id="src", limit=2, cursor=page.next_cursor)
    assert len(page.items) + len(rest.items) == 3
    with pytest.raises(InvalidInput, match="parent_id"):
        await store.list_conversations("alice", parent_id="")


async def test_deep_fork_chain_and_delete_user_data_erases_every_branch(store: ConversationStore) -> None:
    await seeded(store, n=2)
    parent = "src"
    for depth in range(1, 21):
        fork = await store.fork_conversation(
            parent, "alice", at_seq=depth + 1, new_conversation_id=f"d{depth}"
        )
        await store.save_message(fork.id, "alice", "user", f"depth {depth}")
        parent = fork.id
    last = await store.get_history("d20", "alice", limit=100)
    assert [m.content for m in last] == ["m1", "m2"] + [f"depth {d}" for d in range(1, 21)]
    assert (await store.get_conversation("d20", "alice")).root_id == "src"
    erased = await store.delete_user_data("alice")
    assert (erased.conversations, erased.messages) == (21, 2 + sum(2 + d for d in range(1, 21)))


async def test_fork_under_concurrent_appends_copies_a_consistent_prefix(store: ConversationStore) -> None:
    await seeded(store, n=1)

    async def writer() -> None:
        for i in range(30):
            await store.save_message("src", "alice", "user", f"w{i}")

    async def forker() -> list[int]:
        points = []
        for i in range(10):
            newest = await store.count_messages("src", "alice")
            fork = await store.fork_conversation("src", "alice", at_seq=newest, new_conversation_id=f"c{i}")
            got = [m.seq for m in await store.get_history(fork.id, "alice", limit=1000)]
            assert got == list(range(1, newest + 1)), (newest, got)  # gap-free, exactly the prefix
            points.append(newest)
        return points

    _, points = await asyncio.gather(writer(), forker())
    assert len(points) == 10
