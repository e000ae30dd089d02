"""Input checks: every refusal names the field (and the batch index) and happens before any I/O."""

from __future__ import annotations

import math
from typing import Any

import pytest

from convdb.errors import InvalidInput
from convdb.validation import (
    DEFAULT_MAX_CONTENT_BYTES,
    MAX_HISTORY_LIMIT,
    MessageRow,
    check_id,
    check_limit,
    encode_json,
    estimate_tokens,
    prepare_batch,
    prepare_message,
)


def prep(role: object = "user", content: object = "hi", **kw: Any) -> MessageRow:
    return prepare_message(
        role, content, max_content_bytes=DEFAULT_MAX_CONTENT_BYTES, count_tokens=estimate_tokens, **kw
    )


def batch(messages: object, **kw: Any) -> list[MessageRow]:
    return prepare_batch(
        messages,
        max_content_bytes=kw.get("max_content_bytes", DEFAULT_MAX_CONTENT_BYTES),
        count_tokens=estimate_tokens,
        max_batch=kw.get("max_batch", 10_000),
    )


def test_invalid_input_is_a_value_error_naming_field() -> None:
    with pytest.raises(ValueError, match="role"):
        prep(role="wizard")


@pytest.mark.parametrize("role", ["wizard", "USER", "", None, 3, "function"])
def test_unknown_role(role: object) -> None:
    with pytest.raises(InvalidInput) as info:
        prep(role=role)
    assert info.value.field == "role"


@pytest.mark.parametrize("content", [b"bytes", 3, 1.5, ["a"], {"a": 1}, True])
def test_content_must_be_str_or_none(content: object) -> None:
    with pytest.raises(InvalidInput) as info:
        prep(content=content)
    assert info.value.field == "content"


def test_content_none_is_allowed_for_tool_call_only_assistant() -> None:
    row = prep(role="assistant", content=None, tool_calls=[{"id": "c1", "type": "function"}])
    assert row.content is None
    assert row.tool_calls_json == '[{"id":"c1","type":"function"}]'


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("content", "a\x00b"),
        ("content", "a\ud800b"),
        ("content", "\udfff"),
        ("tool_name", "t\x00"),
        ("tool_call_id", "\ud83d"),
        ("idempotency_key", "k\x00"),
    ],
)
def test_unstorable_text_is_refused(field: str, value: str) -> None:
    kwargs: dict[str, Any] = {"role": "tool", "content": "x", "tool_call_id": "c1"}
    kwargs[field] = value
    with pytest.raises(InvalidInput) as info:
        prep(**kwargs)
    assert info.value.field == field
    assert "NUL" in str(info.value) or "surrogate" in str(info.value)


def test_paired_astral_characters_are_fine() -> None:
    assert prep(content="emoji 😀 and 𝄞").content == "emoji 😀 and 𝄞"


def test_content_cap_counts_utf8_bytes() -> None:
    cap = 100
    ok = "é" * 50  # 100 bytes
    assert prepare_message("user", ok, max_content_bytes=cap, count_tokens=estimate_tokens).content == ok
    with pytest.raises(InvalidInput, match="100-byte limit") as info:
        prepare_message("user", "é" * 51, max_content_bytes=cap, count_tokens=estimate_tokens)
    assert info.value.field == "content"
    with pytest.raises(InvalidInput):
        prepare_message("user", "a" * 101, max_content_bytes=cap, count_tokens=estimate_tokens)


def test_default_cap_is_one_mib() -> None:
    assert DEFAULT_MAX_CONTENT_BYTES == 1024 * 1024
    prep(content="a" * DEFAULT_MAX_CONTENT_BYTES)
    with pytest.raises(InvalidInput):
        prep(content="a" * (DEFAULT_MAX_CONTENT_BYTES + 1))


