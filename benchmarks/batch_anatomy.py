"""Where a write's server time goes, and where get_history's client CPU goes (issue 14).

    python -m benchmarks.batch_anatomy [--dsn DSN] [--seconds 3] [--repeats 3] [--json FILE]

Server side: pgbench (-n -M prepared -c 1) runs the same batch of 100 (and a single append) against
tables that add one feature of convdb's messages table at a time: the bare INSERT on a table with
the primary key only, + the foreign key to conversations, + the text -> jsonb casts convdb's
statement carries, + the CHECK constraints, + the partial idempotency index (the table is then
messages' exact shape), + the seq reservation (convdb's own statements on messages itself). The
first five take seq from a random 62-bit base per transaction (no counter at all); every batch is
BEGIN, the inserts in one pipeline, COMMIT, as asyncpg's executemany sends them. Variants run
interleaved, each repeated; the table gives medians of the server's CPU time per inserted row
(read from /proc for the postmaster and its children, so the server must run on this machine:
the embedded one does), which another process's turn on a busy machine does not inflate, and
the wall time per row for reference (that includes waiting for the commit's WAL flush and for
the CPU). Candidates for a cheaper batch follow, measured the same way.

Client side: the client CPU per get_history call (limit 50) through ConversationStore, against a
raw fetch of the same statement plus Message construction on a direct connection and on a plain
asyncpg pool, then a cProfile of the store path (the top functions by own time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from convdb import ConversationStore, Message
from convdb.sql import QUERIES
from convdb.testing import find_binary

from . import seed, server
from .meta import load_average
from .systems.pgbench_system import bind
from .workload import USER_TEXT, USERS, message_dicts

WORK_FIRST = 2_000_000
WORK_KEYS = 64
BATCH = 100
_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)

_COLUMNS = "conversation_id, seq, role, content, tool_name, tool_call_id, token_count, idempotency_key"
_JSON_COLUMNS = (
    "conversation_id, seq, role, content, tool_name, tool_call_id, tool_calls, metadata, "
    "token_count, idempotency_key"
)
_PLAIN_VALUES = "(:cid, :s{i}, :r{i}, :c{i}, NULL, NULL, :t{i}, NULL)"
_JSON_VALUES = (
    "(:cid, :s{i}, :r{i}, :c{i}, NULL, NULL, NULL::text::jsonb, COALESCE(NULL::text::jsonb, '{{}}'::jsonb), "
    ":t{i}, NULL)"
)

# Tables with one more of messages' features each; LIKE copies columns and defaults, INCLUDING
# CONSTRAINTS the CHECKs, INCLUDING INDEXES the primary key and the partial idempotency index.
_TABLES = {
    "a_bare": "CREATE TABLE a_bare (LIKE messages INCLUDING DEFAULTS, PRIMARY KEY (conversation_id, seq))",
    "a_fk": "CREATE TABLE a_fk (LIKE messages INCLUDING DEFAULTS, PRIMARY KEY (conversation_id, seq), "
    "FOREIGN KEY (conversation_id) REFERENCES conversations (id) ON DELETE CASCADE)",
    "a_checks": "CREATE TABLE a_checks (LIKE messages INCLUDING DEFAULTS INCLUDING CONSTRAINTS, "
    "PRIMARY KEY (conversation_id, seq), "
    "FOREIGN KEY (conversation_id) REFERENCES conversations (id) ON DELETE CASCADE)",
    # The same CHECKs folded into one constraint: executor start-up prepares each CHECK expression
    # anew for every statement, and a batch of executemany is one statement per row.
    "a_one_check": "CREATE TABLE a_one_check (LIKE messages INCLUDING DEFAULTS, "
    "PRIMARY KEY (conversation_id, seq), "
    "FOREIGN KEY (conversation_id) REFERENCES conversations (id) ON DELETE CASCADE)",
    "a_full": "CREATE TABLE a_full (LIKE messages INCLUDING ALL, "
    "FOREIGN KEY (conversation_id) REFERENCES conversations (id) ON DELETE CASCADE)",
}


@dataclass(frozen=True)
class Variant:
    name: str
    rows: int  # inserted rows per pgbench transaction
    script: str
    variables: dict[str, str]


def _header(rows: int) -> list[str]:
    draw = f"{WORK_FIRST} + random(0, {WORK_KEYS - 1})"
    return [f"\\set cid {draw}", f"\\set uid :cid % {USERS}", f"\\set n {rows}"]


def _message_variables(rows: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, m in enumerate(message_dicts(rows)):
        out[f"r{i}"], out[f"c{i}"] = m["role"], m["content"]
        out[f"t{i}"] = str((len(m["content"]) + 3) // 4)
    return out


def _random_seq_batch(table: str, rows: int, with_json: bool) -> list[str]:
    columns, values = (_JSON_COLUMNS, _JSON_VALUES) if with_json else (_COLUMNS, _PLAIN_VALUES)
    lines = ["\\set base random(1, 4000000000000000000)"]
    lines += [f"\\set s{i} :base + {i}" for i in range(rows)]
    inserts = [f"INSERT INTO {table} ({columns}) VALUES {values.format(i=i)};" for i in range(rows)]
    if rows == 1:
        return lines + inserts
    return [*lines, "BEGIN;", "\\startpipeline", *inserts, "\\endpipeline", "COMMIT;"]


# The usage parameters of schema version 3 ($11-$17: model, token counts, cost, latency), absent
# as in the benchmark's writes, where the statements have them.
_NO_USAGE = {n: "NULL" for n in range(11, 18) if f"${n}" in QUERIES["insert_message_at"]}


def _convdb_batch(rows: int) -> list[str]:
    """convdb's batch today: BEGIN, reserve_seq_range, insert_message_at × rows in a pipeline, COMMIT."""
    lines = ["BEGIN;", bind(QUERIES["reserve_seq_range"], {1: ":cid", 2: ":uid", 3: ":n"}) + " \\gset"]
    lines += [f"\\set s{i} :first_seq + {i}" for i in range(rows)]
    lines.append("\\startpipeline")
    for i in range(rows):
        values = {1: ":cid", 2: f":s{i}", 3: f":r{i}", 4: f":c{i}", 5: "NULL", 6: "NULL"}
        values.update({7: "NULL", 8: "NULL", 9: f":t{i}", 10: "NULL", **_NO_USAGE})
        lines.append(bind(QUERIES["insert_message_at"], values) + ";")
    return [*lines, "\\endpipeline", "COMMIT;"]


