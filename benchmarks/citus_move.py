"""Moving a single-node convdb database onto Citus, then adding a worker and rebalancing; measured.

    python -m benchmarks.citus_move [--messages 1000000] [--rebalance] [--writers 4] [--json FILE]

Local servers from the installed Citus (``bash .ci/citus.sh``; ``benchmarks.citus.local_servers``:
a coordinator + 2 workers and one PostgreSQL 15, same binaries, ``wal_level = logical`` for the
non-blocking shard moves). The source is a convdb database on the single node, ``schema.sql``
and about ``--messages`` messages (conversations of 1,000), a few summaries and feedback rows.

The move, each step timed (the application's writes stopped from the dump to the switch):
  1. ``pg_dump -Fc`` of the source database (PostgreSQL 15's pg_dump);
  2. a new database on the cluster: the citus extension on every node, the workers registered;
  3. ``pg_restore --no-owner`` onto the coordinator (local tables there);
  4. ``psql -f schema_citus.sql``: distributes the tables, copying their rows into the shards;
  5. ``truncate_local_data_after_distributing_table`` per table: the coordinator's local copy of
     the rows, left behind by step 4 and invisible to queries, freed;
  6. verification: row counts per table, and per conversation its message count and an md5 of
     every message row in seq order, equal on both; the schema version checked by a store.

``--rebalance``: a third worker started, registered (``citus_add_node``), then
``citus_rebalance_start()`` run and waited for, while ``--writers`` tasks append to their own
conversations through a ``ConversationStore`` on the coordinator (each save with an idempotency
key; a documented retryable error is retried with the same key). After it: every shard group
(conversations, messages, summaries and feedback of one hash range) on one node, the shards per
node, every acknowledged append stored once with its seq, each conversation's seqs gap-free.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

from convdb import ConversationStore
from convdb.errors import DatabaseUnavailable, QueryTimeout, TransientError
from convdb.testing import EmbeddedPostgres, apply_schema
from convdb.testing.citus import CITUS_SETTINGS, LocalCitusCluster

from .citus import SCALE_BASE, SCALE_LENGTH, SCHEMA_CITUS, grow, local_servers
from .server import SCHEMA
from .workload import USERS, text_of

# Shard moves by logical replication (Citus's default when every table has a replica identity)
# need logical decoding on every node.
MOVE_SETTINGS = {"wal_level": "logical"}
TABLES = ("conversations", "messages", "conversation_summaries", "message_feedback", "convdb_user_keys")
CO_LOCATED = ("conversations", "messages", "conversation_summaries", "message_feedback")

# Per conversation: its message count and an md5 of all its message rows (every column, as text)
# in seq order. On Citus, grouped by the distribution column, it runs on every shard at once.
_CHECKSUMS = """
SELECT conversation_id, count(*) AS n, md5(string_agg(m::text, E'\\n' ORDER BY seq)) AS digest
  FROM messages m GROUP BY conversation_id
