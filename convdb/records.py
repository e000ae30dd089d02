"""The values convdb returns: frozen, slotted dataclasses built from database rows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Generic, Literal, TypeVar

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
    #: The conversation this one was forked from (``fork_conversation``); None if never forked. It
    #: may name a conversation deleted since: a fork's history is its own copy.
    parent_id: str | None = None
    #: The seq of the source's message the fork was made after (its own next seq is this + 1).
    forked_at_seq: int | None = None
    #: The first conversation of the lineage (the source of the first fork); None if never forked.
    root_id: str | None = None
    #: When the conversation expires (docs/retention.md); None: never. From that instant on every
    #: method treats it as unknown (``ConversationNotFound``) and ``purge_expired`` deletes it.
    expires_at: datetime | None = None
    #: The sliding expiry's TTL: each append moves ``expires_at`` to the append's time plus this.
    #: None for a fixed expiry or none.
    ttl: timedelta | None = None
    #: A temporary conversation: never listed (``list_conversations``), expiring by default after
    #: the store's ``temporary_ttl``.
    temporary: bool = False
    #: The message cap: an append beyond it deletes the oldest messages in the same statement.
    max_messages: int | None = None

    @property
    def sliding(self) -> bool:
        """Whether each append pushes the expiry forward (``ttl`` is set)."""
        return self.ttl is not None

    @property
    def root(self) -> str:
        """The id of this conversation's lineage root: ``root_id``, or its own id if never forked."""
        return self.root_id if self.root_id is not None else self.id

    @classmethod
    def from_record(cls, row: asyncpg.Record) -> Conversation:
        # .get: statements that predate branches (the export header) return no lineage columns.
        return cls(
            id=row["id"],
            user_id=row["user_id"],
            title=row["title"],
            metadata=_json(row["metadata"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            parent_id=row.get("parent_id"),
            forked_at_seq=row.get("forked_at_seq"),
            root_id=row.get("root_id"),
            expires_at=row.get("expires_at"),
            ttl=row.get("ttl"),
            temporary=row.get("temporary") or False,
            max_messages=row.get("max_messages"),
        )


@dataclass(frozen=True, slots=True)
class Usage:
    """What producing one message cost: given at save time (``usage=``), stored in typed columns.

    Token counts default to 0; ``cost`` is a decimal in the application's own unit (convdb knows no
    currency); ``latency_ms`` is how long the model took, in milliseconds.
    """

    #: The model that produced the message (1 to 255 characters), or None.
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    #: Input tokens served from the provider's prompt cache (part of ``input_tokens``).
    cached_tokens: int = 0
    #: Output tokens spent on reasoning (part of ``output_tokens``).
    reasoning_tokens: int = 0
    cost: Decimal | None = None
    latency_ms: int | None = None


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
    #: What producing the message cost (``save_message(usage=...)``); None when none was recorded.
    usage: Usage | None = None
    #: Set only on a summary in a ``summarized=True`` window: the last seq the summary stands for
    #: (equal to ``seq``, where the summary is positioned). None on every stored message.
    summary_through: int | None = None

    @property
    def is_summary(self) -> bool:
        return self.summary_through is not None

    @classmethod
    def from_record(cls, conversation_id: str, row: asyncpg.Record) -> Message:
        """Build from a row that starts with ``MESSAGE_COLUMNS`` (read by position: see below)."""
        return _message_from_row(conversation_id, row)


MESSAGE_COLUMNS: Final = (
    "seq",
    "role",
    "content",
    "tool_name",
    "tool_call_id",
    "tool_calls",
    "metadata",
    "token_count",
    "idempotency_key",
    "created_at",
    "model",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost",
    "latency_ms",
)
"""The leading result columns of every message-returning statement in queries.sql, in the order
``Message.from_record`` reads them by position (tests/core/test_core_column_order.py pins
both the statements and this order)."""

# Building a Message is the per-row cost of every history read. A frozen dataclass's __init__
# parses keywords and goes through object.__setattr__ for each field; setting the slots through
# their descriptors directly is about 2.5 times faster, which on a 50-message history is most of
# the gap to a raw asyncpg fetch. Same fields, same values: only the construction path differs.
_new = object.__new__
_set_conversation_id = Message.__dict__["conversation_id"].__set__
_set_seq = Message.__dict__["seq"].__set__
_set_role = Message.__dict__["role"].__set__
_set_content = Message.__dict__["content"].__set__
_set_tool_name = Message.__dict__["tool_name"].__set__
_set_tool_call_id = Message.__dict__["tool_call_id"].__set__
_set_tool_calls = Message.__dict__["tool_calls"].__set__
_set_metadata = Message.__dict__["metadata"].__set__
_set_token_count = Message.__dict__["token_count"].__set__
_set_idempotency_key = Message.__dict__["idempotency_key"].__set__
_set_created_at = Message.__dict__["created_at"].__set__
_set_usage = Message.__dict__["usage"].__set__
_set_summary_through = Message.__dict__["summary_through"].__set__


def usage_from_row(row: asyncpg.Record, start: int = 10) -> Usage | None:
    """The usage columns of a message row (``MESSAGE_COLUMNS`` from ``start``); None when absent."""
    if row[start + 1] is None:  # input_tokens: NULL means no usage recorded (a CHECK keeps them together)
        return None
    return Usage(
        row[start],
        row[start + 1],
        row[start + 2],
        row[start + 3],
        row[start + 4],
        row[start + 5],
        row[start + 6],
    )


def _message_from_row(conversation_id: str, row: asyncpg.Record) -> Message:
    message: Message = _new(Message)
    _set_conversation_id(message, conversation_id)
    _set_seq(message, row[0])
    _set_role(message, row[1])
    _set_content(message, row[2])
    _set_tool_name(message, row[3])
    _set_tool_call_id(message, row[4])
    tool_calls, metadata = row[5], row[6]
    _set_tool_calls(message, json.loads(tool_calls) if isinstance(tool_calls, str) else tool_calls)
    _set_metadata(message, json.loads(metadata) if isinstance(metadata, str) else metadata)
    _set_token_count(message, row[7])
    _set_idempotency_key(message, row[8])
    _set_created_at(message, row[9])
    _set_usage(message, None if row[11] is None else usage_from_row(row))
    _set_summary_through(message, None)
    return message


def summary_or_message_from_row(conversation_id: str, row: asyncpg.Record) -> Message:
    """A row of a summarized window: ``MESSAGE_COLUMNS`` then ``summary_through`` (NULL for messages)."""
    message = _message_from_row(conversation_id, row)
    through = row[len(MESSAGE_COLUMNS)]
    if through is not None:
        _set_summary_through(message, through)
    return message


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
    """What ``delete_user_data``, ``shred_user`` or ``purge_expired`` deleted."""

    conversations: int
    messages: int


@dataclass(frozen=True, slots=True)
class Summary:
    """A stored summary (``save_summary``): ``content`` stands for the messages up to ``through_seq``."""

    conversation_id: str
    through_seq: int
    role: Role
    content: str
    token_count: int
    metadata: dict[str, JSONValue]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Usage summed over the messages of one group of a ``usage_report`` (computed in SQL)."""

    #: The day (in the report's time zone), or None in a total over every day.
    day: date | None
    #: The model, or None in a total over every model (also the group of messages saved without one).
    model: str | None
    #: Messages that carry usage in the group.
    messages: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    #: The sum of the known costs; None when no message of the group has one.
    cost: Decimal | None
    #: The sum of the known latencies, in milliseconds (divide by ``messages`` for a mean).
    latency_ms: int | None


@dataclass(frozen=True, slots=True)
class UsageReport:
    """A ``usage_report``: the same rows grouped four ways, from one statement (GROUPING SETS)."""

    #: One row per (day, model) that has usage, in day then model order.
    by_day_and_model: list[UsageTotals]
    #: One row per day (``model`` None), in day order.
    by_day: list[UsageTotals]
    #: One row per model (``day`` None), in model order.
    by_model: list[UsageTotals]
    #: Everything in the range (``day`` and ``model`` None); zeros when nothing matched.
    total: UsageTotals


@dataclass(frozen=True, slots=True)
class Feedback:
    """A user's feedback on one message (``set_feedback``). Never part of the message's content."""

    conversation_id: str
    seq: int
    #: -1 (bad), 0 (neutral), +1 (good).
    rating: int
    comment: str | None
    tags: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    #: Copied from the source by ``fork_conversation`` (and not set on this conversation since):
    #: shown with the fork's history, not counted again by ``feedback_summary``.
    inherited: bool = False

    @classmethod
    def from_record(cls, conversation_id: str, row: asyncpg.Record) -> Feedback:
        """From a row with FEEDBACK_COLUMNS, by name."""
        return cls(
            conversation_id=conversation_id,
            seq=row["seq"],
            rating=row["rating"],
            comment=row["comment"],
            tags=tuple(row["tags"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            inherited=row["inherited"],
        )


@dataclass(frozen=True, slots=True)
class FeedbackSummary:
    """Aggregated feedback (``feedback_summary``): own ratings only, inherited copies excluded."""

    count: int
    positive: int
    neutral: int
    negative: int
    #: The mean rating, None when nothing was rated.
    mean: float | None
    #: How many rated messages carry each tag.
    tags: dict[str, int]


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One ``search_messages`` hit: a message, or a conversation's title (``seq`` is None)."""

    conversation_id: str
    #: The message's seq; None for a hit on the conversation's title.
    seq: int | None
    #: The message's role; None for a title hit.
    role: str | None
    #: ts_headline's excerpt: plain text in which each matching word is wrapped in MARK_START and
    #: MARK_END (private-use characters, so no text a user typed is mistaken for markup).
    snippet: str
    #: ts_rank of the hit; hits come highest first.
    rank: float
    #: The message's created_at (the conversation's for a title hit).
    created_at: datetime

    def snippet_html(self) -> str:
        """The snippet as HTML: text escaped, matches in ``<mark>``...``</mark>``."""
        import html

        escaped = html.escape(self.snippet, quote=True)
        return escaped.replace(MARK_START, "<mark>").replace(MARK_END, "</mark>")


MARK_START: Final = "\ue000"
"""Opens a highlighted word in ``SearchHit.snippet``."""
MARK_END: Final = "\ue001"
"""Closes a highlighted word in ``SearchHit.snippet``."""


@dataclass(frozen=True, slots=True)
class RotationReport:
    """What ``rotate`` did: data keys re-wrapped under the active master key by this call, and how
    many are still wrapped under each other master key (empty: every old key can be retired)."""

    rewrapped: int
    remaining: dict[str, int]