def _save_message(i: int) -> str:
    values = {1: ":cid", 2: ":uid", 3: f":r{i}", 4: f":c{i}", 5: "NULL", 6: "NULL", 7: "NULL"}
    values.update({8: "NULL", 9: f":t{i}", 10: "NULL", **_NO_USAGE})
    return bind(QUERIES["save_message"], values) + ";"


# One statement per row, all in one pipeline and one implicit transaction (no BEGIN/COMMIT round
# trips): the first row reserves the whole range under the conversation's row lock; the others
# read the reserved range back from the row this transaction has locked and updated.
CANDIDATE_ONE_PIPELINE = """
WITH head AS (
    UPDATE conversations SET next_seq = next_seq + :n, updated_at = now()
     WHERE id = :cid AND user_id = :uid AND {i} = 0
 RETURNING id, next_seq - :n AS first_seq
), tail AS (
    SELECT id, next_seq - :n AS first_seq FROM conversations
     WHERE id = :cid AND user_id = :uid AND {i} > 0
), reserved AS (SELECT id, first_seq FROM head UNION ALL SELECT id, first_seq FROM tail)
INSERT INTO messages (conversation_id, seq, role, content, tool_name, tool_call_id, tool_calls,
                      metadata, token_count, idempotency_key)
SELECT reserved.id, reserved.first_seq + {i}, :r{i}, :c{i}, NULL, NULL, NULL::text::jsonb,
       COALESCE(NULL::text::jsonb, '{{}}'::jsonb), :t{i}, NULL
  FROM reserved
RETURNING seq, created_at;
"""


def _one_pipeline(rows: int) -> list[str]:
    body = [" ".join(CANDIDATE_ONE_PIPELINE.format(i=i).split()) for i in range(rows)]
    return ["\\startpipeline", *body, "\\endpipeline"]


