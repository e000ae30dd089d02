"""LangChain chat message history stored in convdb (``pip install 'convdb[langchain]'``).

``ConvDBChatMessageHistory(store, conversation_id, user_id)`` implements ``langchain_core``'s
``BaseChatMessageHistory``. The async methods (``aget_messages``, ``aadd_messages``,
``aclear``) work from any event loop (the store serves other loops through the loop that owns its
pool). The sync ``messages``, ``add_messages`` and ``clear`` work from any thread, async code on
other loops included, while that loop runs, and from a sync program whose store's loop is idle;
called inside a coroutine on the owning loop, where waiting for it would deadlock, they run on a
private connection in a worker thread (see ``ConvDBChatMessageHistory._sync``).

Each LangChain message becomes one convdb message; the message itself, as ``message_to_dict``
gives it (``{"type": ..., "data": message.model_dump()}``), is kept in the metadata under
``"langchain_message"`` and rebuilt with ``messages_from_dict``, so ``id``, ``name``,
``additional_kwargs``, ``response_metadata``, ``tool_calls``, ``invalid_tool_calls``,
``usage_metadata``, ``artifact``, ``status`` and content blocks all come back equal. The columns
are filled for other readers:

- ``HumanMessage`` → role ``user``; ``SystemMessage`` → ``system``; ``AIMessage`` → ``assistant``
  with its ``tool_calls`` in the chat-completions shape (``{"id", "type": "function", "function":
  {"name", "arguments": <JSON text>}}``); ``ToolMessage`` → ``tool`` with ``tool_call_id`` and
  ``tool_name`` = its ``name``; ``ChatMessage`` → its role when convdb has it (``developer`` →
  ``system``; ``tool``, lacking a call id, and unknown roles → ``user``);
  ``FunctionMessage`` (legacy) → ``tool`` with ``tool_call_id`` = ``tool_name`` = its name.
- ``content`` is the message's text: a string as is, the text blocks of a list joined with newlines.

Messages written by other convdb clients (no ``"langchain_message"``) are read back as the
equivalent ``HumanMessage`` / ``AIMessage`` (with tool calls) / ``ToolMessage`` / ``SystemMessage``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

try:
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.messages import (
        AIMessage,
        BaseMessage,
        ChatMessage,
        FunctionMessage,
        HumanMessage,
        RemoveMessage,
        SystemMessage,
        ToolMessage,
        message_to_dict,
        messages_from_dict,
    )
    from langchain_core.messages.tool import ToolCall
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "convdb.integrations.langchain needs langchain-core (>= 0.3): pip install 'convdb[langchain]'"
    ) from exc

from ..errors import ConversationNotFound, WrongEventLoop
from ..pool import create_pool
from ..records import ROLES, Message
from ..store import ConversationStore
from ..validation import MAX_HISTORY_LIMIT, check_flag, check_id, check_limit, check_token_budget
from ._common import append, read_all, read_window

METADATA_KEY: Final = "langchain_message"
"""The metadata key under which ``message_to_dict(message)`` is stored."""

T = TypeVar("T")


class ConvDBChatMessageHistory(BaseChatMessageHistory):
    """LangChain's ``BaseChatMessageHistory`` on a convdb conversation.

    The conversation is created (with ``title``) on the first write; an id owned by another user
    reads as empty and refuses writes with ``ConversationNotFound``. ``limit`` and ``max_tokens``
    turn ``aget_messages`` into a window of the newest messages (default: the whole history, which
    is what LangChain's interface means, but costs a full read per turn). ``summarized=True`` reads
    the summarized window instead (``get_history(summarized=True)``: the newest summary, as a
    ``SystemMessage``, then the messages after it, within ``limit``/``max_tokens``; 10,000 at most).
    ``loop`` is no longer needed (the store knows the loop that owns its pool,
    ``ConversationStore.loop``); it is used only for a store without one.

    Round trips: ``aget_messages`` two (one more per further 10,000 messages, streamed),
    ``aadd_messages`` one atomic batch (two more the first time, to create the conversation),
    ``aclear`` one.
    """

    def __init__(
        self,
        store: ConversationStore,
        conversation_id: str,
        user_id: str,
        *,
        limit: int | None = None,
        max_tokens: int | None = None,
        title: str | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        summarized: bool = False,
    ) -> None:
        super().__init__()
        self.store = store
        self.conversation_id = check_id(conversation_id, "conversation_id")
        self.user_id = check_id(user_id, "user_id")
        self.limit = None if limit is None else check_limit(limit, maximum=2**31 - 1)
        self.max_tokens = check_token_budget(max_tokens)
        self.title = title
        self.summarized = check_flag(summarized, "summarized")
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        self._loop = loop

    # -- async: the real implementation -----------------------------------------------------
    async def aget_messages(self) -> list[BaseMessage]:
        """Every message of the conversation, oldest first ([] for an unknown one).

        With ``limit`` and/or ``max_tokens`` set on the history, only the newest messages within
        them, as a ``get_history`` window (leading tool results without their call left out).
        """
        self._remember_loop()
        if self.summarized:
            stored = await self._summarized_window()
        elif self.limit is None and self.max_tokens is None:
            stored = await read_all(self.store, self.conversation_id, self.user_id)
        else:
            stored = await read_window(
                self.store,
                self.conversation_id,
                self.user_id,
                MAX_HISTORY_LIMIT if self.limit is None else self.limit,
                self.max_tokens,
            )
        return [to_langchain(m) for m in stored]

    async def _summarized_window(self) -> list[Message]:
        # summarized=True: the newest convdb summary (save_summary) stands in for the messages it
        # covers and reads as a SystemMessage (or the summary's role); one round trip.
        limit = MAX_HISTORY_LIMIT if self.limit is None else min(self.limit, MAX_HISTORY_LIMIT)
        try:
            return await self.store.get_history(
                self.conversation_id, self.user_id, limit=limit, max_tokens=self.max_tokens, summarized=True
            )
        except ConversationNotFound:
            return []

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append the messages in order, all or nothing, in one ``save_messages`` batch."""
        self._remember_loop()
        rows = [to_row(m) for m in messages]
        await append(self.store, self.conversation_id, self.user_id, rows, title=self.title)

    async def aclear(self) -> None:
        """Delete every message; the conversation itself stays (``clear_conversation``)."""
        self._remember_loop()
        with contextlib.suppress(ConversationNotFound):  # never written: nothing to clear
            await self.store.clear_conversation(self.conversation_id, self.user_id)

    # -- sync: bridged to the store's loop ---------------------------------------------------
    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]  # the base declares a plain attribute
        return self._sync("messages", lambda h: h.aget_messages())

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        batch = list(messages)
        self._sync("add_messages", lambda h: h.aadd_messages(batch))

    def clear(self) -> None:
        self._sync("clear", lambda h: h.aclear())

    def _remember_loop(self) -> None:
        # Kept for the loop= argument's users; the store itself knows the loop that owns its pool.
        self._loop = asyncio.get_running_loop()

    def _sync(self, name: str, run: Callable[[ConvDBChatMessageHistory], Awaitable[T]]) -> T:
        """Run ``run(self)`` to completion from synchronous code, on the loop that owns the pool.

        - That loop runs in another thread (an async app calling sync LangChain code in a worker
          thread; LangChain's own async tests): the call is handed to it and waited for. If the
          loop stops meanwhile, ``WrongEventLoop`` is raised instead of waiting forever.
        - That loop exists but is idle and this thread runs no loop (a sync script that created
          the store with ``loop.run_until_complete``): it is run here until the call completes.
        - This thread is running that loop (sync code called from a coroutine on it): waiting
          for it would deadlock, so the call is served on a private connection in a worker
          thread (``_on_private_connection``).
        - That loop is closed: ``WrongEventLoop``.
        """

        def job() -> Awaitable[T]:
            return run(self)

        home = self.store.loop or self._loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if home is not None and home is running:
            return self._on_private_connection(name, run)
        if home is None or home.is_closed():
            raise WrongEventLoop(
                f"ConvDBChatMessageHistory.{name} needs the event loop that owns convdb's asyncpg pool, "
                f"and it is {'closed' if home is not None else 'unknown'}; use the async method "
                f"({_ASYNC_NAMES[name]}) on a running loop, or keep the store's loop running"
            )
        if home.is_running():
            return _wait(asyncio.run_coroutine_threadsafe(_as_coroutine(job), home), home, name)
        if running is None:
            try:
                return home.run_until_complete(_as_coroutine(job))
            except RuntimeError as exc:
                if "already running" not in str(exc):
                    raise
                # Another thread started the loop meanwhile: hand the call to it instead.
                return _wait(asyncio.run_coroutine_threadsafe(_as_coroutine(job), home), home, name)
        raise WrongEventLoop(
            f"ConvDBChatMessageHistory.{name} was called on an event loop that does not own convdb's "
            f"pool, and the loop that does is not running; use the async method ({_ASYNC_NAMES[name]}) "
            f"on that loop, or keep it running in a thread"
        )

    def _on_private_connection(self, name: str, run: Callable[[ConvDBChatMessageHistory], Awaitable[T]]) -> T:
        """Serve a sync call made on the owning loop's own thread, which it would deadlock.

        The call runs to completion in a worker thread, on a loop of its own, through a private
        one-connection pool opened with the store's connection arguments, and with a copy of
        this history bound to a store with the same options. This blocks the calling loop for a
        connection set-up plus the call (a sync call inside a coroutine blocks its loop anyway);
        prefer the async method. A pool whose connection arguments are unknown raises
        ``RuntimeError`` naming the async method.
        """
        pool = self.store.pool
        connect_args = getattr(pool, "_connect_args", None)
        connect_kwargs = getattr(pool, "_connect_kwargs", None)
        if not isinstance(connect_args, list | tuple) or not isinstance(connect_kwargs, dict):
            raise RuntimeError(
                f"ConvDBChatMessageHistory.{name} is synchronous and was called on the event loop "
                f"that runs convdb's pool, where it would deadlock; use the async method instead "
                f"({_ASYNC_NAMES[name]}), or call the sync one from a worker thread "
                f"(await asyncio.to_thread(...))"
            )
        store = self.store

        async def in_worker() -> T:
            private_pool = await create_pool(
                *connect_args,
                min_size=1,
                max_size=1,
                **{**connect_kwargs, "statement_cache_size": connect_kwargs.get("statement_cache_size", 100)},
            )
            try:
                private = ConversationStore(
                    private_pool,
                    max_content_bytes=store.max_content_bytes,
                    count_tokens=store.count_tokens,
                    acquire_timeout=store.acquire_timeout,
                    batch_timeout=store.batch_timeout,
                    batch_timeout_per_mib=store.batch_timeout_per_mib,
                    max_batch_size=store.max_batch_size,
                    retry_reads=store.retry_reads,
                    retry_keyed_writes=store.retry_keyed_writes,
                    row_level_security=store.row_level_security,
                )
                twin = copy.copy(self)
                twin.store = private
                return await run(twin)
            finally:
                await private_pool.close()

        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="convdb-sync") as worker:
            return worker.submit(asyncio.run, in_worker()).result()


