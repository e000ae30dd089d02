"""``python -m benchmarks --citus``: convdb through a local Citus cluster against one PostgreSQL 15.

Both run on this machine in the same run, from the same binaries (the PostgreSQL that Citus is
installed into, ``find_citus_pg_config``), started the same way (``EmbeddedPostgres``, the same
throwaway settings, ``convdb.testing.citus.CITUS_SETTINGS``), the single node without Citus
loaded. The cluster is ``convdb.testing.citus.LocalCitusCluster``: a coordinator and two workers.
Both get a fresh database with ``schema.sql`` (the cluster then ``schema_citus.sql``), the same
conversations seeded in SQL, and the same workload code as the main benchmark (``ConvdbSystem``:
the same SQL through the convdb store). Cells are interleaved (``runner.run_matrix``), warm-up
first, repeats, medians; the report gives citus ÷ single-node per operation and concurrency.

Then the capacity figures (``capacity``): per operation, called one at a time through a
one-connection store, the statements each node received per call (counted in the nodes'
statement logs, ``log_statement = all``, during the calls) and each node's server CPU per call
(``/proc`` times of the node's postmaster and its processes, the exited ones included through
the postmaster's children times), on both targets.

``--scale N``: after the matrix, both targets are grown to about N messages (conversations of
1,000 messages, ``INSERT ... SELECT`` from ``generate_series`` on the server: on Citus a
co-located ``INSERT ... SELECT`` that runs on every shard at once), seeding timed, the shard
sizes recorded, and the matrix run again at ``--scale-concurrency`` (default 8).

Citus is AGPL-3.0: built on the machine (``bash .ci/citus.sh``), never part of convdb.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import re
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg

from convdb import schema_check
from convdb.testing import EmbeddedPostgres, apply_schema
from convdb.testing.citus import (
    CITUS_SETTINGS,
    CitusUnavailable,
    LocalCitusCluster,
    find_citus_pg_config,
)

from . import meta as run_meta
from . import report, runner
from . import seed as seeding
from .batch_anatomy import server_cpu_s
from .config import Mode
from .server import SCHEMA, BenchDatabase, server_info
from .systems.base import Context, System
from .systems.convdb_system import ConvdbSystem
from .workload import HISTORY_LENGTH, TEXT_OF_SQL, USERS, WORK_SEED_LENGTH, Layout

SCHEMA_CITUS = SCHEMA.parent / "schema_citus.sql"

#: The conversation-scoped hot paths measured through the cluster.
CITUS_OPS = ("append", "append_batch_10", "append_batch_100", "history_50", "get_or_create", "turn")

#: Citus-only settings, left out of the single node's (it runs plain PostgreSQL).
_CITUS_ONLY = ("shared_preload_libraries", "citus.node_conninfo")

#: Keys of the conversations that grow the tables in the scaling run (7 digits, like the others,
#: so a text range on the id picks a chunk of them).
SCALE_BASE = 5_000_000
SCALE_LENGTH = HISTORY_LENGTH


def how_to_get_citus(exc: BaseException) -> str:
    return (
        f"python -m benchmarks --citus needs a Citus installation for its local cluster: {exc}\n"
        "Build and install it with: bash .ci/citus.sh (Citus 13.2.2 into Debian's PostgreSQL 15)"
    )


def single_settings(settings: dict[str, str]) -> dict[str, str]:
    merged = {**CITUS_SETTINGS, **settings}
    return {k: v for k, v in merged.items() if k not in _CITUS_ONLY}


@dataclass
class Targets:
    """The two servers of a run and their benchmark databases."""

    cluster: LocalCitusCluster
    single: EmbeddedPostgres
    citus_db: BenchDatabase
    single_db: BenchDatabase

    def nodes(self, target: str) -> list[tuple[str, EmbeddedPostgres, str]]:
        """(label, server, DSN of the benchmark database on it) of every node of ``target``."""
        if target == "single":
            return [("single", self.single, self.single_db.dsn)]
        labels = ["coordinator", *(f"worker{i}" for i in range(1, len(self.cluster.nodes)))]
        dsns = self.cluster.node_dsns(self.citus_db.name)
        return list(zip(labels, self.cluster.nodes, dsns, strict=True))


@contextlib.asynccontextmanager
async def local_servers(
    settings: dict[str, str] | None = None, *, workers: int = 2
) -> AsyncIterator[tuple[LocalCitusCluster, EmbeddedPostgres]]:
    """A started local cluster and a started single PostgreSQL from the same binaries."""
    settings = settings or {}
    try:
        pg_config = find_citus_pg_config()
    except CitusUnavailable as exc:
        raise SystemExit(how_to_get_citus(exc)) from exc
    folder = Path(tempfile.mkdtemp(prefix="convdb-citus-bench-"))
    cluster = LocalCitusCluster(folder / "cluster", workers=workers, pg_config=pg_config, settings=settings)
    single = EmbeddedPostgres(
        folder / "single", settings=single_settings(settings), bin_dir=cluster.nodes[0].bin_dir
    )
    try:
        await asyncio.to_thread(cluster.start)  # it runs its own event loop to register the nodes
        await asyncio.to_thread(single.start)
        yield cluster, single
    finally:
        try:
            await asyncio.to_thread(cluster.destroy)
            await asyncio.to_thread(single.destroy)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=60)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def create_databases(cluster: LocalCitusCluster, single: EmbeddedPostgres) -> Targets:
    """A fresh benchmark database on both: schema.sql, and schema_citus.sql on the cluster."""
    name = f"convdb_bench_{secrets.token_hex(4)}"
    await cluster.create_database(name)
    await asyncio.to_thread(apply_schema, cluster.dsn(name), SCHEMA)
    await asyncio.to_thread(apply_schema, cluster.dsn(name), SCHEMA_CITUS)
    await _execute(single.dsn(), f'CREATE DATABASE "{name}"')
    await asyncio.to_thread(apply_schema, single.dsn(name), SCHEMA)
    citus_db = BenchDatabase(cluster.dsn(name), cluster.dsn("postgres"), name)
    single_db = BenchDatabase(single.dsn(name), single.dsn(), name)
    return Targets(cluster, single, citus_db, single_db)


class CitusSystem(ConvdbSystem):
    """convdb through the Citus coordinator (the same store, the same calls)."""

    name = "citus"


class SingleNodeSystem(ConvdbSystem):
    """convdb on one PostgreSQL 15 from the same binaries."""

    name = "single-pg15"


def layout_of(mode: Mode) -> Layout:
    # No conversation-length sweep: the scaling run grows the whole table instead (--scale).
    return replace(mode.layout, scaling_lengths=(), table_sizes=())


async def seed_base(dsn: str, layout: Layout) -> None:
    for keys, length in [
        (layout.history_keys(), HISTORY_LENGTH),
        (layout.work_keys(), WORK_SEED_LENGTH),
        (layout.turn_keys(), WORK_SEED_LENGTH),
    ]:
        await seeding.seed_conversations(dsn, keys, length)


# -- growing the tables (--scale) -----------------------------------------------------------------
_SCALE_CONVERSATIONS = f"""
INSERT INTO conversations (id, user_id, next_seq)
SELECT k::text, (k % {USERS})::text, {SCALE_LENGTH} + 1 FROM generate_series($1::bigint, $2::bigint) AS k
"""
# From the conversations just made, each with SCALE_LENGTH messages: on Citus the target's
# distribution column is the source's, co-located, so each shard pair runs its own part at once.
_SCALE_MESSAGES = """
INSERT INTO messages (conversation_id, seq, role, content, token_count)
SELECT c.id, g,
       CASE WHEN g % 2 = 1 THEN 'user' ELSE 'assistant' END,
       {text},
       (length({text}) + 3) / 4
  FROM conversations c CROSS JOIN generate_series(1, {length}) AS g
 WHERE c.id BETWEEN $1 AND $2