def _unnest(rows: int) -> list[str]:
    # The three arrays arrive as three array-literal variables (_array_variables): pgbench binds at
    # most a few hundred parameters per statement.
    sql = (
        "WITH reserved AS (UPDATE conversations SET next_seq = next_seq + :n, updated_at = now() "
        "WHERE id = :cid AND user_id = :uid RETURNING id, next_seq - :n AS first_seq) "
        "INSERT INTO messages (conversation_id, seq, role, content, token_count) "
        "SELECT reserved.id, reserved.first_seq + u.ord - 1, u.role, u.content, u.tokens FROM reserved, "
        "unnest(:roles::text[], :contents::text[], :tokens::int[]) "
        "WITH ORDINALITY AS u(role, content, tokens, ord);"
    )
    return [sql]


def _array_variables(rows: int) -> dict[str, str]:
    messages = message_dicts(rows)

    def literal(values: list[str]) -> str:
        return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"

    return {
        "roles": literal([m["role"] for m in messages]),
        "contents": literal([m["content"] for m in messages]),
        "tokens": "{" + ",".join(str((len(m["content"]) + 3) // 4) for m in messages) + "}",
    }


def variants() -> list[tuple[str, list[Variant]]]:
    """(group, variants) for the batch of 100 and the single append, in the table's order."""
    out = []
    for rows in (BATCH, 1):
        variables = {**_message_variables(rows), **_array_variables(rows)}
        steps = [
            ("bare INSERT (primary key only)", _random_seq_batch("a_bare", rows, False)),
            ("+ foreign key", _random_seq_batch("a_fk", rows, False)),
            ("+ text -> jsonb casts", _random_seq_batch("a_fk", rows, True)),
            ("+ CHECK constraints", _random_seq_batch("a_checks", rows, True)),
            ("+ partial idempotency index (messages' shape)", _random_seq_batch("a_full", rows, True)),
        ]
        if rows == 1:
            steps.append(("+ seq reservation = convdb's save_message", [_save_message(0)]))
        else:
            steps.append(
                ("+ seq reservation = convdb's batch (BEGIN, reserve, pipeline, COMMIT)", _convdb_batch(rows))
            )
            steps.append(("candidate: one pipeline, no BEGIN/COMMIT (reserve in row 0)", _one_pipeline(rows)))
            steps.append(
                (
                    "candidate: the same CHECKs folded into one constraint",
                    _random_seq_batch("a_one_check", rows, True),
                )
            )
            steps.append(("reference: one INSERT ... SELECT FROM unnest (not executemany)", _unnest(rows)))
        group = f"batch of {rows}" if rows > 1 else "single append"
        out.append(
            (
                group,
                [
                    Variant(name, rows, "\n".join(_header(rows) + body) + "\n", variables)
                    for name, body in steps
                ],
            )
        )
    return out


_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def postmaster_pid(dsn: str) -> int:
    """The server's postmaster (the parent of its checkpointer), for its CPU counters in /proc."""

    async def checkpointer() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            pid = await conn.fetchval("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
        finally:
            await conn.close()
        return int(pid)

    with asyncio.Runner() as runner:
        pid = runner.run(checkpointer())
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _stat_fields(pid: int) -> list[str]:
    # Fields after "(comm)": state is [0], utime [11], stime [12], cutime [13], cstime [14].
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def server_children(postmaster: int) -> list[list[str]]:
    """The ``/proc`` stat fields of the postmaster's processes (live, or exited and not yet reaped)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            child = _stat_fields(int(entry.name))
        except (OSError, ValueError):
            continue
        if child[1] == str(postmaster):
            found.append(child)
    return found


def server_cpu_s(postmaster: int) -> float:
    """CPU seconds the whole server has used: the postmaster with its reaped children, plus the
    live ones. A backend that ends moves from the second sum into the first, so differences
    count every backend once. Robust to load in a way wall time is not: another process's turn
    on the CPU is not charged to the server."""
    fields = _stat_fields(postmaster)
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    ticks += sum(int(child[11]) + int(child[12]) for child in server_children(postmaster))
    return ticks / _TICK


@dataclass(frozen=True)
class Sample:
    wall_us_per_row: float
    server_cpu_us_per_row: float


def run_pgbench(binary: str, dsn: str, variant: Variant, seconds: int, postmaster: int) -> Sample:
    folder = Path(tempfile.mkdtemp(prefix="convdb-anatomy-"))
    try:
        path = folder / "script.sql"
        path.write_text(variant.script)
        args = [binary, "-n", "-M", "prepared", "-c", "1", "-j", "1", "-T", str(seconds), "-f", str(path)]
        for name, value in variant.variables.items():
            args += ["-D", f"{name}={value}"]
        cpu_before = server_cpu_s(postmaster)
        done = subprocess.run([*args, dsn], capture_output=True, text=True, check=False, cwd=folder)
        time.sleep(0.2)  # let the postmaster reap the backend, so its CPU is in cutime
        cpu_after = server_cpu_s(postmaster)
        if done.returncode != 0:
            raise RuntimeError(f"pgbench failed on {variant.name!r}: {done.stderr.strip()[-500:]}")
        tps, processed = _TPS.search(done.stdout), _PROCESSED.search(done.stdout)
        if tps is None or processed is None:
            raise RuntimeError(f"pgbench printed no tps for {variant.name!r}")
        rows = int(processed.group(1)) * variant.rows
        return Sample(1e6 / (float(tps.group(1)) * variant.rows), (cpu_after - cpu_before) * 1e6 / rows)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def server_table(dsn: str, seconds: int, repeats: int, only: str | None = None) -> list[dict[str, Any]]:
    binary = find_binary("pgbench")
    postmaster = postmaster_pid(dsn)
    groups = [(g, v) for g, v in variants() if only is None or g == only]
    samples: dict[tuple[str, str], list[Sample]] = {}
    for _ in range(repeats):
        for group, group_variants in groups:
            for variant in group_variants:
                sample = run_pgbench(binary, dsn, variant, seconds, postmaster)
                samples.setdefault((group, variant.name), []).append(sample)
    rows = []
    for group, group_variants in groups:
        previous = None
        for variant in group_variants:
            found = samples[(group, variant.name)]
            cpu = statistics.median(s.server_cpu_us_per_row for s in found)
            wall = statistics.median(s.wall_us_per_row for s in found)
            step: float | None = (
                None if previous is None or not variant.name.startswith("+") else cpu - previous
            )
            rows.append(
                {
                    "group": group,
                    "variant": variant.name,
                    "server_cpu_us_per_row": round(cpu, 1),
                    "step_us": None if step is None else round(step, 1),
                    "wall_us_per_row": round(wall, 1),
                    "server_cpu_samples": [round(s.server_cpu_us_per_row, 1) for s in found],
                }
            )
            if variant.name.startswith("+") or previous is None:
                previous = cpu
    return rows


# -- client CPU --------------------------------------------------------------------------------
HISTORY_KEY = 1_000_000


async def _cpu_per_call(fn: Any, calls: int) -> float:
    for _ in range(calls // 10):  # warm: prepared statements, caches
        await fn()
    start = time.process_time()
    for _ in range(calls):
        await fn()
    return (time.process_time() - start) / calls * 1e6


async def client_table(dsn: str, calls: int, repeats: int) -> tuple[list[dict[str, Any]], str]:
    cid, uid = str(HISTORY_KEY), str(HISTORY_KEY % USERS)
    sql = QUERIES["get_history"]
    store = await ConversationStore.connect(dsn, min_size=1, max_size=1)
    direct = await asyncpg.connect(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    assert pool is not None
    from convdb.pool import init_connection

    await init_connection(direct)

    async def via_store() -> None:
        await store.get_history(cid, uid, limit=50)

    async def raw_direct() -> None:
        records = await direct.fetch(sql, cid, uid, 50)
        [Message.from_record(cid, r) for r in records]

    async def raw_fetch_only() -> None:
        await direct.fetch(sql, cid, uid, 50)

    async def raw_pool() -> None:
        async with pool.acquire() as conn:
            records = await conn.fetch(sql, cid, uid, 50)
        [Message.from_record(cid, r) for r in records]

    cases = [
        ("ConversationStore.get_history", via_store),
        ("raw fetch + Message.from_record, direct connection", raw_direct),
        ("raw fetch only (Records, jsonb decoded), direct connection", raw_fetch_only),
        ("raw fetch + Message.from_record, asyncpg pool (default reset)", raw_pool),
    ]
    try:
        samples: dict[str, list[float]] = {}
        for _ in range(repeats):
            for name, fn in cases:
                samples.setdefault(name, []).append(await _cpu_per_call(fn, calls))
        # CPU time, not wall time: on a busy machine wall time charges other processes' turns to
        # whichever function was running.
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        for _ in range(calls):
            await via_store()
        profiler.disable()
    finally:
        await store.close()
        await direct.close()
        await pool.close()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    base = statistics.median(samples[cases[1][0]])
    table = [
        {
            "path": name,
            "client_cpu_us": round(statistics.median(values), 1),
            "vs_raw_direct": round(statistics.median(values) / base, 2),
        }
        for name, values in samples.items()
    ]
    return table, out.getvalue()


def _on_uvloop(dsn: str, calls: int, repeats: int) -> list[dict[str, Any]]:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        rows, _ = runner.run(client_table(dsn, calls, repeats))
    return rows


# -- the run ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _admin(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    with server.embedded_server({}) as admin:
        yield admin


_CHECKS_OF_MESSAGES = """
SELECT string_agg('(' || pg_get_expr(conbin, conrelid) || ')', ' AND ' ORDER BY conname)
  FROM pg_constraint WHERE conrelid = 'messages'::regclass AND contype = 'c'
"""


async def _prepare(dsn: str) -> None:
    await seed.seed_conversations(dsn, [WORK_FIRST + i for i in range(WORK_KEYS)], 100)
    await seed.seed_conversations(dsn, [HISTORY_KEY], 1_000)
    conn = await asyncpg.connect(dsn)
    try:
        for ddl in _TABLES.values():
            await conn.execute(ddl)
        combined = await conn.fetchval(_CHECKS_OF_MESSAGES)
        await conn.execute(f"ALTER TABLE a_one_check ADD CONSTRAINT a_one_check_all CHECK ({combined})")
    finally:
        await conn.close()


def markdown(server_rows: list[dict[str, Any]], client_rows: list[dict[str, Any]]) -> str:
    lines = [
        "| write | variant | server CPU µs per row | step | wall µs per row |",
        "|---|---|---|---|---|",
    ]
    for r in server_rows:
        step = "" if r["step_us"] is None else f"{r['step_us']:+.1f}"
        lines.append(
            f"| {r['group']} | {r['variant']} | {r['server_cpu_us_per_row']:.1f} | {step} | "
            f"{r['wall_us_per_row']:.0f} |"
        )
    lines += ["", "| get_history (50 rows) | client CPU µs per call | ÷ raw direct |", "|---|---|---|"]
    for r in client_rows:
        lines.append(f"| {r['path']} | {r['client_cpu_us']:.0f} | {r['vs_raw_direct']:.2f} |")
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace, admin: str) -> dict[str, Any]:
    db = await server.create_database(admin)
    try:
        await _prepare(db.dsn)
        load_before = load_average()
        server_rows = await asyncio.to_thread(server_table, db.dsn, args.seconds, args.repeats, args.only)
        client_rows, profile = await client_table(db.dsn, args.calls, args.repeats)
        if args.uvloop:
            # The same client paths on uvloop, in a loop of their own (a thread: one loop each).
            uv_rows = await asyncio.to_thread(_on_uvloop, db.dsn, args.calls, args.repeats)
            client_rows += [{**r, "path": r["path"] + " [uvloop]"} for r in uv_rows]
        info = await server.server_info(db.dsn)
    finally:
        await server.drop_database(db)
    return {
        "meta": {
            "postgres": info["postgres"],
            "server_settings": info["server_settings"],
            "cores": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "seconds": args.seconds,
            "repeats": args.repeats,
            "user_text_chars": len(USER_TEXT),
        },
        "server": server_rows,
        "client": client_rows,
        "profile": profile,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.batch_anatomy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dsn", help="a server to use (default: the embedded PostgreSQL in a temp dir)")
    parser.add_argument("--seconds", type=int, default=3, help="pgbench -T per variant and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2_000, help="get_history calls per client-CPU sample")
    parser.add_argument("--json", dest="json_path", metavar="FILE")
    parser.add_argument("--only", choices=("batch of 100", "single append"), help="one group of writes")
    parser.add_argument("--uvloop", action="store_true", help="also measure the client paths on uvloop")
    args = parser.parse_args(argv)
    with _admin(args.dsn) as admin:
        doc = asyncio.run(main_async(args, admin))
    sys.stdout.write(markdown(doc["server"], doc["client"]))
    sys.stdout.write(
        f"\nload average before/after: {doc['meta']['load_average_before']} / "
        f"{doc['meta']['load_average_after']}\n\ncProfile of ConversationStore.get_history:\n"
    )
    sys.stdout.write(doc["profile"])
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
