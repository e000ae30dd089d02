"""Encryption at rest without a database: the value format, associated data, key providers, the
key cache, and the bad inputs refused before any I/O."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from datetime import UTC, datetime

import pytest

from convdb import ConversationStore, DecryptionError, InvalidInput, KeyNotFound, Message, StaticKeys
from convdb.crypto import PREFIX, Codec, DataKey, KeyCache, token_key_id, wrap_context
from convdb.keys import KeyProvider
from convdb.validation import MessageRow

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def message_from(cid: str, seq: int, row: MessageRow) -> Message:
    """The Message a read of this stored row gives (jsonb decoded, as the pool's codec does)."""
    return Message(
        conversation_id=cid,
        seq=seq,
        role=row.role,  # type: ignore[arg-type]
        content=row.content,
        tool_name=row.tool_name,
        tool_call_id=row.tool_call_id,
        tool_calls=None if row.tool_calls_json is None else json.loads(row.tool_calls_json),
        metadata=json.loads(row.metadata_json or "{}"),
        created_at=NOW,
        token_count=row.token_count,
        idempotency_key=row.idempotency_key,
    )


ROW = MessageRow("assistant", "héllo \U0001f600", None, None, '[{"id": "c1"}]', '{"k": [1, 2]}', 3, "key")


def test_a_sealed_row_opens_exactly_and_keeps_the_plaintext_columns() -> None:
    codec = Codec("conv", DataKey("abcd", os.urandom(32)))
    sealed = codec.seal_row(7, ROW)
    assert sealed.content is not None and sealed.content.startswith(PREFIX + "abcd:")
    assert token_key_id(sealed.content) == "abcd"
    assert json.loads(sealed.tool_calls_json or "")[0].startswith(PREFIX)
    assert list(json.loads(sealed.metadata_json or "")) == ["enc"]
    assert (sealed.role, sealed.token_count, sealed.idempotency_key) == ("assistant", 3, "key")
    opened = codec.open_message(message_from("conv", 7, sealed))
    assert (opened.content, opened.tool_calls, opened.metadata) == (
        ROW.content,
        [{"id": "c1"}],
        {"k": [1, 2]},
    )
    # Two seals of one value differ (random nonces): equal plaintexts are not visible as equal.
    assert codec.seal_row(7, ROW).content != sealed.content


@pytest.mark.parametrize(("cid", "seq"), [("conv", 8), ("other", 7)])
def test_a_value_opened_at_another_seq_or_conversation_fails(cid: str, seq: int) -> None:
    key = DataKey("abcd", os.urandom(32))
    sealed = Codec("conv", key).seal_row(7, ROW)
    with pytest.raises(DecryptionError, match="does not decrypt under data key 'abcd'"):
        Codec(cid, key).open_message(message_from(cid, seq, sealed))


def test_wrong_key_missing_key_and_plaintext_are_typed_errors() -> None:
    sealed = Codec("conv", DataKey("abcd", os.urandom(32))).seal_row(1, ROW)
    with pytest.raises(KeyNotFound, match="data key 'abcd'"):
        Codec("conv", None).open_message(message_from("conv", 1, sealed))
    with pytest.raises(KeyNotFound, match="data key 'abcd'"):
        Codec("conv", DataKey("ffff", os.urandom(32))).open_message(message_from("conv", 1, sealed))
    with pytest.raises(DecryptionError, match="does not decrypt"):
        Codec("conv", DataKey("abcd", os.urandom(32))).open_message(message_from("conv", 1, sealed))
    with pytest.raises(DecryptionError, match="not an encrypted value"):
        Codec("conv", DataKey("abcd", os.urandom(32))).open_message(message_from("conv", 1, ROW))


def test_static_keys_wrap_under_the_active_key_and_unwrap_under_any() -> None:
    async def body() -> None:
        old, new = os.urandom(32), os.urandom(32)
        first = StaticKeys({"old": old}, "old")
        assert isinstance(first, KeyProvider)
        context = wrap_context("alice", "abcd")
        kid, wrapped = await first.wrap(b"k" * 32, context)
        assert kid == "old"
        both = StaticKeys({"old": old, "new": new}, "new")
        assert await both.unwrap("old", wrapped, context) == b"k" * 32
        assert (await both.wrap(b"k" * 32, context))[0] == "new"
        with pytest.raises(DecryptionError, match="master key 'old'"):
            await both.unwrap("old", wrapped, wrap_context("mallory", "abcd"))  # moved to another user
        with pytest.raises(KeyNotFound, match="master key 'gone'"):
            await both.unwrap("gone", wrapped, context)

    asyncio.run(body())


def test_keys_from_the_environment() -> None:
    a, b = base64.b64encode(os.urandom(32)).decode(), base64.b64encode(os.urandom(32)).decode()
    provider = StaticKeys.from_env(
        environ={"CONVDB_MASTER_KEYS": f"k1:{a}, k2:{b}", "CONVDB_ACTIVE_KEY": "k2"}
    )
    assert (provider.key_ids, provider.active_key_id) == (("k1", "k2"), "k2")
    assert StaticKeys.from_env(
        "APP_", environ={"APP_MASTER_KEYS": f"x:{a}", "APP_ACTIVE_KEY": "x"}
    ).key_ids == ("x",)


@pytest.mark.parametrize(
    ("environ", "field"),
    [
        ({}, "CONVDB_MASTER_KEYS"),
        ({"CONVDB_MASTER_KEYS": "k1:AAAA"}, "CONVDB_ACTIVE_KEY"),
        ({"CONVDB_MASTER_KEYS": "k1", "CONVDB_ACTIVE_KEY": "k1"}, "CONVDB_MASTER_KEYS"),
        ({"CONVDB_MASTER_KEYS": "k1:not base64!", "CONVDB_ACTIVE_KEY": "k1"}, "CONVDB_MASTER_KEYS"),
        ({"CONVDB_MASTER_KEYS": "k1:AAAA", "CONVDB_ACTIVE_KEY": "k1"}, "keys"),  # 3 bytes, not 32
    ],
)
def test_bad_environment_keys_are_refused_naming_the_variable(environ: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        StaticKeys.from_env(environ=environ)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("keys", "active", "field"),
    [
        ({}, "k", "keys"),
        ({"k": b"short"}, "k", "keys"),
        ({"k": "x" * 32}, "k", "keys"),
        ({"bad:id": b"k" * 32}, "bad:id", "key_id"),
        ({"": b"k" * 32}, "", "key_id"),
        ({"k": b"k" * 32}, "other", "active"),
    ],
)
def test_bad_static_keys_are_refused(keys: dict[str, object], active: str, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        StaticKeys(keys, active)  # type: ignore[arg-type]
    assert info.value.field == field


def test_the_key_cache_expires_and_evicts_the_least_recent() -> None:
    cache = KeyCache(seconds=10, size=2)
    a, b, c = (DataKey(k, os.urandom(32)) for k in "abc")
    cache.put("a", a, 0)
    cache.put("b", b, 1)
    assert cache.get("a", 9) is a and cache.get("a", 10) is None  # expired at put time + 10 s
    cache.put("a", a, 11)
    cache.put("c", c, 12)  # evicts b, the least recently put
    assert (cache.get("b", 12), cache.get("a", 12), cache.get("c", 12)) == (None, a, c)
    cache.drop("a")
    assert cache.get("a", 12) is None


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"encryption": b"k" * 32}, "encryption"),
        ({"key_cache_seconds": 0}, "key_cache_seconds"),
        ({"key_cache_size": 0}, "key_cache_size"),
    ],
)
def test_bad_store_options_are_refused(options: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        ConversationStore(None, **options)  # type: ignore[arg-type]
    assert info.value.field == field


@pytest.mark.parametrize(
    ("method", "kwargs", "field"),
    [
        ("shred_user", {"user_id": ""}, "user_id"),
        ("shred_user", {"user_id": "u", "messages_per_batch": 0}, "messages_per_batch"),
        ("shred_user", {"user_id": "u", "conversations_per_batch": True}, "conversations_per_batch"),
        ("rotate", {"batch_size": 0}, "batch_size"),
        ("rotate", {"limit": -1}, "limit"),
    ],
)
def test_bad_shred_and_rotate_arguments_are_refused_before_any_io(
    method: str, kwargs: dict[str, object], field: str
) -> None:
    # No pool at all: any I/O would fail with something other than InvalidInput.
    store = ConversationStore(None, encryption=StaticKeys({"k": os.urandom(32)}, "k"))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput) as info:
        asyncio.run(getattr(store, method)(**kwargs))
    assert info.value.field == field
