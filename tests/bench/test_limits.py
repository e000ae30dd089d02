"""``python -m benchmarks.limits`` (issue 14's per-call CPU profile) runs end to end, and its derived
figures follow from its own measurements."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.limits import PGBENCH_GOAL, derive
from tests.support.fix_server import ROOT


def test_derived_figures_follow_from_the_cells() -> None:
    cells = {
        "convdb": {"ops_per_s": 2_000.0, "client_us": 150.0, "server_us": 350.0},
        "asyncpg-raw": {"ops_per_s": 1_900.0, "client_us": 140.0, "server_us": 360.0},
        "pgbench": {"ops_per_s": 4_000.0, "client_us": 30.0, "server_us": 250.0},
        "langchain-postgres": {"ops_per_s": 1_000.0, "client_us": 500.0, "server_us": 200.0},
    }
    d = derive(cells, "append", 8, cores=2)
    assert d["convdb_cpu_us"] == 500.0
    assert d["client_share"] == 0.3
    assert d["client_busy"] == 0.3  # 150 us x 2,000 calls/s
    assert d["cpu_busy"] == 1.0  # 500 us x 2,000 calls/s: half of the two cores
    assert d["pgbench_cpu_busy"] == 1.12  # 280 us x 4,000
    # One Python process: at most 1e6 / 150 calls/s; two cores: 2e6 / 500.
    assert d["cpu_ceiling_ops"] == 4_000.0
    assert d["convdb_over_pgbench"] == 0.5
    assert d["convdb_over_raw"] == round(2_000 / 1_900, 2)
    assert d["pgbench_goal"] == PGBENCH_GOAL[("append", 8)]
    # 0.85 x 4,000 = 3,400 calls/s on 2 cores leaves 588.2 us per call, 350 of them the server's.
    assert d["client_us_allowed"] == round(2e6 / 3_400 - 350, 1)
    assert d["convdb_over_peer"] == 2.0
    serial = derive(cells, "history_50", 1, cores=2)
    assert serial["wall_us_now"] == 500.0
    assert serial["wall_us_allowed"] == round(1e6 / (0.6 * 4_000), 1)
    assert "cpu_ceiling_ops" not in serial
    assert "convdb_over_peer" not in serial  # the best peer on reads is not langchain-postgres


@pytest.mark.slow
def test_limits_run_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "limits.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.limits",
            "--seconds",
            "0.3",
            "--repeats",
            "1",
            "--ops",
            "append,history_50",
            "--systems",
            "convdb,asyncpg-raw,pgbench",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert not doc["errors"], doc["errors"]
    seen = {(c["system"], c["op"], c["concurrency"]) for c in doc["cells"]}
    assert seen == {
        (s, op, c)
        for s in ("convdb", "asyncpg-raw", "pgbench")
        for op in ("append", "history_50")
        for c in (1, 8)
    }
    for cell in doc["cells"]:
        assert cell["ops_per_s"] > 0
        assert cell["calls"] > 0
        # Every call costs the server something, and the counters see it.
        assert cell["server_us"] > 0, cell
        assert cell["client_us"] > 0, cell
    by = {(c["system"], c["op"], c["concurrency"]): c for c in doc["cells"]}
    for d in doc["derived"]:
        mine = by[("convdb", d["op"], d["concurrency"])]
        pg = by[("pgbench", d["op"], d["concurrency"])]
        assert d["convdb_cpu_us"] == pytest.approx(mine["client_us"] + mine["server_us"], abs=0.2)
        assert d["convdb_over_pgbench"] == pytest.approx(mine["ops_per_s"] / pg["ops_per_s"], abs=0.01)
    assert "what each goal needs" in result.stdout
