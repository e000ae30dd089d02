"""Turning stored history into what a chat model accepts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .records import Message, Usage


def usage_to_dict(usage: Usage | None) -> dict[str, Any] | None:
    """A message's usage, JSON-serialisable (cost as a decimal string, so that it stays exact)."""
    if usage is None:
        return None
    return {
        "model": usage.model,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_tokens": usage.cached_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "cost": None if usage.cost is None else str(usage.cost),
        "latency_ms": usage.latency_ms,
    }


def message_to_dict(message: Message) -> dict[str, Any]:
    """Every field of a message, JSON-serialisable (created_at as ISO 8601).

    ``summary_through`` appears only on a summary of a ``summarized=True`` window.
    """
    out = {
        "conversation_id": message.conversation_id,
        "seq": message.seq,
        "role": message.role,
        "content": message.content,
        "tool_name": message.tool_name,
        "tool_call_id": message.tool_call_id,
        "tool_calls": message.tool_calls,
        "metadata": message.metadata,
        "token_count": message.token_count,
        "idempotency_key": message.idempotency_key,
        "created_at": message.created_at.isoformat(),
        "usage": usage_to_dict(message.usage),
    }
    if message.summary_through is not None:
        out["summary_through"] = message.summary_through
    return out


def to_chat_message(message: Message) -> dict[str, Any]:
    """One stored message in the OpenAI chat-completions shape.

    A summary (``summary_through`` set) is rendered as an ordinary message of its role with its
    content: the summariser wrote it to be read by the model as it is.
    """
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.role == "assistant" and message.tool_calls:
        out["tool_calls"] = message.tool_calls
    elif message.role == "tool":
        out["tool_call_id"] = message.tool_call_id
    return out


def build_message_array(
    history: Iterable[Message], user_message: str | None, *, system_prompt: str | None = None
) -> list[dict[str, Any]]:
    """The chat-completions ``messages`` list: system prompt, history in order, the new user message.

    Assistant ``tool_calls`` and tool ``tool_call_id`` are carried over. ``user_message=None``
    continues a tool loop without a new user turn. Assistant rows with neither content nor tool
    calls (e.g. reasoning items an adapter stored for its own replay) are left out: the
    chat-completions API rejects them.
    """
    out: list[dict[str, Any]] = []
    if system_prompt is not None:
        out.append({"role": "system", "content": system_prompt})
    out.extend(
        to_chat_message(m)
        for m in history
        if not (m.role == "assistant" and m.content is None and not m.tool_calls)
    )
    if user_message is not None:
        out.append({"role": "user", "content": user_message})
    return out