@pytest.mark.parametrize("value", ["", "x" * 256, None, 5, b"id"])
def test_bad_ids(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        check_id(value, "conversation_id")
    assert info.value.field == "conversation_id"


def test_id_length_limit_is_inclusive() -> None:
    assert check_id("x" * 255, "user_id") == "x" * 255


def test_tool_message_needs_tool_call_id() -> None:
    with pytest.raises(InvalidInput) as info:
        prep(role="tool", content="result")
    assert info.value.field == "tool_call_id"


@pytest.mark.parametrize(
    "metadata",
    [
        {"a": math.nan},
        {"a": math.inf},
        {"a": [-math.inf]},
        {"a": object()},
        {"a": {1, 2}},
        {1: "int key"},
        {"a": b"bytes"},
        {"a": ("tu", "ple")},
        {"k\x00": 1},
        {"a": "\ud800"},
    ],
)
def test_bad_metadata(metadata: dict[Any, Any]) -> None:
    with pytest.raises(InvalidInput) as info:
        prep(metadata=metadata)
    assert info.value.field == "metadata"


@pytest.mark.parametrize("metadata", [[1, 2], "text", 3])
def test_metadata_must_be_an_object(metadata: object) -> None:
    with pytest.raises(InvalidInput, match="must be a dict"):
        prep(metadata=metadata)


@pytest.mark.parametrize("tool_calls", [{"id": 1}, "x", [math.nan], [{"f": object()}]])
def test_bad_tool_calls(tool_calls: object) -> None:
    with pytest.raises(InvalidInput) as info:
        prep(role="assistant", tool_calls=tool_calls)
    assert info.value.field == "tool_calls"


def test_json_depth_is_bounded() -> None:
    deep: Any = []
    for _ in range(300):
        deep = [deep]
    with pytest.raises(InvalidInput, match="nested deeper"):
        encode_json({"a": deep}, "metadata", kind=dict)


def test_json_encoding_keeps_unicode_and_is_compact() -> None:
    assert (
        encode_json({"é": [1, 2.5, None, True, "😀"]}, "metadata", kind=dict)
        == '{"é":[1,2.5,null,true,"😀"]}'
    )


@pytest.mark.parametrize("limit", [0, -1, MAX_HISTORY_LIMIT + 1, 1.0, "50", True, None])
def test_limit_out_of_range(limit: object) -> None:
    with pytest.raises(InvalidInput) as info:
        check_limit(limit)
    assert info.value.field == "limit"


def test_limit_bounds_inclusive() -> None:
    assert check_limit(1) == 1
    assert check_limit(MAX_HISTORY_LIMIT) == MAX_HISTORY_LIMIT


@pytest.mark.parametrize("token_count", [-1, 2**31, 1.5, "3", True])
def test_bad_token_count(token_count: object) -> None:
    with pytest.raises(InvalidInput) as info:
        prep(token_count=token_count)
    assert info.value.field == "token_count"


def test_token_count_default_estimate_and_override() -> None:
    assert prep(content="abcdefgh").token_count == 2
    assert prep(content="abcdefgh", token_count=7).token_count == 7
    assert prep(content=None, role="assistant").token_count == 0


def test_batch_error_names_index_and_field() -> None:
    messages = [
        {"role": "user", "content": "ok"},
        {"role": "user", "content": "ok"},
        {"role": "tool", "content": "no id"},
    ]
    with pytest.raises(InvalidInput) as info:
        batch(messages)
    assert info.value.index == 2
    assert info.value.field == "tool_call_id"
    assert str(info.value).startswith("messages[2].tool_call_id")


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([], "messages"),
        ("user", "messages"),
        ({"role": "user"}, "messages"),
        (None, "messages"),
        ([{"content": "no role"}], "role"),
        ([{"role": "user", "colour": "red"}], "colour"),
        (["not a dict"], "message"),
    ],
)
def test_bad_batches(messages: object, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        batch(messages)
    assert info.value.field == field


def test_batch_size_cap() -> None:
    with pytest.raises(InvalidInput, match="at most 3"):
        batch([{"role": "user", "content": "x"}] * 4, max_batch=3)


def test_batch_repeated_key_is_refused() -> None:
    with pytest.raises(InvalidInput) as info:
        batch(
            [
                {"role": "user", "content": "a", "idempotency_key": "k"},
                {"role": "user", "content": "b", "idempotency_key": "k"},
            ]
        )
    assert info.value.index == 1
    assert info.value.field == "idempotency_key"


def test_batch_accepts_generators_and_keeps_order() -> None:
    rows = batch({"role": "user", "content": str(i)} for i in range(5))
    assert [r.content for r in rows] == ["0", "1", "2", "3", "4"]


def test_a_batchs_plain_messages_shortcut_gives_what_the_general_path_gives() -> None:
    """prepare_batch's shortcut for {"role", "content"} dicts: the same rows, and every message it
    must not take (a tool role, no content, bad text, too large, extra keys) still gets the
    general path's answer, errors included."""
    from convdb.validation import prepare_batch, prepare_message_dict

    def general(messages: list[object]) -> list[object]:
        return [
            prepare_message_dict(m, max_content_bytes=64, count_tokens=len, index=i)
            for i, m in enumerate(messages)
        ]

    def batch(messages: list[object]) -> list[object]:
        return list(prepare_batch(messages, max_content_bytes=64, count_tokens=len, max_batch=100))

    fine: list[object] = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": ""},
        {"role": "system", "content": "é" * 16},  # 32 bytes of UTF-8
        {"content": "x", "role": "user"},
        {"role": "user"},  # no content: the general path
        {"role": "tool", "content": "x", "tool_call_id": "c1"},
        {"role": "user", "content": "x", "metadata": {"a": 1}},
    ]
    assert batch(fine) == general(fine)
    for bad, field in [
        ({"role": "tool", "content": "x"}, "tool_call_id"),
        ({"role": "wizard", "content": "x"}, "role"),
        ({"role": ["user"], "content": "x"}, "role"),
        ({"content": "x"}, "role"),
        ({"role": "user", "content": "a\x00b"}, "content"),
        ({"role": "user", "content": "\ud800"}, "content"),
        ({"role": "user", "content": "é" * 33}, "content"),  # 66 bytes > 64
        ({"role": "user", "content": 5}, "content"),
    ]:
        with pytest.raises(InvalidInput) as via_batch:
            batch([{"role": "user", "content": "ok"}, bad])
        with pytest.raises(InvalidInput) as via_general:
            general([{"role": "user", "content": "ok"}, bad])
        assert (via_batch.value.field, via_batch.value.index) == (field, 1)
        assert str(via_batch.value) == str(via_general.value)
    with pytest.raises(InvalidInput, match="at most 2 messages"):
        prepare_batch(
            [{"role": "user", "content": "x"}] * 3, max_content_bytes=64, count_tokens=len, max_batch=2
        )