"""


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=60)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


def _run(program: str, args: Sequence[str]) -> None:
    result = subprocess.run([program, *args], capture_output=True, text=True, timeout=3600, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{Path(program).name} {' '.join(args)} failed:\n{result.stderr[-3000:]}")


async def seed_source(dsn: str, messages: int) -> dict[str, Any]:
    grown = await grow(dsn, messages)
    # A summary and a feedback row on the first 20 conversations: every co-located table moves.
    conn = await asyncpg.connect(dsn, timeout=60)
    try:
        await conn.execute(
            """
            INSERT INTO conversation_summaries (conversation_id, through_seq, content, token_count)
            SELECT id, 500, 'summary of ' || id, 10 FROM conversations ORDER BY id LIMIT 20
            """
        )
        await conn.execute(
            """
            INSERT INTO message_feedback (conversation_id, seq, rating)
            SELECT id, 2, 1 FROM conversations ORDER BY id LIMIT 20
            """
        )
    finally:
        await conn.close()
    return grown


async def table_counts(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn, timeout=60)
    try:
        return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in TABLES}
    finally:
        await conn.close()


async def checksums(dsn: str) -> dict[str, tuple[int, str]]:
    conn = await asyncpg.connect(dsn, timeout=600)
    try:
        return {r["conversation_id"]: (int(r["n"]), str(r["digest"])) for r in await conn.fetch(_CHECKSUMS)}
    finally:
        await conn.close()


async def move(
    cluster: LocalCitusCluster, single: EmbeddedPostgres, source: str, target: str, folder: Path
) -> dict[str, Any]:
    """The procedure, timed step by step, and its verification."""
    bin_dir = Path(str(cluster.nodes[0].bin_dir))
    dump = folder / "convdb.dump"
    steps: dict[str, float] = {}

    began = time.perf_counter()
    await asyncio.to_thread(
        _run, str(bin_dir / "pg_dump"), ["-Fc", "-f", str(dump), "-d", single.dsn(source)]
    )
    steps["1_pg_dump_s"] = time.perf_counter() - began

    began = time.perf_counter()
    await cluster.create_database(target)
    steps["2_create_database_s"] = time.perf_counter() - began

    began = time.perf_counter()
    await asyncio.to_thread(
        _run, str(bin_dir / "pg_restore"), ["--no-owner", "-d", cluster.dsn(target), str(dump)]
    )
    steps["3_pg_restore_s"] = time.perf_counter() - began

    began = time.perf_counter()
    await asyncio.to_thread(apply_schema, cluster.dsn(target), SCHEMA_CITUS)
    steps["4_schema_citus_s"] = time.perf_counter() - began

    began = time.perf_counter()
    conn = await asyncpg.connect(cluster.dsn(target), timeout=60)
    try:
        # Referencing tables first: a table's local rows cannot go while a local table refers to them.
        for table in reversed(TABLES):
            await conn.execute("SELECT truncate_local_data_after_distributing_table($1)", f"public.{table}")
    finally:
        await conn.close()
    steps["5_truncate_local_s"] = time.perf_counter() - began

    began = time.perf_counter()
    before_counts, after_counts = (
        await table_counts(single.dsn(source)),
        await table_counts(cluster.dsn(target)),
    )
    before_sums, after_sums = await checksums(single.dsn(source)), await checksums(cluster.dsn(target))
    store = await ConversationStore.connect(cluster.dsn(target), min_size=1, max_size=1)  # checks the schema
    try:
        first = str(SCALE_BASE)
        history = await store.get_history(first, str(SCALE_BASE % USERS), limit=5)
    finally:
        await store.close()
    steps["6_verify_s"] = time.perf_counter() - began
    differing = sorted(
        k for k in before_sums.keys() | after_sums.keys() if before_sums.get(k) != after_sums.get(k)
    )
    return {
        "steps_s": {k: round(v, 2) for k, v in steps.items()},
        "outage_window_s": round(sum(v for k, v in steps.items() if k[0] in "1234"), 2),
        "dump_bytes": dump.stat().st_size,
        "counts_source": before_counts,
        "counts_target": after_counts,
        "counts_equal": before_counts == after_counts,
        "conversations_checked": len(before_sums),
        "checksums_differing": len(differing),
        "first_differing": differing[:5],
        "store_read_ok": [m.seq for m in history] == list(range(SCALE_LENGTH - 4, SCALE_LENGTH + 1)),
    }


# -- rebalancing ------------------------------------------------------------------------------
_GROUPS = """
SELECT s.shardminvalue AS range, count(*) AS tables,
       array_agg(DISTINCT n.nodename || ':' || n.nodeport) AS nodes
  FROM pg_dist_shard s
  JOIN pg_dist_placement p ON p.shardid = s.shardid
  JOIN pg_dist_node n ON n.groupid = p.groupid
 WHERE s.logicalrelid::text = ANY($1::text[])
 GROUP BY s.shardminvalue
"""
_PER_NODE = """
SELECT n.nodename || ':' || n.nodeport AS node, count(*) AS shards
  FROM pg_dist_placement p JOIN pg_dist_node n ON n.groupid = p.groupid
  JOIN pg_dist_shard s ON s.shardid = p.shardid
 WHERE s.logicalrelid::text = 'messages'
 GROUP BY 1 ORDER BY 1
