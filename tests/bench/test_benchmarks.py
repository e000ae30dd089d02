"""The benchmark runs end to end in its tiny mode against the test server, and its JSON keeps its shape.

This keeps ``python -m benchmarks`` working; the tiny mode's figures mean nothing. Peers that are not
installed (the bench extra is not part of the test extra) must still appear, with their error.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.registry import ALL_NAMES
from benchmarks.systems.pgbench_system import script_for
from benchmarks.workload import EXTRA_OPS, OPS
from tests.support.fix_server import ROOT, Server

NUMBER = (int, float)


def _check_result(row: dict[str, Any]) -> None:
    assert set(row) >= {"system", "op", "concurrency", "ops_per_s", "p50_ms", "p99_ms", "error"}
    assert row["system"] in ALL_NAMES
    assert row["op"] in (*OPS, *EXTRA_OPS)
    assert isinstance(row["concurrency"], int)
    if row["ops_per_s"] is None:
        # No figure without a reason.
        assert isinstance(row["error"], str)
        assert row["error"]
        assert row["p50_ms"] is None
        assert row["p99_ms"] is None
    else:
        assert isinstance(row["ops_per_s"], NUMBER)
        assert row["ops_per_s"] > 0
        assert isinstance(row["p50_ms"], NUMBER)
        assert isinstance(row["p99_ms"], NUMBER)
        assert 0 < row["p50_ms"] <= row["p99_ms"]


@pytest.mark.slow
def test_tiny_run_end_to_end(pg_server: Server, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    chart = tmp_path / "out.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--tiny",
            "--no-progress",
            "--dsn",
            pg_server.admin_dsn,
            "--concurrency",
            "1,2",
            "--json",
            str(out),
            "--plot",
            str(chart),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    matplotlib_missing = "--plot needs matplotlib" in result.stderr
    assert result.returncode == (1 if matplotlib_missing else 0), result.stderr[-3000:]
    assert "ratios of throughput" in result.stdout

    doc = json.loads(out.read_text())
    meta = doc["meta"]
    assert {"commit", "cores", "postgres", "versions", "server_settings"} <= set(meta)
    assert isinstance(meta["cores"], int)
    assert meta["cores"] >= 1
    assert meta["postgres"][0].isdigit()
    assert "asyncpg" in meta["versions"]

    for row in doc["results"]:
        _check_result(row)
    cells = {(r["system"], r["op"], r["concurrency"]): r for r in doc["results"]}
    # Every system is in the results, installed or not, at every concurrency.
    assert {r["system"] for r in doc["results"]} == set(ALL_NAMES)
    for op in OPS:
        for c in (1, 2):
            for system in ("convdb", "asyncpg-raw", "pgbench"):
                row = cells[(system, op, c)]
                assert row["ops_per_s"] is not None, row
                assert row["error"] is None, row

    for ratio in doc["ratios"]:
        assert {
            "op",
            "concurrency",
            "convdb_over_pgbench",
            "convdb_over_asyncpg_raw",
            "convdb_over_best_peer",
        } <= set(ratio)
        assert isinstance(ratio["convdb_over_pgbench"], NUMBER)

    assert doc["scaling"]
    for point in doc["scaling"]:
        assert set(point) >= {"system", "messages_in_conversation", "total_messages", "p50_ms"}
        assert isinstance(point["messages_in_conversation"], int)
        assert isinstance(point["total_messages"], int)
    convdb_lengths = {
        p["messages_in_conversation"]
        for p in doc["scaling"]
        if p["system"] == "convdb" and p["p50_ms"] is not None
    }
    assert convdb_lengths == {100, 1_000}
    if not matplotlib_missing:
        assert chart.stat().st_size > 10_000


@pytest.mark.parametrize("op", [*OPS, *EXTRA_OPS])
def test_pgbench_scripts_bind_every_parameter(op: str) -> None:
    script = script_for(op, 2_000_000, 64, 8)
    assert "$" not in script.text  # every $n became a pgbench variable or NULL
    for line in script.text.splitlines():
        for name in (token[1:].rstrip(";,)") for token in line.split() if token.startswith(":")):
            if name and name[0].isalpha() and name not in {"client_id", "cid", "uid", "first_seq"}:
                assert name.split("::")[0] in script.variables or name.startswith("s"), (op, name)
