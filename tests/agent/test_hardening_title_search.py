"""Issue 10 item 14: title_contains folds case by Unicode whatever the database's LC_CTYPE (the
embedded server's is C, where ILIKE folds only ASCII), with the listing plan unchanged."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from convdb import ConversationStore
from convdb.listing import MAX_TITLE_SEARCH, build_listing

U = "alice"
TITLES = {
    "fr": "ÉCOLE d'été",
    "de": "STRAẞE 5",
    "el": "θεωρία",
    "kelvin": "300 \u212a",
    "meta": "a.c (X)* [É] 50%_ ^A$ back\\slash",
    "plain": "Paris notes",
}


async def _found(store: ConversationStore, pattern: str) -> set[str]:
    page = await store.list_conversations(U, title_contains=pattern, limit=100)
    assert page.next_cursor is None
    return {c.id for c in page.items}


@pytest.fixture
async def titled(store: ConversationStore) -> ConversationStore:
    for cid, title in TITLES.items():
        await store.get_or_create_conversation(cid, U, title=title)
    await store.get_or_create_conversation("untitled", U)
    await store.get_or_create_conversation("foreign", "bob", title="école")
    return store


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("école", {"fr"}),
        ("D'ÉTÉ", {"fr"}),
        ("straße", {"de"}),
        ("ΘΕΩΡΊΑ", {"el"}),
        ("300 k", {"kelvin"}),
        ("paris", {"plain"}),
        ("a.c", {"meta"}),
        ("abc", set()),
        ("(x)*", {"meta"}),
        ("[é]", {"meta"}),
        ("50%_", {"meta"}),
        ("^a$", {"meta"}),
        ("BACK\\SLASH", {"meta"}),
        ("e", {"fr", "de", "plain"}),  # accents are not folded away: "é" is not "e"
        ("", set(TITLES)),
    ],
)
async def test_title_contains_folds_unicode_case_on_the_server(
    titled: ConversationStore, pattern: str, expected: set[str]
) -> None:
    assert await _found(titled, pattern) == expected


async def test_the_embedded_server_really_is_lc_ctype_c_where_ilike_fails(
    titled: ConversationStore, db: asyncpg.Connection
) -> None:
    """Documents why: on this server, ILIKE does not fold É (the old implementation)."""
    ctype = await db.fetchval("SELECT datctype FROM pg_database WHERE datname = current_database()")
    if ctype in ("C", "POSIX"):
        assert not await db.fetchval("SELECT 'ÉCOLE' ILIKE '%école%'")
    assert await _found(titled, "école") == {"fr"}


async def test_the_longest_title_search_runs(titled: ConversationStore) -> None:
    assert await _found(titled, "é" * MAX_TITLE_SEARCH) == set()


@pytest.mark.engine_specific("postgresql", "a single-node EXPLAIN shape")
async def test_title_search_keeps_the_listing_plan(store: ConversationStore, db: asyncpg.Connection) -> None:
    """The title search stays on conversations_user_id, never a sequential scan. Its Citus twin:
    test_citus.py::test_listing_reads_each_shard_through_the_user_index (the same patterns, on
    every shard)."""
    await db.execute("""INSERT INTO conversations (id, user_id, title, updated_at)
                        SELECT 'c' || g, 'u' || (g % 2000), 'Été ' || g, now() - g * interval '1 second'
                          FROM generate_series(1, 40000) g""")
    await db.execute("ANALYZE conversations")
    for pattern in ("école", "x", "Été 7"):
        query = build_listing("u7", limit=3, title_contains=pattern)
        plan = json.loads(await db.fetchval("EXPLAIN (FORMAT JSON) " + query.sql, *query.args))
        nodes = list(_nodes(plan[0]["Plan"]))
        assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], nodes
        assert {n["Index Name"] for n in nodes if "Index Name" in n} == {"conversations_user_id"}
    assert len((await store.list_conversations("u7", title_contains="ÉTÉ", limit=100)).items) == 20


def _nodes(node: dict[str, Any]) -> Any:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)
