"""Input checks that run before any I/O.

Everything PostgreSQL would refuse, or would store differently from what was given, is refused here
with an ``InvalidInput`` naming the field (and the message's index in a batch), so a bad call never
reaches the database and never writes half of anything.
"""

from __future__ import annotations

import enum
import json
import math
import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final, NamedTuple

from .errors import InvalidInput
from .records import ROLES, Usage

MAX_ID_LENGTH: Final = 255
DEFAULT_MAX_CONTENT_BYTES: Final = 1024 * 1024
# Caps on the other free-form fields, measured on their encoded form (UTF-8 bytes of the text, or of
# the JSON text convdb sends). Without them a caller could send a 256 MB document that jsonb then
# refuses (its limit is 2**28 - 1 bytes) with an error after the whole upload. Metadata gets room
# for what the framework adapters keep there: the LangChain adapter stores the whole message,
# content included, so a message at the 1 MiB content cap needs ~1 MiB of metadata, more when the
# text has quotes, backslashes or control characters to escape.
DEFAULT_MAX_TITLE_BYTES: Final = 64 * 1024
DEFAULT_MAX_METADATA_BYTES: Final = 4 * 1024 * 1024
DEFAULT_MAX_TOOL_CALLS_BYTES: Final = 4 * 1024 * 1024
MAX_HISTORY_LIMIT: Final = 10_000
MAX_JSON_DEPTH: Final = 200
# The largest bigint: the range of seq, and "up to the newest" for get_history_window.
MAX_SEQ: Final = 2**63 - 1

# PostgreSQL text cannot hold NUL, and UTF-8 cannot encode a lone surrogate code point.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

TokenCounter = Callable[[str], int]

MESSAGE_FIELDS: Final = frozenset(
    {
        "role",
        "content",
        "tool_name",
        "tool_call_id",
        "tool_calls",
        "metadata",
        "token_count",
        "idempotency_key",
        "usage",
    }
)
USAGE_FIELDS: Final = frozenset(Usage.__dataclass_fields__)
_MAX_INT4: Final = 2**31 - 1
# numeric has no upper bound, but a cost is a sum of money-like amounts: refuse absurd precision.
_MAX_COST_DIGITS: Final = 40


class MessageRow(NamedTuple):
    """A validated message, in the column order of the insert statements (after conversation and seq)."""

    role: str
    content: str | None
    tool_name: str | None
    tool_call_id: str | None
    tool_calls_json: str | None
    metadata_json: str | None
    token_count: int
    idempotency_key: str | None
    # Usage (all None when none was given; check_usage keeps them together, as the CHECK does).
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost: Decimal | None = None
    latency_ms: int | None = None


@dataclass(frozen=True, slots=True)
class SizeLimits:
    """The largest title, metadata and tool_calls accepted, in bytes of their encoded form.

    The store's ``max_title_bytes``, ``max_metadata_bytes`` and ``max_tool_calls_bytes``; content
    has its own ``max_content_bytes``.
    """

    title: int = DEFAULT_MAX_TITLE_BYTES
    metadata: int = DEFAULT_MAX_METADATA_BYTES
    tool_calls: int = DEFAULT_MAX_TOOL_CALLS_BYTES

    def __post_init__(self) -> None:
        for name in ("title", "metadata", "tool_calls"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"max_{name}_bytes", f"must be a positive int, got {value!r}")


DEFAULT_LIMITS: Final = SizeLimits()


def estimate_tokens(text: str) -> int:
    """A cheap default token estimate: about four characters per token, rounded up."""
    return (len(text) + 3) // 4


def _storable_ascii(text: str) -> bool:
    # str.isascii() reads a flag CPython keeps on every string (no scan), and an ASCII string holds
    # no surrogate; NUL is then one memchr. Most text is ASCII: this skips the regex scan for it.
    return text.isascii() and "\x00" not in text


def check_text(value: object, field: str, *, index: int | None = None) -> str:
    if not isinstance(value, str):
        raise InvalidInput(field, f"must be a str, got {type(value).__name__}", index=index)
    if _storable_ascii(value):
        return value
    bad = _UNSTORABLE.search(value)
    if bad is not None:
        what = "a NUL character" if bad.group() == "\x00" else "an unpaired surrogate"
        raise InvalidInput(field, f"contains {what} at position {bad.start()}", index=index)
    return value


