"""What the row rules and retention's predicate cost the server, in instructions.

    python -m benchmarks.check_instructions [--rows 200] [--json out.json]
    python -m benchmarks.check_instructions --retention [--rows 200] [--json out.json]

Counts the server's instructions with valgrind's callgrind, so the figure does not depend on how
busy the machine is (a CPU-time figure on these shared cores moved by 2x between runs). One
embedded PostgreSQL cluster holds three databases: migrations 0001-0006 (the fifteen separate
CHECKs), 0001-0007 (those and the two one-per-table rules: the rolling-upgrade window) and
schema.sql (the rules only). Each write runs in a single-user backend (``postgres --single``, the
only way to run one backend under valgrind) as a prepared statement executed ``--rows`` times and
20 times; the difference divided by ``--rows - 20`` is the cost of one more row or call, without
the backend's start-up. The statements are convdb's own (``convdb.sql.QUERIES``):

- ``batch row``: ``insert_message_at``, the executemany body of ``save_messages``, in one
  transaction (then rolled back, so every run sees the same table);
- ``append``: ``save_message``, one statement per call, each its own transaction (both tables'
  rules: the conversation row's update and the message's insert).

``--retention`` instead measures what failing closed costs (issue 13): on schema.sql, ``append``
(``save_message``) and ``history_50`` (``get_history`` of 50 out of 200 messages) as shipped, with
the live-conversation predicate ``(expires_at IS NULL OR expires_at > now())`` next to the
ownership check, against the same texts with the predicate cut out
(``benchmarks.retention_cost.without_predicate``).

Needs valgrind (``apt-get install valgrind``); fails saying so when it is missing.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from convdb.migrations import MIGRATIONS
from convdb.sql import QUERIES
from convdb.testing import EmbeddedPostgres, apply_schema, apply_sql
from convdb.testing.embedded import find_binary

ROOT = Path(__file__).resolve().parents[1]
BASE_ROWS = 20
CONTENT = "The quick brown fox jumps over the lazy dog. " * 6
DATABASES = {
    "v6": "schema 6: fifteen separate CHECKs",
    "v7": "schema 7: both (the upgrade window)",
    "v8": "schema 8: one rule per table",
}
#: The rule comparison runs on migrations 0001..N. The statements are today's, which read
#: retention's columns (schema 9): each database gets those columns bare, without retention's own
#: CHECKs and index, so the comparison stays one of the row rules alone.
UPTO = {"v6": 6, "v7": 7, "v8": 8}
RETENTION_COLUMNS = (
    "ALTER TABLE conversations ADD COLUMN expires_at timestamptz, ADD COLUMN ttl interval, "
    "ADD COLUMN temporary boolean NOT NULL DEFAULT false, ADD COLUMN max_messages integer"
)
_COLLECTED = re.compile(r"Collected : (\d+)")


def _one_line(sql: str) -> str:
    # Single-user mode reads one statement per line.
    return " ".join(line.split("--")[0] for line in sql.splitlines()).strip().rstrip(";")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def batch_script(rows: int) -> str:
    lines = [f"PREPARE w AS {_one_line(QUERIES['insert_message_at'])}", "BEGIN"]
    for i in range(rows):
        role = "user" if i % 2 == 0 else "assistant"
        values = ["'c1'", str(1_000_000 + i), _quote(role), _quote(CONTENT), *["NULL"] * 4, "70"]
        lines.append(f"EXECUTE w({', '.join(values + ['NULL'] * 8)})")
    lines.append("ROLLBACK")
    return "\n".join(lines) + "\n"


def append_script(calls: int, sql: str | None = None, *, rolled_back: bool = False) -> str:
    """``calls`` appends, each its own transaction; ``rolled_back``: all in one transaction rolled
    back at the end, so every run starts from the same table (committed appends grow it, and
    what a run costs then depends on the runs before it: up to 1.4x per append)."""
    lines = [f"PREPARE w AS {_one_line(sql or QUERIES['save_message'])}"]
    values = ["'c1'", "'u1'", "'user'", _quote(CONTENT), *["NULL"] * 4, "70", *["NULL"] * 8]
    lines += ["BEGIN"] if rolled_back else []
    lines += [f"EXECUTE w({', '.join(values)})"] * calls
    lines += ["ROLLBACK"] if rolled_back else []
    return "\n".join(lines) + "\n"


def rolled_back_appends(calls: int, sql: str | None = None) -> str:
    return append_script(calls, sql, rolled_back=True)


def history_script(calls: int, sql: str | None = None) -> str:
    lines = [f"PREPARE r AS {_one_line(sql or QUERIES['get_history'])}"]
    lines += ["EXECUTE r('h1', 'u1', 50)"] * calls
    return "\n".join(lines) + "\n"


def instructions(server: EmbeddedPostgres, database: str, script: str) -> int:
    """Instructions callgrind counted for one single-user backend running ``script``."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        find_binary("postgres", server.bin_dir),
        "--single",
        "-D",
        str(server.data_dir),
        "-c",
        "fsync=off",
        database,
    ]
    result = subprocess.run(
        command, input=script, capture_output=True, text=True, check=False, user=server._run_as, timeout=1800
    )
    found = _COLLECTED.search(result.stderr)
    if result.returncode != 0 or found is None or "ERROR:" in result.stdout:
        tail = f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        raise RuntimeError(f"single-user run on {database} failed:\n{tail}")
    return int(found.group(1))


