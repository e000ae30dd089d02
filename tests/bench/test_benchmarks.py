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

from benchmarks import report
from benchmarks.config import MODES
from benchmarks.measure import Cell
from benchmarks.registry import ALL_NAMES
from benchmarks.runner import Row
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

    # Compared with the published run by default: every row and ratio the two runs share has a
    # this ÷ previous figure, and the text shows the comparison table.
    published = json.loads((ROOT / "benchmarks" / "results" / "default.json").read_text())
    assert meta["previous_run"]["commit"] == published["meta"]["commit"]
    assert meta["previous_run"]["source"] == "benchmarks/results/default.json"
    assert "against the previous published run" in result.stdout
    shared = {(r["system"], r["op"], r["concurrency"]) for r in published["results"] if r["ops_per_s"]}
    compared = [r for r in doc["results"] if (r["system"], r["op"], r["concurrency"]) in shared]
    assert compared
    for row in compared:
        if row["ops_per_s"] is not None:
            assert isinstance(row["vs_previous"], NUMBER)
    published_ratios = {(r["op"], r["concurrency"]) for r in published["ratios"]}
    # The published run has c = 1 and 8, this one 1 and 2: c = 1 is compared, c = 2 has nothing to.
    for ratio in doc["ratios"]:
        if (ratio["op"], ratio["concurrency"]) in published_ratios:
            assert isinstance(ratio["vs_previous"]["convdb_over_pgbench"], NUMBER)
        else:
            assert ratio["vs_previous"]["convdb_over_pgbench"] is None
    assert any(ratio["previous"] is not None for ratio in doc["ratios"])


@pytest.mark.parametrize("op", [*OPS, *EXTRA_OPS])
def test_pgbench_scripts_bind_every_parameter(op: str) -> None:
    script = script_for(op, 2_000_000, 64, 8)
    assert "$" not in script.text  # every $n became a pgbench variable or NULL
    for line in script.text.splitlines():
        for name in (token[1:].rstrip(";,)") for token in line.split() if token.startswith(":")):
            if name and name[0].isalpha() and name not in {"client_id", "cid", "uid", "first_seq"}:
                assert name.split("::")[0] in script.variables or name.startswith("s"), (op, name)


def _row(system: str, op: str, c: int, ops: float | None) -> Row:
    cell = Cell(ops, 1.0, 2.0, calls=10) if ops is not None else Cell.failed("unsupported: none")
    return Row(system, op, c, cell, None, [cell])


