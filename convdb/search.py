"""The search query: a user's messages and conversation titles, ranked, keyset-paginated.

PostgreSQL full-text search: ``to_tsvector(config, ...) @@ websearch_to_tsquery(config, query)``,
ranked by ``ts_rank``, with a ``ts_headline`` snippet. The query text is never parsed as SQL or as
tsquery syntax (``websearch_to_tsquery`` accepts any text). The text search configuration is
chosen by the caller from ``SEARCH_CONFIGS`` (PostgreSQL's built-in ones), checked before any I/O
and written into the statement as a literal, so that the expression matches the optional GIN index
of ``schema_search.sql`` under custom and generic plans alike; ``simple`` (the default) lowercases
and splits on non-letters without stemming, so text of any script matches on exact words.

Only the first ``INDEXED_CHARS`` characters of a message are searched: a tsvector is limited to
1 MB, and a longer message's vector would make the index refuse the message's insert.

Order: ``rank DESC, conversation_id DESC, seq DESC`` (title hits have no seq and sort as 0). The
cursor carries the last hit's (rank, conversation_id, seq) with a digest over it and the search
it belongs to (user, query, configuration, filters): a tampered or foreign cursor is refused with
``InvalidInput`` before any I/O. Whatever it says, the statement filters on the caller's user_id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Final

from .cursors import digest, seal, unseal
from .errors import InvalidInput
from .records import MARK_END, MARK_START, ROLES
from .validation import check_aware_datetime, check_id, check_limit, check_text

MAX_QUERY_LENGTH: Final = 1000
MAX_SEARCH_PAGE: Final = 200
INDEXED_CHARS: Final = 100_000
SEARCH_CONFIGS: Final = frozenset(
    {
        "simple",
        "arabic",
        "armenian",
        "basque",
        "catalan",
        "danish",
        "dutch",
        "english",
        "finnish",
        "french",
        "german",
        "greek",
        "hindi",
        "hungarian",
        "indonesian",
        "irish",
        "italian",
        "lithuanian",
        "nepali",
        "norwegian",
        "portuguese",
        "romanian",
        "russian",
        "serbian",
        "spanish",
        "swedish",
        "tamil",
        "turkish",
        "yiddish",
    }
)
_HEADLINE: Final = f"StartSel={MARK_START}, StopSel={MARK_END}, MaxWords=30, MinWords=10, MaxFragments=2"


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A validated search: the SQL text and its arguments, plus what is needed to make cursors."""

    sql: str
    args: tuple[Any, ...]
    limit: int
    context: str
    #: The conversation the search is limited to (its ownership decides ConversationNotFound).
    conversation_id: str | None


def document(column: str, config: str) -> str:
    """The indexed expression (schema_search.sql builds the same one for 'simple')."""
    return f"to_tsvector('{config}'::regconfig, left(coalesce({column}, ''), {INDEXED_CHARS}))"


def _order(alias: str) -> str:
    return f"{alias}.rank DESC, {alias}.conversation_id DESC, coalesce({alias}.seq, 0) DESC"


def encode_cursor(rank: float, conversation_id: str, seq: int | None, context: str) -> str:
    return seal([rank, conversation_id, seq or 0], context)


def _search_shape(fields: list[Any]) -> bool:
    return (
        len(fields) == 3
        and type(fields[0]) in (int, float)
        and isinstance(fields[1], str)
        and type(fields[2]) is int
    )


def decode_cursor(cursor: object, context: str) -> tuple[float, str, int]:
    rank, conversation_id, seq = unseal(
        cursor,
        context,
        shape=_search_shape,
        made_by="search_messages",
        altered="another search (other user, query or filters)",
    )
    if not math.isfinite(rank):
        raise InvalidInput("cursor", "is not a cursor returned by search_messages")
    return float(rank), check_id(conversation_id, "cursor"), seq


