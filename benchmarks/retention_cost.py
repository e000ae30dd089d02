"""The cost of retention (docs/retention.md): the expiry predicate, sliding expiry, caps, the purge.

    python -m benchmarks.retention_cost [--calls 300] [--repeats 5] [--purge 2000]

One embedded PostgreSQL; one connection per store, calls sequential; the rounds alternate between
the variants compared, after a warm-up, and the figures are medians over the rounds. The client
and the server share the machine's cores: quote the ratios, which are within one run.

- ``predicate``: the raw SQL of ``get_history`` (50 of 200 messages) and ``save_message`` through
  asyncpg, as shipped (with the live-conversation predicate) and with the predicate cut out of
  the text: the predicate's own cost.
- ``expiry``: ``history_50`` and ``append`` through the store on a conversation with a (future)
  expiry and on one without: what setting an expiry costs.
- ``sliding``: ``append`` to a sliding conversation (each append moves ``expires_at``, an indexed
  column) and to a fixed one, with the HOT share of the conversation row's updates for each.
- ``cap``: ``append`` to a conversation at its ``max_messages`` (each append deletes the oldest)
  and to an uncapped one.
- ``purge``: conversations/s of ``purge_expired`` (list through the partial index, claim each with
  FOR UPDATE SKIP LOCKED, one statement per conversation) and of the bare single statement
  ``DELETE FROM conversations WHERE expires_at <= now()`` in batches of 100 (no claim, no counts
  per conversation, not safe from several purgers without waits), each on ``--purge`` expired
  conversations of 5 messages among as many live ones.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from convdb import ConversationStore
from convdb.sql import QUERIES
from convdb.testing import EmbeddedPostgres, apply_schema

ROOT = Path(__file__).resolve().parents[1]
Op = Callable[[int], Awaitable[object]]
LIVE = "(c.expires_at IS NULL OR c.expires_at > now())"
LIVE_BARE = "(expires_at IS NULL OR expires_at > now())"
FAR = datetime(2999, 1, 1, tzinfo=UTC)


async def rate(op: Op, calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        await op(i)
    return calls / (time.perf_counter() - start)


async def compare(variants: dict[str, Op], calls: int, repeats: int) -> dict[str, list[float]]:
    """ops/s of each variant per round, rounds interleaved (the order rotating) after a warm-up."""
    for op in variants.values():
        await rate(op, max(10, calls // 10))
    runs: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            runs[name].append(await rate(variants[name], calls))
    return runs


def show(title: str, runs: dict[str, list[float]], base: str) -> None:
    """Medians, and the median (and range) of the per-round ratios to ``base``: each round measures
    the variants back to back, so its ratio is less exposed to the machine's load than medians'."""
    print(f"{title}: " + ", ".join(f"{k} {statistics.median(v):.0f} ops/s" for k, v in runs.items()))
    for name, values in runs.items():
        if name != base:
            ratios = sorted(v / b for v, b in zip(values, runs[base], strict=True))
            print(
                f"    {name} / {base} = {statistics.median(ratios):.3f} "
                f"(rounds {ratios[0]:.2f}-{ratios[-1]:.2f})"
            )


def without_predicate(sql: str) -> str:
    cut = sql.replace(f"\n   AND {LIVE}", "").replace(f"\n       AND {LIVE_BARE}", "")
    assert LIVE not in cut, "the predicate's spelling changed"
    assert LIVE_BARE not in cut, "the predicate's spelling changed"
    return cut


async def hot_share(
    db: asyncpg.Connection, work: Callable[[], Awaitable[None]], flush: Callable[[], Awaitable[object]]
) -> float:
    """The share of conversations' updates that were HOT while ``work`` ran."""

    async def counters() -> tuple[int, int]:
        # A backend flushes its statistics at a transaction's end once a second has passed since
        # its last flush (PostgreSQL 15+), else only after 10 s idle: wait, then end one more.
        await asyncio.sleep(1.2)
        await flush()
        await db.execute("SELECT pg_stat_clear_snapshot()")
        row = await db.fetchrow(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'conversations'"
        )
        assert row is not None
        return row[0], row[1]

    upd0, hot0 = await counters()
    await work()
    upd1, hot1 = await counters()
    return (hot1 - hot0) / max(1, upd1 - upd0)


async def seed_purge(db: asyncpg.Connection, tag: str, n: int) -> None:
    await db.execute(
        "INSERT INTO conversations (id, user_id, next_seq, expires_at) "
        "SELECT $2 || g, 'u' || (g % 100), 6, now() - interval '1 hour' FROM generate_series(1, $1) g",
        n,
        f"{tag}x",
    )
    await db.execute(
        "INSERT INTO conversations (id, user_id, next_seq, expires_at) "
        "SELECT $2 || g, 'u' || (g % 100), 6, now() + interval '1 day' FROM generate_series(1, $1) g",
        n,
        f"{tag}l",
    )
    await db.execute(
        "INSERT INTO messages (conversation_id, seq, role, content) "
        "SELECT c.id, s, 'user', repeat('lorem ', 20) FROM conversations c, generate_series(1, 5) s "
        "WHERE c.id LIKE $1 || '%'",
        tag,
    )
    await db.execute("VACUUM ANALYZE conversations")
    await db.execute("VACUUM ANALYZE messages")


