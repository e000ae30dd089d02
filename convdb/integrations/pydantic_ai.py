"""Pydantic AI message histories stored in convdb (``pip install 'convdb[pydantic-ai]'``).

``ConvDBMessageHistory(store, conversation_id, user_id)`` keeps the ``ModelMessage`` list of one
conversation: save what a run added with ``await history.add(result.new_messages())`` and give the
next run ``message_history=await history.window(limit=..., max_tokens=...)`` (or ``await
history.messages()`` for all of it).

Each ``ModelRequest`` / ``ModelResponse`` becomes one convdb message, and the message itself, as
``ModelMessagesTypeAdapter`` dumps it (JSON mode), is kept in the metadata under
``"pydantic_ai_message"`` and validated back on read, so every part type and every field
(timestamps, usage, provider details, binary content) comes back equal. The columns are filled
for other readers (``build_message_array``, SQL, analytics):

- a ``ModelResponse`` → role ``assistant``: content = its ``TextPart`` texts joined with newlines,
  tool_calls = its ``ToolCallPart`` s in the chat-completions shape, tool_name = the first call's;
- a ``ModelRequest`` holding a tool return (any ``BaseToolReturnPart``: tool results, retries of
  a tool call, tool-search and capability returns; the legacy ``RetryPromptPart`` naming a tool)
  → role ``tool``, tool_call_id / tool_name = the first such part's, content = their text as the
  model is sent it;
- any other ``ModelRequest`` → ``user`` when it holds a ``UserPromptPart`` (content = its text
  parts), ``system`` when it holds only system prompts.

Rows without text or tool calls (a response holding only thinking or files, a request holding only
deltas) get ``token_count`` from their JSON, so token-budgeted windows see what they cost.

**Windows keep tool calls and their returns together.** ``window()`` is convdb's ``get_history``
window: a request of tool returns at its start, whose call is older than the window, is dropped
(``convdb.windows``), so a model never receives a return without its call. A window may then hold
fewer than ``limit`` messages. Pydantic AI does not add ``system_prompt=`` again to a run given a
non-empty ``message_history``, so a window that starts after the first request has no system
prompt: use the agent's ``instructions=`` (sent with every request) with windows.

Messages written by other convdb clients (no ``"pydantic_ai_message"``) are read back as the
equivalent ``UserPromptPart`` / ``SystemPromptPart`` / ``ToolReturnPart`` requests and
``TextPart`` + ``ToolCallPart`` responses.

Not implemented: Pydantic AI's own ``pydantic_ai.conversation_store.ConversationStore`` (entries
linked to their parent, branches, forks, revisions), which needs a message graph convdb does not
keep; this adapter is the ``message_history=`` path.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Sequence
from typing import Any, Final

try:
    from pydantic_ai.messages import (
        BaseToolReturnPart,
        ModelMessage,
        ModelMessagesTypeAdapter,
        ModelRequest,
        ModelResponse,
        RetryPromptPart,
        SystemPromptPart,
        TextPart,
        ToolCallPart,
        ToolReturnPart,
        UserPromptPart,
    )
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "convdb.integrations.pydantic_ai needs Pydantic AI (pydantic-ai-slim >= 1.0): "
        "pip install 'convdb[pydantic-ai]'"
    ) from exc

from ..errors import ConversationNotFound, InvalidInput
from ..records import Message
from ..store import ConversationStore
from ..validation import check_id, check_token_budget
from ._common import append, read_all, read_window

METADATA_KEY: Final = "pydantic_ai_message"
"""The metadata key under which the original ``ModelMessage`` (JSON mode) is stored."""


class ConvDBMessageHistory:
    """The ``ModelMessage`` history of one convdb conversation, owned by ``user_id``.

    The conversation is created (with ``title``) on the first ``add``. An id that belongs to
    another user reads as empty and refuses writes with ``ConversationNotFound``, as an unknown id
    would. Round trips: ``add`` one atomic batch (two more the first time); ``window`` one;
    ``messages`` two (plus one per further 10,000 messages); ``clear`` one.
    """

    def __init__(
        self, store: ConversationStore, conversation_id: str, user_id: str, *, title: str | None = None
    ) -> None:
        self.store = store
        self.conversation_id = check_id(conversation_id, "conversation_id")
        self.user_id = check_id(user_id, "user_id")
        self.title = title

    async def add(self, messages: Sequence[ModelMessage]) -> None:
        """Append ``messages`` (e.g. ``result.new_messages()``) in order, all or nothing."""
        rows = [self.to_row(message) for message in _checked(messages)]
        await append(self.store, self.conversation_id, self.user_id, rows, title=self.title)

    async def messages(self) -> list[ModelMessage]:
        """Every stored message, oldest first, exactly as added."""
        stored = await read_all(self.store, self.conversation_id, self.user_id)
        return [to_model_message(m) for m in stored]

    async def window(self, *, limit: int = 50, max_tokens: int | None = None) -> list[ModelMessage]:
        """The newest ``limit`` messages (within ``max_tokens``), for ``message_history=``.

        Tool returns at the window's start whose call is outside it are left out (see the module
        docstring), so the window can hold fewer than ``limit`` messages.
        """
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise InvalidInput("limit", "must be an int")
        budget = check_token_budget(max_tokens)
        stored = await read_window(self.store, self.conversation_id, self.user_id, limit, budget)
        return [to_model_message(m) for m in stored]

    async def clear(self) -> None:
        """Delete every message; the conversation row stays."""
        with contextlib.suppress(ConversationNotFound):  # never written: nothing to clear
            await self.store.clear_conversation(self.conversation_id, self.user_id)

    def to_row(self, message: ModelMessage) -> dict[str, Any]:
        """The ``save_messages`` row for one message (see the module docstring)."""
        row = message_to_row(message)
        if row.get("content") is None and not row.get("tool_calls"):
            row["token_count"] = self.store.count_tokens(
                json.dumps(row["metadata"][METADATA_KEY], ensure_ascii=False)
            )
        return row


def _checked(messages: Iterable[Any]) -> list[ModelMessage]:
    if isinstance(messages, (str, bytes, ModelRequest, ModelResponse)):
        raise InvalidInput("messages", "must be a sequence of ModelRequest / ModelResponse")
    out = list(messages)
    for index, message in enumerate(out):
        if not isinstance(message, (ModelRequest, ModelResponse)):
            raise InvalidInput(
                f"messages[{index}]", f"must be a ModelRequest or ModelResponse, not {type(message).__name__}"
            )
    return out


# -- mapping ---------------------------------------------------------------------------------
def message_to_row(message: ModelMessage) -> dict[str, Any]:
    """The row for ``message`` without the token count of content-less rows."""
    dumped = ModelMessagesTypeAdapter.dump_python([message], mode="json")[0]
    row: dict[str, Any] = {"metadata": {METADATA_KEY: dumped}}
    if isinstance(message, ModelResponse):
        calls = [p for p in message.parts if isinstance(p, ToolCallPart)]
        texts = [p.content for p in message.parts if isinstance(p, TextPart)]
        row["role"] = "assistant"
        row["content"] = "\n".join(texts) if texts else None
        if calls:
            row["tool_name"] = calls[0].tool_name
            row["tool_calls"] = [
                {
                    "id": c.tool_call_id,
                    "type": "function",
                    "function": {"name": c.tool_name, "arguments": c.args_as_json_str()},
                }
                for c in calls
            ]
        return row
    returns = [
        p
        for p in message.parts
        if isinstance(p, BaseToolReturnPart) or (isinstance(p, RetryPromptPart) and p.tool_name)
    ]
    if returns:
        first = returns[0]
        row["role"] = "tool"
        row["tool_call_id"] = first.tool_call_id
        row["tool_name"] = first.tool_name
        row["content"] = "\n".join(
            p.model_response_str() if isinstance(p, BaseToolReturnPart) else str(p.content) for p in returns
        )
        return row
    prompts = [p for p in message.parts if isinstance(p, UserPromptPart)]
    systems = [p.content for p in message.parts if isinstance(p, SystemPromptPart)]
    if prompts or not systems:
        texts = [t for p in prompts for t in _prompt_texts(p)]
        row["role"] = "user"
        row["content"] = "\n".join(texts) if texts else None
    else:
        row["role"] = "system"
        row["content"] = "\n".join(systems)
    return row


def _prompt_texts(part: UserPromptPart) -> list[str]:
    if isinstance(part.content, str):
        return [part.content]
    return [item for item in part.content if isinstance(item, str)]


def to_model_message(message: Message) -> ModelMessage:
    """The ``ModelMessage`` a stored message stands for: the stored one, else its equivalent."""
    stored = message.metadata.get(METADATA_KEY)
    if isinstance(stored, dict):
        return ModelMessagesTypeAdapter.validate_python([stored])[0]
    content = message.content if message.content is not None else ""
    when = message.created_at
    if message.role == "tool":
        return ModelRequest(
            parts=[
                ToolReturnPart(
                    tool_name=message.tool_name or "",
                    content=content,
                    tool_call_id=message.tool_call_id or "",
                    timestamp=when,
                )
            ]
        )
    if message.role == "system":
        return ModelRequest(parts=[SystemPromptPart(content=content, timestamp=when)])
    if message.role == "user":
        return ModelRequest(parts=[UserPromptPart(content=content, timestamp=when)])
    parts: list[Any] = [TextPart(content=message.content)] if message.content else []
    for call in message.tool_calls or []:
        function = call.get("function", {}) if isinstance(call, dict) else {}
        function = function if isinstance(function, dict) else {}
        arguments = function.get("arguments")
        parts.append(
            ToolCallPart(
                tool_name=str(function.get("name") or ""),
                args=arguments if isinstance(arguments, (str, dict)) else None,
                tool_call_id=str(call.get("id") or "") if isinstance(call, dict) else "",
            )
        )
    return ModelResponse(parts=parts, timestamp=when)
