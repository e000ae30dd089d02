"""list_conversations: newest first, keyset pages, filters, cursor checks, and the index it uses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from convdb import ConversationStore, InvalidInput
from convdb.listing import build_listing

U = "alice"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


Row = tuple[str, str, str | None, dict[str, Any], datetime]


async def _seed(db: asyncpg.Connection, rows: list[Row]) -> None:
    await db.executemany(
        "INSERT INTO conversations (id, user_id, title, metadata, updated_at) "
        "VALUES ($1, $2, $3, $4::jsonb, $5)",
        [(i, u, t, json.dumps(m), ts) for i, u, t, m, ts in rows],
    )


async def _all_pages(store: ConversationStore, **kwargs: Any) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(1000):
        page = await store.list_conversations(U, cursor=cursor, **kwargs)
        ids += [c.id for c in page.items]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor
    raise AssertionError("pagination did not end")


async def test_newest_first_with_id_tie_break(store: ConversationStore, db: asyncpg.Connection) -> None:
    await _seed(
        db,
        [
            ("a", U, "one", {}, T0),
            ("b", U, "two", {}, T0 + timedelta(hours=1)),
            ("c", U, "three", {}, T0 + timedelta(hours=1)),
            ("d", U, "four", {}, T0 - timedelta(days=1)),
            ("x", "bob", "theirs", {}, T0 + timedelta(days=9)),
        ],
    )
    page = await store.list_conversations(U)
    assert [c.id for c in page.items] == ["c", "b", "a", "d"]
    assert page.next_cursor is None
    assert page.items[0].user_id == U
    assert page.items[0].title == "three"


async def test_keyset_pages_cover_everything_once(store: ConversationStore, db: asyncpg.Connection) -> None:
    # many equal timestamps, so the id tie-break carries the pagination
    rows: list[tuple[str, str, str | None, dict[str, Any], datetime]] = [
        (f"c{i:03d}", U, None, {}, T0 + timedelta(minutes=i // 7)) for i in range(95)
    ]
    await _seed(db, rows)
    expected = [r[0] for r in sorted(rows, key=lambda r: (r[4], r[0]), reverse=True)]
    for size in (1, 7, 10, 94, 95, 96):
        assert await _all_pages(store, limit=size) == expected
    page = await store.list_conversations(U, limit=95)
    assert page.next_cursor is None
    assert len(page.items) == 95


async def test_pages_stay_consistent_when_a_conversation_moves_to_the_top(store: ConversationStore) -> None:
    ids = [(await store.get_or_create_conversation(None, U)).id for _ in range(5)]
    first = await store.list_conversations(U, limit=2)
    assert [c.id for c in first.items] == ids[::-1][:2]
    await store.save_message(ids[0], U, "user", "bump")  # the oldest becomes the newest
    second = await store.list_conversations(U, limit=10, cursor=first.next_cursor)
    assert [c.id for c in second.items] == [ids[2], ids[1]]  # no duplicates, no OFFSET drift


async def test_title_contains_is_literal_and_case_insensitive(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    await _seed(
        db,
        [
            ("p", U, "100% done", {}, T0),
            ("q", U, "1000 done", {}, T0),
            ("r", U, "snake_case", {}, T0),
            ("s", U, "snakeXcase", {}, T0),
            ("t", U, r"back\slash", {}, T0),
            ("u", U, None, {}, T0),
            ("v", U, "Weather in PARIS", {}, T0),
        ],
    )
    assert await _all_pages(store, title_contains="0%") == ["p"]
    assert await _all_pages(store, title_contains="e_c") == ["r"]
    assert await _all_pages(store, title_contains="\\s") == ["t"]
    assert await _all_pages(store, title_contains="paris") == ["v"]
    assert await _all_pages(store, title_contains="") == ["v", "t", "s", "r", "q", "p"]


async def test_metadata_contains_and_time_bounds(store: ConversationStore, db: asyncpg.Connection) -> None:
    await _seed(
        db,
        [
            ("a", U, None, {"project": "x", "tags": ["red", "blue"]}, T0),
            ("b", U, None, {"project": "x"}, T0 + timedelta(days=1)),
            ("c", U, None, {"project": "y", "tags": ["red"]}, T0 + timedelta(days=2)),
        ],
    )
    assert await _all_pages(store, metadata_contains={"project": "x"}) == ["b", "a"]
    assert await _all_pages(store, metadata_contains={"tags": ["red"]}) == ["c", "a"]
    assert await _all_pages(store, metadata_contains={}) == ["c", "b", "a"]
    assert await _all_pages(store, updated_after=T0) == ["c", "b"]  # exclusive
    assert await _all_pages(store, updated_before=T0 + timedelta(days=2)) == ["b", "a"]
    tz = datetime(2026, 1, 2, 1, tzinfo=UTC).astimezone(__import__("zoneinfo").ZoneInfo("Asia/Tokyo"))
    assert await _all_pages(store, updated_after=T0, updated_before=tz) == ["b"]
    assert await _all_pages(
        store, limit=1, metadata_contains={"project": "x"}, updated_after=T0 - timedelta(days=1)
    ) == ["b", "a"]


async def test_tampered_or_foreign_cursor_is_refused(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    await _seed(db, [(f"c{i}", U, "t", {}, T0 + timedelta(minutes=i)) for i in range(3)])
    page = await store.list_conversations(U, limit=1)
    cursor = page.next_cursor
    assert cursor is not None
    flipped = cursor[:-2] + ("A" if cursor[-2] != "A" else "B") + cursor[-1]
    for bad in (flipped, cursor[:-3], "", "not a cursor", cursor + "x", "e30"):
        with pytest.raises(InvalidInput) as err:
            await store.list_conversations(U, cursor=bad)
        assert err.value.field == "cursor"
    with pytest.raises(InvalidInput, match="another listing"):
        await store.list_conversations("bob", cursor=cursor)
    with pytest.raises(InvalidInput, match="another listing"):
        await store.list_conversations(U, cursor=cursor, title_contains="t")
    with pytest.raises(InvalidInput):
        await store.list_conversations(U, cursor=123)  # type: ignore[arg-type]


@pytest.mark.engine_specific("postgresql", "a single-node EXPLAIN shape")
async def test_listing_is_served_by_the_user_index(store: ConversationStore, db: asyncpg.Connection) -> None:
    """The plan reads only this user's rows, through conversations_user_id (see schema.sql for why
    there is no updated_at index); the order is a top-N sort over those rows.

    Engine-specific: its Citus twin is test_citus.py's
    test_listing_reads_each_shard_through_the_user_index."""
    await db.execute("""INSERT INTO conversations (id, user_id, updated_at)
                        SELECT 'c' || g, 'u' || (g % 2000), now() - g * interval '1 second'
                          FROM generate_series(1, 40000) g""")
    await db.execute("ANALYZE conversations")
    cursor = (await store.list_conversations("u7", limit=3)).next_cursor
    for kwargs in (
        {},
        {"cursor": cursor},
        {"title_contains": "x", "metadata_contains": {"a": 1}},
        {"updated_after": T0},
    ):
        query = build_listing("u7", limit=3, **kwargs)
        plan = json.loads(await db.fetchval("EXPLAIN (FORMAT JSON) " + query.sql, *query.args))
        nodes = list(_plan_nodes(plan[0]["Plan"]))
        assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], nodes
        assert {n["Index Name"] for n in nodes if "Index Name" in n} == {"conversations_user_id"}


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


@pytest.mark.engine_specific("postgresql", "a single-node EXPLAIN shape")
async def test_the_optional_updated_at_index_serves_pages_without_a_sort(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    """schema.sql offers (user_id, updated_at DESC, id DESC) for users with very many conversations:
    the same statements then read a page straight off the index, cursor included.

    Engine-specific: on Citus each shard reads its top rows off the index and the coordinator
    merges and sorts the 32 partial pages, so "no Sort node" does not hold there; the per-shard
    index use is what test_citus.py's listing twin checks."""
    await db.execute("""INSERT INTO conversations (id, user_id, updated_at)
                        SELECT 'c' || g, 'u' || (g % 20), now() - g * interval '1 second'
                          FROM generate_series(1, 40000) g""")
    await db.execute(
        "CREATE INDEX conversations_user_updated ON conversations (user_id, updated_at DESC, id DESC)"
    )
    await db.execute("ANALYZE conversations")
    cursor = (await store.list_conversations("u7", limit=3)).next_cursor
    for kwargs in ({}, {"cursor": cursor}):
        query = build_listing("u7", limit=3, **kwargs)  # type: ignore[arg-type]
        plan = json.loads(await db.fetchval("EXPLAIN (FORMAT JSON) " + query.sql, *query.args))
        nodes = list(_plan_nodes(plan[0]["Plan"]))
        assert {n["Index Name"] for n in nodes if "Index Name" in n} == {"conversations_user_updated"}
        assert not [n for n in nodes if n["Node Type"] == "Sort"]
    assert len(await _all_pages(store, limit=500)) == 0  # alice has none; pages still work
    pages = []
    cursor = None
    while True:
        page = await store.list_conversations("u7", limit=300, cursor=cursor)
        pages += [c.id for c in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(pages) == len(set(pages)) == 2000


async def test_verify_schema_requires_the_listing_index(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    from convdb import SchemaMismatch

    await store.verify_schema()
    await db.execute("DROP INDEX conversations_user_id")
    with pytest.raises(SchemaMismatch, match="conversations_user_id"):
        await store.verify_schema()
