"""ConvDBChatStore against the real llama-index-core package and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from llama_index.core.base.llms.types import ImageBlock, TextBlock
from llama_index.core.llms import ChatMessage, MessageRole
from llama_index.core.memory import ChatMemoryBuffer

from convdb import ConversationNotFound, ConversationStore, InvalidInput
from convdb.integrations.llamaindex import ConvDBChatStore

USER = "alice"


def sample() -> list[ChatMessage]:
    return [
        ChatMessage(role=MessageRole.SYSTEM, content="Be terse."),
        ChatMessage(
            role=MessageRole.USER,
            blocks=[TextBlock(text="Look ☀️ 𝄞"), ImageBlock(url="https://example.com/a.png")],
            additional_kwargs={"client": {"tags": ["a"]}},
        ),
        ChatMessage(
            role=MessageRole.ASSISTANT,
            content="",
            additional_kwargs={
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
                ]
            },
        ),
        ChatMessage(
            role=MessageRole.TOOL,
            content="sunny",
            additional_kwargs={"tool_call_id": "call_1", "name": "weather"},
        ),
        ChatMessage(role=MessageRole.ASSISTANT, content="It is sunny."),
        ChatMessage(role=MessageRole.DEVELOPER, content="dev note"),
        ChatMessage(role=MessageRole.CHATBOT, content="bot"),
        ChatMessage(role=MessageRole.MODEL, content="model"),
        ChatMessage(role=MessageRole.FUNCTION, content="legacy fn, no call id"),
    ]


async def test_messages_round_trip_and_fill_the_columns(store: ConversationStore) -> None:
    chat = ConvDBChatStore(store, USER)
    msgs = sample()
    await chat.aset_messages("k1", msgs)
    assert await chat.aget_messages("k1") == msgs
    stored = await store.get_history("k1", USER, limit=100)
    assert [m.role for m in stored] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "system",
        "assistant",
        "assistant",
        "user",
    ]
    assert stored[2].tool_calls == sample()[2].additional_kwargs["tool_calls"]
    assert (stored[3].tool_call_id, stored[3].tool_name, stored[3].content) == ("call_1", "weather", "sunny")
    assert stored[1].content == "Look ☀️ 𝄞"


async def test_the_base_chat_store_contract(store: ConversationStore) -> None:
    chat = ConvDBChatStore(store, USER)
    a, b, c = (ChatMessage(role="user", content=t) for t in "abc")
    assert await chat.aget_messages("k") == []
    assert await chat.aget_keys() == []
    await chat.async_add_message("k", a)
    await chat.async_add_message("k", b)
    await chat.async_add_message("other", c)
    assert await chat.aget_messages("k") == [a, b]
    assert sorted(await chat.aget_keys()) == ["k", "other"]
    await chat.aset_messages("k", [c])  # replaces
    assert await chat.aget_messages("k") == [c]
    await chat.async_add_message("k", a)
    assert await chat.adelete_last_message("k") == a
    assert await chat.adelete_message("k", 5) is None  # out of range
    await chat.async_add_message("k", b)
    with pytest.raises(NotImplementedError, match="newest message"):
        await chat.adelete_message("k", 0)
    assert await chat.adelete_message("k", 1) == b
    assert await chat.adelete_messages("k") == [c]
    assert await chat.adelete_messages("k") is None
    assert await chat.aget_keys() == ["other"]
    assert await chat.adelete_last_message("never") is None


async def test_recent_messages_are_the_newest_n_without_orphan_tool_results(store: ConversationStore) -> None:
    chat = ConvDBChatStore(store, USER)
    msgs = sample()[:5]
    await chat.aset_messages("k", msgs)
    assert await chat.aget_recent_messages("k", 3) == msgs[2:]
    # The newest 2 would start with the tool result whose call is outside: it is left out.
    assert await chat.aget_recent_messages("k", 2) == msgs[4:]
    assert await chat.aget_recent_messages("k", 0) == []


async def test_keys_are_one_users_conversations(store: ConversationStore) -> None:
    alice, bob = ConvDBChatStore(store, USER), ConvDBChatStore(store, "bob")
    await bob.async_add_message("shared", ChatMessage(role="user", content="bob's"))
    assert await alice.aget_keys() == []
    assert await alice.aget_messages("shared") == []
    assert await alice.adelete_messages("shared") is None
    assert await alice.adelete_last_message("shared") is None
    with pytest.raises(ConversationNotFound):
        await alice.async_add_message("shared", ChatMessage(role="user", content="x"))
    with pytest.raises(ConversationNotFound):
        await alice.aset_messages("shared", [ChatMessage(role="user", content="x")])
    assert [m.content for m in await bob.aget_messages("shared")] == ["bob's"]


async def test_concurrent_first_writes_to_one_key(store: ConversationStore) -> None:
    chat = ConvDBChatStore(store, USER)
    msgs = [ChatMessage(role="user", content=str(i)) for i in range(8)]
    await asyncio.gather(*(chat.async_add_message("k", m) for m in msgs))
    got = await chat.aget_messages("k")
    assert sorted(m.content or "" for m in got) == [str(i) for i in range(8)]


async def test_chat_memory_buffer_uses_the_store(store: ConversationStore) -> None:
    chat = ConvDBChatStore(store, USER)
    memory = ChatMemoryBuffer.from_defaults(chat_store=chat, chat_store_key="conv", token_limit=10_000)
    await memory.aput(ChatMessage(role="user", content="hello"))
    await memory.aput(ChatMessage(role="assistant", content="hi!"))
    assert [m.content for m in await memory.aget()] == ["hello", "hi!"]
    assert [m.content for m in await store.get_history("conv", USER)] == ["hello", "hi!"]


async def test_sync_methods_from_a_worker_thread_and_a_clear_error_on_the_loop(
    store: ConversationStore,
) -> None:
    chat = ConvDBChatStore(store, USER)
    await chat.async_add_message("k", ChatMessage(role="user", content="a"))
    got = await asyncio.to_thread(chat.get_messages, "k")
    assert [m.content for m in got] == ["a"]
    await asyncio.to_thread(chat.add_message, "k", ChatMessage(role="user", content="b"))
    assert [m.content for m in await chat.aget_messages("k")] == ["a", "b"]
    with pytest.raises(RuntimeError, match="aget_messages"):
        chat.get_messages("k")


async def test_bad_input_is_refused_before_io(store: ConversationStore) -> None:
    with pytest.raises(InvalidInput):
        ConvDBChatStore(store, "")
    chat = ConvDBChatStore(store, USER)
    with pytest.raises(InvalidInput):
        await chat.async_add_message("", ChatMessage(role="user", content="x"))
    with pytest.raises(InvalidInput):
        await chat.async_add_message("k", "not a message")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        await chat.aset_messages("k", [ChatMessage(role="user", content="x"), {"role": "user"}])  # type: ignore[list-item]
    assert await chat.aget_keys() == []  # nothing was written


def test_import_without_llamaindex_says_how_to_install() -> None:
    code = (
        "import sys; sys.modules['llama_index'] = None; sys.modules['llama_index.core'] = None\n"
        "sys.modules['llama_index.core.llms'] = None\n"
        "try:\n import convdb.integrations.llamaindex\nexcept ImportError as e: print(e)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'convdb[llamaindex]'" in out
