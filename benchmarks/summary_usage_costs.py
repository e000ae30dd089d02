"""Issue 12's costs, as ratios within one run: python -m benchmarks.summary_usage_costs DSN [parts].

- summarized=True against a plain window (get_history, limit 50, with and without max_tokens) on a
  200-message conversation whose newest summary is through seq 150;
- a guarded write (expected_last_seq=) against an unguarded one, for save_message and
  save_and_get_history;
- appends with usage, with and without the partial index messages_usage, two writers on 10,000
  conversations, and the HOT ratio of the conversation-row updates meanwhile;
- a user's monthly usage_report at the size of the database given (10 M messages in the run
  reported in docs/summaries-usage.md), with and without messages_usage.

Each comparison interleaves the variants, REPEATS times, after a warm-up; the medians are reported.
The DSN's database must hold schema.sql; the append and report parts need the seeded tables
described in docs/summaries-usage.md (the append part creates its own conversations).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from convdb import ConversationStore, Usage
from convdb.sql import QUERIES

REPEATS = 7
INDEX = (
    "CREATE INDEX IF NOT EXISTS messages_usage ON messages (conversation_id, created_at) "
    "WHERE input_tokens IS NOT NULL"
)
USAGE = Usage(model="gpt-x", input_tokens=100, output_tokens=20, cached_tokens=10, cost=None, latency_ms=300)


async def rate(op: Callable[[], Awaitable[Any]], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await op()
    return n / (time.perf_counter() - start)


async def compare(name: str, variants: dict[str, Callable[[], Awaitable[Any]]], n: int) -> None:
    for op in variants.values():
        await rate(op, n // 5)  # warm-up (prepared statements, caches)
    runs: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(REPEATS):
        for key, op in variants.items():
            runs[key].append(await rate(op, n))
    base = next(iter(variants))
    medians = {k: statistics.median(v) for k, v in runs.items()}
    ratios = {k: statistics.median(a / b for a, b in zip(runs[k], runs[base], strict=True)) for k in variants}
    print(f"{name}: " + "; ".join(f"{k} {medians[k]:.0f} ops/s (x{ratios[k]:.2f})" for k in variants))


async def windows_and_guards(dsn: str) -> None:
    async with await ConversationStore.connect(dsn, min_size=1, max_size=1) as store:
        cid = (await store.get_or_create_conversation(None, "bench")).id
        await store.save_messages(
            cid,
            "bench",
            [{"role": "user" if i % 2 else "assistant", "content": "x" * 200} for i in range(200)],
        )
        await store.save_summary(cid, "bench", "s" * 400, through_seq=150)
        await compare(
            "get_history limit 50",
            {
                "plain": lambda: store.get_history(cid, "bench", limit=50),
                "summarized": lambda: store.get_history(cid, "bench", limit=50, summarized=True),
            },
            300,
        )
        await compare(
            "get_history limit 50 max_tokens 4000",
            {
                "plain": lambda: store.get_history(cid, "bench", limit=50, max_tokens=4000),
                "summarized": lambda: store.get_history(
                    cid, "bench", limit=50, max_tokens=4000, summarized=True
                ),
            },
            300,
        )
        g = (await store.get_or_create_conversation(None, "bench")).id
        last = [0]

        async def guarded() -> None:
            last[0] = (await store.save_message(g, "bench", "user", "hello", expected_last_seq=last[0])).seq

        async def unguarded() -> None:
            last[0] = (await store.save_message(g, "bench", "user", "hello")).seq

        await compare("save_message", {"unguarded": unguarded, "guarded": guarded}, 300)
        turn = {"role": "user", "content": "hello"}

        async def turn_guarded() -> None:
            last[0] = (
                await store.save_and_get_history(g, "bench", turn, limit=20, expected_last_seq=last[0])
            )[0].seq

        async def turn_unguarded() -> None:
            last[0] = (await store.save_and_get_history(g, "bench", turn, limit=20))[0].seq

        async def turn_summarized() -> None:
            last[0] = (await store.save_and_get_history(g, "bench", turn, limit=20, summarized=True))[0].seq

        await compare(
            "save_and_get_history limit 20",
            {"unguarded": turn_unguarded, "guarded": turn_guarded, "summarized": turn_summarized},
            300,
        )


async def appends(dsn: str, seconds: float = 5.0) -> None:
    admin = await asyncpg.connect(dsn)
    await admin.execute(
        "INSERT INTO conversations (id, user_id) SELECT 'ap' || i, 'apu' || (i % 1000) "
        "FROM generate_series(1, 10000) i ON CONFLICT DO NOTHING"
    )
    writers = [await asyncpg.connect(dsn) for _ in range(2)]
    sql = QUERIES["save_message"]

    async def writer(conn: asyncpg.Connection, deadline: float) -> int:
        done = 0
        while time.perf_counter() < deadline:
            await conn.fetchrow(
                sql,
                f"ap{random.randint(1, 10000)}",
                f"apu{0}",
                "assistant",
                "text",
                None,
                None,
                None,
                None,
                3,
                None,
                "gpt-x",
                100,
                20,
                10,
                0,
                None,
                300,
            )
            done += 1
        return done

    async def stats() -> tuple[int, int]:
        await asyncio.sleep(1.2)  # cumulative statistics are flushed within a second
        await admin.execute("SELECT pg_stat_clear_snapshot()")
        row = await admin.fetchrow(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'conversations'"
        )
        assert row is not None
        return row[0], row[1]

    # every conversation is of user apu0, so that the WHERE matches (ownership is not what is measured)
    await admin.execute("UPDATE conversations SET user_id = 'apu0' WHERE id LIKE 'ap%'")
    results: dict[str, list[float]] = {"with index": [], "without index": []}
    hot: dict[str, list[float]] = {"with index": [], "without index": []}
    for run in range(2 * REPEATS + 2):
        variant = "with index" if run % 2 == 0 else "without index"
        if variant == "with index":
            await admin.execute(INDEX)
        else:
            await admin.execute("DROP INDEX IF EXISTS messages_usage")
        before = await stats()
        deadline = time.perf_counter() + seconds
        counts = await asyncio.gather(*(writer(w, deadline) for w in writers))
        after = await stats()
        if run >= 2:  # the first pair is the warm-up
            results[variant].append(sum(counts) / seconds)
            updates = after[0] - before[0]
            hot[variant].append((after[1] - before[1]) / updates if updates else float("nan"))
    await admin.execute(INDEX)
    ratios = [a / b for a, b in zip(results["without index"], results["with index"], strict=True)]
    print(
        "appends with usage, 2 writers: "
        + "; ".join(
            f"{k} {statistics.median(v):.0f} ops/s, HOT {statistics.median(hot[k]):.1%}"
            for k, v in results.items()
        )
        + f"; without/with x{statistics.median(ratios):.2f} (runs {min(ratios):.2f}-{max(ratios):.2f})"
    )
    for conn in (*writers, admin):
        await conn.close()


async def monthly_report(dsn: str, user: str) -> None:
    admin = await asyncpg.connect(dsn)
    total = await admin.fetchval("SELECT reltuples::bigint FROM pg_class WHERE relname = 'messages'")
    since = datetime.now(UTC) - timedelta(days=30)
    until = datetime.now(UTC)
    async with await ConversationStore.connect(dsn, min_size=1, max_size=1) as store:
        times: dict[str, list[float]] = {"with index": [], "without index": []}
        for variant in ("with index", "without index", "with index", "without index"):
            if variant == "with index":
                await admin.execute(INDEX)
            else:
                await admin.execute("DROP INDEX IF EXISTS messages_usage")
            await store.pool.expire_connections()  # plans are cached per connection
            await store.usage_report(user, since=since, until=until)  # warm-up
            for _ in range(10):
                start = time.perf_counter()
                report = await store.usage_report(user, since=since, until=until)
                times[variant].append((time.perf_counter() - start) * 1000)
        await admin.execute(INDEX)
        print(
            f"monthly usage_report of {user} ({report.total.messages} messages with usage in the month; "
            f"~{total:,} messages in the table): "
            + "; ".join(
                f"{k} median {statistics.median(v):.2f} ms (max {max(v):.2f})" for k, v in times.items()
            )
        )
    await admin.close()


async def main() -> None:
    dsn, *parts = sys.argv[1:]
    if not parts or "windows" in parts:
        await windows_and_guards(dsn)
    if "appends" in parts:
        await appends(dsn)
    if "report" in parts:
        for user in ("u42", "heavy"):
            await monthly_report(dsn, user)


if __name__ == "__main__":
    asyncio.run(main())
