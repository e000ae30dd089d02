"""Text and JSON come back exactly as given (property-based coverage lives in test_property_*)."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from convdb import ConversationStore

TEXTS = [
    "",
    " ",
    "plain ascii",
    "é è ê ñ ß ø å æ œ",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "emoji 😀🎉👩‍👩‍👧‍👦 flags 🇳🇴🇯🇵 skin 👍🏽",
    "math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝄞 \U0010fffd",
    "rtl עברית العربية mixed",
    "combining e\u0301 vs é, zero width \u200b\u200c\u200d, bom \ufeff",
    "controls \x01\x02\x1f\x7f tab\tnewline\ncr\r",
    "backslashes \\ \\\\ \\x00 \\u0000 quotes ' \" `",
    "sql '; DROP TABLE messages; -- $1 $$ E'\\n' %s %(x)s {}",
    'json-looking {"a": 1} [1,2]',
    "x" * 100_000,
]

JSONS: list[dict[str, Any]] = [
    {},
    {"": ""},
    {"nested": {"deep": [[[[{"k": [1, 2, {"x": None}]}]]]]}},
    {"numbers": [0, -1, 1, 2**53, -(2**53), 2**63 - 1, 10**30, 0.5, -0.25, 1.5e-10, 123456.789]},
    {"bools": [True, False, None]},
    {"unicode keys é 😀": "values 日本", 'quote"key': "back\\slash"},
    {"escaped text": "\\u0000 stays text", "controls": "\x01\x1f"},
    {"big list": list(range(1000))},
    {"float_max": sys.float_info.max, "float_min": sys.float_info.min},
]


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
@pytest.mark.guarantee(7)
async def test_text_round_trips(store: ConversationStore, text: str) -> None:
    conv = await store.get_or_create_conversation(None, "alice", title=text[:1000])
    call_id = "c" + text[:100]
    call = await store.save_message(conv.id, "alice", "assistant", text, tool_calls=[{"id": call_id}])
    saved = await store.save_message(
        conv.id, "alice", "tool", text, tool_name="t" + text[:50], tool_call_id=call_id
    )
    [loaded_call, loaded] = await store.get_history(conv.id, "alice")
    assert loaded_call == call and loaded_call.content == text
    assert loaded.content == text
    assert loaded.tool_name == saved.tool_name and loaded.tool_call_id == saved.tool_call_id
    assert (await store.get_conversation(conv.id, "alice")).title == text[:1000]
    assert loaded == saved


@pytest.mark.parametrize("value", JSONS, ids=range(len(JSONS)))
@pytest.mark.guarantee(7)
async def test_json_round_trips(store: ConversationStore, value: dict[str, Any]) -> None:
    conv = await store.get_or_create_conversation(None, "alice", metadata=value)
    assert conv.metadata == value
    saved = await store.save_message(conv.id, "alice", "assistant", None, tool_calls=[value], metadata=value)
    [loaded] = await store.get_history(conv.id, "alice")
    assert loaded.metadata == value and loaded.tool_calls == [value]
    assert saved.metadata == value
    assert (await store.get_conversation(conv.id, "alice")).metadata == value


async def test_batch_round_trips_every_field(store: ConversationStore) -> None:
    conv = await store.get_or_create_conversation(None, "alice")
    batch: list[dict[str, Any]] = [
        {"role": "system", "content": TEXTS[4], "metadata": JSONS[5]},
        {"role": "user", "content": TEXTS[5], "token_count": 3},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "args": JSONS[3]}]},
        {"role": "tool", "content": TEXTS[11], "tool_call_id": "c1", "tool_name": "lookup"},
    ]
    saved = await store.save_messages(conv.id, "alice", batch)
    loaded = await store.get_history(conv.id, "alice")
    assert loaded == saved
    for message, original in zip(loaded, batch, strict=True):
        assert message.role == original["role"]
        assert message.content == original["content"]
        assert message.tool_calls == original.get("tool_calls")
        assert message.metadata == original.get("metadata", {})