def build(server: EmbeddedPostgres) -> None:
    for name in DATABASES:
        apply_sql(server.dsn(), f"CREATE DATABASE {name}")
    for migration in MIGRATIONS:
        for name, upto in UPTO.items():
            if migration.version <= upto:
                apply_sql(server.dsn(name), migration.sql)
    for name in DATABASES:
        apply_sql(server.dsn(name), RETENTION_COLUMNS)
        apply_sql(server.dsn(name), "INSERT INTO conversations (id, user_id) VALUES ('c1', 'u1')")


def build_retention(server: EmbeddedPostgres) -> None:
    apply_sql(server.dsn(), "CREATE DATABASE v9")
    apply_schema(server.dsn("v9"), ROOT / "schema.sql")
    apply_sql(
        server.dsn("v9"),
        "INSERT INTO conversations (id, user_id, next_seq) VALUES ('c1', 'u1', 1), ('h1', 'u1', 201);"
        "INSERT INTO messages (conversation_id, seq, role, content) "
        "SELECT 'h1', g, CASE WHEN g % 2 = 1 THEN 'user' ELSE 'assistant' END, "
        f"{_quote(CONTENT)} FROM generate_series(1, 200) g",
    )


def measure_retention(rows: int) -> list[dict[str, Any]]:
    from .retention_cost import without_predicate

    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind (it counts the instructions)")
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="convdb-checks-") as folder:
        server = EmbeddedPostgres(Path(folder) / "data")
        server.start()
        try:
            build_retention(server)
        finally:
            server.stop()
        # The first two backends after the build count ~1.3x per call whatever the statement
        # (measured: the predicate cut, run first, "cost" 723k against 557k run again): one
        # unmeasured run of each script first.
        instructions(server, "v9", rolled_back_appends(rows))
        instructions(server, "v9", history_script(rows))
        for call, script, name in (
            ("append", rolled_back_appends, "save_message"),
            ("history_50", history_script, "get_history"),
        ):
            for variant, sql in (
                ("shipped", QUERIES[name]),
                ("predicate cut", without_predicate(QUERIES[name])),
            ):
                low = instructions(server, "v9", script(BASE_ROWS, sql))
                high = instructions(server, "v9", script(rows, sql))
                per = (high - low) / (rows - BASE_ROWS)
                out.append({"call": call, "variant": variant, "instructions": round(per)})
                print(f"{call:10s} {variant:14s} {per:>12,.0f}", flush=True)
    return out


def retention_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| call | statement | instructions per call | with / without the predicate |",
        "|---|---|---:|---:|",
    ]
    cut = {r["call"]: r["instructions"] for r in results if r["variant"] == "predicate cut"}
    for r in results:
        ratio = r["instructions"] / cut[r["call"]]
        lines.append(f"| {r['call']} | {r['variant']} | {r['instructions']:,} | {ratio:.3f} |")
    return "\n".join(lines)


def measure(rows: int) -> list[dict[str, Any]]:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind (it counts the instructions)")
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="convdb-checks-") as folder:
        server = EmbeddedPostgres(Path(folder) / "data")
        server.start()
        try:
            build(server)
        finally:
            server.stop()  # single-user mode needs the cluster to itself
        for name in DATABASES:  # unmeasured first runs (see measure_retention)
            instructions(server, name, batch_script(rows))
            instructions(server, name, batch_script(rows))
        for write, script in (("batch row", batch_script), ("append", append_script)):
            for name, label in DATABASES.items():
                low = instructions(server, name, script(BASE_ROWS))
                high = instructions(server, name, script(rows))
                per = (high - low) / (rows - BASE_ROWS)
                out.append({"write": write, "schema": name, "label": label, "instructions": round(per)})
                print(f"{write:10s} {label:40s} {per:>12,.0f}", flush=True)
    return out


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| write | schema | instructions per row or call | vs schema 6 |", "|---|---|---:|---:|"]
    base = {r["write"]: r["instructions"] for r in results if r["schema"] == "v6"}
    for r in results:
        ratio = r["instructions"] / base[r["write"]]
        lines.append(f"| {r['write']} | {r['label']} | {r['instructions']:,} | {ratio:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.check_instructions", description=__doc__)
    parser.add_argument("--rows", type=int, default=200, help="rows or calls per measured run (default 200)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--retention", action="store_true", help="the expiry predicate's cost instead")
    args = parser.parse_args(argv)
    if args.rows <= BASE_ROWS:
        parser.error(f"--rows must be more than {BASE_ROWS}")
    results = measure_retention(args.rows) if args.retention else measure(args.rows)
    print()
    print(retention_table(results) if args.retention else table(results))
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": args.rows, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
