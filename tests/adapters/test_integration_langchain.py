"""ConvDBChatMessageHistory against the real langchain-core package and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from typing import Any

import pytest
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory

from convdb import ConversationNotFound, ConversationStore, InvalidInput, build_message_array
from convdb.integrations.langchain import ConvDBChatMessageHistory

USER = "alice"


def history(
    store: ConversationStore, cid: str = "c1", user: str = USER, **kw: Any
) -> ConvDBChatMessageHistory:
    return ConvDBChatMessageHistory(store, cid, user, **kw)


def sample() -> list[BaseMessage]:
    return [
        SystemMessage(content="You are terse.", id="sys-1"),
        HumanMessage(
            content="Weather in Paris? ☀️ 𝄞",
            id="h-1",
            name="alice",
            additional_kwargs={"client": {"ip_hash": "ab12", "tags": ["a", "b"]}},
        ),
        AIMessage(
            content="",
            id="ai-1",
            tool_calls=[
                {
                    "name": "get_weather",
                    "args": {"city": "Paris", "days": 2},
                    "id": "call_1",
                    "type": "tool_call",
                },
                {"name": "get_time", "args": {}, "id": "call_2", "type": "tool_call"},
            ],
            invalid_tool_calls=[
                {
                    "name": "bad",
                    "args": "{not json",
                    "id": "call_x",
                    "error": "parse",
                    "type": "invalid_tool_call",
                }
            ],
            additional_kwargs={"refusal": None, "reasoning": {"summary": "think"}},
            response_metadata={"model_name": "gpt-x", "finish_reason": "tool_calls", "logprobs": None},
            usage_metadata={
                "input_tokens": 10,
                "output_tokens": 5,
                "total_tokens": 15,
                "input_token_details": {"cache_read": 3},
            },
        ),
        ToolMessage(
            content="sunny, 21.5 °C",
            tool_call_id="call_1",
            name="get_weather",
            id="t-1",
            artifact={"raw": [1, 2.5, None]},
            status="success",
        ),
        ToolMessage(content="timeout", tool_call_id="call_2", status="error"),
        AIMessage(
            content=[{"type": "text", "text": "It is sunny."}, {"type": "text", "text": "21.5 °C."}],
            id="ai-2",
            response_metadata={"model_name": "gpt-x", "finish_reason": "stop"},
        ),
        HumanMessage(
            content=[
                {"type": "text", "text": "And this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]
        ),
        ChatMessage(role="developer", content="dev note"),
        AIMessageChunk(content="partial", id="chunk-1"),
    ]


async def test_is_a_chat_message_history(store: ConversationStore) -> None:
    h = history(store)
    assert isinstance(h, BaseChatMessageHistory)
    assert await h.aget_messages() == []


async def test_round_trip_is_lossless(store: ConversationStore) -> None:
    h = history(store)
    original = sample()
    await h.aadd_messages(original)
    got = await history(store).aget_messages()
    assert got == original
    assert [type(m) for m in got] == [type(m) for m in original]
    ai = got[2]
    assert isinstance(ai, AIMessage)
    assert ai.tool_calls == original[2].tool_calls  # type: ignore[attr-defined]
    assert ai.usage_metadata == original[2].usage_metadata  # type: ignore[attr-defined]
    assert ai.additional_kwargs == original[2].additional_kwargs
    assert ai.response_metadata == original[2].response_metadata
    assert ai.id == "ai-1"
    tool = got[3]
    assert isinstance(tool, ToolMessage)
    assert (tool.tool_call_id, tool.name, tool.artifact, tool.status) == (
        "call_1",
        "get_weather",
        {"raw": [1, 2.5, None]},
        "success",
    )


async def test_columns_are_useful_to_other_readers(store: ConversationStore) -> None:
    await history(store).aadd_messages(sample())
    rows = await store.get_history("c1", USER)
    assert [m.role for m in rows] == [
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
        "user",
        "system",
        "assistant",
    ]
    assert rows[1].content == "Weather in Paris? ☀️ 𝄞"
    assert rows[2].content == ""
    assert rows[2].tool_calls == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'},
        },
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    assert (rows[3].tool_call_id, rows[3].tool_name, rows[3].content) == (
        "call_1",
        "get_weather",
        "sunny, 21.5 °C",
    )
    assert (rows[4].tool_call_id, rows[4].tool_name) == ("call_2", None)
    assert rows[5].content == "It is sunny.\n21.5 °C."
    assert rows[6].content == "And this?"
    assert rows[8].content == "partial"
    assert rows[0].metadata["langchain_message"]["type"] == "system"
    chat = build_message_array(rows[:5], None)
    assert [c["tool_call_id"] for c in chat[3:5]] == [t["id"] for t in chat[2]["tool_calls"]]


async def test_chat_message_roles(store: ConversationStore) -> None:
    msgs: list[BaseMessage] = [
        ChatMessage(role="system", content="s"),
        ChatMessage(role="assistant", content="a"),
        ChatMessage(role="tool", content="t"),
        ChatMessage(role="critic", content="c"),
        FunctionMessage(name="legacy_fn", content="42"),
    ]
    await history(store).aadd_messages(msgs)
    rows = await store.get_history("c1", USER)
    assert [(m.role, m.tool_call_id) for m in rows] == [
        ("system", None),
        ("assistant", None),
        ("user", None),
        ("user", None),
        ("tool", "legacy_fn"),
    ]
    assert await history(store).aget_messages() == msgs


async def test_messages_written_by_other_clients(store: ConversationStore) -> None:
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
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
                ],
            },
            {"role": "tool", "content": "r1", "tool_call_id": "c1", "tool_name": "f"},
            {"role": "assistant", "content": "done"},
        ],
    )
    assert await history(store, "plain").aget_messages() == [
        SystemMessage(content="sys"),
        HumanMessage(content="hi"),
        AIMessage(content="", tool_calls=[{"name": "f", "args": {"a": 1}, "id": "c1", "type": "tool_call"}]),
        ToolMessage(content="r1", tool_call_id="c1", name="f"),
        AIMessage(content="done"),
    ]


async def test_order_across_batches(store: ConversationStore) -> None:
    h = history(store)
    for i in range(5):
        await h.aadd_messages([HumanMessage(content=f"q{i}"), AIMessage(content=f"a{i}")])
    await h.aadd_messages([])
    got = await h.aget_messages()
    assert [m.content for m in got] == [x for i in range(5) for x in (f"q{i}", f"a{i}")]
    assert [m.seq for m in await store.get_history("c1", USER)] == list(range(1, 11))


async def test_limit_and_max_tokens_make_a_window(store: ConversationStore) -> None:
    await history(store).aadd_messages(
        [
            HumanMessage(content="q1"),
            AIMessage(content="", tool_calls=[{"name": "f", "args": {}, "id": "c1", "type": "tool_call"}]),
            ToolMessage(content="r1", tool_call_id="c1"),
            AIMessage(content="a1"),
            HumanMessage(content="q2"),
            AIMessage(content="a2"),
        ]
    )
    assert [m.content for m in await history(store, limit=2).aget_messages()] == ["q2", "a2"]
    # The newest 4 would start with a tool result whose call is older: it is left out.
    assert [m.content for m in await history(store, limit=4).aget_messages()] == ["a1", "q2", "a2"]
    assert [m.content for m in await history(store, max_tokens=2).aget_messages()] == ["q2", "a2"]
    assert len(await history(store).aget_messages()) == 6
    with pytest.raises(InvalidInput, match="limit"):
        history(store, limit=0)


async def test_add_is_atomic(store: ConversationStore) -> None:
    h = history(store)
    await h.aadd_messages([HumanMessage(content="keep")])
    with pytest.raises(InvalidInput, match=r"messages\[1\]"):
        await h.aadd_messages([AIMessage(content="ok"), HumanMessage(content="bad \x00")])
    with pytest.raises(InvalidInput):
        # additional_kwargs that are not JSON are refused, not silently altered.
        await h.aadd_messages([AIMessage(content="ok"), AIMessage(content="x", additional_kwargs={"s": {1}})])
    with pytest.raises(TypeError, match="RemoveMessage"):
        await h.aadd_messages([RemoveMessage(id="x")])
    assert await h.aget_messages() == [HumanMessage(content="keep")]


async def test_clear_keeps_conversation(store: ConversationStore) -> None:
    h = history(store, title="chat")
    await h.aadd_messages(sample())
    await h.aclear()
    assert await h.aget_messages() == []
    assert (await store.get_conversation("c1", USER)).title == "chat"
    await h.aadd_messages([HumanMessage(content="again")])
    assert await h.aget_messages() == [HumanMessage(content="again")]
    await history(store, "never-written").aclear()  # nothing to clear: no error


async def test_other_users_history_is_invisible_and_read_only(store: ConversationStore) -> None:
    await history(store, "shared").aadd_messages([HumanMessage(content="secret")])
    theirs = history(store, "shared", "mallory")
    assert await theirs.aget_messages() == []
    with pytest.raises(ConversationNotFound):
        await theirs.aadd_messages([HumanMessage(content="intrude")])
    await theirs.aclear()
    assert await history(store, "shared").aget_messages() == [HumanMessage(content="secret")]


# -- the sync methods ---------------------------------------------------------------------------
async def test_sync_methods_on_the_loop_thread_work(store: ConversationStore) -> None:
    # Served on a private connection in a worker thread: waiting for this loop would deadlock.
    h = history(store)
    assert h.messages == []
    h.add_messages([HumanMessage(content="x")])
    h.add_user_message("y")  # LangChain's convenience methods go through add_messages
    assert h.messages == [HumanMessage(content="x"), HumanMessage(content="y")]
    assert await h.aget_messages() == [HumanMessage(content="x"), HumanMessage(content="y")]
    h.clear()
    assert await h.aget_messages() == []
    with pytest.raises(ConversationNotFound):  # ownership holds on the private connection too
        history(store, user="mallory").add_user_message("intrude")


async def test_sync_methods_work_from_a_worker_thread(store: ConversationStore) -> None:
    h = history(store)

    def sync_code() -> list[BaseMessage]:
        assert threading.current_thread() is not threading.main_thread()
        h.add_messages([HumanMessage(content="from a thread")])
        h.add_ai_message("reply")
        got = h.messages
        h.clear()
        return got

    got = await asyncio.to_thread(sync_code)
    assert got == [HumanMessage(content="from a thread"), AIMessage(content="reply")]
    assert await h.aget_messages() == []


async def test_sync_methods_of_a_history_created_in_a_thread(store: ConversationStore) -> None:
    def created_and_used_in_a_thread() -> list[BaseMessage]:
        h = history(store)  # no running loop here, and none given: the store knows its loop
        h.add_user_message("from a thread")
        return h.messages

    assert await asyncio.to_thread(created_and_used_in_a_thread) == [HumanMessage(content="from a thread")]
    await history(store).aclear()

    loop = asyncio.get_running_loop()
    got = await asyncio.to_thread(lambda: history(store, loop=loop).messages)
    assert got == []


# -- LangChain's own runnable --------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_runnable_with_message_history_uses_convdb(store: ConversationStore) -> None:
    model = FakeMessagesListChatModel(
        responses=[
            AIMessage(content="Paris is sunny.", id="r1"),
            AIMessage(content="You asked about Paris.", id="r2"),
        ]
    )
    seen: list[list[BaseMessage]] = []

    def record(messages: Any) -> Any:
        seen.append(list(messages.to_messages()))
        return messages

    prompt = ChatPromptTemplate.from_messages(
        [("system", "Be brief."), MessagesPlaceholder("history"), ("human", "{question}")]
    )
    chain = RunnableWithMessageHistory(
        prompt | record | model,
        lambda session_id: history(store, session_id),
        input_messages_key="question",
        history_messages_key="history",
    )
    cfg: Any = {"configurable": {"session_id": "lc-run"}}
    first = await chain.ainvoke({"question": "Weather in Paris?"}, config=cfg)
    assert first.content == "Paris is sunny."
    second = await chain.ainvoke({"question": "Which city?"}, config=cfg)
    assert second.content == "You asked about Paris."
    # The second call's prompt held the first exchange, read back from convdb.
    assert [m.content for m in seen[1]] == [
        "Be brief.",
        "Weather in Paris?",
        "Paris is sunny.",
        "Which city?",
    ]
    rows = await store.get_history("lc-run", USER)
    assert [(m.role, m.content) for m in rows] == [
        ("user", "Weather in Paris?"),
        ("assistant", "Paris is sunny."),
        ("user", "Which city?"),
        ("assistant", "You asked about Paris."),
    ]


# -- the extra is optional ----------------------------------------------------------------------
def test_convdb_imports_without_the_extra() -> None:
    """convdb imports without langchain-core; importing the adapter then says what to install."""
    code = (
        "import sys\n"
        "sys.modules['langchain_core'] = None  # makes 'import langchain_core' fail as if not installed\n"
        "import convdb, convdb.integrations\n"
        "assert 'langchain_core' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "try:\n"
        "    import convdb.integrations.langchain\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'convdb[langchain]'" in done.stdout
