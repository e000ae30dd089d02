"""Encryption at rest (issue 13): what the database holds, what moved or missing keys do, rotation
(interrupted and resumed) and crypto-shredding, on the real server."""

from __future__ import annotations

import asyncio
import os
import subprocess
from typing import Any

import asyncpg
import pytest

from convdb import (
    ConversationNotFound,
    ConversationStore,
    DecryptionError,
    InvalidInput,
    KeyNotFound,
    StaticKeys,
)
from convdb.testing.embedded import find_binary
from tests.support.surface import exercise_every_method, export_records

K1, K2 = os.urandom(32), os.urandom(32)
# Distinctive strings: none of them (nor a 12-character piece of one) may appear in the dump.
SECRETS = {
    "title": "TITLE-ozymandias-4471",
    "conv_meta": "CONVMETA-quetzal-9182",
    "content": "CONTENT-jabberwock-5530",
    "batch": "BATCH-vorpal-blade-2208",
    "tool_args": "TOOLARGS-bandersnatch-77",
    "msg_meta": "MSGMETA-tumtum-tree-031",
    "turn": "TURN-frabjous-day-6614",
    "updated": "UPDATED-calloo-callay-88",
    "summary": "SUMMARY-mome-raths-4410",
    "summary_meta": "SUMMETA-slithy-toves-12",
}


def keys(active: str = "k1", **extra: bytes) -> StaticKeys:
    return StaticKeys({"k1": K1, **extra}, active)


async def encrypted(dsn: str, provider: StaticKeys | None = None, **options: Any) -> ConversationStore:
    return await ConversationStore.connect(
        dsn, min_size=1, max_size=4, encryption=provider or keys(), **options
    )


async def seed(store: ConversationStore, uid: str, cid: str) -> None:
    s = SECRETS
    await store.get_or_create_conversation(cid, uid, title=s["title"], metadata={"note": s["conv_meta"]})
    await store.save_message(
        cid, uid, "user", s["content"], metadata={"m": s["msg_meta"]}, idempotency_key="k"
    )
    await store.save_messages(
        cid,
        uid,
        [
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "arguments": s["tool_args"]}]},
            {"role": "tool", "content": s["batch"], "tool_call_id": "c1"},
        ],
    )
    await store.save_and_get_history(cid, uid, {"role": "user", "content": s["turn"]})
    await store.update_conversation(cid, uid, metadata={"note": s["updated"], "t": s["title"]})
    await store.save_summary(cid, uid, s["summary"], through_seq=2, metadata={"m": s["summary_meta"]})


