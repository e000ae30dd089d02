"""``python -m benchmarks --citus`` runs end to end in its tiny mode, and its JSON keeps its shape.

It starts its own local cluster (coordinator + 2 workers) and single PostgreSQL from the Citus
installation on the machine (``bash .ci/citus.sh``); without one it fails saying so. The tiny
mode's figures mean nothing: the test checks that every cell, ratio, capacity row and the
scaling run are there and consistent, never a speed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import citus
from convdb.testing.citus import CitusUnavailable
from tests.support.fix_server import ROOT

OPS = citus.CITUS_OPS

# They start a local cluster of their own from the Citus installation: part of the suite's Citus
# run (make test-citus, after .ci/citus.sh installs it), not of the single-node one, which must
# pass on a machine without Citus.
on_citus = pytest.mark.engine_specific("citus", "starts a local Citus cluster from the installation")


@on_citus
def test_citus_tiny_run_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "citus.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--citus",
            "--tiny",
            "--no-progress",
            "--concurrency",
            "1,2",
            "--capacity-calls",
            "10",
            "--scale",
            "3000",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    assert "citus ÷ single-node" in result.stdout
    doc = json.loads(out.read_text())
    assert doc["meta"]["systems"] == ["citus", "single-pg15"]
    assert doc["meta"]["citus"].startswith("Citus ")
    assert doc["meta"]["delegated_calls"] is True  # schema_citus.sql's functions, found by the stores

    cells = {(r["system"], r["op"], r["concurrency"]): r for r in doc["results"]}
    assert set(cells) == {(s, op, c) for s in ("citus", "single-pg15") for op in OPS for c in (1, 2)}
    for row in cells.values():
        assert row["error"] is None, row
        assert row["ops_per_s"] > 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
    ratios = {(r["op"], r["concurrency"]): r for r in doc["citus_ratios"]}
    assert set(ratios) == {(op, c) for op in OPS for c in (1, 2)}
    for (op, c), ratio in ratios.items():
        expected = cells[("citus", op, c)]["ops_per_s"] / cells[("single-pg15", op, c)]["ops_per_s"]
        assert ratio["citus_over_single"] == pytest.approx(expected, rel=0.01, abs=0.001)

    # Capacity: every op on every node; one statement per single-node append (the one-statement
    # save), and every Citus call reaches a worker (the coordinator holds no shard).
    capacity = {(r["target"], r["op"], r["node"]): r for r in doc["capacity"]}
    nodes = {"single": ["single"], "citus": ["coordinator", "worker1", "worker2"]}
    assert set(capacity) == {(t, op, n) for t, names in nodes.items() for op in OPS for n in names}
    for row in capacity.values():
        assert row["calls"] == 10
        assert row["server_cpu_ms_per_call"] >= 0
        assert row["statements_per_call"] == pytest.approx(
            sum(row["statement_kinds_per_call"].values()), abs=0.05
        )
    assert capacity[("single", "append", "single")]["statements_per_call"] == 1
    assert capacity[("single", "history_50", "single")]["statements_per_call"] == 1
    # The client sends one statement per one-statement call on both engines; what Citus adds
    # (its own steps on the coordinator, its tasks on the workers) is counted apart.
    for op in ("append", "history_50", "get_or_create", "turn"):
        for target, node in (("single", "single"), ("citus", "coordinator")):
            assert capacity[(target, op, node)]["statement_kinds_per_call"]["client"] == 1, (target, op)
    for op in OPS:
        assert capacity[("citus", op, "coordinator")]["statements_per_call"] >= 1
        on_workers = sum(capacity[("citus", op, w)]["statements_per_call"] for w in ("worker1", "worker2"))
        assert on_workers >= 1, op

    scale = doc["scale"]
    for label in ("single", "citus"):
        assert scale[f"seed_{label}"]["messages_added"] == 3000
        assert scale[f"seed_{label}"]["messages_total"] >= 3000
    assert scale["shards"]["messages"]["shards"] == 32
    assert len(scale["shards"]["messages"]["nodes"]) == 2
    assert {(r["op"], r["concurrency"]) for r in scale["ratios"]} == {(op, 8) for op in OPS}


def test_citus_run_without_citus_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> str:
        raise CitusUnavailable("no PostgreSQL with Citus found")

    monkeypatch.setattr(citus, "find_citus_pg_config", missing)

    async def start() -> None:
        async with citus.local_servers():
            raise AssertionError("started without Citus")

    with pytest.raises(SystemExit) as failed:
        asyncio.run(start())
    assert "bash .ci/citus.sh" in str(failed.value)
    assert "no PostgreSQL with Citus found" in str(failed.value)


@on_citus
def test_citus_move_of_a_small_database_keeps_every_row(tmp_path: Path) -> None:
    out = tmp_path / "move.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.citus_move", "--messages", "3000", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    move = json.loads(out.read_text())["move"]
    assert move["counts_source"]["messages"] == 3000
    assert move["counts_source"]["conversation_summaries"] == 3
    assert move["counts_target"] == move["counts_source"]
    assert move["counts_equal"] is True
    assert move["conversations_checked"] == 3
    assert move["checksums_differing"] == 0
    assert move["store_read_ok"] is True
    assert set(move["steps_s"]) == {
        "1_pg_dump_s",
        "2_create_database_s",
        "3_pg_restore_s",
        "4_schema_citus_s",
        "5_truncate_local_s",
        "6_verify_s",
    }