def _doc(
    figures: dict[tuple[str, str, int], float | None], previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    rows = [_row(s, op, c, v) for (s, op, c), v in figures.items()]
    meta = {"commit": "abc", "mode": "default", "started": "then"}
    return report.document(meta, rows, [], previous, "benchmarks/results/default.json")


def test_ratio_to_the_previous_run_in_json_and_text() -> None:
    before = _doc(
        {
            ("convdb", "append", 1): 1_000.0,
            ("pgbench", "append", 1): 2_000.0,
            ("asyncpg-raw", "append", 1): 1_000.0,
            ("langchain-postgres", "append", 1): 800.0,
            ("convdb", "history_50", 1): 500.0,
            ("pgbench", "history_50", 1): 1_000.0,
        }
    )
    # This run: append got faster against pgbench (0.5 -> 0.6), history_50 regressed (0.5 -> 0.4),
    # and turn is new (no previous figure to compare with).
    now = _doc(
        {
            ("convdb", "append", 1): 1_200.0,
            ("pgbench", "append", 1): 2_000.0,
            ("asyncpg-raw", "append", 1): 1_000.0,
            ("langchain-postgres", "append", 1): 800.0,
            ("convdb", "history_50", 1): 400.0,
            ("pgbench", "history_50", 1): 1_000.0,
            ("convdb", "turn", 1): 300.0,
            ("pgbench", "turn", 1): 600.0,
        },
        before,
    )
    assert now["meta"]["previous_run"] == {
        "source": "benchmarks/results/default.json",
        "commit": "abc",
        "mode": "default",
        "started": "then",
    }
    ratios = {(r["op"], r["concurrency"]): r for r in now["ratios"]}
    append = ratios[("append", 1)]
    assert append["previous"]["convdb_over_pgbench"] == 0.5
    assert append["vs_previous"]["convdb_over_pgbench"] == 1.2
    assert append["vs_previous"]["convdb_over_asyncpg_raw"] == 1.2
    assert append["vs_previous"]["convdb_over_best_peer"] == 1.2
    assert ratios[("history_50", 1)]["vs_previous"]["convdb_over_pgbench"] == 0.8
    assert ratios[("turn", 1)]["previous"] is None
    assert ratios[("turn", 1)]["vs_previous"]["convdb_over_pgbench"] is None
    rows = {(r["system"], r["op"]): r for r in now["results"]}
    assert rows[("convdb", "append")]["vs_previous"] == 1.2
    assert rows[("convdb", "turn")]["vs_previous"] is None

    text = report.text(now)
    table = text.split("against the previous published run", 1)[1].split("\n\n", 1)[0]
    lines = {line.split()[0]: line for line in table.splitlines()[3:]}
    assert "0.60 (1.20×)" in lines["append"]
    assert "0.40 (0.80×)" in lines["history_50"]
    assert "(" not in lines["turn"].split()[3]  # new op: the figure alone
    # Without a previous run there is no comparison at all.
    alone = _doc({("convdb", "append", 1): 1.0, ("pgbench", "append", 1): 2.0})
    assert "previous_run" not in alone["meta"]
    assert "vs_previous" not in alone["results"][0]
    assert "against the previous" not in report.text(alone)


def test_previous_run_missing_or_unreadable_is_no_comparison(tmp_path: Path) -> None:
    assert report.read_previous(tmp_path / "absent.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert report.read_previous(tmp_path / "bad.json") is None
    (tmp_path / "other.json").write_text('{"meta": {}}')
    assert report.read_previous(tmp_path / "other.json") is None
    published = report.read_previous(ROOT / "benchmarks" / "results" / "default.json")
    assert published is not None
    assert published["meta"]["mode"] == "default"


def test_modes_default_is_short_and_thorough_keeps_the_long_cells() -> None:
    default, thorough = MODES["default"], MODES["thorough"]
    # The default's cells (warm-up + measured) are well under the thorough run's.
    assert (default.timing.warmup_s + default.timing.duration_s) * 3 <= (
        thorough.timing.warmup_s + thorough.timing.duration_s
    )
    assert default.repeats >= 3
    assert thorough.timing.duration_s == 2.0
    assert MODES["full"].timing == thorough.timing
    assert MODES["full"].layout.table_sizes
    assert not default.layout.table_sizes


def test_batch_anatomy_scripts_are_complete_and_add_one_feature_at_a_time() -> None:
    from benchmarks.batch_anatomy import _TABLES, variants

    groups = dict(variants())
    assert set(groups) == {"batch of 100", "single append"}
    for group, found in groups.items():
        for variant in found:
            assert "$" not in variant.script, (group, variant.name)  # every parameter bound
            names = {
                token.split("::")[0].strip(";,)") for token in variant.script.split() if token[:1] == ":"
            }
            for name in names - {":cid", ":uid", ":n", ":base", ":first_seq", ":client_id"}:
                bare = name[1:].split("::")[0]
                assert bare in variant.variables or bare.startswith("s"), (variant.name, name)
        steps = [v.name for v in found if v.name.startswith("+")]
        assert steps[0] == "+ foreign key"
        assert steps[-1].startswith("+ seq reservation = convdb's")
    # The last step runs convdb's own statements, on messages itself.
    batch = groups["batch of 100"]
    convdb_batch = next(v for v in batch if v.name.startswith("+ seq reservation"))
    assert "UPDATE conversations" in convdb_batch.script
    assert convdb_batch.script.count("INSERT INTO messages") == 100
    # Each feature table is created once, from messages' own definition.
    assert all("LIKE messages" in ddl for ddl in _TABLES.values())


def test_goals_are_judged_from_the_runs_own_ratios_in_json_and_text() -> None:
    doc = _doc(
        {
            ("convdb", "append", 1): 1_300.0,
            ("pgbench", "append", 1): 2_000.0,  # 0.65 < 0.85: missed
            ("langchain-postgres", "append", 1): 1_000.0,  # 1.3 >= 1.2: met
            ("convdb", "history_50", 8): 600.0,
            ("pgbench", "history_50", 8): 1_000.0,  # 0.6 >= 0.5 at c=8: met
            ("convdb", "turn_two_calls", 1): 10.0,  # no goal for it
        }
    )
    judged = {(g["op"], g["concurrency"], g["measure"]): g for g in doc["goals"]}
    assert judged[("append", 1, "convdb_over_pgbench")]["met"] is False
    assert judged[("append", 1, "convdb_over_pgbench")]["target"] == 0.85
    assert judged[("append", 1, "convdb_over_best_peer")]["met"] is True
    assert judged[("append", 1, "convdb_over_best_peer")]["best_peer"] == "langchain-postgres"
    assert judged[("history_50", 8, "convdb_over_pgbench")] == {
        "op": "history_50",
        "concurrency": 8,
        "measure": "convdb_over_pgbench",
        "target": 0.5,
        "measured": 0.6,
        "met": True,
        "best_peer": None,
    }
    assert ("history_50", 8, "convdb_over_best_peer") not in judged  # no peer measured
    assert not any(g["op"] == "turn_two_calls" for g in doc["goals"])
    table = report.text(doc).split("the goals (issue 14)", 1)[1].split("\n\n", 1)[0]
    assert any("append" in line and "0.65" in line and "MISSED" in line for line in table.splitlines())
    assert any("history_50" in line and "0.60" in line and "met" in line for line in table.splitlines())


def test_instruction_scripts_compare_the_shipped_statements_with_the_predicate_cut_out() -> None:
    from benchmarks.check_instructions import append_script, history_script
    from benchmarks.retention_cost import LIVE, LIVE_BARE, without_predicate
    from convdb.sql import QUERIES

    for name, script in (("save_message", append_script), ("get_history", history_script)):
        shipped, cut = QUERIES[name], without_predicate(QUERIES[name])
        assert LIVE in shipped or LIVE_BARE in shipped, f"{name} fails closed in SQL"
        assert LIVE not in cut and LIVE_BARE not in cut
        # Nothing but the predicate is cut: the rest of the statement is the same.
        assert len(shipped) - len(cut) in {
            len(LIVE) + len("\n   AND "),
            len(LIVE_BARE) + len("\n       AND "),
        }
        text = script(30, cut)
        lines = text.splitlines()
        # Single-user mode reads one statement per line: PREPARE, then one EXECUTE per call.
        assert lines[0].startswith("PREPARE ") and "\n" not in lines[0]
        assert len(lines) == 31
        assert all(line.startswith("EXECUTE ") for line in lines[1:])