def pg_dump(dsn: str) -> str:
    result = subprocess.run(
        [find_binary("pg_dump"), "--no-owner", "-d", dsn], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_every_method_works_encrypted_and_the_dump_holds_no_plaintext(
    dsn: str, db: asyncpg.Connection
) -> None:
    async with await encrypted(dsn) as store:
        await seed(store, "alice", "conv-a")
        history = await store.get_history("conv-a", "alice")
        assert [m.content for m in history] == [SECRETS["content"], None, SECRETS["batch"], SECRETS["turn"]]
        assert history[0].metadata == {"m": SECRETS["msg_meta"]}
        assert history[1].tool_calls == [{"id": "c1", "arguments": SECRETS["tool_args"]}]
        conv = await store.get_conversation("conv-a", "alice")
        assert (conv.title, conv.metadata) == (
            SECRETS["title"],
            {"note": SECRETS["updated"], "t": SECRETS["title"]},
        )
        summarized = await store.get_history("conv-a", "alice", summarized=True)
        assert (summarized[0].summary_through, summarized[0].content) == (2, SECRETS["summary"])
        assert summarized[0].metadata == {"m": SECRETS["summary_meta"]}
        # seq 3 (a tool result whose call, seq 2, the summary covers) is trimmed.
        assert [m.content for m in summarized[1:]] == [SECRETS["turn"]]
        [summary] = await store.list_summaries("conv-a", "alice")
        assert (summary.content, summary.metadata) == (SECRETS["summary"], {"m": SECRETS["summary_meta"]})
        # A keyed replay compares the decrypted stored message, so it is a replay, not a conflict.
        replay = await store.save_message("conv-a", "alice", "user", SECRETS["content"], idempotency_key="k")
        assert replay.seq == 1 and replay.content == SECRETS["content"]
        called = await exercise_every_method(store, "bob", "enc")
        dump = pg_dump(dsn)
    assert "cdb1:" in dump and "convdb_user_keys" in dump
    for name, secret in SECRETS.items():
        for start in range(len(secret) - 11):
            assert secret[start : start + 12] not in dump, (name, secret[start : start + 12])
    for plain in ("hello", "renamed", '"ü"'):  # exercise_every_method's values (bob's rows are erased)
        assert (
            plain not in dump.split("COPY public.convdb_user_keys")[0].split("COPY public.conversations")[-1]
        )
    raw = await db.fetchrow("SELECT content, metadata::text, tool_calls FROM messages WHERE seq = 2")
    assert raw is not None
    assert raw["content"] is None and raw["tool_calls"].startswith('["cdb1:')
    assert raw["metadata"].startswith('{"enc": "cdb1:')
    print(
        f"\nencrypted store: {len(called)} methods exercised; pg_dump of {len(dump)} bytes holds no test string"
    )


async def test_a_ciphertext_moved_to_another_row_column_or_conversation_fails(
    dsn: str, db: asyncpg.Connection
) -> None:
    async with await encrypted(dsn) as store:
        await seed(store, "alice", "conv-a")
        await store.get_or_create_conversation("conv-b", "alice", title="other")
        await store.save_message("conv-b", "alice", "user", "b's message")
        await store.get_or_create_conversation("conv-m", "mallory", title="mallory's")
        await store.save_message("conv-m", "mallory", "user", "mallory's message")
        # Another seq of the same conversation.
        await db.execute(
            "UPDATE messages SET content = $1 WHERE conversation_id = 'conv-a' AND seq = 3",
            await db.fetchval("SELECT content FROM messages WHERE conversation_id = 'conv-a' AND seq = 1"),
        )
        with pytest.raises(DecryptionError, match="message 3 of conversation 'conv-a': content") as info:
            await store.get_history("conv-a", "alice")
        assert info.value.key_id is not None and type(info.value) is DecryptionError
        # Another conversation of the same user (same data key): the associated data differs.
        await db.execute(
            "UPDATE messages SET content = $1 WHERE conversation_id = 'conv-b' AND seq = 1",
            await db.fetchval("SELECT content FROM messages WHERE conversation_id = 'conv-a' AND seq = 1"),
        )
        with pytest.raises(DecryptionError, match="does not decrypt"):
            await store.get_history("conv-b", "alice")
        # Another column: a title copied into metadata's place, a conversation's title to another.
        await db.execute(
            "UPDATE conversations SET title = $1 WHERE id = 'conv-b'",
            await db.fetchval("SELECT title FROM conversations WHERE id = 'conv-a'"),
        )
        with pytest.raises(DecryptionError, match="title of conversation 'conv-b'"):
            await store.get_conversation("conv-b", "alice")
        # Another user's conversation: mallory's data key is another key, named in the error.
        alice_key = await db.fetchval("SELECT key_id FROM convdb_user_keys WHERE user_id = 'alice'")
        await db.execute(
            "UPDATE messages SET content = $1 WHERE conversation_id = 'conv-m' AND seq = 1",
            await db.fetchval("SELECT content FROM messages WHERE conversation_id = 'conv-a' AND seq = 4"),
        )
        with pytest.raises(KeyNotFound, match=alice_key) as missing:
            await store.get_history("conv-m", "mallory")
        assert missing.value.key_id == alice_key
        # A summary's content in the place of the message at its seq (same conversation, same seq).
        await db.execute(
            "UPDATE messages SET content = $1 WHERE conversation_id = 'conv-a' AND seq = 2",
            await db.fetchval("SELECT content FROM conversation_summaries WHERE conversation_id = 'conv-a'"),
        )
        with pytest.raises(DecryptionError, match="message 2 of conversation 'conv-a': content"):
            await store.get_history("conv-a", "alice", limit=3)
        # A tampered ciphertext (one character changed) and a plaintext value are refused too.
        await db.execute(
            "UPDATE messages SET content = overlay(content placing (CASE WHEN substr(content, 40, 1) = 'A' THEN 'B' ELSE 'A' END) from 40 for 1) WHERE conversation_id = 'conv-a' AND seq = 4"
        )
        with pytest.raises(DecryptionError):
            await store.get_history("conv-a", "alice", limit=1)
        await db.execute(
            "UPDATE messages SET content = 'plain text' WHERE conversation_id = 'conv-m' AND seq = 1"
        )
        with pytest.raises(DecryptionError, match="not an encrypted value"):
            await store.get_history("conv-m", "mallory")


async def test_plaintext_written_without_encryption_is_never_returned_by_an_encrypting_store(
    dsn: str,
) -> None:
    async with await ConversationStore.connect(dsn, min_size=1, max_size=2) as plain:
        await plain.get_or_create_conversation("c", "u", title="plain title")
        await plain.save_message("c", "u", "user", "plain content")
    async with await encrypted(dsn) as store:
        with pytest.raises(DecryptionError, match="not an encrypted value"):
            await store.get_conversation("c", "u")
        with pytest.raises(DecryptionError, match="not an encrypted value"):
            await store.get_history("c", "u")


async def test_a_missing_or_wrong_master_key_is_a_typed_error_naming_it(dsn: str) -> None:
    async with await encrypted(dsn) as store:
        await seed(store, "alice", "conv-a")
    async with await encrypted(dsn, StaticKeys({"k9": K2}, "k9")) as other:
        with pytest.raises(KeyNotFound, match="master key 'k1'") as info:
            await other.get_history("conv-a", "alice")
        assert info.value.key_id == "k1"
    async with await encrypted(dsn, StaticKeys({"k1": K2}, "k1")) as wrong:  # same id, other material
        with pytest.raises(DecryptionError, match="master key 'k1'") as bad:
            await wrong.get_conversation("conv-a", "alice")
        assert bad.value.key_id == "k1"


async def test_filters_over_encrypted_columns_are_refused_before_any_io(dsn: str) -> None:
    async with await encrypted(dsn) as store:
        with pytest.raises(InvalidInput, match="title_contains: cannot filter on an encrypted column"):
            await store.list_conversations("u", title_contains="x")
        with pytest.raises(InvalidInput, match="metadata_contains: cannot filter on an encrypted column"):
            await store.list_conversations("u", metadata_contains={"a": 1})
        conv = await store.get_or_create_conversation("enc-src", "u")
        await store.save_message(conv.id, "u", "user", "a secret to fork")
        before = await store.pool.fetchval("SELECT count(*) FROM conversations")
        with pytest.raises(
            InvalidInput, match="encryption: fork_conversation is not available with encryption on"
        ):
            await store.fork_conversation(conv.id, "u", at_seq=1, new_conversation_id="enc-fork")
        with pytest.raises(
            InvalidInput, match="encryption: search_messages is not available with encryption on"
        ):
            await store.search_messages("u", "secret")
        assert await store.pool.fetchval("SELECT count(*) FROM conversations") == before
        assert await store.pool.fetchval("SELECT count(*) FROM conversations WHERE id = 'enc-fork'") == 0
        with pytest.raises(InvalidInput, match="rotate"):
            await ConversationStore(store.pool).rotate()  # a store without encryption=
    with pytest.raises(InvalidInput, match="KeyProvider"):
        ConversationStore.__init__(object.__new__(ConversationStore), None, encryption="key")  # type: ignore[arg-type]


class GatedKeys(StaticKeys):
    """StaticKeys whose wraps stop at a gate after ``allowed`` of them (a process stalled mid-rotation)."""

    __slots__ = ("allowed", "gate", "wraps")

    def __init__(self, allowed: int) -> None:
        super().__init__({"k1": K1, "k2": K2}, "k2")
        self.allowed, self.wraps, self.gate = allowed, 0, asyncio.Event()

    async def wrap(self, data_key: bytes, context: bytes) -> tuple[str, bytes]:
        self.wraps += 1
        if self.wraps > self.allowed:
            await self.gate.wait()
        return await super().wrap(data_key, context)


async def test_rotation_limited_then_cancelled_midway_loses_nothing_and_a_second_run_finishes(
    dsn: str, db: asyncpg.Connection
) -> None:
    users = [f"user-{i:02d}" for i in range(12)]
    async with await encrypted(dsn) as old:
        for uid in users:
            await old.get_or_create_conversation(f"c-{uid}", uid, title=f"title of {uid}")
            await old.save_message(f"c-{uid}", uid, "user", f"content of {uid}")
    both = StaticKeys({"k1": K1, "k2": K2}, "k2")
    async with await encrypted(dsn, both) as store:
        first = await store.rotate(batch_size=2, limit=3)
        assert (first.rewrapped, first.remaining) == (3, {"k1": 9})
        gated = GatedKeys(allowed=4)  # batches 1 and 2 (2 keys each) commit, batch 3 stalls in its first wrap
        async with await encrypted(dsn, gated) as stalled:
            task = asyncio.create_task(stalled.rotate(batch_size=2))
            for _ in range(2000):
                if gated.wraps > gated.allowed:
                    break
                await asyncio.sleep(0.005)
            assert gated.wraps == gated.allowed + 1, "the rotation never reached the gate"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        rows = await db.fetch("SELECT master_key_id, count(*) FROM convdb_user_keys GROUP BY 1")
        counts = {r[0]: r[1] for r in rows}
        assert counts == {"k1": 5, "k2": 7}  # 3 + 4 committed; the stalled batch wrote nothing
        # Nothing lost meanwhile: every value still reads, under either master key.
        for uid in users:
            assert [m.content for m in await store.get_history(f"c-{uid}", uid)] == [f"content of {uid}"]
        second = await store.rotate(batch_size=5)
        assert (second.rewrapped, second.remaining) == (5, {})
        assert (await store.rotate()).rewrapped == 0  # nothing left: a no-op
    async with await encrypted(dsn, StaticKeys({"k2": K2}, "k2")) as retired:  # k1 removed
        for uid in users:
            conv = await retired.get_conversation(f"c-{uid}", uid)
            assert conv.title == f"title of {uid}"
            assert [m.content for m in await retired.get_history(f"c-{uid}", uid)] == [f"content of {uid}"]
    async with await encrypted(dsn) as only_old:  # only k1: every key is now under k2
        with pytest.raises(KeyNotFound, match="master key 'k2'"):
            await only_old.get_history("c-user-00", "user-00")


async def test_shredding_makes_every_copy_of_a_users_rows_unreadable_and_leaves_others_intact(
    dsn: str, db: asyncpg.Connection
) -> None:
    async with await encrypted(dsn) as store:
        await seed(store, "alice", "conv-a")
        await store.get_or_create_conversation("conv-a2", "alice", title="second")
        await store.save_messages(
            "conv-a2", "alice", [{"role": "user", "content": f"m{i}"} for i in range(7)]
        )
        await seed(store, "bob", "conv-b")
        # A "backup" of alice's rows, taken before the shred (what pg_dump or a replica holds).
        await db.execute("CREATE TABLE backup_c AS SELECT * FROM conversations WHERE user_id = 'alice'")
        await db.execute(
            "CREATE TABLE backup_m AS SELECT m.* FROM messages m JOIN conversations c ON c.id = m.conversation_id WHERE c.user_id = 'alice'"
        )
        alice_key = await db.fetchval("SELECT key_id FROM convdb_user_keys WHERE user_id = 'alice'")
        counts = await store.shred_user("alice", messages_per_batch=3)
        assert (counts.conversations, counts.messages) == (2, 11)
        assert await db.fetchval("SELECT count(*) FROM convdb_user_keys WHERE user_id = 'alice'") == 0
        with pytest.raises(ConversationNotFound):
            await store.get_history("conv-a", "alice")
        # The backup restored: every row is there again, and none of it can be read.
        await db.execute("INSERT INTO conversations SELECT * FROM backup_c")
        await db.execute("INSERT INTO messages SELECT * FROM backup_m")
        assert (
            await db.fetchval(
                "SELECT count(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id WHERE c.user_id = 'alice'"
            )
            == 11
        )
        async with await encrypted(dsn) as fresh:  # another process, nothing cached
            for cid in ("conv-a", "conv-a2"):
                with pytest.raises(KeyNotFound, match=alice_key):
                    await fresh.get_conversation(cid, "alice")
                with pytest.raises(KeyNotFound, match=alice_key):
                    await fresh.get_history(cid, "alice")
                with pytest.raises(KeyNotFound, match=alice_key):
                    await export_records(fresh, cid, "alice")
            with pytest.raises(KeyNotFound):
                await fresh.list_conversations("alice")
            # Bob is intact.
            assert (await fresh.get_conversation("conv-b", "bob")).title == SECRETS["title"]
            assert (await fresh.get_history("conv-b", "bob"))[0].content == SECRETS["content"]
        # A second shred finishes the purge of the restored rows.
        again = await store.shred_user("alice")
        assert (again.conversations, again.messages) == (2, 11)
        assert (await store.shred_user("nobody")).conversations == 0


async def test_import_into_an_encrypting_store_seals_and_export_decrypts(
    dsn: str, db: asyncpg.Connection
) -> None:
    async with await ConversationStore.connect(dsn, min_size=1, max_size=2) as plain:
        await seed(plain, "carol", "conv-plain")
        records = await export_records(plain, "conv-plain", "carol")
    async with await encrypted(dsn) as store:
        copy = await store.import_conversation("carol", records, conversation_id="conv-sealed")
        assert copy.title == SECRETS["title"]
        assert await export_records(store, "conv-sealed", "carol") == [
            {**records[0], "id": "conv-sealed"},
            *({**r, "conversation_id": "conv-sealed"} for r in records[1:]),
        ]
    raw = await db.fetchval("SELECT title FROM conversations WHERE id = 'conv-sealed'")
    assert raw.startswith("cdb1:")
    assert (
        await db.fetchval(
            "SELECT count(*) FROM messages WHERE conversation_id = 'conv-sealed' AND content LIKE '%jabberwock%'"
        )
        == 0
    )
