"""The export format of a conversation and its validation on import: pure, no I/O.

An export is a stream of JSON objects (one per line in a file):

- first ``{"type": "conversation", "format": "convdb.conversation/1", "id", "title", "metadata",
  "created_at", "updated_at", "next_seq"}``;
- then one ``{"type": "message", "seq", "role", "content", "tool_name", "tool_call_id",
  "tool_calls", "metadata", "token_count", "idempotency_key", "created_at", "usage"}`` per message,
  in seq order (``usage``: null, or its fields with ``cost`` as a decimal string; optional on
  import, so exports of earlier versions import unchanged);
- then (optional, since schema version 5) one ``{"type": "feedback", "seq", "rating", "comment",
  "tags", "inherited", "created_at", "updated_at"}`` per rated message, after every message
  record. Exports without feedback records (older ones) import unchanged; an older convdb refuses
  an export that has them ("must be 'message'").

Times are ISO 8601 with offset and microseconds, so a restore is exact. ``user_id`` is not
exported: the owner of an imported conversation is the ``user_id`` given to
``import_conversation``. The file helpers (JSON Lines, ``export_to_file``...) are in
``convdb.export``, above the store; this module sits below it.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from .agent import message_to_dict
from .errors import InvalidInput
from .records import Conversation, Feedback, Message
from .validation import (
    DEFAULT_LIMITS,
    MESSAGE_FIELDS,
    MessageRow,
    SizeLimits,
    TokenCounter,
    check_aware_datetime,
    check_comment,
    check_flag,
    check_id,
    check_rating,
    check_tags,
    check_title,
    check_token_count,
    encode_json,
    prepare_message,
)

if TYPE_CHECKING:
    import asyncpg  # the row type only: nothing here talks to a database

FORMAT: Final = "convdb.conversation/1"
_HEADER_FIELDS: Final = frozenset(
    {"type", "format", "id", "user_id", "title", "metadata", "created_at", "updated_at", "next_seq"}
)
# A message record: the fields a message is saved with, plus where it sits and when it was made.
_MESSAGE_FIELDS: Final = MESSAGE_FIELDS | {"type", "seq", "created_at", "conversation_id"}
# The largest seq and next_seq an import accepts. 2**53 is the largest integer every JSON reader
# keeps exact (a JavaScript number), and it leaves ~9.2e18 sequence numbers below bigint's
# 2**63 - 1, so an imported conversation can always take more messages: an import of
# next_seq = 2**63 - 1 was accepted before, and every later append then failed with
# "bigint out of range".
MAX_IMPORT_SEQ: Final = 2**53


def header_record(row: asyncpg.Record, conversation: Conversation | None = None) -> dict[str, Any]:
    """The first record of an export, from an export_header row (and ``conversation``, that row
    already decoded, when the store had to decrypt it)."""
    if conversation is None:
        conversation = Conversation.from_record(row)
    return {
        "type": "conversation",
        "format": FORMAT,
        "id": conversation.id,
        "title": conversation.title,
        "metadata": conversation.metadata,
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
        "next_seq": row["next_seq"],
    }


_FEEDBACK_FIELDS: Final = frozenset(
    {"type", "seq", "rating", "comment", "tags", "inherited", "created_at", "updated_at"}
)


def feedback_record(feedback: Feedback) -> dict[str, Any]:
    """A feedback record of an export."""
    return {
        "type": "feedback",
        "seq": feedback.seq,
        "rating": feedback.rating,
        "comment": feedback.comment,
        "tags": list(feedback.tags),
        "inherited": feedback.inherited,
        "created_at": feedback.created_at.isoformat(),
        "updated_at": feedback.updated_at.isoformat(),
    }


class FeedbackRow(NamedTuple):
    """A validated feedback record, in the column order of import_feedback (after the conversation)."""

    seq: int
    rating: int
    comment: str | None
    tags: list[str]
    inherited: bool
    created_at: datetime
    updated_at: datetime


def message_record(message: Message) -> dict[str, Any]:
    """A message record of an export: every field of the message (``message_to_dict``)."""
    return {"type": "message", **message_to_dict(message)}


@dataclass(frozen=True, slots=True)
class ImportHeader:
    id: str
    title: str | None
    metadata_json: str | None
    created_at: datetime
    updated_at: datetime
    next_seq: int | None


def _check_time(value: object, field: str, index: int | None = None) -> datetime:
    """An ISO 8601 text (as exported) or a datetime, with a UTC offset either way."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise InvalidInput(field, f"is not an ISO 8601 time: {value!r}", index=index) from exc
    return check_aware_datetime(value, field, index=index)


