"""CI's short run of the load-with-faults consistency check (tools/loadcheck.py).

The full run: ``python -m tools.loadcheck`` (100,000 operations, 64 tasks). This one keeps the
shape (64 tasks, many users, kills, cancellations, a restart) at a few thousand operations.
"""

from __future__ import annotations

import pytest

from tests.support.fix_server import Server
from tools.loadcheck import LoadConfig, run, summary


@pytest.mark.guarantee(2, 3, 4, 8)
async def test_short_load_with_faults_passes_the_consistency_check(
    controlled_server: Server, controlled_dsn: str
) -> None:
    config = LoadConfig(
        ops=4_000,
        concurrency=64,
        users=25,
        conversations=150,
        pool_size=12,
        kill_every=250,
        cancel_rate=0.05,
        restarts=1,
        progress=False,
    )
    report = await run(config, controlled_dsn, controlled_server.embedded)
    print("\n" + summary(report))
    assert report.ok, report.problems[:20]
    assert report.operations == config.ops
    assert report.restarts == 1 and report.kills > 0 and report.cancellations > 0
    assert report.acknowledged_messages > 0 and report.foreign_refused > 0