async def _as_coroutine(call: Callable[[], Awaitable[T]]) -> T:
    return await call()


def _wait(future: concurrent.futures.Future[T], home: asyncio.AbstractEventLoop, name: str) -> T:
    """The result of a call handed to ``home``, without waiting forever if ``home`` stops."""
    while True:
        try:
            return future.result(timeout=_POLL_SECONDS)
        except concurrent.futures.TimeoutError:
            if not home.is_running():
                future.cancel()
                raise WrongEventLoop(
                    f"ConvDBChatMessageHistory.{name}: the event loop that owns convdb's pool stopped "
                    f"while the call waited; its outcome is unknown"
                ) from None
        except concurrent.futures.CancelledError:
            raise WrongEventLoop(
                f"ConvDBChatMessageHistory.{name}: the event loop that owns convdb's pool cancelled the "
                f"call (it is shutting down); its outcome is unknown"
            ) from None


# How often a sync call waiting on the store's loop checks that the loop still runs (a loop
# stopped with loop.stop() never completes nor cancels what it was handed).
_POLL_SECONDS: Final = 0.5

_ASYNC_NAMES: Final[Mapping[str, str]] = {
    "messages": "await history.aget_messages()",
    "add_messages": "await history.aadd_messages(messages)",
    "clear": "await history.aclear()",
}


