"""LangChain chat message history stored in convdb (``pip install 'convdb[langchain]'``).

``ConvDBChatMessageHistory(store, conversation_id, user_id)`` implements ``langchain_core``'s
``BaseChatMessageHistory``. Use the async methods (``aget_messages``, ``aadd_messages``,
``aclear``): convdb is asyncpg, and its pool belongs to one event loop. The sync ``messages``,
``add_messages`` and ``clear`` work from another thread while that loop runs (LangChain runs sync
code in worker threads); called on the loop's own thread, or with no loop, they raise
``RuntimeError`` saying to use the async methods, instead of deadlocking. If that loop stops (and
stays stopped for a second) or closes while a sync call waits, the call raises ``ConvDBError``
instead of blocking its thread forever; the call may or may not have completed.

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
import json
import math
import time
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

from ..errors import ConvDBError, ConversationNotFound
from ..records import ROLES, Message
from ..store import ConversationStore
from ..validation import MAX_HISTORY_LIMIT, check_flag, check_id, check_limit, check_token_budget
from ._common import append, read_all, read_window

# How often a sync call waiting for the store's loop checks that the loop still runs, and how long
# a stopped loop is given to run again before the call raises.
_LOOP_POLL_SECONDS: Final = 0.1
_LOOP_GONE_GRACE_SECONDS: Final = 1.0

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
    ``loop`` is the event loop that owns the store's pool, needed only by the sync methods; it
    defaults to the loop running when the history is created, and follows the loop of each async
    call.

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
            stored = await read_window(self.store, self.conversation_id, self.user_id,
                                       MAX_HISTORY_LIMIT if self.limit is None else self.limit,
                                       self.max_tokens)
        return [to_langchain(m) for m in stored]

    async def _summarized_window(self) -> list[Message]:
        # summarized=True: the newest convdb summary (save_summary) stands in for the messages it
        # covers and reads as a SystemMessage (or the summary's role); one round trip.
        limit = MAX_HISTORY_LIMIT if self.limit is None else min(self.limit, MAX_HISTORY_LIMIT)
        try:
            return await self.store.get_history(self.conversation_id, self.user_id, limit=limit,
                                                max_tokens=self.max_tokens, summarized=True)
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

    # -- sync: bridged to the store's loop from other threads --------------------------------
    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]  # the base declares a plain attribute
        return self._sync("messages", self.aget_messages)

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        batch = list(messages)
        self._sync("add_messages", lambda: self.aadd_messages(batch))

    def clear(self) -> None:
        self._sync("clear", self.aclear)

    def _remember_loop(self) -> None:
        # The loop of the latest async call is the one whose pool the store is using.
        self._loop = asyncio.get_running_loop()

    def _sync(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        loop = self._loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is not None and loop is running:
            raise RuntimeError(
                f"ConvDBChatMessageHistory.{name} is synchronous and was called on the event loop "
                f"that runs convdb's pool, where it would deadlock; use the async method instead "
                f"({_ASYNC_NAMES[name]})"
            )
        if loop is None or loop.is_closed() or not loop.is_running():
            raise RuntimeError(
                f"ConvDBChatMessageHistory.{name} needs the event loop that owns convdb's asyncpg pool "
                f"to be running in another thread, and none is; use the async method instead "
                f"({_ASYNC_NAMES[name]}), or pass loop= when the history is created outside that loop"
            )

        async def run() -> T:
            return await call()

        future = asyncio.run_coroutine_threadsafe(run(), loop)
        # Wait in slices rather than forever: if the loop stops (or closes) while the call waits,
        # nothing will ever complete the future, and a thread blocked in result() would never
        # end (a non-daemon executor thread then blocks interpreter exit).
        stopped_since: float | None = None
        while True:
            try:
                return future.result(timeout=_LOOP_POLL_SECONDS)
            except concurrent.futures.TimeoutError:
                pass
            if loop.is_closed():
                stopped_since = -math.inf
            elif loop.is_running():
                stopped_since = None
                continue
            elif stopped_since is None:
                stopped_since = time.monotonic()
            # A loop that stopped may be restarted at once (run_until_complete called again), so
            # only one that stays stopped for the grace period counts as gone.
            if time.monotonic() - stopped_since >= _LOOP_GONE_GRACE_SECONDS:
                future.cancel()
                raise ConvDBError(
                    f"ConvDBChatMessageHistory.{name}: the event loop that owns convdb's pool stopped while "
                    "the call waited; it may or may not have completed"
                )


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
        return ToolMessage(content=content, tool_call_id=message.tool_call_id or "",
                           name=message.tool_name)
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
    return ToolCall(name=str(function.get("name", "")), args=args,
                    id=call.get("id") if isinstance(call, dict) else None, type="tool_call")


def _text(content: str | list[str | dict[str, Any]]) -> str | None:
    if isinstance(content, str):
        return content
    texts = [
        part if isinstance(part, str) else part["text"]
        for part in content
        if isinstance(part, str) or (part.get("type") == "text" and isinstance(part.get("text"), str))
    ]
    return "\n".join(texts) if texts else None
