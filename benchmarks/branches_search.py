"""Branches, search and the search index, measured (issue 11's figures).

    python -m benchmarks.branches_search --dsn postgresql://postgres@HOST:PORT/postgres [--messages N]

Creates its own databases on the server of ``--dsn`` (a superuser DSN) from schema.sql:

1. Fork cost, two designs: copy-on-fork (convdb's ``fork_conversation``: one statement that copies
   the prefix) against a shared prefix (an O(1) fork: only the conversation row, with parent and
   fork point; reads then walk the ancestry). Sources of 100 and 10,000 messages.
2. Newest-50 window on a fork of depth 1 and 20, with 100 sibling branches: convdb's
   ``get_history`` on a copied fork against the ancestry walk (a recursive CTE over the parent
   chain, the newest 50 per segment, merged) that the shared-prefix design needs.
3. Append throughput (``save_message``, 4 concurrent writers, 200-character messages) without and
   with the GIN index of schema_search.sql, interleaved runs.
4. ``search_messages`` latency at ``--messages`` messages (1,000 users x 10 conversations), without
   and with the index, for a rare and a common word.

Everything is a median of several repeats in one run; quote ratios (2 shared cores).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from convdb import ConversationStore
from convdb.testing import apply_schema

ROOT = Path(__file__).resolve().parent.parent

# The window a shared-prefix design needs: walk the parent chain (each conversation holds only the
# messages it added after its fork point), take the newest 50 of each segment, merge.
ANCESTRY_WINDOW = """
WITH RECURSIVE chain AS (
    SELECT id, parent_id, forked_at_seq, 9223372036854775807::bigint AS upto, 0 AS depth
      FROM conversations WHERE id = $1 AND user_id = $2
    UNION ALL
    SELECT p.id, p.parent_id, p.forked_at_seq, c.forked_at_seq, c.depth + 1
      FROM chain c JOIN conversations p ON p.id = c.parent_id
)
SELECT m.seq, m.role, m.content, m.tool_name, m.tool_call_id, m.tool_calls, m.metadata, m.token_count,
       m.idempotency_key, m.created_at
  FROM chain ch
  CROSS JOIN LATERAL (
        SELECT * FROM messages
         WHERE conversation_id = ch.id AND seq <= ch.upto
         ORDER BY seq DESC LIMIT $3
  ) m
 ORDER BY m.seq DESC LIMIT $3
"""

WORDS = [f"w{i}" for i in range(5000)]


async def timed(op: Callable[[], Awaitable[Any]], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        await op()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def new_database(admin: str, name: str) -> str:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = admin.rsplit("/", 1)[0]
    dsn = f"{base}/{name}"
    apply_schema(dsn, ROOT / "schema.sql")
    return dsn


async def fill(store: ConversationStore, cid: str, uid: str, n: int) -> None:
    await store.get_or_create_conversation(cid, uid)
    for start in range(0, n, 1000):
        await store.save_messages(
            cid,
            uid,
            [
                {"role": "user", "content": f"message {i} " + "x" * 150}
                for i in range(start, min(n, start + 1000))
            ],
        )


async def shared_prefix_fork(conn: asyncpg.Connection, cid: str, uid: str, at_seq: int) -> str:
    """The O(1) design's fork: only the row (its reads walk the ancestry)."""
    new = uuid.uuid4().hex
    await conn.execute(
        "INSERT INTO conversations (id, user_id, next_seq, parent_id, forked_at_seq, root_id) "
        "SELECT $3, $2, $4::bigint + 1, id, $4, coalesce(root_id, id) FROM conversations "
        "WHERE id = $1 AND user_id = $2",
        cid,
        uid,
        new,
        at_seq,
    )
    return new


