"""ConvDBMessageHistory against the real pydantic-ai-slim package and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import typing
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai import messages as pm
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from convdb import ConversationNotFound, ConversationStore, InvalidInput, build_message_array
from convdb.integrations.pydantic_ai import METADATA_KEY, ConvDBMessageHistory

USER = "alice"
T0 = datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=UTC)


def history(store: ConversationStore, cid: str = "c1", user: str = USER) -> ConvDBMessageHistory:
    return ConvDBMessageHistory(store, cid, user)


def _part_classes(union: Any) -> set[type]:
    """The part classes of ``ModelRequestPart`` / ``ModelResponsePart`` (Annotated unions)."""
    members = typing.get_args(typing.get_args(union)[0])
    return {typing.get_args(member)[0] for member in members}


def request_part_samples() -> list[Any]:
    return [
        pm.SystemPromptPart(content="Be terse.", timestamp=T0),
        pm.UserPromptPart(
            content=[
                "Look: ☀️ 𝄞",
                pm.BinaryImage(data=b"\x00\xffpng", media_type="image/png"),
                pm.ImageUrl(url="https://example.com/a.png"),
            ],
            timestamp=T0,
        ),
        pm.SpeechPart(speaker="user", transcript="hello"),
        pm.ToolSearchReturnPart(content={"discovered_tools": [], "message": "none"}),
        pm.LoadCapabilityReturnPart(content={"message": "loaded", "instructions": "use it"}),
        pm.ToolReturnPart(
            tool_name="weather",
            content={"temp": 21.5, "sky": ["sunny"]},
            tool_call_id="call_1",
            timestamp=T0,
            metadata={"k": 1},
        ),
        pm.ToolReturnPart(tool_name="weather", content="bad args", tool_call_id="call_2", outcome="retried"),
        pm.RetryPromptPart(
            content="old-style retry", tool_name="weather", tool_call_id="call_3", timestamp=T0
        ),
        pm.RetryFeedbackPart(content="no output", retry=pm.RetryInfo(cause="no_output", attempt=1)),
        pm.ToolAvailabilityDeltaPart(tools_added=["t1"]),
        pm.CapabilityLoadDeltaPart(loaded=["cap"]),
        pm.ModelSettingsDeltaPart(settings={"thinking": "high"}),
        pm.InstructionDeltaPart(id=None, content="new instr"),
        pm.InstructionBaselinePart(instructions=[pm.InstructionPart(content="base")]),
        pm.CompactionPart(content="summary"),
    ]


def response_part_samples() -> list[Any]:
    return [
        pm.TextPart(content="It is sunny.", id="t1", provider_details={"x": [1, 2]}),
        pm.ToolSearchCallPart(args={"queries": ["weather"]}),
        pm.LoadCapabilityCallPart(args={"id": "cap"}),
        pm.ToolCallPart(tool_name="weather", args={"city": "Paris"}, tool_call_id="call_1"),
        pm.NativeToolSearchCallPart(),
        pm.NativeToolCallPart(
            tool_name="web_search", args='{"q": "x"}', tool_call_id="b1", provider_name="openai"
        ),
        pm.NativeToolSearchReturnPart(content={"discovered_tools": []}),
        pm.NativeToolReturnPart(tool_name="web_search", content=[{"url": "u"}], tool_call_id="b1"),
        pm.ThinkingPart(content="hmm", signature="sig"),
        pm.CompactionPart(content="compacted", provider_name="anthropic"),
        pm.FilePart(content=pm.BinaryImage(data=b"GIF89a", media_type="image/gif")),
        pm.SpeechPart(speaker="assistant", transcript="bye"),
    ]


def test_the_samples_cover_every_part_class() -> None:
    """A Pydantic AI release that adds a part class fails here until a sample covers it."""
    assert {type(p) for p in request_part_samples()} == _part_classes(pm.ModelRequestPart)
    assert {type(p) for p in response_part_samples()} == _part_classes(pm.ModelResponsePart)


async def test_every_message_and_part_type_round_trips(store: ConversationStore) -> None:
    h = history(store)
    messages: list[pm.ModelMessage] = [
        pm.ModelRequest(parts=[p], timestamp=T0, instructions="be kind", run_id="r1", metadata={"m": 1})
        for p in request_part_samples()
    ] + [
        pm.ModelResponse(
            parts=[p],
            usage=RequestUsage(input_tokens=3, output_tokens=4),
            model_name="m",
            timestamp=T0,
            provider_name="p",
            finish_reason="stop",
            provider_details={"d": None},
        )
        for p in response_part_samples()
    ]
    messages.append(pm.ModelRequest(parts=request_part_samples(), timestamp=T0))
    messages.append(pm.ModelResponse(parts=response_part_samples(), timestamp=T0))
    await h.add(messages)
    # Pydantic AI itself loads the deprecated RetryPromptPart as its successor (a ToolReturnPart
    # with outcome "retried"): what comes back is what its own JSON round trip gives, and that
    # differs from what was written in exactly those parts.
    adapter = pm.ModelMessagesTypeAdapter
    expected = adapter.validate_json(adapter.dump_json(messages))
    assert await h.messages() == expected
    # Also through a window read (get_history) rather than the export path.
    assert await h.window(limit=len(messages)) == expected
    legacy = [i for i, m in enumerate(messages) if any(isinstance(p, pm.RetryPromptPart) for p in m.parts)]
    assert legacy == [7, len(messages) - 2]
    assert [m for i, m in enumerate(expected) if i not in legacy] == [
        m for i, m in enumerate(messages) if i not in legacy
    ]
    assert isinstance(expected[7].parts[0], pm.ToolReturnPart) and expected[7].parts[0].outcome == "retried"


async def test_columns_are_filled_for_other_readers(store: ConversationStore) -> None:
    h = history(store)
    await h.add(
        [
            pm.ModelRequest(parts=[pm.SystemPromptPart(content="sys")]),
            pm.ModelRequest(parts=[pm.UserPromptPart(content="weather?")]),
            pm.ModelResponse(
                parts=[
                    pm.TextPart(content="checking"),
                    pm.ToolCallPart(tool_name="weather", args={"city": "Paris"}, tool_call_id="c1"),
                ]
            ),
            pm.ModelRequest(
                parts=[pm.ToolReturnPart(tool_name="weather", content="sunny", tool_call_id="c1")]
            ),
            pm.ModelResponse(parts=[pm.ThinkingPart(content="x" * 400)]),
        ]
    )
    stored = await store.get_history("c1", USER)
    assert [m.role for m in stored] == ["system", "user", "assistant", "tool", "assistant"]
    assert stored[2].content == "checking"
    assert stored[2].tool_calls == [
        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}
    ]
    assert (stored[3].tool_call_id, stored[3].tool_name, stored[3].content) == ("c1", "weather", "sunny")
    assert stored[4].content is None and stored[4].token_count > 50  # counted from its JSON
    array = build_message_array(stored, None)
    assert array[3] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}


def _exchange(i: int) -> list[pm.ModelMessage]:
    return [
        pm.ModelRequest(parts=[pm.UserPromptPart(content=f"q{i}")]),
        pm.ModelResponse(parts=[pm.ToolCallPart(tool_name="t", args={}, tool_call_id=f"c{i}")]),
        pm.ModelRequest(parts=[pm.ToolReturnPart(tool_name="t", content=f"r{i}", tool_call_id=f"c{i}")]),
        pm.ModelResponse(parts=[pm.TextPart(content=f"a{i}")]),
    ]


async def test_window_is_the_newest_n_without_a_return_whose_call_is_outside(
    store: ConversationStore,
) -> None:
    h = history(store)
    all_messages = [m for i in range(3) for m in _exchange(i)]
    await h.add(all_messages)
    assert await h.window(limit=4) == all_messages[-4:]
    assert await h.window(limit=5) == all_messages[-5:]
    # limit=2 would start with the tool return of c2 whose call is outside: it is left out.
    assert await h.window(limit=2) == all_messages[-1:]
    assert await h.window(limit=0) == []
    # A token budget bounds the window too, and never splits a call from its return.
    window = await h.window(limit=100, max_tokens=12)
    assert window and window == all_messages[-len(window) :]
    first = window[0]
    assert not (
        isinstance(first, pm.ModelRequest) and any(isinstance(p, pm.ToolReturnPart) for p in first.parts)
    )


async def test_messages_written_by_other_clients_read_as_equivalent_parts(store: ConversationStore) -> None:
    await store.get_or_create_conversation("c1", USER)
    await store.save_messages(
        "c1",
        USER,
        [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "k1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "k1", "tool_name": "f", "content": "done"},
            {"role": "assistant", "content": "ok"},
        ],
    )
    got = await history(store).messages()
    assert isinstance(got[0], pm.ModelRequest) and isinstance(got[0].parts[0], pm.SystemPromptPart)
    prompt = got[1].parts[0]
    assert isinstance(prompt, pm.UserPromptPart) and prompt.content == "hi"
    assert isinstance(got[2], pm.ModelResponse)
    assert got[2].parts == [pm.ToolCallPart(tool_name="f", args='{"a": 1}', tool_call_id="k1")]
    ret = got[3].parts[0]
    assert isinstance(ret, pm.ToolReturnPart) and (ret.tool_call_id, ret.content) == ("k1", "done")
    assert isinstance(got[4], pm.ModelResponse) and got[4].parts == [pm.TextPart(content="ok")]


async def test_a_scripted_agent_runs_several_turns_with_tool_calls_through_convdb(
    store: ConversationStore,
) -> None:
    seen: list[int] = []

    def script(messages: list[pm.ModelMessage], info: AgentInfo) -> pm.ModelResponse:
        seen.append(len(messages))
        last = messages[-1]
        if any(isinstance(p, pm.ToolReturnPart) for p in last.parts):
            returned = [p for p in last.parts if isinstance(p, pm.ToolReturnPart)]
            return pm.ModelResponse(parts=[pm.TextPart(content=f"the answer is {returned[0].content}")])
        prompt = next(p for p in last.parts if isinstance(p, pm.UserPromptPart))
        return pm.ModelResponse(
            parts=[pm.ToolCallPart(tool_name="double", args={"x": int(str(prompt.content))})]
        )

    agent = Agent(FunctionModel(script), instructions="double numbers")

    @agent.tool_plain
    def double(x: int) -> int:
        return 2 * x

    h = history(store)
    for turn in (1, 2, 3):
        result = await agent.run(str(turn), message_history=await h.messages())
        assert result.output == f"the answer is {2 * turn}"
        await h.add(result.new_messages())
    # Each turn adds request, call, return, answer; the model saw the whole stored history.
    assert seen == [1, 3, 5, 7, 9, 11]
    stored = await h.messages()
    assert len(stored) == 12
    assert [m.role for m in await store.get_history("c1", USER, limit=100)] == [
        "user",
        "assistant",
        "tool",
        "assistant",
    ] * 3
    # A windowed next turn: the model receives the last whole exchange plus the new prompt.
    seen.clear()
    result = await agent.run("4", message_history=await h.window(limit=2))
    assert result.output == "the answer is 8" and seen == [2, 4]


async def test_foreign_and_unknown_conversations(store: ConversationStore) -> None:
    await history(store, user="bob").add([pm.ModelRequest(parts=[pm.UserPromptPart(content="bob's")])])
    mine = history(store)  # same id c1, another owner
    assert await mine.messages() == []
    assert await mine.window(limit=5) == []
    await mine.clear()  # nothing of bob's is touched
    with pytest.raises(ConversationNotFound):
        await mine.add([pm.ModelRequest(parts=[pm.UserPromptPart(content="x")])])
    assert len(await history(store, user="bob").messages()) == 1
    assert await history(store, "never").messages() == []


async def test_clear_and_concurrent_first_writes(store: ConversationStore) -> None:
    hs = [history(store) for _ in range(4)]
    exchanges = [_exchange(i) for i in range(4)]
    await asyncio.gather(*(h.add(exchanges[i]) for i, h in enumerate(hs)))
    stored = await hs[0].messages()
    assert len(stored) == 16
    # Batches are atomic and contiguous: each exchange's four messages are adjacent.
    for k in range(0, 16, 4):
        assert stored[k : k + 4] in exchanges
    await hs[1].clear()
    assert await hs[0].messages() == []


async def test_bad_input_is_refused_before_io(store: ConversationStore) -> None:
    with pytest.raises(InvalidInput):
        ConvDBMessageHistory(store, "", USER)
    with pytest.raises(InvalidInput):
        ConvDBMessageHistory(store, "c1", "")
    h = history(store)
    with pytest.raises(InvalidInput):
        await h.add([{"role": "user"}])  # type: ignore[list-item]
    with pytest.raises(InvalidInput):
        await h.add(pm.ModelRequest(parts=[]))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        await h.window(limit="3")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        await h.window(max_tokens=-1)
    with pytest.raises(ConversationNotFound):
        await store.get_conversation("c1", USER)  # nothing was written


def test_metadata_key_is_stable() -> None:
    assert METADATA_KEY == "pydantic_ai_message"


def test_import_without_pydantic_ai_says_how_to_install() -> None:
    code = (
        "import sys; sys.modules['pydantic_ai'] = None; sys.modules['pydantic_ai.messages'] = None\n"
        "try:\n import convdb.integrations.pydantic_ai\nexcept ImportError as e: print(e)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'convdb[pydantic-ai]'" in out
