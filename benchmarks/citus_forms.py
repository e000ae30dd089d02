"""Which spellings of an append Citus runs as one router task, and what each costs per call.

    python -m benchmarks.citus_forms [--calls 300] [--json FILE]

``save_message`` is one statement: a CTE ``UPDATE conversations ... RETURNING`` feeding ``INSERT
INTO messages ... SELECT`` (since schema 9 both are CTEs under a ``SELECT``, with retention's cap
as a third, ``DELETE``, CTE). Citus plans an ``INSERT ... SELECT`` with its own planner, which
pulls the CTE's row to the coordinator and sends the insert back as another step. This
script asks the cluster (``EXPLAIN``) how it plans each candidate spelling of the same append and
times each through one connection (prepared, one call after another, after a warm-up), on a
local coordinator + 2 workers and, for the statement convdb sends, on one PostgreSQL from the same
binaries. The candidates are cut down to the columns that decide the plan (conversation id,
user, seq, role, content); the delegated function does the same two steps in PL/pgSQL
(``create_distributed_function`` by its conversation-id argument, co-located with
``conversations``), which Citus sends to the worker that holds the conversation as one call.

The figures are per call through one connection on a shared 2-core machine: compare the forms
with each other in one run, not with other runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

from convdb.sql import QUERIES

from . import citus as bench_citus

_UPDATE = (
    "UPDATE conversations SET next_seq = next_seq + 1, updated_at = now() "
    "WHERE id = $1 AND user_id = $2 RETURNING id, next_seq - 1 AS seq"
)

#: name -> (statement, what it does). $1 conversation id, $2 user, $3 content; convdb's own
#: statement takes save_message's 17 parameters ($3 role, $4 content, the rest NULL here).
FORMS: dict[str, tuple[str, str]] = {
    "convdb's save_message as shipped (schema 9)": (
        QUERIES["save_message"],
        "the append, with retention's expiry check, sliding expiry and cap",
    ),
    "CTE UPDATE -> INSERT ... SELECT (save_message before schema 9)": (
        f"WITH reserved AS ({_UPDATE}) INSERT INTO messages (conversation_id, seq, role, content) "
        "SELECT reserved.id, reserved.seq, 'user', $3 FROM reserved RETURNING seq, created_at",
        "the append",
    ),
    "statement, distribution value spelled in the INSERT": (
        f"WITH reserved AS ({_UPDATE}) INSERT INTO messages (conversation_id, seq, role, content) "
        "SELECT $1, reserved.seq, 'user', $3 FROM reserved RETURNING seq, created_at",
        "the append",
    ),
    "both steps as CTEs under a SELECT": (
        f"WITH reserved AS ({_UPDATE}), inserted AS (INSERT INTO messages (conversation_id, seq, "
        "role, content) SELECT $1, reserved.seq, 'user', $3 FROM reserved RETURNING seq, created_at) "
        "SELECT seq, created_at FROM inserted",
        "the append",
    ),
    "delegated PL/pgSQL function": (
        "SELECT seq, created_at FROM convdb_forms_save($1, $2, $3)",
        "the append",
    ),
    "the UPDATE alone (reference)": (
        _UPDATE.replace("WHERE id = $1", "WHERE $3::text IS NOT NULL AND id = $1"),
        "half of it: the seq reservation",
    ),
}

_FUNCTION = """
CREATE FUNCTION convdb_forms_save(p_conversation_id text, p_user_id text, p_content text,
                                  OUT seq bigint, OUT created_at timestamptz)
RETURNS SETOF record LANGUAGE plpgsql AS $body$
DECLARE
    v_seq bigint;
BEGIN
    UPDATE conversations c SET next_seq = c.next_seq + 1, updated_at = now()
     WHERE c.id = p_conversation_id AND c.user_id = p_user_id
    RETURNING c.next_seq - 1 INTO v_seq;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY
        INSERT INTO messages AS m (conversation_id, seq, role, content)
        VALUES (p_conversation_id, v_seq, 'user', p_content)
        RETURNING m.seq, m.created_at;
END
$body$
"""


def _arguments(sql: str, content: str) -> tuple[object, ...]:
    if sql == QUERIES["save_message"]:
        # $9 token_count is NOT NULL (the store always counts); the rest may be NULL.
        return ("forms-1", "alice", "user", content, None, None, None, None, 1, *[None] * 8)
    return ("forms-1", "alice", content)


def _literal(sql: str) -> str:
    """The statement with its parameters as literals, for EXPLAIN (highest number first: $1
    would otherwise eat the start of $12)."""
    values = (
        ["'forms-1'", "'alice'", "'user'", "'x'"]
        if sql == QUERIES["save_message"]
        else ["'forms-1'", "'alice'", "'x'"]
    )
    for n in range(17, 0, -1):
        sql = sql.replace(f"${n}", values[n - 1] if n <= len(values) else "NULL")
    return sql


def _plan_summary(lines: list[str]) -> str:
    """The parts of an EXPLAIN that say how Citus runs it: the method and the task counts."""
    keep = []
    for line in lines:
        text = line.strip()
        if text.startswith(("INSERT/SELECT method", "Task Count", "->  Distributed Subplan")):
            keep.append(text.replace("->  ", ""))
    return "; ".join(keep) or lines[0].strip()


async def _time(conn: asyncpg.Connection, sql: str, calls: int) -> float:
    statement = await conn.prepare(sql)
    warm, measured = _arguments(sql, "warm-up"), _arguments(sql, "x")
    for _ in range(20):
        await statement.fetch(*warm)
    samples = []
    for _ in range(3):
        began = time.perf_counter()
        for _ in range(calls):
            await statement.fetch(*measured)
        samples.append((time.perf_counter() - began) / calls * 1000)
    return statistics.median(samples)


async def run(calls: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    async with bench_citus.local_servers() as (cluster, single):
        targets = await bench_citus.create_databases(cluster, single)
        citus = await asyncpg.connect(targets.citus_db.dsn)
        plain = await asyncpg.connect(targets.single_db.dsn)
        try:
            for conn in (citus, plain):
                await conn.execute("INSERT INTO conversations (id, user_id) VALUES ('forms-1', 'alice')")
                await conn.execute(_FUNCTION)
            await citus.execute(
                "SELECT create_distributed_function('convdb_forms_save(text, text, text)', "
                "'p_conversation_id', colocate_with := 'conversations')"
            )
            for name, (sql, does) in FORMS.items():
                plan = [r[0] for r in await citus.fetch("EXPLAIN " + _literal(sql))]
                foreign = await citus.fetch(sql, "forms-1", "mallory", *_arguments(sql, "x")[2:])
                rows.append(
                    {
                        "form": name,
                        "does": does,
                        "citus_plan": _plan_summary(plan),
                        "citus_ms": round(await _time(citus, sql, calls), 3),
                        "single_ms": round(await _time(plain, sql, calls), 3),
                        "other_user_rows": len(foreign),
                    }
                )
        finally:
            await citus.close()
            await plain.close()
    return {"calls": calls, "rows": rows}


def text(doc: dict[str, Any]) -> str:
    lines = [f"{'form':<64} {'Citus ms':>9} {'single ms':>10}  Citus plan"]
    for r in doc["rows"]:
        lines.append(f"{r['form']:<64} {r['citus_ms']:>9.3f} {r['single_ms']:>10.3f}  {r['citus_plan']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.citus_forms", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--calls", type=int, default=300, help="calls per timing sample (3 samples)")
    parser.add_argument("--json", dest="json_path", metavar="FILE")
    args = parser.parse_args(argv)
    doc = asyncio.run(run(args.calls))
    sys.stdout.write(text(doc))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
