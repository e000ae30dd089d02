"""The named-statement loader and the shape of the statements it loads."""

from __future__ import annotations

import re

import pytest

from convdb.sql import QUERIES, parse_queries


def test_parse_named_blocks_strips_comments_and_semicolons() -> None:
    text = "-- preamble\n-- name: first\n-- why it exists\nSELECT 1;\n\n-- name: second_one\nSELECT $1\n  FROM t;\n"
    assert parse_queries(text) == {"first": "SELECT 1", "second_one": "SELECT $1\n  FROM t"}


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_empty_block_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        parse_queries("-- name: a\n-- only a comment\n")


def test_core_statements_are_present() -> None:
    for name in (
        "get_or_create_conversation",
        "get_conversation",
        "save_message",
        "reserve_seq_range",
        "insert_message_at",
        "get_history",
        "schema_catalog",
    ):
        assert name in QUERIES


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_statements_are_single_and_parametrised(name: str) -> None:
    sql = QUERIES[name]
    assert ";" not in sql, "one statement per block: asyncpg prepares exactly one"
    # Values travel as $n parameters: no Python formatting placeholders slipped in.
    assert not re.search(r"%s|\{[a-z_]+\}", sql)


@pytest.mark.parametrize(
    "name", [n for n in QUERIES if "conversation" in QUERIES[n] or "messages" in QUERIES[n]]
)
def test_data_statements_check_ownership(name: str) -> None:
    sql = QUERIES[name]
    if name in {"schema_catalog", "schema_version_row", "insert_message_at"}:
        return  # no user data read; insert_message_at runs after reserve_seq_range checked ownership
    if name.endswith("_delegated"):
        # A call of a schema_citus.sql function, which checks ownership (test_retention_sql.py
        # reads its body): the user is its second argument.
        assert re.search(r"convdb_\w+\(\$1, \$2,", sql), sql
        return
    if name in {"purge_expired_list", "purge_expired_conversation"}:
        # purge_expired: a maintenance call over every user's expired rows, never a user's call
        # (it refuses row_level_security); its statements filter on expiry, not on a user.
        assert "expires_at <= now()" in sql
        return
    assert "user_id" in sql, f"{name} must filter on user_id"