""".format(text=TEXT_OF_SQL.format(n="(g - 1)"), length=SCALE_LENGTH)
_SCALE_CHUNK = 1_000  # conversations per INSERT: 1 M messages


async def grow(dsn: str, messages: int) -> dict[str, Any]:
    """Add conversations of SCALE_LENGTH messages until about ``messages`` more exist; timed."""
    count = max(1, messages // SCALE_LENGTH)
    began = time.perf_counter()
    conn = await asyncpg.connect(dsn, timeout=60)
    try:
        await conn.execute("SET statement_timeout = 0")
        await conn.execute(_SCALE_CONVERSATIONS, SCALE_BASE, SCALE_BASE + count - 1)
        for first in range(SCALE_BASE, SCALE_BASE + count, _SCALE_CHUNK):
            last = min(SCALE_BASE + count - 1, first + _SCALE_CHUNK - 1)
            await conn.execute(_SCALE_MESSAGES, str(first), str(last))
        seeded = time.perf_counter() - began
        await conn.execute("ANALYZE conversations")
        await conn.execute("ANALYZE messages")
        total = int(await conn.fetchval("SELECT count(*) FROM messages"))
    finally:
        await conn.close()
    return {
        "conversations_added": count,
        "messages_added": count * SCALE_LENGTH,
        "seed_s": round(seeded, 1),
        "with_analyze_s": round(time.perf_counter() - began, 1),
        "messages_total": total,
    }


async def shard_sizes(dsn: str) -> dict[str, Any]:
    """Per table: shard count and the smallest, median and largest shard (bytes, rows)."""
    conn = await asyncpg.connect(dsn, timeout=60)
    try:
        rows = await conn.fetch(
            "SELECT table_name::text AS t, nodename || ':' || nodeport AS node, shard_size "
            "FROM citus_shards WHERE table_name::text IN ('conversations', 'messages')"
        )
        per_shard = await conn.fetch(
            "SELECT get_shard_id_for_distribution_column('messages', conversation_id) AS shard, count(*) AS n"
            " FROM messages GROUP BY 1"
        )
    finally:
        await conn.close()
    out: dict[str, Any] = {}
    for table in ("conversations", "messages"):
        sizes = sorted(int(r["shard_size"]) for r in rows if r["t"] == table)
        nodes = sorted({str(r["node"]) for r in rows if r["t"] == table})
        if sizes:
            out[table] = {
                "shards": len(sizes),
                "nodes": nodes,
                "bytes_min": sizes[0],
                "bytes_median": int(statistics.median(sizes)),
                "bytes_max": sizes[-1],
            }
    message_rows = sorted(int(r["n"]) for r in per_shard)
    if message_rows:
        out["messages"]["rows_min"] = message_rows[0]
        out["messages"]["rows_median"] = int(statistics.median(message_rows))
        out["messages"]["rows_max"] = message_rows[-1]
    return out


# -- capacity: statements and server CPU per call, per node ---------------------------------------
_LOGGED = re.compile(r"^\S+ \S+ \S+ \[\d+\] (\S*) LOG:  (statement|execute [^:]*):")
# The Citus maintenance daemon's distributed deadlock detection polls every node's lock graph
# every few seconds (in this database and in postgres): not caused by the calls measured.
_BACKGROUND = ("waiting_pid, waiting_node_id",)


def _log_file(node: EmbeddedPostgres) -> Path:
    return node.data_dir / "log" / "postgresql.log"


def node_cpu_s(node: EmbeddedPostgres) -> float:
    """CPU seconds used by the node so far: its postmaster, its live processes, the exited ones."""
    return server_cpu_s(int((node.data_dir / "postmaster.pid").read_text().split()[0]))


async def _set_log_statement(nodes: Sequence[EmbeddedPostgres], value: str | None) -> None:
    for node in nodes:
        sql = (
            "ALTER SYSTEM RESET log_statement"
            if value is None
            else f"ALTER SYSTEM SET log_statement = '{value}'"
        )
        await _execute(node.dsn(), sql, "SELECT pg_reload_conf()")


async def _settled_size(path: Path, within_s: float = 10) -> int:
    """The log file's size once the logging collector has stopped writing (bounded wait)."""
    deadline = time.monotonic() + within_s
    size = os.stat(path).st_size
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        now = os.stat(path).st_size
        if now == size:
            return size
        size = now
    return size