async def branches(dsn: str, repeats: int) -> None:
    store = await ConversationStore.connect(dsn, min_size=1, max_size=2)
    conn = await asyncpg.connect(dsn)
    try:
        print("1. fork cost (median of", repeats, "forks)")
        for n in (100, 10_000):
            cid = f"src{n}"
            await fill(store, cid, "u", n)
            copy = await timed(functools.partial(store.fork_conversation, cid, "u", at_seq=n), repeats)
            shared = await timed(functools.partial(shared_prefix_fork, conn, cid, "u", n), repeats)
            print(
                f"   {n:>6} messages: copy-on-fork {copy * 1000:8.2f} ms"
                f"   shared prefix {shared * 1000:6.2f} ms"
                f"   ratio {copy / shared:6.1f}x"
            )

        print("2. newest-50 window (median of", repeats * 4, "reads)")
        await fill(store, "base", "u", 1000)
        for _ in range(100):  # 100 sibling branches of the source, in both designs
            await store.fork_conversation("base", "u", at_seq=500)
            await shared_prefix_fork(conn, "base", "u", 500)
        baseline = await timed(lambda: store.get_history("base", "u", limit=50), repeats * 4)
        print(f"   never-forked conversation (get_history): {baseline * 1000:.3f} ms")
        for depth in (1, 20):
            copy_parent, shared_parent = "base", "base"
            for level in range(depth):
                at = 1000 + level * 10
                copy_fork = await store.fork_conversation(copy_parent, "u", at_seq=at)
                await store.save_messages(
                    copy_fork.id, "u", [{"role": "user", "content": f"d{level} {i}"} for i in range(10)]
                )
                shared_fork = await shared_prefix_fork(conn, shared_parent, "u", at)
                await conn.executemany(
                    "INSERT INTO messages (conversation_id, seq, role, content) VALUES ($1, $2, 'user', $3)",
                    [(shared_fork, at + 1 + i, f"d{level} {i}") for i in range(10)],
                )
                copy_parent, shared_parent = copy_fork.id, shared_fork
            copy = await timed(functools.partial(store.get_history, copy_parent, "u", limit=50), repeats * 4)
            walk = await timed(
                functools.partial(conn.fetch, ANCESTRY_WINDOW, shared_parent, "u", 50), repeats * 4
            )
            got = [r["content"] for r in await conn.fetch(ANCESTRY_WINDOW, shared_parent, "u", 50)]
            want = [m.content for m in await store.get_history(copy_parent, "u", limit=50)][::-1]
            assert got == want, "the two designs must return the same window"
            print(
                f"   depth {depth:>2}: copied fork {copy * 1000:.3f} ms   ancestry walk (raw SQL) "
                f"{walk * 1000:.3f} ms   ratio walk/copy {walk / copy:.2f}x"
            )
    finally:
        await conn.close()
        await store.close()