def check_id(value: object, field: str, *, index: int | None = None) -> str:
    text = check_text(value, field, index=index)
    if not text:
        raise InvalidInput(field, "must not be empty", index=index)
    if len(text) > MAX_ID_LENGTH:
        raise InvalidInput(
            field, f"is {len(text)} characters long; the limit is {MAX_ID_LENGTH}", index=index
        )
    return text


def check_conversation_key(conversation_id: object, user_id: object) -> tuple[str, str]:
    """The validated ``(conversation_id, user_id)`` pair every per-conversation method takes."""
    return check_id(conversation_id, "conversation_id"), check_id(user_id, "user_id")


def check_optional_id(value: object, field: str, *, index: int | None = None) -> str | None:
    return None if value is None else check_id(value, field, index=index)


def _too_large(text: str, max_bytes: int) -> bool:
    # Avoid encoding on the common path: 4 bytes per character is UTF-8's worst case.
    return len(text) * 4 > max_bytes and (len(text) > max_bytes or len(text.encode("utf-8")) > max_bytes)


def check_content(value: object, max_bytes: int, *, index: int | None = None) -> str | None:
    if value is None:
        return None
    text = check_text(value, "content", index=index)
    if _too_large(text, max_bytes):
        raise InvalidInput(
            "content", f"is larger than the {max_bytes}-byte limit (max_content_bytes)", index=index
        )
    return text


def check_title(value: object, limits: SizeLimits = DEFAULT_LIMITS, field: str = "title") -> str | None:
    """An optional conversation title, at most ``limits.title`` bytes of UTF-8."""
    if value is None:
        return None
    text = check_text(value, field)
    if _too_large(text, limits.title):
        raise InvalidInput(field, f"is larger than the {limits.title}-byte limit (max_title_bytes)")
    return text


def check_seconds(value: object, field: str) -> float:
    """A positive, finite number of seconds (an int or a float; not a bool, not a str)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(field, f"must be a number of seconds, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise InvalidInput(field, f"must be a positive, finite number of seconds, got {value!r}")
    return float(value)


def check_limit(value: object, field: str = "limit", *, maximum: int = MAX_HISTORY_LIMIT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(field, f"must be an int, got {type(value).__name__}")
    if not 1 <= value <= maximum:
        raise InvalidInput(field, f"must be between 1 and {maximum}, got {value}")
    return value


def check_token_budget(value: object) -> int | None:
    """``max_tokens``: a token budget (an int from 0, or None for no budget)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput("max_tokens", f"must be an int or None, got {type(value).__name__}")
    if not 0 <= value <= MAX_SEQ:
        raise InvalidInput("max_tokens", f"must be between 0 and {MAX_SEQ}, got {value}")
    return value