def _kind(verb: str, statement: str) -> str:
    """What a logged statement is: the client's (asyncpg's named prepared statements, its
    BEGIN/COMMIT), or Citus's: a task on a worker (``execute <unnamed>``), the transaction's
    begin, commit, two-phase ``prepare`` and ``commit prepared``, a ``copy`` of an intermediate
    result, or a ``local step`` (a simple-protocol query: on the coordinator, the part of a
    multi-step plan it runs itself over the intermediate results)."""
    if verb.startswith("execute __asyncpg_"):
        return "client"
    text = statement.lstrip()
    if verb == "statement" and text.rstrip(";").strip() in ("BEGIN", "COMMIT", "ROLLBACK"):
        return "client begin/commit"
    for marker, kind in (
        ("PREPARE TRANSACTION", "prepare"),
        ("COMMIT PREPARED", "commit prepared"),
        ("assign_distributed_transaction_id", "begin"),
        ("COPY ", "copy"),
    ):
        if text.startswith(marker) or (kind == "begin" and marker in text):
            return kind
    if text.startswith("COMMIT"):
        return "commit"
    return "task" if verb.startswith("execute") else "local step"


def count_statements(text: str, database: str) -> dict[str, int]:
    """Statements logged in ``database`` by kind (begin, query, copy, prepare, commit...)."""
    kinds: dict[str, int] = {}
    lines = text.splitlines()
    for index, line in enumerate(lines):
        found = _LOGGED.match(line)
        if found is None or found.group(1) != database:
            continue
        # A statement's text goes on over the following lines that start with a tab.
        rest = [x for x in itertools.takewhile(lambda x: x.startswith("\t"), lines[index + 1 : index + 40])]
        statement = " ".join([line[found.end() :], *rest])
        if any(marker in statement for marker in _BACKGROUND):
            continue
        kind = _kind(found.group(2), statement)
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


