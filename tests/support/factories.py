"""Typed builders for the values tests need, instead of hand-built dataclasses."""

from __future__ import annotations

from datetime import UTC, datetime

from convdb.records import JSONValue, Message, Role

T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def make_message(
    seq: int = 1,
    role: Role = "user",
    content: str | None = "x",
    *,
    conversation_id: str = "c",
    tool_name: str | None = None,
    tool_call_id: str | None = None,
    tool_calls: list[JSONValue] | None = None,
    metadata: dict[str, JSONValue] | None = None,
    created_at: datetime = T0,
    token_count: int = 0,
    idempotency_key: str | None = None,
) -> Message:
    """A ``Message`` as the store would return it; every field has a plain default."""
    return Message(
        conversation_id=conversation_id,
        seq=seq,
        role=role,
        content=content,
        tool_name=tool_name,
        tool_call_id=tool_call_id,
        tool_calls=tool_calls,
        metadata={} if metadata is None else metadata,
        created_at=created_at,
        token_count=token_count,
        idempotency_key=idempotency_key,
    )
