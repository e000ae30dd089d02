"""``python -m benchmarks.citus_forms`` runs on a local Citus cluster and reports what it claims:
the plan Citus chose for each spelling of an append (from its own EXPLAIN) and a time per call.

Needs the Citus installation on the machine (``bash .ci/citus.sh``); without one it fails saying
so. Part of the suite's Citus run (make test-citus), not of the single-node one. No assertion on speed: only on the plans, which do not depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fix_server import ROOT


@pytest.mark.engine_specific("citus", "starts a local Citus cluster from the installation")
def test_citus_forms_report_each_plan_and_refuse_another_users_conversation(tmp_path: Path) -> None:
    out = tmp_path / "forms.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.citus_forms", "--calls", "5", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, f"needs Citus (bash .ci/citus.sh): {result.stderr[-3000:]}"
    rows = {r["form"]: r for r in json.loads(out.read_text())["rows"]}
    # convdb's statement is the two-step "pull to coordinator" plan this script exists to show...
    assert (
        "pull to coordinator"
        in rows["CTE UPDATE -> INSERT ... SELECT (save_message before schema 9)"]["citus_plan"]
    )
    assert "pull to coordinator" in rows["convdb's save_message as shipped (schema 9)"]["citus_plan"]
    # ...and the delegated function one task on the conversation's worker, like a bare UPDATE.
    assert rows["delegated PL/pgSQL function"]["citus_plan"] == "Task Count: 1"
    assert rows["the UPDATE alone (reference)"]["citus_plan"] == "Task Count: 1"
    for row in rows.values():
        assert row["citus_ms"] > 0
        assert row["single_ms"] > 0
        # Every form keeps the ownership check: another user's conversation gets no row.
        assert row["other_user_rows"] == 0, row
