"""Feedback on messages: set/replace/clear by the owner in one statement, read back, aggregated per
conversation and per user over a time range, never part of content, carried by export/import and
copied (as inherited, not counted twice) by forks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from convdb import ConversationNotFound, ConversationStore, InvalidInput
from convdb.errors import MessageNotFound


async def chat(store: ConversationStore, cid: str = "c", uid: str = "alice", n: int = 4) -> None:
    await store.get_or_create_conversation(cid, uid)
    await store.save_messages(
        cid, uid, [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i + 1}"} for i in range(n)]
    )


async def test_set_replace_clear_and_read(store: ConversationStore, db: asyncpg.Connection) -> None:
    await chat(store)
    before = await store.get_conversation("c", "alice")
    first = await store.set_feedback("c", "alice", 2, rating=1, comment="great", tags=["helpful", "fast"])
    assert (first.seq, first.rating, first.comment, first.tags, first.inherited) == (
        2,
        1,
        "great",
        ("helpful", "fast"),
        False,
    )
    again = await store.set_feedback("c", "alice", 2, rating=-1)  # replaces: comment and tags cleared
    assert (again.rating, again.comment, again.tags, again.created_at) == (-1, None, (), first.created_at)
    assert again.updated_at >= first.updated_at
    await store.set_feedback("c", "alice", 4, rating=0, tags=["meh"])
    assert [(f.seq, f.rating) for f in await store.get_feedback("c", "alice")] == [(2, -1), (4, 0)]
    assert await store.clear_feedback("c", "alice", 2) is True
    assert await store.clear_feedback("c", "alice", 2) is False
    assert [f.seq for f in await store.get_feedback("c", "alice")] == [4]
    # Not content: windows unchanged, the conversation row untouched.
    assert [m.content for m in await store.get_history("c", "alice")] == ["m1", "m2", "m3", "m4"]
    after = await store.get_conversation("c", "alice")
    assert after.updated_at == before.updated_at
    assert await db.fetchval("SELECT next_seq FROM conversations WHERE id = 'c'") == 5


async def test_unknown_message_foreign_and_unknown_conversations(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    await chat(store)
    await chat(store, "bobs", "bob")
    with pytest.raises(MessageNotFound, match="seq 9"):
        await store.set_feedback("c", "alice", 9, rating=1)
    for call in (
        lambda: store.set_feedback("bobs", "alice", 1, rating=-1),
        lambda: store.clear_feedback("bobs", "alice", 1),
        lambda: store.get_feedback("bobs", "alice"),
        lambda: store.feedback_summary("alice", conversation_id="bobs"),
        lambda: store.set_feedback("nope", "alice", 1, rating=-1),
    ):
        with pytest.raises(ConversationNotFound):
            await call()
    assert await db.fetchval("SELECT count(*) FROM message_feedback") == 0
    # A popped or cleared message takes its feedback with it (ON DELETE CASCADE).
    await store.set_feedback("c", "alice", 4, rating=1)
    await store.set_feedback("c", "alice", 1, rating=1)
    await store.pop_last_message("c", "alice")
    assert [f.seq for f in await store.get_feedback("c", "alice")] == [1]
    with pytest.raises(MessageNotFound):
        await store.set_feedback("c", "alice", 4, rating=1)
    await store.clear_conversation("c", "alice")
    assert await store.get_feedback("c", "alice") == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rating": 2}, "rating"),
        ({"rating": -2}, "rating"),
        ({"rating": True}, "rating"),
        ({"rating": 1.0}, "rating"),
        ({"rating": 1, "comment": "x" * 4001}, "comment"),
        ({"rating": 1, "comment": 5}, "comment"),
        ({"rating": 1, "comment": "\x00"}, "comment"),
        ({"rating": 1, "tags": "abc"}, "tags"),
        ({"rating": 1, "tags": [""]}, "tags"),
        ({"rating": 1, "tags": ["a", "a"]}, "tags"),
        ({"rating": 1, "tags": ["x" * 65]}, "tags"),
        ({"rating": 1, "tags": [str(i) for i in range(17)]}, "tags"),
        ({"rating": 1, "tags": [1]}, "tags"),
        ({"rating": 1, "seq": 0}, "seq"),
        ({"rating": 1, "seq": "1"}, "seq"),
    ],
)
async def test_bad_feedback_is_refused_before_io(
    store: ConversationStore, db: asyncpg.Connection, kwargs: dict[str, object], field: str
) -> None:
    seq = kwargs.pop("seq", 1)
    with pytest.raises(InvalidInput, match=field):
        await store.set_feedback("never-read", "alice", seq, **kwargs)  # type: ignore[arg-type]
    assert await db.fetchval("SELECT count(*) FROM message_feedback") == 0


async def test_bad_summary_and_clear_arguments(store: ConversationStore) -> None:
    with pytest.raises(InvalidInput, match="after"):
        await store.feedback_summary("alice", after=datetime(2020, 1, 1))
    with pytest.raises(InvalidInput, match="user_id"):
        await store.feedback_summary("")
    with pytest.raises(InvalidInput, match="seq"):
        await store.clear_feedback("c", "alice", -1)


async def test_aggregates_per_conversation_and_per_user_over_time(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    await chat(store, "a")
    await chat(store, "b")
    await chat(store, "bobs", "bob")
    await store.set_feedback("a", "alice", 1, rating=1, tags=["helpful"])
    await store.set_feedback("a", "alice", 2, rating=1, tags=["helpful", "fast"])
    await store.set_feedback("a", "alice", 3, rating=-1, tags=["wrong"])
    await store.set_feedback("b", "alice", 2, rating=0)
    await store.set_feedback("bobs", "bob", 1, rating=-1, tags=["helpful"])
    conv = await store.feedback_summary("alice", conversation_id="a")
    assert (conv.count, conv.positive, conv.neutral, conv.negative) == (3, 2, 0, 1)
    assert conv.mean == pytest.approx(1 / 3) and conv.tags == {"helpful": 2, "fast": 1, "wrong": 1}
    user = await store.feedback_summary("alice")
    assert (user.count, user.positive, user.neutral, user.negative, user.tags["helpful"]) == (4, 2, 1, 1, 2)
    empty = await store.feedback_summary("nobody")
    assert (empty.count, empty.mean, empty.tags) == (0, None, {})
    assert (
        await store.feedback_summary("alice", conversation_id="b", after=datetime.now(UTC) + timedelta(1))
    ).count == 0
    # The time range is on when the feedback was set.
    await db.execute(
        "UPDATE message_feedback SET updated_at = now() - interval '10 days' "
        "WHERE conversation_id = 'a' AND seq = 3"
    )
    week = await store.feedback_summary("alice", after=datetime.now(UTC) - timedelta(days=7))
    assert (week.count, week.negative) == (3, 0)
    old = await store.feedback_summary("alice", before=datetime.now(UTC) - timedelta(days=7))
    assert (old.count, old.negative, old.tags) == (1, 1, {"wrong": 1})


async def test_forks_show_inherited_feedback_but_count_it_once(store: ConversationStore) -> None:
    await chat(store)
    await store.set_feedback("c", "alice", 2, rating=1, comment="good")
    await store.set_feedback("c", "alice", 4, rating=-1)
    fork = await store.fork_conversation("c", "alice", at_seq=3, new_conversation_id="f")
    copied = await store.get_feedback(fork.id, "alice")
    assert [(f.seq, f.rating, f.comment, f.inherited) for f in copied] == [(2, 1, "good", True)]
    assert (await store.feedback_summary("alice")).count == 2
    assert (await store.feedback_summary("alice", conversation_id="f")).count == 0
    mine = await store.set_feedback("f", "alice", 2, rating=-1)  # the fork's own rating now
    assert mine.inherited is False
    assert (await store.feedback_summary("alice")).count == 3
    assert [f.rating for f in await store.get_feedback("c", "alice")] == [1, -1]  # source unchanged


async def test_export_carries_feedback_and_import_restores_it(store: ConversationStore) -> None:
    await chat(store)
    await store.set_feedback("c", "alice", 1, rating=1, comment="ünïcode 🎉", tags=["a", "b"])
    await store.set_feedback("c", "alice", 3, rating=0)
    records = [r async for r in store.export_conversation("c", "alice", chunk_size=2)]
    assert [r["type"] for r in records] == ["conversation"] + ["message"] * 4 + ["feedback"] * 2
    assert all("rating" not in r for r in records if r["type"] == "message")  # not content
    copy = await store.import_conversation("bob", records, conversation_id="copy")
    assert await store.get_feedback(copy.id, "bob") == [
        type(f)(**{**{s: getattr(f, s) for s in f.__slots__}, "conversation_id": "copy"})
        for f in await store.get_feedback("c", "alice")
    ]
    # Old exports (no feedback records) import as before.
    plain = await store.import_conversation("bob", records[:5], conversation_id="plain")
    assert await store.get_feedback(plain.id, "bob") == []
    assert [m.content for m in await store.get_history("plain", "bob")] == ["m1", "m2", "m3", "m4"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda r: r.insert(
                2,
                {
                    "type": "feedback",
                    "seq": 3,
                    "rating": 1,
                    "created_at": r[1]["created_at"],
                    "updated_at": r[1]["created_at"],
                },
            ),
            "seq",
        ),
        (lambda r: r.__setitem__(-1, {**r[-1], "rating": 5}), "rating"),
        (lambda r: r.append({**r[-1], "seq": 1}), "seq"),
        (lambda r: r.__setitem__(-1, {**r[-1], "extra": 1}), "extra"),
        (lambda r: r.insert(6, r.pop(4)), "type"),  # a message after a feedback record
    ],
)
async def test_bad_feedback_records_fail_the_import_and_store_nothing(
    store: ConversationStore, db: asyncpg.Connection, change: object, message: str
) -> None:
    await chat(store)
    await store.set_feedback("c", "alice", 2, rating=1)
    records = [r async for r in store.export_conversation("c", "alice")]
    change(records)  # type: ignore[operator]
    with pytest.raises(InvalidInput, match=message):
        await store.import_conversation("bob", records, conversation_id="x")
    assert await db.fetchval("SELECT count(*) FROM conversations WHERE id = 'x'") == 0


async def test_feedback_on_a_seq_without_message_fails_the_import(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    await chat(store)
    await store.set_feedback("c", "alice", 2, rating=1)
    records = [r async for r in store.export_conversation("c", "alice")]
    del records[3]  # message 3: the import has a hole there
    records[-1] = {**records[-1], "seq": 3}
    with pytest.raises(InvalidInput, match="a feedback record names a seq with no message record"):
        await store.import_conversation("bob", records, conversation_id="y")
    assert await db.fetchval("SELECT count(*) FROM conversations WHERE id = 'y'") == 0
