"""Turning stored messages into the chat-completions array, and into JSON."""

from __future__ import annotations

import json
from datetime import datetime

from convdb import build_message_array, message_to_dict
from tests.support.factories import T0, make_message

CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}


def test_array_order_and_tool_fields() -> None:
    history = [
        make_message(1, "user", "weather in Oslo?"),
        make_message(2, "assistant", None, tool_calls=[CALL]),
        make_message(3, "tool", '{"temp": 3}', tool_call_id="call_1", tool_name="weather"),
        make_message(4, "assistant", "3 degrees"),
    ]
    out = build_message_array(history, "and tomorrow?", system_prompt="You are terse.")
    assert out == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "content": '{"temp": 3}', "tool_call_id": "call_1"},
        {"role": "assistant", "content": "3 degrees"},
        {"role": "user", "content": "and tomorrow?"},
    ]


def test_without_system_prompt_or_new_user_message() -> None:
    out = build_message_array([make_message(1, "user", "hi")], None)
    assert out == [{"role": "user", "content": "hi"}]


def test_empty_history() -> None:
    assert build_message_array([], "hello", system_prompt="s") == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "hello"},
    ]


def test_message_to_dict_is_json_serialisable_with_iso_times() -> None:
    m = make_message(7, "assistant", "x", tool_calls=[CALL], metadata={"k": [1, "é"]})
    d = message_to_dict(m)
    assert d["created_at"] == "2026-01-02T03:04:05.678000+00:00"
    assert datetime.fromisoformat(d["created_at"]) == T0
    assert json.loads(json.dumps(d)) == d
    assert d["seq"] == 7 and d["tool_calls"] == [CALL] and d["metadata"] == {"k": [1, "é"]}
    assert set(d) >= {
        "conversation_id",
        "seq",
        "role",
        "content",
        "tool_name",
        "tool_call_id",
        "tool_calls",
        "metadata",
        "created_at",
    }


def test_empty_assistant_rows_are_left_out() -> None:
    history = [
        make_message(1, "user", "q"),
        make_message(2, "assistant", None, metadata={"openai_item": {"type": "reasoning"}}),
        make_message(3, "assistant", None, tool_calls=[]),
        make_message(4, "assistant", ""),
    ]
    assert build_message_array(history, None) == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": ""},
    ]