def _check_seq(value: object, field: str, index: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IMPORT_SEQ:
        raise InvalidInput(
            field, f"must be an int between 1 and {MAX_IMPORT_SEQ} (2**53), got {value!r}", index=index
        )
    return value


def parse_header(record: object, limits: SizeLimits = DEFAULT_LIMITS) -> ImportHeader:
    """Validate the first record of an export (no I/O)."""
    if not isinstance(record, Mapping):
        raise InvalidInput("records", "must start with the conversation record of an export")
    if record.get("type") != "conversation":
        raise InvalidInput("type", "the first record must have type 'conversation'")
    if record.get("format", FORMAT) != FORMAT:
        raise InvalidInput("format", f"is {record.get('format')!r}; this convdb reads {FORMAT!r}")
    unknown = set(record) - _HEADER_FIELDS
    if unknown:
        raise InvalidInput(sorted(map(str, unknown))[0], "is not a field of the conversation record")
    title = check_title(record.get("title"), limits)
    next_seq = record.get("next_seq")
    return ImportHeader(
        id=check_id(record.get("id"), "id"),
        title=title,
        metadata_json=encode_json(record.get("metadata"), "metadata", kind=dict, max_bytes=limits.metadata),
        created_at=_check_time(record.get("created_at"), "created_at"),
        updated_at=_check_time(record.get("updated_at"), "updated_at"),
        next_seq=None if next_seq is None else _check_seq(next_seq, "next_seq"),
    )


class MessageParser:
    """Validates the message records of one import in order (seq increasing, keys unique)."""

    def __init__(
        self,
        header: ImportHeader,
        *,
        max_content_bytes: int,
        count_tokens: TokenCounter,
        limits: SizeLimits = DEFAULT_LIMITS,
    ):
        self.header = header
        self.max_content_bytes = max_content_bytes
        self.count_tokens = count_tokens
        self.limits = limits
        self.last_seq = 0
        self.keys: set[str] = set()
        #: The feedback records, validated; imported after every message.
        self.feedback: list[FeedbackRow] = []
        #: Set by an encrypting store once the records before it are validated: seals each row
        #: under its seq (``convdb.crypto.Codec.seal_row``).
        self.seal: Callable[[int, MessageRow], MessageRow] | None = None

    def parse(self, record: object, index: int) -> tuple[int, MessageRow, datetime] | None:
        """A message record's row; None for a feedback record (kept in ``feedback``)."""
        if not isinstance(record, Mapping):
            raise InvalidInput("message", f"must be a dict, got {type(record).__name__}", index=index)
        if record.get("type") == "feedback":
            self.feedback.append(self._feedback(record, index))
            return None
        if self.feedback:
            raise InvalidInput("type", "feedback records come after every message record", index=index)
        if record.get("type") != "message":
            raise InvalidInput("type", "must be 'message' or 'feedback' after the first record", index=index)
        unknown = set(record) - _MESSAGE_FIELDS
        if unknown:
            raise InvalidInput(sorted(map(str, unknown))[0], "is not a message field", index=index)
        seq = _check_seq(record.get("seq"), "seq", index)
        if seq <= self.last_seq:
            raise InvalidInput("seq", f"must increase: {seq} after {self.last_seq}", index=index)
        if self.header.next_seq is not None and seq >= self.header.next_seq:
            raise InvalidInput(
                "seq", f"{seq} is not below the conversation's next_seq {self.header.next_seq}", index=index
            )
        token_count = record.get("token_count")
        if token_count is not None:
            check_token_count(token_count, index=index)
        row = prepare_message(
            record.get("role"),
            record.get("content"),
            tool_name=record.get("tool_name"),
            tool_call_id=record.get("tool_call_id"),
            tool_calls=record.get("tool_calls"),
            metadata=record.get("metadata"),
            token_count=token_count,
            idempotency_key=record.get("idempotency_key"),
            usage=record.get("usage"),
            max_content_bytes=self.max_content_bytes,
            count_tokens=self.count_tokens,
            limits=self.limits,
            index=index,
        )
        if row.idempotency_key is not None:
            if row.idempotency_key in self.keys:
                raise InvalidInput("idempotency_key", "is repeated within the import", index=index)
            self.keys.add(row.idempotency_key)
        created_at = _check_time(record.get("created_at"), "created_at", index)
        self.last_seq = seq
        if self.seal is not None:
            row = self.seal(seq, row)
        return seq, row, created_at

    def _feedback(self, record: Mapping[str, Any], index: int) -> FeedbackRow:
        unknown = set(record) - _FEEDBACK_FIELDS
        if unknown:
            raise InvalidInput(sorted(map(str, unknown))[0], "is not a feedback field", index=index)
        seq = _check_seq(record.get("seq"), "seq", index)
        if seq > self.last_seq or (self.feedback and seq <= self.feedback[-1].seq):
            raise InvalidInput(
                "seq", f"feedback on seq {seq} must follow its message, in seq order", index=index
            )
        try:
            rating = check_rating(record.get("rating"))
            comment = check_comment(record.get("comment"))
            tags = check_tags(record.get("tags", []))
            inherited = check_flag(record.get("inherited", False), "inherited")
        except InvalidInput as exc:
            raise InvalidInput(exc.field, exc.problem, index=index) from None
        return FeedbackRow(
            seq,
            rating,
            comment,
            tags,
            inherited,
            _check_time(record.get("created_at"), "created_at", index),
            _check_time(record.get("updated_at"), "updated_at", index),
        )


async def aiter_records(records: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(records, str | bytes | Mapping):
        raise InvalidInput("records", "must be an iterable of export records (dicts)")
    if isinstance(records, AsyncIterable):
        async for record in records:
            yield record
    elif isinstance(records, Iterable):
        for record in records:
            yield record
    else:
        raise InvalidInput("records", f"must be an iterable of export records, got {type(records).__name__}")


async def numbered(stream: AsyncIterator[Any]) -> AsyncIterator[tuple[int, Any]]:
    """``(index, record)`` for the message records that follow an export's header."""
    index = 0
    async for record in stream:
        yield index, record
        index += 1