async def capacity(targets: Targets, ops: Sequence[str], calls: int, layout: Layout) -> list[dict[str, Any]]:
    """Per target, op and node: statements received per call and server CPU ms per call."""
    out: list[dict[str, Any]] = []
    for target, system_type, db in (
        ("single", SingleNodeSystem, targets.single_db),
        ("citus", CitusSystem, targets.citus_db),
    ):
        nodes = targets.nodes(target)
        system: System = system_type(Context(db, layout))
        for op in ops:
            fn = system.operation(op).fn
            keys = system.keys_for(op)
            await system.open(1)
            try:
                for i in range(max(5, calls // 10)):  # warm-up: statements prepared on every node
                    await fn(keys[i % len(keys)])
                before = [node_cpu_s(node) for _, node, _ in nodes]
                client = time.process_time()
                began = time.perf_counter()
                for i in range(calls):
                    await fn(keys[i % len(keys)])
                wall = time.perf_counter() - began
                client = time.process_time() - client
                after = [node_cpu_s(node) for _, node, _ in nodes]
                await system.close()
                # The statement count, in a second pass with every statement logged (logging
                # costs CPU, so not during the pass above).
                await _set_log_statement([n for _, n, _ in nodes], "all")
                await system.open(1)
                for i in range(3):
                    await fn(keys[i % len(keys)])
                offsets = [await _settled_size(_log_file(node)) for _, node, _ in nodes]
                for i in range(calls):
                    await fn(keys[i % len(keys)])
                logged = []
                for (_, node, _), offset in zip(nodes, offsets, strict=True):
                    end = await _settled_size(_log_file(node))
                    with _log_file(node).open("rb") as log:
                        log.seek(offset)
                        text = log.read(end - offset).decode(errors="replace")
                    logged.append(count_statements(text, db.name))
            finally:
                await system.close()
                await _set_log_statement([n for _, n, _ in nodes], None)
            for (label, _, _), cpu0, cpu1, statements in zip(nodes, before, after, logged, strict=True):
                out.append(
                    {
                        "target": target,
                        "op": op,
                        "node": label,
                        "calls": calls,
                        "statements_per_call": round(sum(statements.values()) / calls, 2),
                        "statement_kinds_per_call": {
                            k: round(v / calls, 2) for k, v in sorted(statements.items())
                        },
                        "server_cpu_ms_per_call": round((cpu1 - cpu0) / calls * 1000, 3),
                        "wall_ms_per_call": round(wall / calls * 1000, 3),
                        "client_cpu_ms_per_call": round(client / calls * 1000, 3),
                    }
                )
    return out


# -- the run -----------------------------------------------------------------------------------
def ratios(rows: Sequence[runner.Row]) -> list[dict[str, Any]]:
    by_key = {(r.system, r.op, r.concurrency): r.cell for r in rows}
    out = []
    for op, c in dict.fromkeys((r.op, r.concurrency) for r in rows if r.system == CitusSystem.name):
        mine = by_key[(CitusSystem.name, op, c)].ops_per_s
        base = by_key.get((SingleNodeSystem.name, op, c))
        theirs = base.ops_per_s if base is not None else None
        out.append(
            {
                "op": op,
                "concurrency": c,
                "citus_ops_per_s": report._rate(mine),
                "single_ops_per_s": report._rate(theirs),
                "citus_over_single": None if mine is None or not theirs else round(mine / theirs, 3),
            }
        )
    return out


async def run(args: argparse.Namespace, mode: Mode, levels: list[int]) -> dict[str, Any]:
    layout = layout_of(mode)
    if max(*levels, args.scale_concurrency if args.scale else 1) > layout.work_conversations:
        raise SystemExit(
            f"--concurrency {max(levels)} needs more than the {layout.work_conversations} "
            "work conversations of this mode"
        )
    settings = dict(item.split("=", 1) for item in args.server_setting)
    commit = run_meta.git_commit()
    started = run_meta.now()
    load_before = run_meta.load_average()
    timings: dict[str, float] = {}
    async with local_servers(settings) as (cluster, single):
        began = time.perf_counter()
        targets = await create_databases(cluster, single)
        timings["databases_s"] = round(time.perf_counter() - began, 1)
        for label, db in (("single", targets.single_db), ("citus", targets.citus_db)):
            began = time.perf_counter()
            await seed_base(db.dsn, layout)
            timings[f"seed_{label}_s"] = round(time.perf_counter() - began, 1)
        systems: list[System] = [
            CitusSystem(Context(targets.citus_db, layout)),
            SingleNodeSystem(Context(targets.single_db, layout)),
        ]
        rows = await runner.run_matrix(systems, levels, mode, args.no_progress, ops=CITUS_OPS)
        capacity_rows = (
            await capacity(targets, CITUS_OPS, args.capacity_calls, layout) if args.capacity_calls else []
        )
        scale: dict[str, Any] | None = None
        if args.scale:
            scale = {"target_messages": args.scale, "concurrency": args.scale_concurrency}
            for label, db in (("single", targets.single_db), ("citus", targets.citus_db)):
                scale[f"seed_{label}"] = await grow(db.dsn, args.scale)
            scale["shards"] = await shard_sizes(targets.citus_db.dsn)
            scaled = await runner.run_matrix(
                systems, [args.scale_concurrency], mode, args.no_progress, ops=CITUS_OPS
            )
            scale["results"] = [report.row_json(r) for r in scaled]
            scale["ratios"] = ratios(scaled)
        info = await server_info(targets.single_db.dsn)
        citus_version = await _fetchval(targets.citus_db.dsn, "SELECT citus_version()")
        delegated = await _delegated(targets.citus_db.dsn)
    meta = {
        "commit": commit,
        "cores": os.cpu_count(),
        "postgres": info["postgres"],
        "citus": str(citus_version),
        # Whether the cluster's stores called schema_citus.sql's delegated functions.
        "delegated_calls": delegated,
        "server_settings": info["server_settings"],
        "server": "local: a Citus coordinator + 2 workers and one PostgreSQL, same binaries, temp dirs",
        "machine": run_meta.machine(),
        "mode": mode.name,
        "started": started,
        "finished": run_meta.now(),
        "load_average_before": load_before,
        "load_average_after": run_meta.load_average(),
        "concurrency": levels,
        "repeats": mode.repeats,
        "warmup_s": mode.timing.warmup_s,
        "duration_s": mode.timing.duration_s,
        "systems": [CitusSystem.name, SingleNodeSystem.name],
        "setup": timings,
    }
    return {
        "meta": meta,
        "results": [report.row_json(r) for r in rows],
        "citus_ratios": ratios(rows),
        "capacity": capacity_rows,
        "scale": scale,
    }


async def _delegated(dsn: str) -> bool:
    """What ``verify_schema`` decides for a store on ``dsn``: the delegated calls or the statements."""
    conn = await asyncpg.connect(dsn, timeout=60)
    try:
        return (await schema_check.inspect(conn)).delegated
    finally:
        await conn.close()


async def _fetchval(dsn: str, sql: str) -> Any:
    conn = await asyncpg.connect(dsn, timeout=60)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def text(doc: dict[str, Any]) -> str:
    fmt, table = report._fmt, report._table
    parts = []
    meta = doc["meta"]
    parts.append(
        f"convdb through Citus {meta['citus']} (coordinator + 2 workers) against one PostgreSQL "
        f"{meta['postgres']}, same machine ({meta['cores']} cores), same run, {meta['mode']} mode; "
        + (
            "the delegated functions of schema_citus.sql in use"
            if meta.get("delegated_calls")
            else "the statements (no delegated functions)"
        )
    )
    found = {(r["system"], r["op"], r["concurrency"]): r for r in doc["results"]}

    def cell(r: dict[str, Any] | None) -> str:
        if r is None:
            return ""
        if r["ops_per_s"] is None:
            return "error"
        return f"{fmt(r['ops_per_s'])} ({fmt(r['p50_ms'], 2)})"

    body = [
        [
            r["op"],
            str(r["concurrency"]),
            cell(found.get(("single-pg15", r["op"], r["concurrency"]))),
            cell(found.get(("citus", r["op"], r["concurrency"]))),
            fmt(r["citus_over_single"], 2),
        ]
        for r in doc["citus_ratios"]
    ]
    parts.append(
        "ops/s (p50 ms), citus ÷ single-node\n"
        + table(["op", "c", "single-pg15", "citus", "citus/single"], body)
    )
    if doc.get("capacity"):
        body = [
            [
                r["target"],
                r["op"],
                r["node"],
                fmt(r["statements_per_call"], 2),
                " ".join(f"{k}:{v:g}" for k, v in r["statement_kinds_per_call"].items()),
                fmt(r["server_cpu_ms_per_call"], 3),
                fmt(r["wall_ms_per_call"], 2),
                fmt(r["client_cpu_ms_per_call"], 3),
            ]
            for r in doc["capacity"]
        ]
        parts.append(
            "capacity: per call, one connection, calls one at a time (statements counted in each "
            "node's statement log; server CPU from /proc)\n"
            + table(
                [
                    "target",
                    "op",
                    "node",
                    "statements",
                    "of which",
                    "server CPU ms",
                    "wall ms",
                    "client CPU ms",
                ],
                body,
            )
        )
    scale = doc.get("scale")
    if scale:
        added, c = scale["target_messages"], scale["concurrency"]
        lines = [f"scaling run: about {added:,} more messages on each, c = {c}"]
        for label in ("single", "citus"):
            s = scale[f"seed_{label}"]
            lines.append(
                f"  {label}: {s['messages_added']:,} messages seeded in {s['seed_s']} s "
                f"({s['with_analyze_s']} s with ANALYZE), {s['messages_total']:,} in the table"
            )
        for table_name, info in scale["shards"].items():
            rows_part = (
                f", rows {info['rows_min']:,}/{info['rows_median']:,}/{info['rows_max']:,}"
                if "rows_min" in info
                else ""
            )
            sizes = f"{info['bytes_min']:,}/{info['bytes_median']:,}/{info['bytes_max']:,}"
            lines.append(
                f"  {table_name}: {info['shards']} shards on {len(info['nodes'])} workers, "
                f"bytes min/median/max {sizes}{rows_part}"
            )
        before = {(r["op"], r["concurrency"]): r for r in doc["citus_ratios"]}
        body = []
        for r in scale["ratios"]:
            small = before.get((r["op"], r["concurrency"]), {})
            body.append(
                [
                    r["op"],
                    fmt(small.get("citus_over_single"), 2),
                    fmt(r["citus_over_single"], 2),
                    fmt(r["single_ops_per_s"]),
                    fmt(r["citus_ops_per_s"]),
                ]
            )
        parts.append(
            "\n".join(lines)
            + "\n"
            + table(["op", "citus/single small", "citus/single scaled", "single ops/s", "citus ops/s"], body)
        )
    problems = [
        f"- {r['system']} {r['op']} c={r['concurrency']}: {r['error']}" for r in doc["results"] if r["error"]
    ]
    if problems:
        parts.append("errors\n" + "\n".join(problems))
    return "\n\n".join(parts) + "\n"