# -- mapping ---------------------------------------------------------------------------------
def to_row(message: BaseMessage) -> dict[str, Any]:
    """The ``save_messages`` row for one LangChain message."""
    if isinstance(message, RemoveMessage):
        raise TypeError("RemoveMessage is an instruction to a graph reducer, not a message to store")
    row: dict[str, Any] = {
        "content": _text(message.content),
        "metadata": {METADATA_KEY: message_to_dict(message)},
    }
    if isinstance(message, HumanMessage):
        row["role"] = "user"
    elif isinstance(message, SystemMessage):
        row["role"] = "system"
    elif isinstance(message, AIMessage):
        row["role"] = "assistant"
        if message.tool_calls:
            row["tool_calls"] = [_chat_tool_call(call) for call in message.tool_calls]
    elif isinstance(message, ToolMessage):
        row["role"] = "tool"
        row["tool_call_id"] = message.tool_call_id
        row["tool_name"] = message.name
    elif isinstance(message, FunctionMessage):
        row["role"] = "tool"
        row["tool_call_id"] = message.name
        row["tool_name"] = message.name
    elif isinstance(message, ChatMessage) and message.role == "developer":
        row["role"] = "system"
    elif isinstance(message, ChatMessage) and message.role in ROLES and message.role != "tool":
        row["role"] = message.role
    else:
        # Other ChatMessage roles, and role "tool" (convdb needs a tool_call_id a ChatMessage lacks).
        row["role"] = "user"
    return row