async def appends(dsn: str, seconds: float, runs: int, chars: int = 200) -> None:
    store = await ConversationStore.connect(dsn, min_size=4, max_size=4)
    conn = await asyncpg.connect(dsn)
    try:
        for i in range(200):
            await store.get_or_create_conversation(f"a{i}", "u")
        rng = random.Random(1)

        async def writer(stop: float, counter: list[int]) -> None:
            while time.perf_counter() < stop:
                text = " ".join(rng.choice(WORDS) for _ in range(chars // 5 + 1))[:chars]
                await store.save_message(f"a{rng.randrange(200)}", "u", "user", text)
                counter[0] += 1

        async def run() -> float:
            counter = [0]
            stop = time.perf_counter() + seconds
            await asyncio.gather(*(writer(stop, counter) for _ in range(4)))
            return counter[0] / seconds

        without, with_index = [], []
        await run()  # warm-up
        for _ in range(runs):
            await conn.execute("DROP INDEX IF EXISTS messages_content_search")
            without.append(await run())
            await conn.execute(
                "CREATE INDEX messages_content_search ON messages USING gin "
                "(to_tsvector('simple'::regconfig, left(coalesce(content, ''), 100000)))"
            )
            with_index.append(await run())
        ratios = [w / o for w, o in zip(with_index, without, strict=True)]
        print(
            f"3. appends (save_message, 4 writers, {chars}-character messages, "
            f"{seconds:.0f} s runs x {runs}, interleaved): "
            f"without index median {statistics.median(without):.0f}/s, with GIN index "
            f"{statistics.median(with_index):.0f}/s; per-run ratios {[f'{r:.2f}' for r in ratios]}, "
            f"median {statistics.median(ratios):.2f}x"
        )
        await conn.execute("DROP INDEX IF EXISTS messages_content_search")
    finally:
        await conn.close()
        await store.close()


async def search(dsn: str, messages: int, repeats: int) -> None:
    conn = await asyncpg.connect(dsn)
    users, per_user_conversations = 1000, 10
    per_conversation = max(1, messages // (users * per_user_conversations))
    started = time.perf_counter()
    await conn.execute(
        "INSERT INTO conversations (id, user_id, title, next_seq) "
        "SELECT 'c' || i, 'u' || (i % $1), 'title ' || i, $2 + 1 FROM generate_series(0, $3 - 1) i",
        users,
        per_conversation,
        users * per_user_conversations,
    )
    # Words w0..w4999 with a skewed frequency: w0 is in most messages, w4999 in very few.
    await conn.execute(
        "INSERT INTO messages (conversation_id, seq, role, content) "
        "SELECT 'c' || c, s, 'user', (SELECT string_agg('w' || floor(5000 * power(random(), 3))::int, ' ') "
        "FROM generate_series(1, 30 + c * 0 + s * 0)) "
        "FROM generate_series(0, $1 - 1) c, generate_series(1, $2) s",
        users * per_user_conversations,
        per_conversation,
    )
    await conn.execute("VACUUM ANALYZE")
    total = await conn.fetchval("SELECT count(*) FROM messages")
    print(
        f"4. search at {total} messages ({users} users x {per_user_conversations} conversations x "
        f"{per_conversation}), generated in {time.perf_counter() - started:.0f} s"
    )
    store = await ConversationStore.connect(dsn, min_size=1, max_size=1)
    try:
        cases = {"rare word": "w4990", "common word": "w1", "two words": "w3 w40"}
        for label in ("without index", "with GIN index"):
            if label == "with GIN index":
                started = time.perf_counter()
                await conn.execute(
                    "CREATE INDEX messages_content_search ON messages USING gin "
                    "(to_tsvector('simple'::regconfig, left(coalesce(content, ''), 100000)))"
                )
                await conn.execute("ANALYZE messages")
                size_sql = "SELECT pg_size_pretty(pg_relation_size('messages_content_search'))"
                size = await conn.fetchval(size_sql)
                print(f"   index built in {time.perf_counter() - started:.0f} s, size {size}")
            for name, query in cases.items():
                page = await store.search_messages("u7", query)
                latency = await timed(functools.partial(store.search_messages, "u7", query), repeats)
                scoped = await timed(
                    functools.partial(store.search_messages, "u7", query, conversation_id="c7"), repeats
                )
                print(
                    f"   {label:15s} {name:12s}: user-wide {latency * 1000:8.2f} ms ({len(page.items)} hits "
                    f"on the first page), one conversation {scoped * 1000:7.2f} ms"
                )
    finally:
        await store.close()
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", required=True, help="a superuser DSN (databases are created on its server)")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--append-seconds", type=float, default=5.0)
    parser.add_argument("--append-runs", type=int, default=4)
    parser.add_argument("--append-chars", type=int, default=200)
    parser.add_argument("--only", choices=["branches", "appends", "search"], default=None)
    args = parser.parse_args()
    if args.only in (None, "branches"):
        await branches(await new_database(args.dsn, "bench_branches"), args.repeats)
    if args.only in (None, "appends"):
        database = await new_database(args.dsn, "bench_appends")
        await appends(database, args.append_seconds, args.append_runs, args.append_chars)
    if args.only in (None, "search"):
        await search(await new_database(args.dsn, "bench_search"), args.messages, args.repeats)


if __name__ == "__main__":
    asyncio.run(main())
