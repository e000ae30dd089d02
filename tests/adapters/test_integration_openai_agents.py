"""ConvDBSession against the real openai-agents package and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from agents import Agent, Model, ModelResponse, RunConfig, Runner, Usage, function_tool
from agents.items import TResponseInputItem, TResponseStreamEvent
from agents.memory import Session, SessionSettings
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

import convdb.integrations._common as common
from convdb import ConversationNotFound, ConversationStore, InvalidInput, build_message_array
from convdb.integrations.openai_agents import ConvDBSession

USER = "alice"

# One item of every Responses-API input type the SDK can hand a session, as the SDK produces them.
ITEMS: dict[str, dict[str, Any]] = {
    "easy_user": {"role": "user", "content": "What's the weather in Paris? ☀️ «ü» 𝄞"},
    "user_parts": {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": "Describe this"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "auto"},
            {"type": "input_file", "file_id": "file_123"},
        ],
    },
    "system": {"role": "system", "content": "You are terse."},
    "developer": {
        "type": "message",
        "role": "developer",
        "content": [{"type": "input_text", "text": "Be nice"}],
    },
    "assistant_output": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [
            {
                "type": "output_text",
                "text": "Hi there",
                "annotations": [
                    {
                        "type": "url_citation",
                        "url": "https://example.com",
                        "title": "Ex",
                        "start_index": 0,
                        "end_index": 2,
                    }
                ],
                "logprobs": [],
            }
        ],
    },
    "assistant_refusal": {
        "id": "msg_2",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "refusal", "refusal": "I can't help with that."}],
    },
    "function_call": {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city": "Paris", "days": 2}',
        "status": "completed",
    },
    "function_call_output": {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 21.5 °C"},
    "function_call_output_parts": {
        "type": "function_call_output",
        "call_id": "call_2",
        "output": [
            {"type": "input_text", "text": "chart attached"},
            {"type": "input_image", "image_url": "https://example.com/c.png", "detail": "low"},
        ],
    },
    "reasoning": {
        "type": "reasoning",
        "id": "rs_1",
        "summary": [{"type": "summary_text", "text": "The user wants weather."}],
        "encrypted_content": "gAAAAABo" + "x" * 200,
    },
    "custom_tool_call": {
        "type": "custom_tool_call",
        "id": "ctc_1",
        "call_id": "call_3",
        "name": "run_sql",
        "input": "SELECT 1;",
    },
    "custom_tool_call_output": {"type": "custom_tool_call_output", "call_id": "call_3", "output": "1"},
    "computer_call": {
        "type": "computer_call",
        "id": "cc_1",
        "call_id": "call_4",
        "action": {"type": "click", "button": "left", "x": 10, "y": 20},
        "pending_safety_checks": [],
        "status": "completed",
    },
    "computer_call_output": {
        "type": "computer_call_output",
        "call_id": "call_4",
        "output": {"type": "computer_screenshot", "image_url": "data:image/png;base64,AAAA"},
    },
    "local_shell_call": {
        "type": "local_shell_call",
        "id": "lsc_1",
        "call_id": "call_5",
        "action": {"type": "exec", "command": ["ls", "-la"], "env": {"A": "1"}},
        "status": "completed",
    },
    "local_shell_call_output": {
        "type": "local_shell_call_output",
        "id": "call_5",
        "output": '{"stdout": "x"}',
    },
    "web_search_call": {
        "type": "web_search_call",
        "id": "ws_1",
        "status": "completed",
        "action": {"type": "search", "query": "paris weather"},
    },
    "file_search_call": {
        "type": "file_search_call",
        "id": "fs_1",
        "queries": ["q"],
        "status": "completed",
        "results": [{"file_id": "f1", "score": 0.875, "text": "t", "attributes": {"k": True}}],
    },
    "mcp_list_tools": {
        "type": "mcp_list_tools",
        "id": "ml_1",
        "server_label": "srv",
        "tools": [{"name": "t", "input_schema": {"type": "object"}}],
    },
    "mcp_approval_request": {
        "type": "mcp_approval_request",
        "id": "mar_1",
        "server_label": "srv",
        "name": "t",
        "arguments": "{}",
    },
    "mcp_approval_response": {
        "type": "mcp_approval_response",
        "approval_request_id": "mar_1",
        "approve": True,
    },
    "mcp_call": {
        "type": "mcp_call",
        "id": "mc_1",
        "server_label": "srv",
        "name": "t",
        "arguments": "{}",
        "output": "done",
    },
    "image_generation_call": {
        "type": "image_generation_call",
        "id": "ig_1",
        "status": "completed",
        "result": None,
    },
    "code_interpreter_call": {
        "type": "code_interpreter_call",
        "id": "ci_1",
        "code": "print(1)",
        "container_id": "cntr",
        "outputs": [{"type": "logs", "logs": "1\n"}],
        "status": "completed",
    },
    "compaction": {"type": "compaction", "id": "cmp_1", "encrypted_content": "opaque"},
    "item_reference": {"type": "item_reference", "id": "msg_0"},
    "numbers_and_nesting": {
        "type": "function_call",
        "call_id": "call_6",
        "name": "calc",
        "arguments": json.dumps({"x": 0.1, "big": 2**62, "neg": -1e-300, "deep": [[[{"a": None}]]]}),
    },
}

EXPECTED_ROLES = {
    "easy_user": "user",
    "user_parts": "user",
    "system": "system",
    "developer": "system",
    "assistant_output": "assistant",
    "assistant_refusal": "assistant",
    "function_call": "assistant",
    "function_call_output": "tool",
    "function_call_output_parts": "tool",
    "reasoning": "assistant",
    "custom_tool_call": "assistant",
    "custom_tool_call_output": "tool",
    "computer_call": "assistant",
    "computer_call_output": "tool",
    "local_shell_call": "assistant",
    "local_shell_call_output": "tool",
    "web_search_call": "assistant",
    "file_search_call": "assistant",
    "mcp_list_tools": "assistant",
    "mcp_approval_request": "assistant",
    "mcp_approval_response": "assistant",
    "mcp_call": "assistant",
    "image_generation_call": "assistant",
    "code_interpreter_call": "assistant",
    "compaction": "assistant",
    "item_reference": "assistant",
    "numbers_and_nesting": "assistant",
}


def items(*names: str) -> list[TResponseInputItem]:
    return [copy.deepcopy(ITEMS[n]) for n in names]  # type: ignore[misc]


def session(store: ConversationStore, sid: str = "s1", user: str = USER, **kw: Any) -> ConvDBSession:
    return ConvDBSession(store, sid, user, **kw)


# -- the protocol ------------------------------------------------------------------------------
async def test_is_a_session(store: ConversationStore) -> None:
    s = session(store)
    assert isinstance(s, Session)
    assert s.session_id == "s1"
    assert isinstance(s.session_settings, SessionSettings)
    assert s.session_settings.limit is None


async def test_empty_and_unknown_session(store: ConversationStore) -> None:
    s = session(store, "never-written")
    assert await s.get_items() == []
    assert await s.get_items(limit=3) == []
    assert await s.pop_item() is None
    await s.clear_session()  # nothing to clear: no error
    assert await s.get_items() == []


# -- lossless round trips ----------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ITEMS))
async def test_each_item_type_round_trips(store: ConversationStore, name: str) -> None:
    s = session(store, f"one-{name}")
    original = items(name)
    await s.add_items(original)
    assert original == items(name)  # the caller's items are not modified
    assert await s.get_items() == original
    # A new session object (a new request) reads the same from the database.
    assert await session(store, f"one-{name}").get_items() == original
    [stored] = [m async for m in store.export_messages(f"one-{name}", USER)]  # untrimmed, unlike windows
    assert stored.role == EXPECTED_ROLES[name]
    assert stored.metadata == {"openai_item": ITEMS[name]}
    assert await s.pop_item() == ITEMS[name]


async def test_all_item_types_in_one_batch_keep_order(store: ConversationStore) -> None:
    s = session(store)
    names = list(ITEMS)
    await s.add_items(items(*names))
    assert await s.get_items() == items(*names)
    history = await store.get_history("s1", USER, limit=100)
    assert [m.seq for m in history] == list(range(1, len(names) + 1))
    assert [m.role for m in history] == [EXPECTED_ROLES[n] for n in names]


async def test_columns_are_useful_to_other_readers(store: ConversationStore) -> None:
    s = session(store)
    await s.add_items(
        items(
            "easy_user",
            "user_parts",
            "developer",
            "assistant_output",
            "assistant_refusal",
            "function_call",
            "function_call_output",
            "function_call_output_parts",
            "reasoning",
            "custom_tool_call",
            "custom_tool_call_output",
            "computer_call",
            "computer_call_output",
            "local_shell_call",
            "local_shell_call_output",
        )
    )
    h = {i: m for i, m in enumerate(await store.get_history("s1", USER, limit=100))}
    assert h[0].content == ITEMS["easy_user"]["content"]
    assert h[1].content == "Describe this"
    assert (h[2].role, h[2].content) == ("system", "Be nice")
    assert h[3].content == "Hi there"
    assert h[4].content == "I can't help with that."
    assert h[5].content is None
    assert h[5].tool_name == "get_weather"
    assert h[5].tool_calls == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'},
        }
    ]
    assert (h[6].role, h[6].tool_call_id, h[6].content) == ("tool", "call_1", "sunny, 21.5 °C")
    assert (h[7].tool_call_id, h[7].content) == ("call_2", "chart attached")
    assert (h[8].role, h[8].content, h[8].tool_calls) == ("assistant", None, None)
    assert h[8].token_count >= len(ITEMS["reasoning"]["encrypted_content"]) // 4  # counted from its JSON
    assert h[9].tool_calls == [
        {"id": "call_3", "type": "custom", "custom": {"name": "run_sql", "input": "SELECT 1;"}}
    ]
    assert (h[10].tool_call_id, h[10].content) == ("call_3", "1")
    assert h[11].tool_calls == [{"id": "call_4", "type": "computer_call"}]
    assert (h[12].role, h[12].tool_call_id, h[12].content) == ("tool", "call_4", None)
    assert h[13].tool_calls == [{"id": "call_5", "type": "local_shell_call"}]
    assert (h[14].role, h[14].tool_call_id) == ("tool", "call_5")
    assert all(m.token_count >= 0 for m in h.values())
    # The chat-completions view of the function-call exchange is well formed.
    chat = build_message_array([h[0], h[5], h[6], h[3]], None)
    assert chat[1]["tool_calls"][0]["id"] == chat[2]["tool_call_id"] == "call_1"


async def test_messages_written_by_other_clients_read_as_items(store: ConversationStore) -> None:
    await store.get_or_create_conversation("plain", USER)
    await store.save_messages(
        "plain",
        USER,
        [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
                    {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "content": "r1", "tool_call_id": "c1"},
            {"role": "tool", "content": "r2", "tool_call_id": "c2"},
            {"role": "assistant", "content": "done"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "c3", "type": "function", "function": {"name": "h", "arguments": "{}"}}
                ],
            },
            {
                "role": "assistant",
                "content": "let me check",
                "tool_calls": [
                    {"id": "c4", "type": "function", "function": {"name": "h", "arguments": "{}"}}
                ],
            },
        ],
    )
    s = session(store, "plain")
    expected = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a":1}'},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "r1"},
        {"type": "function_call_output", "call_id": "c2", "output": "r2"},
        {"role": "assistant", "content": "done"},
        {"type": "function_call", "call_id": "c3", "name": "h", "arguments": "{}"},
        {"role": "assistant", "content": "let me check"},
        {"type": "function_call", "call_id": "c4", "name": "h", "arguments": "{}"},
    ]
    assert await s.get_items() == expected
    # limit counts items, even when one stored message stands for several, and returns the raw
    # newest items (SDK 0.24: the Runner prunes outputs whose call is outside the window).
    for k in (1, 3, 4, 6, 9, 10, 11):
        assert await s.get_items(limit=k) == expected[-k:], k


# -- ordering, limits, pop, clear ----------------------------------------------------------------
def numbered(n: int, start: int = 0) -> list[TResponseInputItem]:
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(start, start + n)
    ]


async def test_behaves_like_the_sdks_own_sqlite_session(store: ConversationStore) -> None:
    """Drop-in parity with the SDK's reference implementation on the same operations, every limit
    included (a limited read is the raw newest items, as in the SDK)."""
    from agents import SQLiteSession

    ours, reference = session(store, "parity"), SQLiteSession("parity")
    names = list(ITEMS)
    for chunk in (names[:5], names[5:6], names[6:]):
        await ours.add_items(items(*chunk))
        await reference.add_items(items(*chunk))
    assert await ours.get_items() == await reference.get_items()
    everything = await reference.get_items()
    for k in range(1, len(everything) + 3):
        assert await ours.get_items(limit=k) == await reference.get_items(limit=k), k
    for _ in range(3):
        assert await ours.pop_item() == await reference.pop_item()
    assert await ours.get_items() == await reference.get_items()
    await ours.clear_session()
    await reference.clear_session()
    assert await ours.get_items() == await reference.get_items() == []
    assert await ours.pop_item() is await reference.pop_item() is None
    reference.close()


async def test_order_across_batches_and_limit(store: ConversationStore) -> None:
    s = session(store)
    await s.add_items(numbered(3))
    await s.add_items(numbered(1, 3))
    await s.add_items([])  # a no-op, not an error
    await s.add_items(numbered(4, 4))
    everything = numbered(8)
    assert await s.get_items() == everything
    assert await s.get_items(limit=3) == everything[-3:]
    assert await s.get_items(limit=1) == everything[-1:]
    assert await s.get_items(limit=8) == everything
    assert await s.get_items(limit=50) == everything
    assert await s.get_items(limit=0) == []


async def test_limited_read_is_the_raw_newest_items(store: ConversationStore) -> None:
    s = session(store)
    turn = items("easy_user", "function_call", "function_call_output", "assistant_output")
    await s.add_items(turn)
    assert await s.get_items(limit=3) == turn[1:]
    # The newest 2 start with the output of a call outside the window: SDK 0.24 returns it (its
    # Runner prunes it), where convdb's own windows trim it.
    assert await s.get_items(limit=2) == turn[2:]
    assert await s.get_items(limit=1) == turn[3:]
    assert await s.get_items() == turn
    assert [m.role for m in await store.get_history("s1", USER, limit=2)] == ["assistant"]


async def test_whole_history_is_never_trimmed(store: ConversationStore) -> None:
    # A session may start with an output (its call was popped, or the caller wrote it that way):
    # the whole-history read still returns exactly what was written.
    s = session(store)
    await s.add_items(items("function_call_output", "computer_call_output", "easy_user"))
    assert await s.get_items() == items("function_call_output", "computer_call_output", "easy_user")
    assert await s.get_items(limit=3) == items("function_call_output", "computer_call_output", "easy_user")
    assert await s.get_items(limit=2) == items("computer_call_output", "easy_user")


async def test_max_tokens_bounds_every_read(store: ConversationStore) -> None:
    # Each "mNN" item is one message whose content estimate is 1 token (3 chars / 4, rounded up).
    writer = session(store)
    await writer.add_items([{"role": "user", "content": f"m{i:02d}"} for i in range(10)])
    rows = await store.get_history("s1", USER)
    assert {m.token_count for m in rows} == {1}
    budgeted = session(store, max_tokens=3)
    assert [i["content"] for i in await budgeted.get_items()] == ["m07", "m08", "m09"]  # type: ignore[typeddict-item]
    assert [i["content"] for i in await budgeted.get_items(limit=2)] == ["m08", "m09"]  # type: ignore[typeddict-item]
    assert await session(store, max_tokens=0).get_items() == []
    with pytest.raises(InvalidInput, match="max_tokens"):
        session(store, max_tokens=-1)


async def test_session_settings_limit_is_the_default_window(store: ConversationStore) -> None:
    s = session(store, session_settings=SessionSettings(limit=2))
    await s.add_items(numbered(5))
    assert await s.get_items() == numbered(5)[-2:]
    assert await s.get_items(limit=4) == numbered(5)[-4:]


async def test_pop_returns_newest_until_empty(store: ConversationStore) -> None:
    s = session(store)
    await s.add_items(items("easy_user", "function_call", "function_call_output"))
    assert await s.pop_item() == ITEMS["function_call_output"]
    assert await s.get_items() == items("easy_user", "function_call")
    assert await s.pop_item() == ITEMS["function_call"]
    assert await s.pop_item() == ITEMS["easy_user"]
    assert await s.pop_item() is None
    assert await s.get_items() == []
    await s.add_items(numbered(1))  # the session is still usable
    assert await s.get_items() == numbered(1)


async def test_concurrent_pops_each_take_a_different_item(store: ConversationStore) -> None:
    await session(store).add_items(numbered(8))
    popped = await asyncio.gather(*(session(store).pop_item() for _ in range(10)))
    got = [p for p in popped if p is not None]
    assert len(got) == 8
    assert sorted(json.dumps(p, sort_keys=True) for p in got) == sorted(
        json.dumps(p, sort_keys=True) for p in numbered(8)
    )
    assert await session(store).get_items() == []


async def test_clear_keeps_conversation(store: ConversationStore) -> None:
    s = session(store, title="weather chat")
    await s.add_items(numbered(4))
    await s.clear_session()
    assert await s.get_items() == []
    conv = await store.get_conversation("s1", USER)
    assert conv.title == "weather chat"
    await s.add_items(numbered(2))
    assert await s.get_items() == numbered(2)
    assert [m.seq for m in await store.get_history("s1", USER)][-1] >= 1


# -- atomicity and isolation ----------------------------------------------------------------------
async def test_add_items_is_one_atomic_batch(store: ConversationStore) -> None:
    s = session(store)
    await s.add_items(numbered(2))
    bad: list[TResponseInputItem] = [
        *numbered(3, 2),
        {"role": "user", "content": "nul \x00 here"},
        *numbered(2, 5),
    ]
    with pytest.raises(InvalidInput, match=r"messages\[3\]"):
        await s.add_items(bad)
    assert await s.get_items() == numbered(2)
    # Not JSON (a set inside the item): refused before I/O as well.
    with pytest.raises(InvalidInput):
        await s.add_items(
            [
                *numbered(1),
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}", "x": {1, 2}},  # type: ignore[list-item]
            ]
        )
    assert await s.get_items() == numbered(2)


async def test_first_write_creates_the_conversation(store: ConversationStore) -> None:
    s = session(store, "fresh", title="t")
    with pytest.raises(ConversationNotFound):
        await store.get_conversation("fresh", USER)
    await s.add_items(numbered(2))
    conv = await store.get_conversation("fresh", USER)
    assert (conv.user_id, conv.title) == (USER, "t")
    # Two sessions writing the first batch at once: one conversation, both batches stored.
    a, b = session(store, "race"), session(store, "race")
    await asyncio.gather(a.add_items(numbered(3)), b.add_items(numbered(3, 3)))
    got = await a.get_items()
    assert sorted(i["content"] for i in got) == [f"m{i}" for i in range(6)]  # type: ignore[typeddict-item,type-var]


async def test_other_users_session_is_invisible_and_read_only(store: ConversationStore) -> None:
    mine = session(store, "shared-id", USER)
    await mine.add_items(numbered(3))
    theirs = session(store, "shared-id", "mallory")
    assert await theirs.get_items() == []
    assert await theirs.pop_item() is None
    await theirs.clear_session()
    with pytest.raises(ConversationNotFound):
        await theirs.add_items(numbered(1))
    assert await mine.get_items() == numbered(3)


async def test_reads_longer_than_one_history_window(store: ConversationStore, monkeypatch: Any) -> None:
    # Past MAX_HISTORY_LIMIT messages the whole-history read streams the conversation. The bound is
    # lowered here so the test stays fast; the real 10,000 bound is exercised in the slow test below.
    monkeypatch.setattr(common, "MAX_HISTORY_LIMIT", 5)
    s = session(store)
    await s.add_items(numbered(12))
    assert await s.get_items() == numbered(12)
    assert await s.get_items(limit=5) == numbered(12)[-5:]
    assert await s.get_items(limit=7) == numbered(12)[-7:]
    assert await s.get_items(limit=100) == numbered(12)


@pytest.mark.slow
async def test_whole_history_beyond_ten_thousand_items(store: ConversationStore) -> None:
    s = session(store)
    await s.add_items(numbered(10_000))
    await s.add_items(numbered(7, 10_000))
    got = await s.get_items()
    assert len(got) == 10_007
    assert got == numbered(10_007)
    assert await s.get_items(limit=10_003) == numbered(10_007)[-10_003:]


# -- the SDK's own runner ------------------------------------------------------------------------
class ScriptedModel(Model):
    """A Model that returns canned responses and records every input; never touches the network."""

    def __init__(self, responses: list[list[Any]]) -> None:
        self.responses = list(responses)
        self.inputs: list[list[TResponseInputItem]] = []

    async def get_response(
        self, system_instructions: str | None, input: str | list[TResponseInputItem], *args: Any, **kw: Any
    ) -> ModelResponse:
        self.inputs.append(
            copy.deepcopy([{"role": "user", "content": input}] if isinstance(input, str) else list(input))
        )
        output = self.responses.pop(0)
        return ModelResponse(output=output, usage=Usage(), response_id=None)

    async def stream_response(
        self, system_instructions: str | None, input: str | list[TResponseInputItem], *args: Any, **kw: Any
    ) -> AsyncIterator[TResponseStreamEvent]:
        """The whole canned response as one ``response.completed`` event (enough for the runner)."""
        response = await self.get_response(system_instructions, input)
        yield ResponseCompletedEvent(
            type="response.completed",
            sequence_number=0,
            response=Response(
                id="resp_fake",
                created_at=0,
                model="scripted",
                object="response",
                output=response.output,
                tools=[],
                tool_choice="auto",
                parallel_tool_calls=False,
            ),
        )


def text_reply(text: str, msg_id: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id=msg_id,
        type="message",
        role="assistant",
        status="completed",
        content=[ResponseOutputText(type="output_text", text=text, annotations=[])],
    )


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def strip(item: Any) -> dict[str, Any]:
    """An item without the SDK's optional bookkeeping fields, for comparing shapes."""
    return {
        k: v
        for k, v in item.items()
        if k in ("role", "content", "type", "call_id", "name", "arguments", "output")
    }


