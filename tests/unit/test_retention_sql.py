"""Retention fails closed in SQL: every per-conversation statement checks that the conversation row
is live, next to its ownership check, in the same statement (docs/retention.md).

A parse of the named blocks of queries.sql, and of the dynamic listing and search statements. A
statement that reads or writes a conversation's data and lacks the predicate fails here, unless
it is in ALLOWED below, with the reason it must see expired rows.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from convdb.listing import build_listing
from convdb.search import build_search
from convdb.sql import QUERIES
from tests.support.delegated import function_bodies

# Statements that must see expired conversations, or touch no conversation's data, and why.
ALLOWED = {
    # Erasure (delete_user_data, shred_user) deletes everything of a user, expired rows included:
    # an erasure request that skipped expired-but-unpurged rows would leave data behind.
    "erase_list_conversations": "erasure",
    "erase_messages_chunk": "erasure",
    "erase_lock_conversations": "erasure",
    "erase_conversations": "erasure",
    # purge_expired finds and deletes exactly the expired rows (maintenance, not user-scoped).
    "purge_expired_list": "purge",
    "purge_expired_conversation": "purge",
    # The executemany body of a batch: it runs in the transaction of reserve_seq_range, which
    # checked ownership and expiry and holds the conversation row's lock until commit.
    "insert_message_at": "after reserve_seq_range in its transaction",
    # A replace checks the row's expiry in the same transaction, with import_owner_check, when
    # the row it overwrote has one (Citus refuses now() in an ON CONFLICT WHERE).
    "import_conversation_row": "expiry checked by import_owner_check in its transaction",
    # Catalog and session statements: they name the tables, not a conversation's data.
    "schema_catalog": "catalog",
    "schema_version_row": "catalog",
    "default_isolation": "session",
}

_TABLES = re.compile(r"\b(conversations|messages|conversation_summaries|message_feedback)\b")
_CONVERSATIONS = re.compile(r"\b(?:FROM|JOIN|UPDATE|INTO|USING)\s+conversations\b")
# An ownership filter on a conversations row: "[alias.]user_id = $n" or the upsert's
# "conversations.user_id = EXCLUDED.user_id".
_OWNERSHIP = re.compile(r"\b(?:(\w+)\.)?user_id = (?:\$\d+|EXCLUDED\.user_id)")


def live(alias: str | None, now: str = "now()") -> str:
    prefix = f"{alias}." if alias else ""
    return f"({prefix}expires_at IS NULL OR {prefix}expires_at > {now})"


# In an upsert's ON CONFLICT WHERE, "now" is the proposed row's created_at (its default, now()):
# Citus refuses a function that is not IMMUTABLE there.
_UPSERT_NOW = "EXCLUDED.created_at"


def missing_predicates(sql: str) -> list[str]:
    """The ownership filters of ``sql`` not followed by the live predicate on the same row before
    the next ownership filter (an empty list when every one is)."""
    matches = list(_OWNERSHIP.finditer(sql))
    missing = []
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(sql)
        span = sql[match.end() : end]
        if live(match.group(1)) not in span and live(match.group(1), _UPSERT_NOW) not in span:
            missing.append(match.group(0))
    return missing


def per_conversation_statements() -> list[str]:
    return sorted(n for n, sql in QUERIES.items() if _TABLES.search(sql) and n not in ALLOWED)


def test_the_allow_list_names_real_statements() -> None:
    assert set(ALLOWED) <= set(QUERIES), set(ALLOWED) - set(QUERIES)


@pytest.mark.guarantee(14)
@pytest.mark.parametrize("name", per_conversation_statements())
def test_every_per_conversation_statement_checks_expiry_with_ownership(name: str) -> None:
    sql = QUERIES[name]
    assert _CONVERSATIONS.search(sql), (
        f"{name} touches a conversation's data without reading its conversation row: join it "
        "(ownership and expiry in the same statement) or add it to ALLOWED with the reason"
    )
    assert _OWNERSHIP.search(sql), f"{name} reads conversations without an ownership filter"
    assert missing_predicates(sql) == [], (
        f"{name}: an ownership filter without {live('c')} on the same row after it"
    )


def test_the_checker_catches_a_missing_predicate() -> None:
    good = "SELECT 1 FROM conversations c WHERE c.id = $1 AND c.user_id = $2 AND " + live("c")
    assert missing_predicates(good) == []
    assert missing_predicates("SELECT 1 FROM conversations c WHERE c.id = $1 AND c.user_id = $2") == [
        "c.user_id = $2"
    ]
    # The predicate on another alias does not count for this one.
    other = (
        "SELECT 1 FROM conversations c, conversations o WHERE o.user_id = $1 AND c.user_id = $1 AND "
        + live("c")
    )
    assert missing_predicates(other) == ["o.user_id = $1"]


def test_appends_move_a_sliding_expiry_and_nothing_else_of_it() -> None:
    for name in ("save_message", "save_message_guarded", "reserve_seq_range", "reserve_seq_range_guarded"):
        assert "expires_at = GREATEST(" in QUERIES[name] and "extract(epoch FROM now())" in QUERIES[name], (
            name
        )
    assert (
        "expires_at = GREATEST(c.expires_at, to_timestamp(extract(epoch FROM now()) + extract(epoch FROM c.ttl)))"
        in QUERIES["save_and_get_history"]
    )


def test_the_claim_is_skip_locked_and_spells_its_conversation() -> None:
    sql = QUERIES["purge_expired_conversation"]
    assert "FOR UPDATE SKIP LOCKED" in sql
    # Every relation names $1 (one router task on Citus).
    assert sql.count("= $1") >= 6


def test_listing_never_shows_expired_or_temporary_conversations() -> None:
    for kwargs in ({}, {"parent_id": "p"}, {"updated_after": datetime(2020, 1, 1, tzinfo=UTC)}):
        query = build_listing("u", **kwargs)
        assert re.search(r'"expires_at" IS NULL OR "expires_at">NOW\(\)', query.sql), query.sql
        assert 'NOT "temporary"' in query.sql, query.sql


@pytest.mark.parametrize("conversation_id", [None, "c1"])
def test_search_never_finds_expired_conversations(conversation_id: str | None) -> None:
    query = build_search("u", "word", conversation_id=conversation_id)
    # Messages and titles, each over its conversation row (and the ownership probe for one id).
    expected = 2 if conversation_id is None else 3
    assert query.sql.count(live("c")) + query.sql.count(live("o")) == expected, query.sql


@pytest.mark.parametrize("conversation_id", [None, "c1"])
def test_user_wide_search_leaves_temporary_conversations_out(conversation_id: str | None) -> None:
    query = build_search("u", "word", conversation_id=conversation_id)
    # Messages and titles over all of a user's conversations; none when searching one by its id.
    assert query.sql.count("NOT c.temporary") == (2 if conversation_id is None else 0), query.sql


_FUNCTION_OWNERSHIP = re.compile(r"\b(\w+)\.user_id = p_user_id\b")


@pytest.mark.guarantee(14)
@pytest.mark.parametrize("name", sorted(function_bodies()))
def test_every_delegated_function_checks_expiry_with_ownership(name: str) -> None:
    """schema_citus.sql's functions, which replace three statements on Citus, keep their rule:
    each ownership filter on a conversations row is followed by that row's live predicate."""
    body = function_bodies()[name]
    matches = list(_FUNCTION_OWNERSHIP.finditer(body))
    assert matches, f"{name} has no ownership filter"
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(body)
        assert live(match.group(1)) in body[match.end() : end], f"{name}: {match.group(0)} without expiry"
    # Every statement of the body names the conversation (one shard on Citus).
    for statement in re.split(r";\s*\n", body):
        if re.search(r"\b(FROM|UPDATE|INTO)\s+(conversations|messages|conversation_summaries)\b", statement):
            assert "p_conversation_id" in statement, f"{name}: {statement.strip()[:80]}"
