"""Turning stored messages into the chat-completions array, and into JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from convdb import Message, build_message_array, message_to_dict

T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def msg(seq: int, role: str, content: str | None, **kw: object) -> Message:
    fields: dict[str, object] = {"tool_name": None, "tool_call_id": None, "tool_calls": None, "metadata": {}}
    fields.update(kw)
    return Message(conversation_id="c", seq=seq, role=role, content=content, created_at=T0,  # type: ignore[arg-type]
                   **fields)  # type: ignore[arg-type]


CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}


def test_array_order_and_tool_fields() -> None:
    history = [
        msg(1, "user", "weather in Oslo?"),
        msg(2, "assistant", None, tool_calls=[CALL]),
        msg(3, "tool", '{"temp": 3}', tool_call_id="call_1", tool_name="weather"),
        msg(4, "assistant", "3 degrees"),
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
    out = build_message_array([msg(1, "user", "hi")], None)
    assert out == [{"role": "user", "content": "hi"}]


def test_empty_history() -> None:
    assert build_message_array([], "hello", system_prompt="s") == [
        {"role": "system", "content": "s"}, {"role": "user", "content": "hello"}]


def test_message_to_dict_is_json_serialisable_with_iso_times() -> None:
    m = msg(7, "assistant", "x", tool_calls=[CALL], metadata={"k": [1, "é"]})
    d = message_to_dict(m)
    assert d["created_at"] == "2026-01-02T03:04:05.678000+00:00"
    assert datetime.fromisoformat(d["created_at"]) == T0
    assert json.loads(json.dumps(d)) == d
    assert d["seq"] == 7 and d["tool_calls"] == [CALL] and d["metadata"] == {"k": [1, "é"]}
    assert set(d) >= {"conversation_id", "seq", "role", "content", "tool_name", "tool_call_id", "tool_calls",
                      "metadata", "created_at"}


def test_empty_assistant_rows_are_left_out() -> None:
    history = [msg(1, "user", "q"), msg(2, "assistant", None, metadata={"openai_item": {"type": "reasoning"}}),
               msg(3, "assistant", None, tool_calls=[]), msg(4, "assistant", "")]
    assert build_message_array(history, None) == [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]