async def test_runner_reads_and_writes_history_through_convdb(store: ConversationStore) -> None:
    model = ScriptedModel(
        [
            # Turn 1: a tool call, then the answer that uses its output.
            [
                ResponseFunctionToolCall(
                    type="function_call",
                    id="fc_1",
                    call_id="call_w",
                    name="get_weather",
                    arguments='{"city": "Paris"}',
                    status="completed",
                )
            ],
            [text_reply("It is sunny in Paris.", "msg_a")],
            # Turn 2: answers from history alone.
            [text_reply("You asked about Paris.", "msg_b")],
        ]
    )
    agent = Agent(name="weather", instructions="Answer briefly.", model=model, tools=[get_weather])
    config = RunConfig(tracing_disabled=True)

    first = await Runner.run(agent, "Weather in Paris?", session=session(store, "run"), run_config=config)
    assert first.final_output == "It is sunny in Paris."

    stored = await store.get_history("run", USER)
    assert [(m.role, m.content, m.tool_call_id) for m in stored] == [
        ("user", "Weather in Paris?", None),
        ("assistant", None, None),
        ("tool", "sunny in Paris", "call_w"),
        ("assistant", "It is sunny in Paris.", None),
    ]
    assert stored[1].tool_calls == [
        {
            "id": "call_w",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    turn1 = await session(store, "run").get_items()
    assert [strip(i) for i in turn1][:3] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "type": "function_call",
            "call_id": "call_w",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        {"type": "function_call_output", "call_id": "call_w", "output": "sunny in Paris"},
    ]
    assert turn1[3]["content"][0]["text"] == "It is sunny in Paris."  # type: ignore[index, typeddict-item]

    # Turn 2, in a new session object as a new request would build it: the SDK reads turn 1 from
    # convdb and sends it to the model before the new input.
    second = await Runner.run(
        agent, "Which city did I ask about?", session=session(store, "run"), run_config=config
    )
    assert second.final_output == "You asked about Paris."
    sent = model.inputs[-1]
    assert [strip(i) for i in sent[:4]] == [strip(i) for i in turn1]
    assert strip(sent[4]) == {"role": "user", "content": "Which city did I ask about?"}
    assert len(sent) == 5
    final = await session(store, "run").get_items()
    assert len(final) == 6
    assert final[:4] == turn1
    assert [m.role for m in await store.get_history("run", USER)][4:] == ["user", "assistant"]
    assert model.responses == []


async def test_streamed_run_reads_and_writes_history_through_convdb(store: ConversationStore) -> None:
    model = ScriptedModel(
        [
            [
                ResponseFunctionToolCall(
                    type="function_call",
                    id="fc_s",
                    call_id="call_s",
                    name="get_weather",
                    arguments='{"city": "Oslo"}',
                    status="completed",
                )
            ],
            [text_reply("Sunny in Oslo.", "msg_s1")],
            [text_reply("Oslo.", "msg_s2")],
        ]
    )
    agent = Agent(name="weather", model=model, tools=[get_weather])
    config = RunConfig(tracing_disabled=True)

    first = Runner.run_streamed(
        agent, "Weather in Oslo?", session=session(store, "streamed"), run_config=config
    )
    async for _ in first.stream_events():
        pass
    turn1 = await session(store, "streamed").get_items()
    assert strip(turn1[0]) == {"role": "user", "content": "Weather in Oslo?"}
    assert turn1[-1]["content"][0]["text"] == "Sunny in Oslo."  # type: ignore[index, typeddict-item]
    # (Which tool items a streamed run persists is the SDK's choice: 0.24 stores the call and its
    # output, 0.8 did not.)

    second = Runner.run_streamed(agent, "Which city?", session=session(store, "streamed"), run_config=config)
    async for _ in second.stream_events():
        pass
    assert second.final_output == "Oslo."
    sent = model.inputs[-1]
    assert [strip(i) for i in sent] == [strip(i) for i in turn1] + [
        {"role": "user", "content": "Which city?"}
    ]
    assert (await session(store, "streamed").get_items())[: len(turn1)] == turn1


async def test_runner_respects_session_settings_limit(store: ConversationStore) -> None:
    model = ScriptedModel([[text_reply("one", "m1")], [text_reply("two", "m2")]])
    agent = Agent(name="a", model=model)
    config = RunConfig(tracing_disabled=True)
    s = session(store, "lim", session_settings=SessionSettings(limit=1))
    await Runner.run(agent, "first", session=s, run_config=config)
    await Runner.run(agent, "second", session=s, run_config=config)
    # The model saw only the newest stored item, then the new input.
    assert [strip(i).get("content") for i in model.inputs[-1]][-1] == "second"
    assert len(model.inputs[-1]) == 2
    assert len(await session(store, "lim").get_items()) == 4


# -- the extra is optional ----------------------------------------------------------------------
def test_convdb_imports_without_the_extra() -> None:
    """convdb imports without openai-agents; importing the adapter then says what to install."""
    code = (
        "import sys\n"
        "sys.modules['agents'] = None  # makes 'import agents' fail as if not installed\n"
        "import convdb, convdb.integrations\n"
        "assert 'agents' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "try:\n"
        "    import convdb.integrations.openai_agents\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'convdb[openai-agents]'" in done.stdout