def build_search(
    user_id: object,
    query: object,
    *,
    limit: object = 20,
    cursor: object = None,
    conversation_id: object = None,
    role: object = None,
    after: object = None,
    before: object = None,
    config: object = "simple",
) -> SearchQuery:
    """Validate every argument (no I/O) and build the statement; it fetches ``limit + 1`` hits."""
    uid = check_id(user_id, "user_id")
    text = check_text(query, "query")
    if not text.strip():
        raise InvalidInput("query", "must contain a word")
    if len(text) > MAX_QUERY_LENGTH:
        raise InvalidInput("query", f"is {len(text)} characters long; the limit is {MAX_QUERY_LENGTH}")
    n = check_limit(limit, maximum=MAX_SEARCH_PAGE)
    cid = None if conversation_id is None else check_id(conversation_id, "conversation_id")
    if role is not None and (not isinstance(role, str) or role not in ROLES):
        raise InvalidInput("role", f"must be one of {sorted(ROLES)} or None, got {role!r}")
    lower = None if after is None else check_aware_datetime(after, "after")
    upper = None if before is None else check_aware_datetime(before, "before")
    if not isinstance(config, str) or config not in SEARCH_CONFIGS:
        raise InvalidInput(
            "config",
            f"must be one of PostgreSQL's text search configurations "
            f"{sorted(SEARCH_CONFIGS)}, got {config!r}",
        )
    context = digest(
        uid,
        text,
        config,
        repr(cid),
        repr(role),
        repr(lower and lower.astimezone(UTC).isoformat()),
        repr(upper and upper.astimezone(UTC).isoformat()),
    )
    position = None if cursor is None else decode_cursor(cursor, context)

    args: list[Any] = [uid, text]

    def param(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    tsquery = f"websearch_to_tsquery('{config}'::regconfig, $2)"
    # Retention: an expired conversation is unknown here too (its messages and its title).
    live = "(c.expires_at IS NULL OR c.expires_at > now())"
    message_filters = ["c.user_id = $1", live, f"{document('m.content', config)} @@ {tsquery}"]
    title_filters = ["c.user_id = $1", live, f"{document('c.title', config)} @@ {tsquery}"]
    if cid is not None:
        p = param(cid)
        # The conversation id on both relations: one shard on Citus, the primary key here.
        message_filters += [f"c.id = {p}", f"m.conversation_id = {p}"]
        title_filters.append(f"c.id = {p}")
    else:
        # A temporary conversation is never listed, and a search over all of a user's conversations
        # lists them by content: it leaves temporary ones out. Searching one by its id (known to
        # the caller, as for get_history) finds its messages.
        message_filters.append("NOT c.temporary")
        title_filters.append("NOT c.temporary")
    if role is not None:
        message_filters.append(f"m.role = {param(role)}")
    if lower is not None:
        p = param(lower)
        message_filters.append(f"m.created_at > {p}")
        title_filters.append(f"c.created_at > {p}")
    if upper is not None:
        p = param(upper)
        message_filters.append(f"m.created_at < {p}")
        title_filters.append(f"c.created_at < {p}")
    branches = [
        f"SELECT m.conversation_id, m.seq, m.role, m.created_at, m.content AS doc, "
        f"ts_rank({document('m.content', config)}, {tsquery}) AS rank "
        f"FROM conversations c JOIN messages m ON m.conversation_id = c.id "
        f"WHERE {' AND '.join(message_filters)}",
    ]
    if role is None:  # a title has no role: a role filter keeps messages only
        branches.append(
            f"SELECT c.id, NULL::bigint, NULL::text, c.created_at, c.title, "
            f"ts_rank({document('c.title', config)}, {tsquery}) "
            f"FROM conversations c WHERE {' AND '.join(title_filters)}"
        )
    keyset = ""
    if position is not None:
        keyset = (
            f"WHERE (u.rank, u.conversation_id, coalesce(u.seq, 0)) < "
            f"({param(position[0])}::real, {param(position[1])}, {param(position[2])}::bigint) "
        )
    hits = (
        f"SELECT u.conversation_id, u.seq, u.role, u.created_at, u.rank, u.doc "
        f"FROM ({' UNION ALL '.join(branches)}) u {keyset}"
        f"ORDER BY {_order('u')} LIMIT {param(n + 1)}"
    )
    # ts_headline (costly: it re-parses the text) runs on the page's hits only.
    snippet = f"ts_headline('{config}'::regconfig, left(h.doc, {INDEXED_CHARS}), {tsquery}, '{_HEADLINE}')"
    outer = (
        f"SELECT h.conversation_id, h.seq, h.role, h.created_at, h.rank, {snippet} AS snippet FROM ({hits}) h"
    )
    if cid is None:
        sql = f"{outer} ORDER BY {_order('h')}"
    else:
        # No row: not this user's conversation; one row of NULLs: no hits.
        sql = (
            f"SELECT s.* FROM conversations o LEFT JOIN LATERAL ({outer}) s ON true "
            f"WHERE o.id = $3 AND o.user_id = $1 AND (o.expires_at IS NULL OR o.expires_at > now()) "
            f"ORDER BY {_order('s')}"
        )
    return SearchQuery(sql, tuple(args), n, context, cid)
