"""search_messages: ranked full-text search over the caller's own messages and titles, with and
without the optional GIN index (schema_search.sql); never another user's message."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from convdb import ConversationNotFound, ConversationStore, InvalidInput
from convdb.records import MARK_END, MARK_START
from convdb.search import INDEXED_CHARS, build_search
from convdb.testing import apply_schema
from tests.security.test_security_isolation import INJECTION_CORPUS
from tests.support.fix_server import ENGINE

ROOT = Path(__file__).resolve().parents[2]


async def corpus(store: ConversationStore) -> None:
    await store.get_or_create_conversation("trip", "alice", title="Holiday planning in Kyoto")
    await store.save_messages(
        "trip",
        "alice",
        [
            {"role": "user", "content": "Which temples should I visit in Kyoto?"},
            {"role": "assistant", "content": "Kinkaku-ji and Fushimi Inari; temples are busiest at noon."},
            {"role": "user", "content": "And the food? Ramen, please."},
        ],
    )
    await store.get_or_create_conversation("work", "alice", title="Quarterly report")
    await store.save_messages(
        "work",
        "alice",
        [
            {"role": "user", "content": "Summarise the report for Kyoto office"},
            {"role": "assistant", "content": "The report says revenue grew."},
        ],
    )
    # Bob uses the same words: none of it may ever reach alice.
    await store.get_or_create_conversation("bobs", "bob", title="Kyoto secrets")
    await store.save_messages(
        "bobs", "bob", [{"role": "user", "content": "Kyoto temples report ramen secret"}]
    )


async def test_hits_are_ranked_highlighted_and_own_only(store: ConversationStore) -> None:
    await corpus(store)
    page = await store.search_messages("alice", "kyoto")
    keys = {(h.conversation_id, h.seq) for h in page.items}
    assert keys == {("trip", 1), ("work", 1), ("trip", None)}  # two messages and a title
    assert all(h.conversation_id != "bobs" for h in page.items)
    ranks = [h.rank for h in page.items]
    assert ranks == sorted(ranks, reverse=True) and page.next_cursor is None
    hit = next(h for h in page.items if h.seq == 1 and h.conversation_id == "trip")
    assert f"{MARK_START}Kyoto{MARK_END}" in hit.snippet and hit.role == "user"
    assert "<mark>Kyoto</mark>" in hit.snippet_html()
    title = next(h for h in page.items if h.seq is None)
    assert (title.role, title.snippet) == (None, f"Holiday planning in {MARK_START}Kyoto{MARK_END}")
    # web-search syntax: phrases, or, exclusion
    assert {
        (h.conversation_id, h.seq) for h in (await store.search_messages("alice", '"Fushimi Inari"')).items
    } == {("trip", 2)}
    assert {
        (h.conversation_id, h.seq) for h in (await store.search_messages("alice", "ramen or revenue")).items
    } == {("trip", 3), ("work", 2)}
    assert {
        (h.conversation_id, h.seq) for h in (await store.search_messages("alice", "report -revenue")).items
    } == {("work", 1), ("work", None)}
    assert (await store.search_messages("nobody", "kyoto")).items == []


async def test_filters_and_configuration(store: ConversationStore) -> None:
    await corpus(store)
    only = await store.search_messages("alice", "kyoto", conversation_id="work")
    assert {(h.conversation_id, h.seq) for h in only.items} == {("work", 1)}  # its title lacks the word
    assert (await store.search_messages("alice", "nothingmatches", conversation_id="work")).items == []
    with pytest.raises(ConversationNotFound):
        await store.search_messages("alice", "kyoto", conversation_id="bobs")
    with pytest.raises(ConversationNotFound):
        await store.search_messages("alice", "kyoto", conversation_id="no-such")
    assistant = await store.search_messages("alice", "temples", role="assistant")
    assert [(h.conversation_id, h.seq) for h in assistant.items] == [("trip", 2)]
    future = datetime.now(UTC) + timedelta(days=1)
    assert (await store.search_messages("alice", "kyoto", after=future)).items == []
    assert len((await store.search_messages("alice", "kyoto", before=future)).items) == 3
    # 'simple' matches exact words only; 'english' stems ("temple" finds "temples").
    assert (await store.search_messages("alice", "temple")).items == []
    stemmed = await store.search_messages("alice", "temple", config="english")
    assert {(h.conversation_id, h.seq) for h in stemmed.items} == {("trip", 1), ("trip", 2)}


async def test_any_script_matches_on_exact_words(store: ConversationStore) -> None:
    texts = {
        "ru": "Привет мир, как дела",
        "el": "Καλημέρα κόσμε",
        "ar": "مرحبا بالعالم",
        "he": "שלום עולם",
        "hi": "नमस्ते दुनिया",
        "zh": "你好 世界",
        "ja": "こんにちは 世界",
        "th": "สวัสดี ชาวโลก",
        "emoji": "party 🎉 time",
        "accents": "Crème brûlée à la française",
    }
    await store.get_or_create_conversation("u", "alice")
    await store.save_messages("u", "alice", [{"role": "user", "content": t} for t in texts.values()])
    seq = {k: i + 1 for i, k in enumerate(texts)}
    # Exact words. Case folding of non-ASCII letters follows the database's LC_CTYPE (the test
    # databases use C, which folds ASCII only), so only ASCII case is varied here.
    for key, word in [
        ("ru", "мир"),
        ("ru", "Привет"),
        ("el", "κόσμε"),
        ("ar", "مرحبا"),
        ("he", "עולם"),
        ("hi", "दुनिया"),
        ("zh", "你好"),
        ("ja", "こんにちは"),
        ("th", "ชาวโลก"),
        ("accents", "brûlée"),
        ("emoji", "PARTY"),
    ]:
        hits = (await store.search_messages("alice", word)).items
        assert [h.seq for h in hits] == [seq[key]], (key, word, hits)
    both = {h.seq for h in (await store.search_messages("alice", "世界")).items}
    assert both == {seq["zh"], seq["ja"]}


async def test_pagination_walks_every_hit_once_and_cursors_are_checked(store: ConversationStore) -> None:
    await store.get_or_create_conversation("a", "alice", title="needle")
    await store.get_or_create_conversation("b", "alice")
    # Equal ranks on purpose (ties broken by conversation id and seq), and some different ones.
    await store.save_messages(
        "a", "alice", [{"role": "user", "content": "needle " * (1 + i % 3)} for i in range(23)]
    )
    await store.save_messages("b", "alice", [{"role": "user", "content": "hay needle"} for _ in range(9)])
    full = await store.search_messages("alice", "needle", limit=200)
    assert len(full.items) == 23 + 9 + 1 and full.next_cursor is None
    walked, cursor, pages = [], None, 0
    while True:
        page = await store.search_messages("alice", "needle", limit=5, cursor=cursor)
        walked += page.items
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert [(h.conversation_id, h.seq) for h in walked] == [(h.conversation_id, h.seq) for h in full.items]
    assert pages == 7
    assert cursor is not None
    for other in [
        {"user_id": "bob"},
        {"query": "hay"},
        {"role": "user"},
        {"config": "english"},
        {"conversation_id": "a"},
    ]:
        args: dict[str, Any] = {"user_id": "alice", "query": "needle", **other}
        with pytest.raises(InvalidInput, match="cursor"):
            await store.search_messages(args.pop("user_id"), args.pop("query"), cursor=cursor, **args)
    raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    raw[1] = raw[1] + 1.0  # a forged rank
    forged = base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")
    with pytest.raises(InvalidInput, match="cursor"):
        await store.search_messages("alice", "needle", cursor=forged)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({"query": "x" * 1001}, "query"),
        ({"query": "a\x00"}, "query"),
        ({"query": 5}, "query"),
        ({"user_id": ""}, "user_id"),
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": True}, "limit"),
        ({"cursor": "bogus"}, "cursor"),
        ({"cursor": 3}, "cursor"),
        ({"conversation_id": ""}, "conversation_id"),
        ({"role": "admin"}, "role"),
        ({"after": datetime(2020, 1, 1)}, "after"),
        ({"before": "2020"}, "before"),
        ({"config": "english'; DROP TABLE messages; --"}, "config"),
        ({"config": "pg_catalog.english"}, "config"),
    ],
)
def test_bad_search_input_is_refused_before_io(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"user_id": "alice", "query": "x", **kwargs}
    with pytest.raises(InvalidInput, match=field):
        build_search(args.pop("user_id"), args.pop("query"), **args)


async def test_bad_search_input_through_the_store(store: ConversationStore) -> None:
    with pytest.raises(InvalidInput, match="config"):
        await store.search_messages("alice", "x", config="klingon")


async def test_no_query_reaches_another_users_messages(store: ConversationStore) -> None:
    """Every string of the injection corpus, as query, stored by the victim and by the caller."""
    await store.get_or_create_conversation("victim", "victim", title="secret plans")
    await store.save_messages("victim", "victim", [{"role": "user", "content": t} for t in INJECTION_CORPUS])
    await store.get_or_create_conversation("mine", "attacker")
    await store.save_messages("mine", "attacker", [{"role": "user", "content": t} for t in INJECTION_CORPUS])
    own_hits = 0
    for text in [
        *INJECTION_CORPUS,
        "secret",
        "plans",
        "secret | plans",
        "!secret",
        "*:*",
        "' OR user_id <> '",
    ]:
        for config in ("simple", "english"):
            if not text.strip():
                continue
            page = await store.search_messages("attacker", text, limit=200, config=config)
            assert all(h.conversation_id == "mine" for h in page.items), (text, page.items)
            own_hits += len(page.items)
    assert own_hits > len(INJECTION_CORPUS)  # the searches did find the attacker's own copies


async def test_with_the_optional_index_search_uses_it_and_long_messages_still_append(
    dsn: str, store: ConversationStore, db: asyncpg.Connection
) -> None:
    await corpus(store)
    before = await store.search_messages("alice", "kyoto")
    apply_schema(dsn, ROOT / "schema_search.sql")
    assert await db.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'messages_content_search'::regclass"
    )
    await store.verify_schema()  # an extra index is fine
    after = await store.search_messages("alice", "kyoto")
    assert after == before
    # Many users, so the planner prefers the index for a rare word.
    for u in range(40):
        await store.get_or_create_conversation(f"c{u}", f"u{u}")
        await store.save_messages(
            f"c{u}", f"u{u}", [{"role": "user", "content": f"common words {i}"} for i in range(50)]
        )
    await db.execute("ANALYZE")
    built = build_search("alice", "fushimi")
    async with store.pool.acquire() as conn, conn.transaction():
        if ENGINE == "citus":
            # Each shard's planner decides on its own statistics (here 32 small shards, where a
            # sequential scan wins): with sequential scans off on the workers (a SET LOCAL that
            # Citus carries to them), the plan shows the index exists on the shards and serves.
            await conn.execute("SET LOCAL citus.propagate_set_commands = 'local'")
            await conn.execute("SET LOCAL citus.explain_all_tasks = on")
            await conn.execute("SET LOCAL enable_seqscan = off")
        plan = await conn.fetchval("EXPLAIN (FORMAT JSON) " + built.sql, *built.args)
    assert "messages_content_search" in plan
    # A message whose text is past the indexed prefix is stored (a full tsvector would exceed 1 MB).
    big = " ".join(f"w{i:06d}" for i in range(140_000))  # about 1.1 M characters, all distinct words
    await store.get_or_create_conversation("big", "alice")
    stored = await store.save_message("big", "alice", "user", big[: 1024 * 1024 - 10])
    assert stored.seq == 1
    assert [
        h.seq for h in (await store.search_messages("alice", "w000001", conversation_id="big")).items
    ] == [1]
    last_word = big[:INDEXED_CHARS].split()[-2]  # the last whole word inside the indexed prefix
    beyond = big[INDEXED_CHARS + 100 :].split()[1]
    assert (await store.search_messages("alice", last_word, conversation_id="big")).items
    assert (await store.search_messages("alice", beyond, conversation_id="big")).items == []
