"""The values convdb returns: frozen, slotted dataclasses built from database rows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

import asyncpg

Role = Literal["system", "user", "assistant", "tool"]
ROLES: frozenset[str] = frozenset({"system", "user", "assistant", "tool"})

JSONValue = Any
"""Any value that survives a JSON round trip: dict, list, str, int, float, bool or None."""


def _json(value: Any) -> Any:
    # jsonb arrives decoded when the pool has convdb's codec (convdb.pool.init_connection) and as
    # text otherwise; convdb's documents are always objects or arrays, so text means undecoded.
    return json.loads(value) if isinstance(value, str) else value


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    user_id: str
    title: str | None
    metadata: dict[str, JSONValue]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_record(cls, row: asyncpg.Record) -> Conversation:
        return cls(
            id=row["id"],
            user_id=row["user_id"],
            title=row["title"],
            metadata=_json(row["metadata"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


@dataclass(frozen=True, slots=True)
class Message:
    conversation_id: str
    seq: int
    role: Role
    content: str | None
    tool_name: str | None
    tool_call_id: str | None
    tool_calls: list[JSONValue] | None
    metadata: dict[str, JSONValue]
    created_at: datetime
    token_count: int = 0
    idempotency_key: str | None = None

    @classmethod
    def from_record(cls, conversation_id: str, row: asyncpg.Record) -> Message:
        """Build from a row of the message column list used throughout queries.sql."""
        return cls(
            conversation_id=conversation_id,
            seq=row[0],
            role=row[1],
            content=row[2],
            tool_name=row[3],
            tool_call_id=row[4],
            tool_calls=_json(row[5]),
            metadata=_json(row[6]),
            token_count=row[7],
            idempotency_key=row[8],
            created_at=row[9],
        )


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a keyset-paginated listing.

    ``next_cursor`` is opaque; pass it back as ``cursor=`` for the next page. None: no more pages.
    """

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class ErasureCounts:
    """What ``delete_user_data`` deleted."""

    conversations: int
    messages: int
