"""What a migration locks, and for how long, on a 1-million-message table under a live writer.

    python -m benchmarks.migration_locks [--messages 1000000] [--runs 5] [--migration 0002]

Builds a database at the version before the migration (from that release's fresh-install SQL plus
the migrations up to it), seeds it, then, while a writer appends messages through convdb and a
second client reads the version table in a loop (what connect() does), applies the migration
``--runs`` times (undoing it in between with --undo's SQL). Each run executes the migration's body
inside a transaction this script controls, so it can list the locks the migration holds just before
COMMIT (pg_locks of its own backend: deterministic, no sampling) and time the transaction, which is
how long those locks are held. It also times the whole file through psql, as a DBA runs it.

Prints the locks, the transaction times, and the writer's and the reader's latencies while a
migration ran compared with while none did.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from convdb import ConversationStore
from convdb.migrations import MIGRATIONS
from convdb.testing import EmbeddedPostgres, apply_schema, find_binary

ROOT = Path(__file__).resolve().parent.parent
RELEASES = ROOT / "tests" / "schema" / "schema_releases"

# How to take the database back to the version before each migration, so that it can run again.
UNDO = {
    2: "ALTER TABLE convdb_schema_version DROP COLUMN compatible_from; "
    "UPDATE convdb_schema_version SET version = 1",
    4: "DROP INDEX conversations_forks; DROP INDEX conversations_branches; "
    "ALTER TABLE conversations DROP CONSTRAINT conversations_fork_lineage, DROP COLUMN parent_id, "
    "DROP COLUMN forked_at_seq, DROP COLUMN root_id; UPDATE convdb_schema_version SET version = 3",
    5: "DROP TABLE message_feedback; UPDATE convdb_schema_version SET version = 4",
    7: "ALTER TABLE conversations DROP CONSTRAINT conversations_valid; "
    "ALTER TABLE messages DROP CONSTRAINT messages_valid; "
    "DROP FUNCTION convdb_check_conversation(text, text, jsonb, bigint, text, bigint, text); "
    "DROP FUNCTION convdb_check_message(bigint, text, text, text, text, jsonb, jsonb, integer, text, "
    "integer, integer, integer, integer, numeric, integer); UPDATE convdb_schema_version SET version = 6",
    # 8 drops CHECKs: its undo re-adds them as they were (read from the database before the first run).
    8: "",
    9: "DROP INDEX conversations_expires; ALTER TABLE conversations "
    "DROP CONSTRAINT conversations_ttl_positive, DROP CONSTRAINT conversations_max_messages_positive, "
    "DROP COLUMN expires_at, DROP COLUMN ttl, DROP COLUMN temporary, DROP COLUMN max_messages; "
    "UPDATE convdb_schema_version SET version = 8",
}

# The CHECKs of conversations and messages as ADD CONSTRAINT statements (NOT VALID: no scan).
_READD_CHECKS = """
SELECT string_agg(format('ALTER TABLE %s ADD CONSTRAINT %I %s%s;', conrelid::regclass, conname,
                         pg_get_constraintdef(oid), CASE WHEN convalidated THEN ' NOT VALID' ELSE '' END),
                  ' ' ORDER BY conname)
  FROM pg_constraint
 WHERE conrelid IN ('conversations'::regclass, 'messages'::regclass) AND contype = 'c'
   AND conname NOT IN ('conversations_valid', 'messages_valid')
"""


@dataclass
class Timeline:
    """(start, seconds) of every call a background loop made."""

    calls: list[tuple[float, float]] = field(default_factory=list)


def _lock_both_block(sql: str) -> str:
    """The DO block of a migration that locks conversations and messages together."""
    blocks = [b for b in sql.split("DO $$") if "LOCK TABLE conversations, messages" in b]
    return "DO $$" + blocks[0].split("$$;")[0] + "$$;"


def _body(sql: str) -> str:
    """The migration without its own BEGIN/COMMIT, to run inside a transaction we control."""
    lines = [line for line in sql.splitlines() if line.strip() not in ("BEGIN;", "COMMIT;")]
    return "\n".join(lines)


async def _seed(dsn: str, messages: int, per_conversation: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        conversations = max(1, messages // per_conversation)
        await conn.execute(
            "INSERT INTO conversations (id, user_id, next_seq) "
            "SELECT 'c' || g, 'u' || (g % 1000), $2::bigint + 1 FROM generate_series(1, $1) g",
            conversations,
            per_conversation,
        )
        await conn.execute(
            "INSERT INTO messages (conversation_id, seq, role, content, token_count) "
            "SELECT 'c' || c, s, CASE WHEN s % 2 = 0 THEN 'assistant' ELSE 'user' END, "
            "       repeat('lorem ipsum ', 8), 24 "
            "  FROM generate_series(1, $1) c, generate_series(1, $2) s",
            conversations,
            per_conversation,
        )
        await conn.execute("VACUUM ANALYZE conversations")
        await conn.execute("VACUUM ANALYZE messages")
    finally:
        await conn.close()


# The append of a server built for an older schema (save_message as released before retention; it
# names only columns every version has): this package's own statements name the retention columns
# of 0009, which the database before the migration lacks, and during a rolling upgrade it is the old
# servers that write while the migration runs.
_OLD_SAVE_MESSAGE = """
WITH reserved AS (
    UPDATE conversations SET next_seq = next_seq + 1, updated_at = now()
     WHERE id = $1 AND user_id = $2
 RETURNING id, next_seq - 1 AS seq
)
INSERT INTO messages (conversation_id, seq, role, content)
SELECT reserved.id, reserved.seq, $3, $4 FROM reserved
RETURNING seq, created_at
"""


async def _writer(store: ConversationStore, conversations: int, stop: asyncio.Event, out: Timeline) -> None:
    while not stop.is_set():
        cid = f"c{random.randint(1, conversations)}"
        uid = f"u{int(cid[1:]) % 1000}"
        start = time.perf_counter()
        await store.pool.fetchrow(_OLD_SAVE_MESSAGE, cid, uid, "user", "a new message")
        out.calls.append((start, time.perf_counter() - start))


async def _version_reader(dsn: str, stop: asyncio.Event, out: Timeline) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        while not stop.is_set():
            start = time.perf_counter()
            await conn.fetchval("SELECT max(version) FROM convdb_schema_version")
            out.calls.append((start, time.perf_counter() - start))
            await asyncio.sleep(0.002)
    finally:
        await conn.close()


def _split(timeline: Timeline, windows: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Latencies of calls that overlapped a migration window, and of the others."""
    during, outside = [], []
    for start, seconds in timeline.calls:
        end = start + seconds
        if any(start < w_end and end > w_start for w_start, w_end in windows):
            during.append(seconds)
        else:
            outside.append(seconds)
    return during, outside