def to_langchain(message: Message) -> BaseMessage:
    """The LangChain message one stored message stands for."""
    stored = message.metadata.get(METADATA_KEY)
    if isinstance(stored, dict):
        return messages_from_dict([stored])[0]
    content = message.content if message.content is not None else ""
    if message.role == "user":
        return HumanMessage(content=content)
    if message.role == "system":
        return SystemMessage(content=content)
    if message.role == "tool":
        return ToolMessage(content=content, tool_call_id=message.tool_call_id or "", name=message.tool_name)
    return AIMessage(content=content, tool_calls=[_langchain_tool_call(c) for c in message.tool_calls or []])


def _chat_tool_call(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.get("id"),
        "type": "function",
        "function": {"name": call["name"], "arguments": json.dumps(call["args"], ensure_ascii=False)},
    }


def _langchain_tool_call(call: Any) -> ToolCall:
    function = call.get("function", {}) if isinstance(call, dict) else {}
    arguments = function.get("arguments", "{}")
    if isinstance(arguments, str):
        try:
            args = json.loads(arguments) if arguments else {}
        except ValueError:
            args = {"__raw_arguments": arguments}
    else:
        args = arguments
    if not isinstance(args, dict):
        args = {"__raw_arguments": args}
    return ToolCall(
        name=str(function.get("name", "")),
        args=args,
        id=call.get("id") if isinstance(call, dict) else None,
        type="tool_call",
    )


def _text(content: str | list[str | dict[str, Any]]) -> str | None:
    if isinstance(content, str):
        return content
    texts = [
        part if isinstance(part, str) else part["text"]
        for part in content
        if isinstance(part, str) or (part.get("type") == "text" and isinstance(part.get("text"), str))
    ]
    return "\n".join(texts) if texts else None
