"""LlamaIndex chat stores on convdb (``pip install 'convdb[llamaindex]'``).

``ConvDBChatStore(store, user_id)`` implements ``llama_index.core``'s ``BaseChatStore``: each key
is a convdb conversation of ``user_id`` (created on the first write), so one chat store serves
one user and ``get_keys`` lists that user's conversations only. Pass it where LlamaIndex takes a
chat store (``ChatMemoryBuffer.from_defaults(chat_store=..., chat_store_key=...)``).

Use the async methods (``aget_messages``, ``async_add_message``, ...): convdb is asyncpg and its
pool belongs to one event loop. The sync methods work from another thread while that loop runs;
on the loop's own thread, or with no loop, they raise ``RuntimeError`` naming the async method.

Each ``ChatMessage`` becomes one convdb message and is kept, as ``model_dump(mode="json")``, in
the metadata under ``"llamaindex_message"``, so role, blocks (text, images, ...) and
``additional_kwargs`` come back equal. The columns are filled for other readers: role ``user`` /
``system`` (``developer`` too) / ``assistant`` (``chatbot``, ``model`` too) / ``tool`` (``tool`` and
``function`` messages carrying ``additional_kwargs["tool_call_id"]``; without one they are stored
as ``user``), content = the message's text, an assistant's OpenAI-shaped
``additional_kwargs["tool_calls"]`` as tool_calls.

**Windows: newest N.** ``aget_recent_messages(key, limit, max_tokens=None)`` (a convdb extension)
is convdb's ``get_history`` window: the newest ``limit`` messages, without tool results at its
start whose call is outside it. LlamaIndex's own database stores (``AsyncDBChatStore``) take
``limit`` / ``offset`` from the *oldest* message, which is not what a model needs.

Not supported: ``delete_message(key, idx)`` for any index but the last (convdb deletes only the
newest message: histories are append-only), which raises ``NotImplementedError``;
``set_messages`` is a clear then one atomic batch: two statements, so a reader between them sees
the conversation empty.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

try:
    from llama_index.core.llms import ChatMessage
    from llama_index.core.storage.chat_store.base import BaseChatStore
    from pydantic import PrivateAttr
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "convdb.integrations.llamaindex needs LlamaIndex (llama-index-core >= 0.12): "
        "pip install 'convdb[llamaindex]'"
    ) from exc

from ..errors import ConversationNotFound
from ..records import Message
from ..store import ConversationStore
from ..validation import check_id
from ._common import append, read_all, read_window

METADATA_KEY: Final = "llamaindex_message"
"""The metadata key under which the original ``ChatMessage`` (JSON mode) is stored."""

T = TypeVar("T")

_ROLES: Final = {
    "user": "user",
    "system": "system",
    "developer": "system",
    "assistant": "assistant",
    "chatbot": "assistant",
    "model": "assistant",
}


class ConvDBChatStore(BaseChatStore):
    """``BaseChatStore`` whose keys are the convdb conversations of ``user_id``.

    A key naming another user's conversation reads as empty and refuses writes with
    ``ConversationNotFound``, exactly as an unknown key reads. Round trips: ``aget_messages`` two
    (export in 10,000-message chunks); ``async_add_message`` one (three the first time);
    ``aset_messages`` two (plus two when the key is new); ``adelete_messages`` three;
    ``adelete_last_message`` one; ``aget_keys`` one per 100 keys.
    """

    user_id: str
    _store: ConversationStore = PrivateAttr()
    _loop: asyncio.AbstractEventLoop | None = PrivateAttr(default=None)

    def __init__(self, store: ConversationStore, user_id: str) -> None:
        super().__init__(user_id=check_id(user_id, "user_id"))  # type: ignore[call-arg]  # a pydantic field
        self._store = store
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()

    @classmethod
    def class_name(cls) -> str:
        return "ConvDBChatStore"

    # -- async: the real implementation -----------------------------------------------------
    async def aset_messages(self, key: str, messages: list[ChatMessage]) -> None:
        rows = [message_to_row(m) for m in messages]
        cid = self._key(key)
        with contextlib.suppress(ConversationNotFound):
            await self._store.clear_conversation(cid, self.user_id)
        await append(self._store, cid, self.user_id, rows, title=None)

    async def aget_messages(self, key: str) -> list[ChatMessage]:
        return [to_chat_message(m) for m in await read_all(self._store, self._key(key), self.user_id)]

    async def aget_recent_messages(
        self, key: str, limit: int, max_tokens: int | None = None
    ) -> list[ChatMessage]:
        """The newest ``limit`` messages (within ``max_tokens``), oldest first (see the module docstring)."""
        window = await read_window(self._store, self._key(key), self.user_id, limit, max_tokens)
        return [to_chat_message(m) for m in window]

    async def async_add_message(self, key: str, message: ChatMessage) -> None:
        await append(self._store, self._key(key), self.user_id, [message_to_row(message)], title=None)

    async def adelete_messages(self, key: str) -> list[ChatMessage] | None:
        """Delete every message of ``key`` and return them (None when there were none)."""
        cid = self._key(key)
        messages = await self.aget_messages(cid)
        if not messages:
            return None
        with contextlib.suppress(ConversationNotFound):
            await self._store.delete_conversation(cid, self.user_id)
        return messages

    async def adelete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Delete the message at ``idx`` when it is the last one; None when out of range."""
        cid = self._key(key)
        try:
            count = await self._store.count_messages(cid, self.user_id)
        except ConversationNotFound:
            return None
        if not isinstance(idx, int) or idx < 0 or idx >= count:
            return None
        if idx != count - 1:
            raise NotImplementedError(
                "ConvDBChatStore deletes only the newest message (convdb histories are append-only); "
                "use delete_last_message, or set_messages with the list you want"
            )
        return await self.adelete_last_message(cid)

    async def adelete_last_message(self, key: str) -> ChatMessage | None:
        try:
            message = await self._store.pop_last_message(self._key(key), self.user_id)
        except ConversationNotFound:
            return None
        return None if message is None else to_chat_message(message)

    async def aget_keys(self) -> list[str]:
        """Every conversation id of ``user_id``, most recently updated first."""
        keys: list[str] = []
        cursor: str | None = None
        while True:
            page = await self._store.list_conversations(self.user_id, limit=100, cursor=cursor)
            keys.extend(c.id for c in page.items)
            if page.next_cursor is None:
                return keys
            cursor = page.next_cursor

    # -- sync: bridged to the store's loop from other threads --------------------------------
    def set_messages(self, key: str, messages: list[ChatMessage]) -> None:
        self._sync("set_messages", lambda: self.aset_messages(key, messages))

    def get_messages(self, key: str) -> list[ChatMessage]:
        return self._sync("get_messages", lambda: self.aget_messages(key))

    def add_message(self, key: str, message: ChatMessage) -> None:
        self._sync("add_message", lambda: self.async_add_message(key, message))

    def delete_messages(self, key: str) -> list[ChatMessage] | None:
        return self._sync("delete_messages", lambda: self.adelete_messages(key))

    def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        return self._sync("delete_message", lambda: self.adelete_message(key, idx))

    def delete_last_message(self, key: str) -> ChatMessage | None:
        return self._sync("delete_last_message", lambda: self.adelete_last_message(key))

    def get_keys(self) -> list[str]:
        return self._sync("get_keys", self.aget_keys)

    def _key(self, key: str) -> str:
        # Remember the loop of the latest async call: it is the one whose pool the store uses.
        self._loop = asyncio.get_running_loop()
        return check_id(key, "key")

    def _sync(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        loop = self._loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or loop is running or loop.is_closed() or not loop.is_running():
            raise RuntimeError(
                f"ConvDBChatStore.{name} is synchronous: it works only from another thread while the "
                f"event loop that owns convdb's pool runs; use the async method instead ({_ASYNC[name]})"
            )

        async def run() -> T:
            return await call()

        return asyncio.run_coroutine_threadsafe(run(), loop).result()


_ASYNC: Final = {
    "set_messages": "aset_messages",
    "get_messages": "aget_messages",
    "add_message": "async_add_message",
    "delete_messages": "adelete_messages",
    "delete_message": "adelete_message",
    "delete_last_message": "adelete_last_message",
    "get_keys": "aget_keys",
}


# -- mapping ---------------------------------------------------------------------------------
def message_to_row(message: ChatMessage) -> dict[str, Any]:
    """The ``save_messages`` row for one ``ChatMessage`` (see the module docstring)."""
    if not isinstance(message, ChatMessage):
        from ..errors import InvalidInput

        raise InvalidInput("message", f"must be a llama_index ChatMessage, not {type(message).__name__}")
    role = str(getattr(message.role, "value", message.role))
    extra = message.additional_kwargs
    row: dict[str, Any] = {
        "content": message.content,
        "metadata": {METADATA_KEY: message.model_dump(mode="json")},
    }
    call_id = extra.get("tool_call_id")
    if role in ("tool", "function") and isinstance(call_id, str) and call_id:
        row["role"] = "tool"
        row["tool_call_id"] = call_id
        name = extra.get("name")
        if isinstance(name, str):
            row["tool_name"] = name
        return row
    row["role"] = _ROLES.get(role, "user")
    calls = extra.get("tool_calls")
    if (
        row["role"] == "assistant"
        and isinstance(calls, list)
        and calls
        and all(isinstance(c, dict) and isinstance(c.get("id"), str) for c in calls)
    ):
        row["tool_calls"] = calls
    return row


def to_chat_message(message: Message) -> ChatMessage:
    """The stored ``ChatMessage``, else the equivalent of a message written by another client."""
    stored = message.metadata.get(METADATA_KEY)
    if isinstance(stored, dict):
        return ChatMessage.model_validate(stored)
    extra: dict[str, Any] = {}
    if message.role == "tool" and message.tool_call_id:
        extra["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        extra["tool_calls"] = message.tool_calls
    return ChatMessage(role=message.role, content=message.content or "", additional_kwargs=extra)