def _ms(values: list[float]) -> str:
    if not values:
        return "no calls"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"n={len(values)} median {statistics.median(values) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, "
        f"max {max(values) * 1000:.2f} ms"
    )


async def measure(dsn: str, version: int, runs: int, conversations: int) -> None:
    migration = MIGRATIONS[version - 1]
    stop = asyncio.Event()
    writes, reads = Timeline(), Timeline()
    store = await ConversationStore.connect(dsn, min_size=2, max_size=2, verify_schema=False)
    conn = await asyncpg.connect(dsn)
    windows: list[tuple[float, float]] = []
    tx_times: list[float] = []
    psql_times: list[float] = []
    locks: list[tuple[str, str]] = []
    undo = UNDO[version]
    if version == 8:
        readd = await conn.fetchval(_READD_CHECKS)
        undo = readd + " UPDATE convdb_schema_version SET version = 7, compatible_from = 1"
    if version in (7, 8):
        # The undo alters both tables too: it takes their locks the migration's way (or deadlocks).
        undo = _lock_both_block(migration.sql) + "\n" + undo
    try:
        tasks = [
            asyncio.create_task(_writer(store, conversations, stop, writes)),
            asyncio.create_task(_writer(store, conversations, stop, writes)),
            asyncio.create_task(_version_reader(dsn, stop, reads)),
        ]
        await asyncio.sleep(2.0)
        for _ in range(runs):
            start = time.perf_counter()
            async with conn.transaction():
                await conn.execute(_body(migration.sql))
                locks = [
                    (r["relation"], r["mode"])
                    for r in await conn.fetch(
                        "SELECT coalesce(c.relname, l.relation::text) AS relation, l.mode FROM pg_locks l "
                        "LEFT JOIN pg_class c ON c.oid = l.relation WHERE l.pid = pg_backend_pid() "
                        "AND l.locktype = 'relation' AND l.granted AND c.relname NOT LIKE 'pg\\_%' "
                        "ORDER BY 1, 2"
                    )
                ]
            end = time.perf_counter()
            windows.append((start, end))
            tx_times.append(end - start)
            await conn.execute(undo)
            await asyncio.sleep(1.0)
            start = time.perf_counter()
            psql = await asyncio.create_subprocess_exec(
                find_binary("psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                dsn,
                "-f",
                "-",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await psql.communicate(migration.sql.encode())
            if psql.returncode != 0:
                raise RuntimeError(f"psql failed: {err.decode()}")
            end = time.perf_counter()
            windows.append((start, end))
            psql_times.append(end - start)
            await conn.execute(undo)
            await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        await conn.close()
        await store.close()
    print(f"migration {migration.filename} ({migration.kind}), {runs} runs")
    print("locks held at COMMIT (relation, mode):")
    for relation, mode in locks:
        print(f"    {relation:40s} {mode}")
    print(
        f"transaction (= lock hold time): median {statistics.median(tx_times) * 1000:.2f} ms, "
        f"max {max(tx_times) * 1000:.2f} ms"
    )
    print(
        f"whole file through psql (connect included): "
        f"median {statistics.median(psql_times) * 1000:.1f} ms, max {max(psql_times) * 1000:.1f} ms"
    )
    for name, timeline in (("writer (save_message)", writes), ("version-table reader", reads)):
        during, outside = _split(timeline, windows)
        print(f"{name}: during a migration {_ms(during)}; otherwise {_ms(outside)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--per-conversation", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--migration", type=int, default=2, help="the migration's version (default 2)")
    args = parser.parse_args()
    if args.migration not in UNDO:
        parser.error(f"no undo SQL for migration {args.migration}; add it to UNDO")
    with tempfile.TemporaryDirectory(prefix="convdb-locks-") as folder:
        server = EmbeddedPostgres(Path(folder) / "data")
        server.start()
        try:
            dsn = server.dsn()
            apply_schema(dsn, RELEASES / f"schema_v{args.migration - 1}.sql")
            started = time.perf_counter()
            asyncio.run(_seed(dsn, args.messages, args.per_conversation))
            print(
                f"seeded {args.messages} messages in {time.perf_counter() - started:.0f} s "
                f"(PostgreSQL at {server.data_dir}, default durability settings)"
            )
            conversations = max(1, args.messages // args.per_conversation)
            asyncio.run(measure(dsn, args.migration, args.runs, conversations))
        finally:
            server.destroy()


if __name__ == "__main__":
    main()