"""


async def placement(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn, timeout=60)
    try:
        groups = await conn.fetch(_GROUPS, list(CO_LOCATED))
        per_node = {str(r["node"]): int(r["shards"]) for r in await conn.fetch(_PER_NODE)}
    finally:
        await conn.close()
    return {
        "shard_groups": len(groups),
        "groups_on_one_node": sum(1 for g in groups if len(g["nodes"]) == 1),
        "groups_complete": sum(1 for g in groups if int(g["tables"]) == len(CO_LOCATED)),
        "messages_shards_per_node": per_node,
    }


async def add_worker(cluster: LocalCitusCluster, database: str) -> EmbeddedPostgres:
    node = EmbeddedPostgres(
        cluster.root / "worker3",
        settings={**CITUS_SETTINGS, **MOVE_SETTINGS},
        bin_dir=cluster.nodes[0].bin_dir,
    )
    await asyncio.to_thread(node.start)
    await _execute(node.dsn(), "CREATE EXTENSION IF NOT EXISTS citus", f'CREATE DATABASE "{database}"')
    await _execute(node.dsn(database), "CREATE EXTENSION IF NOT EXISTS citus")
    await _execute(cluster.dsn(database), f"SELECT citus_add_node('127.0.0.1', {node.port})")
    return node


async def rebalance(cluster: LocalCitusCluster, database: str, writers: int) -> dict[str, Any]:
    before = await placement(cluster.dsn(database))
    began = time.perf_counter()
    node = await add_worker(cluster, database)
    add_s = time.perf_counter() - began
    store = await ConversationStore.connect(cluster.dsn(database), min_size=writers, max_size=writers)
    acked: dict[str, list[int]] = {}
    errors: dict[str, int] = {}
    retried = 0
    done = asyncio.Event()

    conn = await asyncpg.connect(cluster.dsn(database), timeout=60)
    try:
        ids = [str(r[0]) for r in await conn.fetch("SELECT id FROM conversations ORDER BY id")]
    finally:
        await conn.close()
    latencies: list[float] = []

    async def writer(index: int) -> None:
        nonlocal retried
        key = int(ids[index * len(ids) // writers])  # spread over the conversations, so the shards
        cid, uid = str(key), str(key % USERS)
        n = 0
        while not done.is_set():
            n += 1
            for attempt in range(20):
                try:
                    start = time.perf_counter()
                    message = await store.save_message(
                        cid, uid, "user", text_of(n), idempotency_key=f"rebalance-{index}-{n}"
                    )
                    latencies.append(time.perf_counter() - start)
                    acked.setdefault(cid, []).append(message.seq)
                    break
                except (TransientError, DatabaseUnavailable, QueryTimeout) as exc:
                    name = type(exc).__name__
                    errors[name] = errors.get(name, 0) + 1
                    retried += 1
                    await asyncio.sleep(0.05 * (attempt + 1))
            else:
                raise RuntimeError(f"writer {index}: 20 attempts failed")

    tasks = [asyncio.create_task(writer(i)) for i in range(writers)]
    try:
        conn = await asyncpg.connect(cluster.dsn(database), timeout=60)
        try:
            began = time.perf_counter()
            job = await conn.fetchval("SELECT citus_rebalance_start()")
            await conn.execute("SELECT citus_rebalance_wait()")
            rebalance_s = time.perf_counter() - began
            status = await conn.fetchval(
                "SELECT state::text FROM citus_rebalance_status() WHERE job_id = $1", job
            )
            tasks_done = await conn.fetchval(
                "SELECT count(*) FROM pg_dist_background_task WHERE job_id = $1 AND status = 'done'", job
            )
        finally:
            await conn.close()
    finally:
        done.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()
    failures = [repr(r) for r in results if isinstance(r, BaseException)]
    after = await placement(cluster.dsn(database))
    # Nothing lost, nothing doubled: every acknowledged seq stored once, seqs gap-free.
    conn = await asyncpg.connect(cluster.dsn(database), timeout=60)
    try:
        lost = 0
        gaps = 0
        for cid, seqs in acked.items():
            stored = [
                int(r[0])
                for r in await conn.fetch(
                    "SELECT seq FROM messages WHERE conversation_id = $1 ORDER BY seq", cid
                )
            ]
            lost += len(set(seqs) - set(stored))
            gaps += int(stored != list(range(1, len(stored) + 1)))
            if len(seqs) != len(set(seqs)):
                gaps += 1
    finally:
        await conn.close()
    await asyncio.to_thread(node.destroy)
    return {
        "add_node_s": round(add_s, 2),
        "rebalance_s": round(rebalance_s, 2),
        "job_state": status,
        "background_tasks_done": int(tasks_done),
        "before": before,
        "after": after,
        "writers": writers,
        "appends_acknowledged": sum(len(s) for s in acked.values()),
        "append_ms_p50_p99_max": [
            round(statistics.median(latencies) * 1000, 1),
            round(sorted(latencies)[int(len(latencies) * 0.99)] * 1000, 1),
            round(max(latencies) * 1000, 1),
        ]
        if latencies
        else None,
        "writer_errors_retried": errors,
        "retries": retried,
        "writer_failures": failures,
        "acknowledged_missing": lost,
        "conversations_with_gaps_or_doubles": gaps,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"messages_requested": args.messages, "cores": os.cpu_count()}
    async with local_servers(MOVE_SETTINGS) as (cluster, single):
        with tempfile.TemporaryDirectory(prefix="convdb-citus-move-") as name:
            folder = Path(name)
            await _execute(single.dsn(), 'CREATE DATABASE "convdb_source"')
            await asyncio.to_thread(apply_schema, single.dsn("convdb_source"), SCHEMA)
            began = time.perf_counter()
            out["seed"] = await seed_source(single.dsn("convdb_source"), args.messages)
            out["seed"]["total_s"] = round(time.perf_counter() - began, 1)
            out["move"] = await move(cluster, single, "convdb_source", "convdb_moved", folder)
            if args.rebalance:
                out["rebalance"] = await rebalance(cluster, "convdb_moved", args.writers)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--rebalance", action="store_true", help="then add a third worker and rebalance")
    parser.add_argument("--writers", type=int, default=4, help="appending tasks during the rebalance")
    parser.add_argument("--json", dest="json_path", metavar="FILE")
    args = parser.parse_args()
    doc = asyncio.run(main_async(args))
    text = json.dumps(doc, indent=2)
    sys.stdout.write(text + "\n")
    if args.json_path:
        Path(args.json_path).write_text(text + "\n")


if __name__ == "__main__":
    main()
