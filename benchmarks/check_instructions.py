"""What the row rules cost the server, in instructions: the same writes on schema versions 6, 7, 8.

    python -m benchmarks.check_instructions [--rows 200] [--json out.json]

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


def append_script(calls: int) -> str:
    lines = [f"PREPARE w AS {_one_line(QUERIES['save_message'])}"]
    values = ["'c1'", "'u1'", "'user'", _quote(CONTENT), *["NULL"] * 4, "70", *["NULL"] * 8]
    lines += [f"EXECUTE w({', '.join(values)})"] * calls
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
        for name, upto in (("v6", 6), ("v7", 7)):
            if migration.version <= upto:
                apply_sql(server.dsn(name), migration.sql)
    apply_schema(server.dsn("v8"), ROOT / "schema.sql")
    for name in DATABASES:
        apply_sql(server.dsn(name), "INSERT INTO conversations (id, user_id) VALUES ('c1', 'u1')")


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
    args = parser.parse_args(argv)
    if args.rows <= BASE_ROWS:
        parser.error(f"--rows must be more than {BASE_ROWS}")
    results = measure(args.rows)
    print()
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": args.rows, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
