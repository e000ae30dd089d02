"""The dynamic query of convdb: a user's conversations, filtered, newest first, keyset-paginated.

Built with pypika, every value as a ``$n`` ``Parameter`` (pypika would otherwise inline values as
literals, and its auto-parametrisation stringifies datetimes). Each combination of the optional
filters is a distinct statement text, so asyncpg prepares at most 128 of them per connection
(32 without the branch filters, which real callers rarely combine with the others).

Order: ``updated_at DESC, id DESC``. The cursor is the (updated_at, id) of a page's last row;
the next page is ``(updated_at, id) < cursor`` (no OFFSET: a page costs the same wherever it is).
The cursor is opaque: base64url of a small JSON array carrying a check digest over its content
and the listing it belongs to (user and filters), so a tampered, truncated or foreign cursor is
refused with ``InvalidInput`` before any I/O. It is not a secret: whatever it says, the query
still filters on the caller's user_id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pypika import Order, Parameter, Table, Tuple
from pypika.dialects import PostgreSQLQuery
from pypika.enums import Comparator
from pypika.functions import Cast, Now
from pypika.terms import BasicCriterion, Criterion, Not, Term

from .cursors import digest, seal, unseal
from .errors import InvalidInput
from .records import JSONValue
from .validation import check_aware_datetime, check_id, check_limit, check_text, encode_json

MAX_PAGE_SIZE: Final = 1000
# title_contains becomes a regular expression of up to one bracket expression per character; the
# bound keeps it far from PostgreSQL's regex complexity limits (1,000 bracketed non-ASCII
# letters compile and match instantly on the embedded server).
MAX_TITLE_SEARCH: Final = 1000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_COLUMNS: Final = (
    "id",
    "user_id",
    "title",
    "metadata",
    "created_at",
    "updated_at",
    "parent_id",
    "forked_at_seq",
    "root_id",
    "expires_at",
    "ttl",
    "temporary",
    "max_messages",
)


@dataclass(frozen=True, slots=True)
class ListingQuery:
    """A validated listing: the SQL text and its arguments, plus what is needed to make cursors."""

    sql: str
    args: tuple[Any, ...]
    limit: int
    context: str


class _Match(Comparator):
    regex = " ~ "  # PostgreSQL's case-sensitive POSIX match; pypika's Matching.regex is MySQL's


# Characters whose lowercase is one character but which are neither the uppercase nor the titlecase
# of it: the capital sharp s, the Kelvin sign, the Angstrom sign, the capital theta symbol and the
# Ohm sign. With them, "every x with x.lower() == c.lower()" is c.lower(), c.lower().upper(),
# c.lower().title() and this table (checked over all of Unicode by
# tests/unit/test_hardening_title_fold.py).
_EXTRA_UPPER: Final[Mapping[str, str]] = {
    "\u00df": "\u1e9e",
    "k": "\u212a",
    "\u00e5": "\u212b",
    "\u03b8": "\u03f4",
    "\u03c9": "\u2126",
}


def case_variants(char: str) -> str:
    """Every character whose lowercase (``str.lower``) is ``char``'s, ``char`` first; just ``char``
    when its lowercase is not one character."""
    lower = char.lower()
    if len(lower) != 1:
        return char
    variants = dict.fromkeys([char, lower])
    for other in (lower.upper(), lower.title(), *_EXTRA_UPPER.get(lower, "")):
        if len(other) == 1 and other.lower() == lower:
            variants[other] = None
    return "".join(variants)


def fold_pattern(text: str) -> str:
    r"""A PostgreSQL regular expression matching ``text`` anywhere, case-insensitively, by Unicode.

    Each character becomes the bracket expression of its case variants (``école`` becomes
    ``[éÉ][cC][oO][lL][eE]``), so the match is by each character's lowercase as Python's Unicode
    tables define it, whatever the database's LC_CTYPE: ILIKE folds only ASCII under
    ``LC_CTYPE=C`` (the embedded server's), where "école" did not find "ÉCOLE d'été". Other ASCII
    characters are escaped (``\`` followed by a non-alphanumeric is that character itself).
    """
    parts = []
    for char in text:
        variants = case_variants(char)
        if len(variants) > 1:
            parts.append("[" + variants + "]")
        elif char.isascii() and not char.isalnum():
            parts.append("\\" + char)
        else:
            parts.append(char)
    return "".join(parts)


def escape_like(text: str) -> str:
    r"""``text`` as a LIKE pattern that matches it literally (``\`` is PostgreSQL's LIKE escape)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def encode_cursor(updated_at: datetime, conversation_id: str, context: str) -> str:
    micros = (updated_at - _EPOCH) // timedelta(microseconds=1)
    return seal([micros, conversation_id], context)


def _listing_shape(fields: list[Any]) -> bool:
    return len(fields) == 2 and type(fields[0]) is int and isinstance(fields[1], str)


def decode_cursor(cursor: object, context: str) -> tuple[datetime, str]:
    """The (updated_at, id) a cursor points after; ``InvalidInput`` for anything not made by us."""
    micros, conversation_id = unseal(
        cursor,
        context,
        shape=_listing_shape,
        made_by="list_conversations",
        altered="another listing (other user or other filters)",
    )
    try:
        updated_at = _EPOCH + timedelta(microseconds=micros)
    except OverflowError as exc:
        raise InvalidInput("cursor", "is not a cursor returned by list_conversations") from exc
    return updated_at, check_id(conversation_id, "cursor")


def build_listing(
    user_id: object,
    *,
    limit: object = 20,
    cursor: object = None,
    title_contains: object = None,
    metadata_contains: Mapping[str, JSONValue] | None = None,
    updated_after: object = None,
    updated_before: object = None,
    parent_id: object = None,
    root_id: object = None,
) -> ListingQuery:
    """Validate every argument (no I/O) and build the statement; it fetches ``limit + 1`` rows."""
    uid = check_id(user_id, "user_id")
    n = check_limit(limit, maximum=MAX_PAGE_SIZE)
    title = None if title_contains is None else check_text(title_contains, "title_contains")
    if title is not None and len(title) > MAX_TITLE_SEARCH:
        raise InvalidInput(
            "title_contains", f"is {len(title)} characters long; the limit is {MAX_TITLE_SEARCH}"
        )
    meta_json = encode_json(metadata_contains, "metadata_contains", kind=dict)
    after = None if updated_after is None else check_aware_datetime(updated_after, "updated_after")
    before = None if updated_before is None else check_aware_datetime(updated_before, "updated_before")
    parent = None if parent_id is None else check_id(parent_id, "parent_id")
    root = None if root_id is None else check_id(root_id, "root_id")
    context = digest(
        uid,
        repr(title),
        meta_json or "",
        repr(after and after.astimezone(UTC).isoformat()),
        repr(before and before.astimezone(UTC).isoformat()),
        *(() if parent is None and root is None else (repr(parent), repr(root))),
    )
    position = None if cursor is None else decode_cursor(cursor, context)

    t = Table("conversations")
    args: list[Any] = []

    def param(value: Any) -> Parameter:
        args.append(value)
        return Parameter(f"${len(args)}")

    # Retention: expired conversations are unknown, temporary ones are never listed.
    conditions: list[Criterion] = [
        t.user_id == param(uid),
        t.expires_at.isnull() | (t.expires_at > Now()),  # type: ignore[no-untyped-call]
        Not(t.temporary),
    ]
    if position is not None:
        conditions.append(Tuple(t.updated_at, t.id) < Tuple(param(position[0]), param(position[1])))
    if title is not None:
        conditions.append(BasicCriterion(_Match.regex, t.title, param(fold_pattern(title))))
    if meta_json is not None:
        as_text = Cast(param(meta_json), "text")  # type: ignore[no-untyped-call]
        conditions.append(t.metadata.contains(Cast(as_text, "jsonb")))  # type: ignore[no-untyped-call]
    if after is not None:
        conditions.append(t.updated_at > param(after))
    if before is not None:
        conditions.append(t.updated_at < param(before))
    # Branch filters: served by the partial indexes conversations_forks / conversations_branches.
    if parent is not None:
        conditions.append(t.parent_id == param(parent))
    if root is not None:
        conditions.append(t.root_id == param(root))
    limit_param: Term = param(n + 1)
    query = (
        PostgreSQLQuery.from_(t)
        .select(*(t.field(c) for c in _COLUMNS))
        .where(Criterion.all(conditions))
        .orderby(t.updated_at, order=Order.desc)
        .orderby(t.id, order=Order.desc)
        .limit(limit_param)  # type: ignore[arg-type]  # typed int; renders $n
    )
    return ListingQuery(query.get_sql(), tuple(args), n, context)