async def measure(dsn: str, calls: int, repeats: int, purge: int) -> None:
    store = await ConversationStore.connect(dsn, min_size=1, max_size=1)
    db = await asyncpg.connect(dsn)
    content = "lorem ipsum dolor sit amet " * 10
    try:
        for cid, kwargs in {
            "plain": {},
            "expiring": {"expires_at": FAR},
            "sliding": {"ttl": timedelta(days=365 * 90), "sliding": True},
            "capped": {"max_messages": 50},
        }.items():
            await store.get_or_create_conversation(cid, "u", **kwargs)  # type: ignore[arg-type]
            await store.save_messages(cid, "u", [{"role": "user", "content": content}] * 200)
        for table in ("conversations", "messages"):
            await db.execute(f"VACUUM ANALYZE {table}")
        print(f"{calls} calls x {repeats} rounds, medians (ops/s); ratios within this run")

        history_sql, history_bare = QUERIES["get_history"], without_predicate(QUERIES["get_history"])
        save_sql, save_bare = QUERIES["save_message"], without_predicate(QUERIES["save_message"])
        row = ("user", content, None, None, None, None, 1, None, *(None,) * 7)
        show(
            "predicate, get_history 50 (raw SQL)",
            await compare(
                {
                    "without": lambda i: db.fetch(history_bare, "plain", "u", 50),
                    "with": lambda i: db.fetch(history_sql, "plain", "u", 50),
                },
                calls,
                repeats,
            ),
            "without",
        )
        show(
            "predicate, save_message (raw SQL)",
            await compare(
                {
                    "without": lambda i: db.fetch(save_bare, "plain", "u", *row),
                    "with": lambda i: db.fetch(save_sql, "plain", "u", *row),
                },
                calls,
                repeats,
            ),
            "without",
        )
        show(
            "expiry set, history_50",
            await compare(
                {
                    "none": lambda i: store.get_history("plain", "u", limit=50),
                    "expires_at": lambda i: store.get_history("expiring", "u", limit=50),
                },
                calls,
                repeats,
            ),
            "none",
        )
        show(
            "expiry set, append",
            await compare(
                {
                    "none": lambda i: store.save_message("plain", "u", "user", content),
                    "expires_at": lambda i: store.save_message("expiring", "u", "user", content),
                    "sliding": lambda i: store.save_message("sliding", "u", "user", content),
                },
                calls,
                repeats,
            ),
            "none",
        )
        show(
            "cap, append",
            await compare(
                {
                    "uncapped": lambda i: store.save_message("plain", "u", "user", content),
                    "capped_50": lambda i: store.save_message("capped", "u", "user", content),
                },
                calls,
                repeats,
            ),
            "uncapped",
        )
        for cid in ("expiring", "sliding"):

            async def appends(cid: str = cid) -> None:
                for _ in range(calls):
                    await store.save_message(cid, "u", "user", content)

            share = await hot_share(db, appends, lambda: store.get_conversation("plain", "u"))
            print(f"HOT share of conversations updates, appends to {cid}: {share:.1%}")

        # The purge: both ways on fresh, equal data, alternating.
        claim_rates, bare_rates = [], []
        for r in range(max(1, repeats // 2)):
            await seed_purge(db, f"a{r}", purge)
            start = time.perf_counter()
            counts = await store.purge_expired(batch_size=100)
            claim_rates.append(counts.conversations / (time.perf_counter() - start))
            assert counts.conversations == purge, counts
            await seed_purge(db, f"b{r}", purge)
            start, deleted = time.perf_counter(), 0
            while True:
                gone = await db.fetchval(
                    "WITH gone AS (DELETE FROM conversations WHERE id IN (SELECT id FROM conversations "
                    "WHERE expires_at <= now() LIMIT 100) RETURNING id) SELECT count(*) FROM gone"
                )
                deleted += gone
                if gone < 100:
                    break
            bare_rates.append(deleted / (time.perf_counter() - start))
            assert deleted == purge
        show(
            f"purge ({purge} expired conversations of 5 messages, conversations/s)",
            {"single_statement": bare_rates, "purge_expired": claim_rates},
            "single_statement",
        )
    finally:
        await db.close()
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--purge", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="convdb-retention-") as folder:
        server = EmbeddedPostgres(Path(folder) / "data")
        server.start()
        try:
            dsn = server.dsn()
            apply_schema(dsn, ROOT / "schema.sql")
            asyncio.run(measure(dsn, args.calls, args.repeats, args.purge))
        finally:
            server.destroy()


if __name__ == "__main__":
    main()