def check_flag(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(field, f"must be a bool, got {type(value).__name__}")
    return value


class Unset(enum.Enum):
    """The type of ``UNSET``: "argument not given", as opposed to None ("set to null")."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.UNSET


# Python's repr writes floats of magnitude >= 1e16 with an exponent ("1.5e+300"). jsonb stores
# numbers as numeric, which prints them back without exponent or decimal point, so they would return
# as (different) ints. Such documents take a slower encoder that writes those floats positionally
# with a ".0" (numeric keeps the scale), so they come back as the same float.
_EXPONENT_FLOAT: Final = 1e16
# Integers whose decimal text Python refuses to write or read back (sys.get_int_max_str_digits).
_BIG_INT_BITS: Final = 14_000


def _check_json_value(value: object, field: str, index: int | None, depth: int, max_bytes: int) -> bool:
    """Raise InvalidInput unless ``value`` is storable JSON; True if it holds a float >= 1e16.

    A single string longer than ``max_bytes`` characters is refused here, before anything is
    encoded; the encoded size of the whole document is checked afterwards.
    """
    if depth > MAX_JSON_DEPTH:
        raise InvalidInput(field, f"is nested deeper than {MAX_JSON_DEPTH} levels", index=index)
    if value is None or isinstance(value, bool):
        return False
    if isinstance(value, int):
        if value.bit_length() > _BIG_INT_BITS:
            try:
                str(value)
            except ValueError:
                raise InvalidInput(
                    field, "holds an integer too long to write as decimal text", index=index
                ) from None
        return False
    if isinstance(value, str):
        check_text(value, field, index=index)
        if len(value) > max_bytes:
            raise _json_too_large(field, max_bytes, index)
        return False
    positional = False
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(field, f"holds {value!r}, which JSON cannot represent", index=index)
        return abs(value) >= _EXPONENT_FLOAT
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInput(field, f"has a non-str key {key!r}", index=index)
            check_text(key, field, index=index)
            if len(key) > max_bytes:
                raise _json_too_large(field, max_bytes, index)
            positional = _check_json_value(item, field, index, depth + 1, max_bytes) or positional
    elif isinstance(value, list):
        for item in value:
            positional = _check_json_value(item, field, index, depth + 1, max_bytes) or positional
    else:
        raise InvalidInput(field, f"holds a {type(value).__name__}, which is not JSON", index=index)
    return positional


def _dumps_positional(value: object) -> str:
    """JSON text like json.dumps, but floats >= 1e16 written as positional decimals ending in ".0"."""
    if isinstance(value, float):
        text = repr(value)
        return format(Decimal(text), "f") + ".0" if "e+" in text else text
    if isinstance(value, dict):
        items = (json.dumps(k, ensure_ascii=False) + ":" + _dumps_positional(v) for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dumps_positional(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _json_too_large(field: str, max_bytes: int, index: int | None) -> InvalidInput:
    return InvalidInput(
        field, f"is larger than the {max_bytes}-byte limit (max_{field}_bytes) as JSON", index=index
    )


def encode_json(
    value: object,
    field: str,
    *,
    kind: type,
    max_bytes: int = DEFAULT_MAX_METADATA_BYTES,
    index: int | None = None,
) -> str | None:
    """Validate a JSON document of the given top-level kind (dict or list) and encode it once.

    ``max_bytes`` bounds the UTF-8 size of the JSON text sent (``InvalidInput`` beyond it).
    """
    if value is None:
        return None
    if not isinstance(value, kind):
        raise InvalidInput(
            field, f"must be a {kind.__name__} or None, got {type(value).__name__}", index=index
        )
    if _check_json_value(value, field, index, 0, max_bytes):
        text = _dumps_positional(value)
    else:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    if _too_large(text, max_bytes):
        raise _json_too_large(field, max_bytes, index)
    return text


def check_aware_datetime(value: object, field: str, *, index: int | None = None) -> datetime:
    """A datetime that names its instant: timezone-aware (a naive one would be read as UTC)."""
    if not isinstance(value, datetime):
        raise InvalidInput(field, f"must be a datetime, got {type(value).__name__}", index=index)
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(field, "must be timezone-aware (for example datetime.now(UTC))", index=index)
    try:
        # The driver sends the UTC instant: year 1 with a positive offset, or 9999 with a negative
        # one, has none a datetime can hold (asyncpg would fail with OverflowError or DataError).
        value.astimezone(UTC)
    except OverflowError:
        raise InvalidInput(
            field,
            f"{value.isoformat()} is outside the range of a datetime once converted to UTC",
            index=index,
        ) from None
    return value


MAX_TTL: Final = timedelta(days=100 * 366)
"""The longest ``ttl`` accepted (a century): far beyond any retention policy, far within an interval."""
MAX_MESSAGES_CAP: Final = 2**31 - 1


def check_ttl(value: object, field: str = "ttl") -> timedelta:
    """A positive ``datetime.timedelta`` of at most ``MAX_TTL``."""
    if not isinstance(value, timedelta):
        raise InvalidInput(field, f"must be a datetime.timedelta, got {type(value).__name__}")
    if value <= timedelta(0):
        raise InvalidInput(field, f"must be positive, got {value}")
    if value > MAX_TTL:
        raise InvalidInput(field, f"must be at most {MAX_TTL.days} days, got {value}")
    return value


def check_max_messages(value: object, field: str = "max_messages") -> int | None:
    """A message cap: None (no cap) or an int from 1."""
    if value is None:
        return None
    return check_limit(value, field, maximum=MAX_MESSAGES_CAP)


def check_token_count(value: object, *, index: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput("token_count", f"must be an int, got {type(value).__name__}", index=index)
    if not 0 <= value <= 2**31 - 1:
        raise InvalidInput("token_count", f"must be between 0 and 2147483647, got {value}", index=index)
    return value


def _check_count(value: object, field: str, index: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(field, f"must be an int, got {type(value).__name__}", index=index)
    if not 0 <= value <= _MAX_INT4:
        raise InvalidInput(field, f"must be between 0 and {_MAX_INT4}, got {value}", index=index)
    return value


def check_cost(value: object, field: str = "usage.cost", *, index: int | None = None) -> Decimal | None:
    """A non-negative finite decimal; ints, decimal strings and floats (by their repr) are converted."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Decimal | int | float | str):
        raise InvalidInput(
            field, f"must be a Decimal, int, float or decimal str, got {type(value).__name__}", index=index
        )
    try:
        cost = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except ArithmeticError:
        raise InvalidInput(field, f"is not a decimal number: {value!r}", index=index) from None
    if not cost.is_finite() or cost < 0:
        raise InvalidInput(field, f"must be a finite number >= 0, got {value!r}", index=index)
    if len(cost.as_tuple().digits) > _MAX_COST_DIGITS:
        raise InvalidInput(field, f"has more than {_MAX_COST_DIGITS} digits", index=index)
    return cost


UsageColumns = tuple[str | None, int | None, int | None, int | None, int | None, Decimal | None, int | None]
"""The seven usage column values, in MessageRow's order."""


def check_usage(value: object, *, index: int | None = None) -> UsageColumns:
    """``usage=``: a ``Usage`` (or a dict of its fields) as the seven column values; all None for None."""
    if value is None:
        return (None, None, None, None, None, None, None)
    if isinstance(value, Mapping):
        unknown = set(value) - USAGE_FIELDS
        if unknown:
            raise InvalidInput(f"usage.{sorted(map(str, unknown))[0]}", "is not a usage field", index=index)
        get = value.get
        fields = (
            get("model"),
            get("input_tokens", 0),
            get("output_tokens", 0),
            get("cached_tokens", 0),
            get("reasoning_tokens", 0),
            get("cost"),
            get("latency_ms"),
        )
    elif isinstance(value, Usage):
        fields = (
            value.model,
            value.input_tokens,
            value.output_tokens,
            value.cached_tokens,
            value.reasoning_tokens,
            value.cost,
            value.latency_ms,
        )
    else:
        raise InvalidInput(
            "usage", f"must be a convdb.Usage, a dict or None, got {type(value).__name__}", index=index
        )
    model, inputs, outputs, cached, reasoning, cost, latency = fields
    return (
        check_optional_id(model, "usage.model", index=index),
        _check_count(inputs, "usage.input_tokens", index),
        _check_count(outputs, "usage.output_tokens", index),
        _check_count(cached, "usage.cached_tokens", index),
        _check_count(reasoning, "usage.reasoning_tokens", index),
        check_cost(cost, index=index),
        None if latency is None else _check_count(latency, "usage.latency_ms", index),
    )


def check_seq(value: object, field: str, *, allow_zero: bool = False) -> int:
    """A message seq (from 1; from 0 where 0 means "no message", as for ``expected_last_seq``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(field, f"must be an int, got {type(value).__name__}")
    low = 0 if allow_zero else 1
    if not low <= value <= MAX_SEQ:
        raise InvalidInput(field, f"must be between {low} and {MAX_SEQ}, got {value}")
    return value


def check_expected_last_seq(value: object) -> int | None:
    """``expected_last_seq=``: None (no guard), or the seq the newest stored message must have (0: none)."""
    return None if value is None else check_seq(value, "expected_last_seq", allow_zero=True)


def prepare_message(
    role: object,
    content: object,
    *,
    tool_name: object = None,
    tool_call_id: object = None,
    tool_calls: object = None,
    metadata: object = None,
    token_count: object = None,
    idempotency_key: object = None,
    usage: object = None,
    max_content_bytes: int,
    count_tokens: TokenCounter,
    limits: SizeLimits = DEFAULT_LIMITS,
    index: int | None = None,
) -> MessageRow:
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidInput("role", f"must be one of {sorted(ROLES)}, got {role!r}", index=index)
    text = check_content(content, max_content_bytes, index=index)
    name = check_optional_id(tool_name, "tool_name", index=index)
    call_id = check_optional_id(tool_call_id, "tool_call_id", index=index)
    if role == "tool" and call_id is None:
        raise InvalidInput("tool_call_id", "is required for a tool message", index=index)
    calls_json = encode_json(tool_calls, "tool_calls", kind=list, max_bytes=limits.tool_calls, index=index)
    meta_json = encode_json(metadata, "metadata", kind=dict, max_bytes=limits.metadata, index=index)
    key = check_optional_id(idempotency_key, "idempotency_key", index=index)
    if token_count is None:
        tokens = count_tokens(text) if text else 0
        if calls_json is not None:
            tokens += count_tokens(calls_json)
    else:
        tokens = check_token_count(token_count, index=index)
    if usage is None:
        return MessageRow(role, text, name, call_id, calls_json, meta_json, tokens, key)
    return MessageRow(
        role, text, name, call_id, calls_json, meta_json, tokens, key, *check_usage(usage, index=index)
    )


def prepare_message_dict(
    message: object,
    *,
    max_content_bytes: int,
    count_tokens: TokenCounter,
    limits: SizeLimits = DEFAULT_LIMITS,
    index: int | None = None,
) -> MessageRow:
    """Validate one message given as a dict of the ``save_message`` keyword fields plus ``role``."""
    if not isinstance(message, Mapping):
        raise InvalidInput("message", f"must be a dict, got {type(message).__name__}", index=index)
    if not message.keys() <= MESSAGE_FIELDS:
        unknown = sorted(map(str, set(message) - MESSAGE_FIELDS))
        raise InvalidInput(unknown[0], "is not a message field", index=index)
    if "role" not in message:
        raise InvalidInput("role", "is required", index=index)
    get = message.get
    return prepare_message(
        message["role"],
        get("content"),
        tool_name=get("tool_name"),
        tool_call_id=get("tool_call_id"),
        tool_calls=get("tool_calls"),
        metadata=get("metadata"),
        token_count=get("token_count"),
        idempotency_key=get("idempotency_key"),
        usage=get("usage"),
        max_content_bytes=max_content_bytes,
        count_tokens=count_tokens,
        limits=limits,
        index=index,
    )


_ROLE_AND_CONTENT: Final = frozenset({"role", "content"})
_ROLES_WITHOUT_CALL_ID: Final = ROLES - {"tool"}


def prepare_batch(
    messages: object,
    *,
    max_content_bytes: int,
    count_tokens: TokenCounter,
    max_batch: int,
    limits: SizeLimits = DEFAULT_LIMITS,
) -> list[MessageRow]:
    if isinstance(messages, str | bytes | Mapping) or not hasattr(messages, "__iter__"):
        raise InvalidInput("messages", "must be a list of message dicts")
    rows: list[MessageRow] = []
    keys: set[str] = set()
    for index, message in enumerate(messages):
        # The common batch message, {"role": ..., "content": "..."} with a role that needs no
        # tool_call_id, takes a shortcut with the same checks and result as prepare_message_dict
        # (tests/unit/test_validation.py compares them): its keyword-argument calls were ~60 % of a
        # batch's client CPU (cProfile of save_messages, 100 messages: 5.5 µs per message).
        if type(message) is dict and message.keys() <= _ROLE_AND_CONTENT:
            role, content = message.get("role"), message.get("content")
            if (
                type(role) is str
                and role in _ROLES_WITHOUT_CALL_ID
                and type(content) is str
                and (_storable_ascii(content) or _UNSTORABLE.search(content) is None)
                and not _too_large(content, max_content_bytes)
            ):
                tokens = count_tokens(content) if content else 0
                rows.append(MessageRow(role, content, None, None, None, None, tokens, None))
                if len(rows) > max_batch:
                    raise InvalidInput("messages", f"a batch holds at most {max_batch} messages")
                continue
        row = prepare_message_dict(
            message,
            max_content_bytes=max_content_bytes,
            count_tokens=count_tokens,
            limits=limits,
            index=index,
        )
        if row.idempotency_key is not None:
            if row.idempotency_key in keys:
                raise InvalidInput("idempotency_key", "is repeated within the batch", index=index)
            keys.add(row.idempotency_key)
        rows.append(row)
        if len(rows) > max_batch:
            raise InvalidInput("messages", f"a batch holds at most {max_batch} messages")
    if not rows:
        raise InvalidInput("messages", "must hold at least one message")
    return rows


SUMMARY_ROLES: Final = frozenset({"system", "user", "assistant"})


class SummaryRow(NamedTuple):
    """A validated summary, in the parameter order of save_summary (after conversation and user)."""

    through_seq: int
    role: str
    content: str
    metadata_json: str | None
    token_count: int


def prepare_summary(
    content: object,
    *,
    through_seq: object,
    role: object,
    token_count: object,
    metadata: object,
    max_content_bytes: int,
    count_tokens: TokenCounter,
    limits: SizeLimits = DEFAULT_LIMITS,
) -> SummaryRow:
    seq = check_seq(through_seq, "through_seq")
    if not isinstance(role, str) or role not in SUMMARY_ROLES:
        raise InvalidInput("role", f"must be one of {sorted(SUMMARY_ROLES)}, got {role!r}")
    if content is None:
        raise InvalidInput("content", "is required for a summary")
    text = check_content(content, max_content_bytes)
    assert text is not None
    meta_json = encode_json(metadata, "metadata", kind=dict, max_bytes=limits.metadata)
    tokens = count_tokens(text) if token_count is None else check_token_count(token_count)
    return SummaryRow(seq, role, text, meta_json, tokens)


def check_time_range(since: object, until: object) -> tuple[datetime, datetime]:
    """A half-open range ``[since, until)`` of aware datetimes, ``since`` before ``until``."""
    start = check_aware_datetime(since, "since")
    end = check_aware_datetime(until, "until")
    if not start < end:
        raise InvalidInput("until", f"must be after since ({start.isoformat()}), got {end.isoformat()}")
    return start, end


def check_time_zone(value: object) -> str:
    """An IANA time zone name (the days of a usage report are days there)."""
    name = check_id(value, "time_zone")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidInput("time_zone", f"is not a known IANA time zone: {name!r}") from None
    return name


# -- branches, feedback, search -------------------------------------------------------------------
MAX_FEEDBACK_COMMENT: Final = 4000
MAX_FEEDBACK_TAGS: Final = 16
MAX_TAG_LENGTH: Final = 64
FEEDBACK_RATINGS: Final = (-1, 0, 1)


def check_rating(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in FEEDBACK_RATINGS:
        raise InvalidInput("rating", f"must be -1 (bad), 0 (neutral) or 1 (good), got {value!r}")
    return value


def check_comment(value: object) -> str | None:
    if value is None:
        return None
    text = check_text(value, "comment")
    if len(text) > MAX_FEEDBACK_COMMENT:
        raise InvalidInput("comment", f"is {len(text)} characters long; the limit is {MAX_FEEDBACK_COMMENT}")
    return text


def check_tags(value: object) -> list[str]:
    """Up to 16 distinct non-empty tags of at most 64 characters, in the given order."""
    if isinstance(value, str | bytes | Mapping) or not hasattr(value, "__iter__"):
        raise InvalidInput("tags", f"must be a list of str, got {type(value).__name__}")
    tags: list[str] = []
    for tag in value:
        text = check_text(tag, "tags")
        if not text or len(text) > MAX_TAG_LENGTH:
            raise InvalidInput("tags", f"each tag must be 1 to {MAX_TAG_LENGTH} characters, got {text!r}")
        if text in tags:
            raise InvalidInput("tags", f"repeats {text!r}")
        tags.append(text)
        if len(tags) > MAX_FEEDBACK_TAGS:
            raise InvalidInput("tags", f"at most {MAX_FEEDBACK_TAGS} tags")
    return tags
