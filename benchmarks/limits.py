"""What limits each operation: CPU per call on each side, for the goals the default run misses (issue 14).

    python -m benchmarks.limits [--dsn DSN] [--seconds 2] [--repeats 3] [--json FILE]

The default run gives throughput ratios; this gives the costs behind them. For every hot-path
operation at concurrency 1 and 8 it runs convdb, asyncpg-raw (the same SQL through a bare asyncpg
pool: no convdb code), pgbench (the same SQL from C) and langchain-postgres (the best peer on
writes), interleaved and repeated, and for each cell records, next to the ops/s:

- the client's CPU per call: this process's CPU time (``time.process_time``) for the Python
  systems, the children's (``RUSAGE_CHILDREN``) for pgbench, which runs as a subprocess;
- the server's CPU per call: the postmaster and all its processes from ``/proc`` (the embedded
  server runs on this machine), so another process's turn on a shared core is not charged to it;
- the cores each side kept busy at the measured rate (CPU per call × calls per second): the
  client's near 1.0 means the one Python thread is the limit, client and server together near
  ``cores`` means the machine is, and well below both means the calls wait (round trips, commits).

No warm-up inside a cell (the pool is opened before the counters are read, so connection set-up
is not charged to the calls; pgbench's few connections are, a few ms per cell): every call made
is a counted call, which makes the per-call division exact.

From these it derives, per operation and concurrency, what a goal needs: at concurrency 8 on
``cores`` cores a system is CPU-bound, so its ceiling is ``min(1e6 / client_us, cores * 1e6 /
(client_us + server_us))`` (one Python process runs on one core at a time); the client CPU per call
that the goal's throughput would allow is ``cores * 1e6 / goal_ops - server_us``. At concurrency 1
every call waits for its own round trips: the wall time per call that the goal allows is compared
with the client CPU per call, the part of a call's time no server change can remove.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import runner, server
from .batch_anatomy import _admin, postmaster_pid, server_children, server_cpu_s
from .config import MODES
from .measure import Cell, Timing, describe, run_workers
from .meta import load_average
from .registry import display_name
from .systems.base import Context, System, Unsupported
from .systems.pgbench_system import PgbenchSystem

SYSTEMS = ("convdb", "asyncpg-raw", "pgbench", "langchain-postgres")
OPS = ("append", "append_batch_10", "append_batch_100", "history_50", "get_or_create", "turn")
LEVELS = (1, 8)

#: The goals of issue 14 against pgbench (the ones against the best peer are ``BEST_PEER_GOAL``).
PGBENCH_GOAL = {
    ("append", 1): 0.85,
    ("append", 8): 0.85,
    ("append_batch_10", 1): 0.85,
    ("append_batch_10", 8): 0.85,
    ("append_batch_100", 1): 0.85,
    ("append_batch_100", 8): 0.85,
    ("history_50", 1): 0.6,
    ("get_or_create", 1): 0.6,
    ("turn", 1): 0.6,
    ("history_50", 8): 0.5,
    ("get_or_create", 8): 0.5,
    ("turn", 8): 0.5,
}
BEST_PEER_GOAL = 1.2


@dataclass(frozen=True)
class Sample:
    ops_per_s: float
    calls: int
    client_us: float
    server_us: float


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def sample(system: System, op: str, c: int, seconds: float, seed: int, postmaster: int) -> Sample | str:
    """One cell with its CPU counters, or the reason it has no figures."""
    timing = Timing(0.0, seconds)
    if isinstance(system, PgbenchSystem):
        backends = len(server_children(postmaster))
        before = (time.process_time(), _children_cpu_s(), server_cpu_s(postmaster))
        cell, _ = await system.measure(op, c, timing, seed)
        client_cpu_s = _children_cpu_s() - before[1]
        # pgbench's backends exit as it does: wait until the server has reaped them, so their
        # CPU is in the postmaster's children counters and not lost between the two reads.
        deadline = time.monotonic() + 5
        while len(server_children(postmaster)) > backends and time.monotonic() < deadline:  # noqa: ASYNC110 - polls /proc
            await asyncio.sleep(0.01)
        server_s = server_cpu_s(postmaster) - before[2]
    else:
        try:
            fn = system.operation(op).fn
        except Unsupported as exc:
            return f"unsupported: {exc}"
        await system.open(c)
        try:
            before = (time.process_time(), _children_cpu_s(), server_cpu_s(postmaster))
            try:
                cell = await run_workers(fn, system.keys_for(op), c, timing, seed)
            except Exception as exc:
                cell = Cell.failed(describe(exc))
            # Read before close: a backend that has exited but is not yet reaped is in neither
            # of the server's counters.
            client_cpu_s = time.process_time() - before[0]
            server_s = server_cpu_s(postmaster) - before[2]
        finally:
            await system.close()
    if cell.ops_per_s is None or not cell.calls:
        return cell.error or "no calls"
    return Sample(cell.ops_per_s, cell.calls, client_cpu_s / cell.calls * 1e6, server_s / cell.calls * 1e6)


def _median(samples: list[Sample]) -> dict[str, float]:
    return {
        "ops_per_s": round(statistics.median(s.ops_per_s for s in samples), 1),
        "client_us": round(statistics.median(s.client_us for s in samples), 1),
        "server_us": round(statistics.median(s.server_us for s in samples), 1),
        "calls": sum(s.calls for s in samples),
    }


def derive(cells: dict[str, dict[str, float]], op: str, c: int, cores: int) -> dict[str, Any]:
    """What limits convdb on (op, c), and what each goal would need, from one run's medians."""
    mine, pg = cells.get("convdb"), cells.get("pgbench")
    out: dict[str, Any] = {"op": op, "concurrency": c}
    if mine is None:
        return out
    total = mine["client_us"] + mine["server_us"]
    out["convdb_cpu_us"] = round(total, 1)
    # Cores kept busy at the measured rate: the client's (one Python thread: 1.0 is its whole
    # core, the ceiling of a client-bound run) and the client's and server's together (``cores``
    # is the ceiling of a CPU-bound one). Well below both: the calls wait (round trips, commits).
    out["client_busy"] = round(mine["client_us"] * mine["ops_per_s"] / 1e6, 2)
    out["cpu_busy"] = round(total * mine["ops_per_s"] / 1e6, 2)
    out["client_share"] = round(mine["client_us"] / total, 2) if total else None
    if c > 1:
        out["cpu_ceiling_ops"] = round(min(1e6 / mine["client_us"], cores * 1e6 / total), 1)
    raw = cells.get("asyncpg-raw")
    if raw is not None:
        out["convdb_over_raw"] = round(mine["ops_per_s"] / raw["ops_per_s"], 2)
    if pg is not None and (op, c) in PGBENCH_GOAL:
        goal = PGBENCH_GOAL[(op, c)]
        out["pgbench_goal"] = goal
        out["convdb_over_pgbench"] = round(mine["ops_per_s"] / pg["ops_per_s"], 2)
        out["pgbench_cpu_us"] = round(pg["client_us"] + pg["server_us"], 1)
        out["pgbench_cpu_busy"] = round((pg["client_us"] + pg["server_us"]) * pg["ops_per_s"] / 1e6, 2)
        goal_ops = goal * pg["ops_per_s"]
        if c > 1:
            # CPU-bound: the goal's rate leaves this much CPU per call for the client.
            out["client_us_allowed"] = round(cores * 1e6 / goal_ops - mine["server_us"], 1)
        else:
            # Serial: the goal's wall time per call, against the call's own client CPU.
            out["wall_us_allowed"] = round(1e6 / goal_ops, 1)
            out["wall_us_now"] = round(1e6 / mine["ops_per_s"], 1)
    peer = cells.get("langchain-postgres")
    if peer is not None and op.startswith("append"):
        out["convdb_over_peer"] = round(mine["ops_per_s"] / peer["ops_per_s"], 2)
        out["peer_server_us"] = peer["server_us"]
        out["peer_client_us"] = peer["client_us"]
    return out


async def run(args: argparse.Namespace, admin: str) -> dict[str, Any]:
    mode = MODES["quick"] if args.seconds < 1 else MODES["default"]
    db = await server.create_database(admin)
    try:
        ctx = Context(db, mode.layout)
        systems = await runner.prepare(ctx, list(args.systems), quiet=True)
        postmaster = await asyncio.to_thread(postmaster_pid, db.dsn)
        load_before = load_average()
        samples: dict[tuple[str, str, int], list[Sample]] = {}
        errors: dict[str, str] = {}
        for repeat in range(args.repeats):
            for op in args.ops:
                for c in LEVELS:
                    order = systems[repeat % len(systems) :] + systems[: repeat % len(systems)]
                    for system in order:
                        name = display_name(system)
                        got = await sample(system, op, c, args.seconds, repeat * 100 + c, postmaster)
                        if isinstance(got, str):
                            errors[f"{name} {op} c={c}"] = got
                        else:
                            samples.setdefault((name, op, c), []).append(got)
        await runner.teardown(systems)
        info = await server.server_info(db.dsn)
    finally:
        await server.drop_database(db)
    cores = os.cpu_count() or 1
    cells: list[dict[str, Any]] = [
        {"system": s, "op": op, "concurrency": c, **_median(found)} for (s, op, c), found in samples.items()
    ]
    derived = []
    for op in args.ops:
        for c in LEVELS:
            by_system = {r["system"]: r for r in cells if r["op"] == op and r["concurrency"] == c}
            derived.append(derive(by_system, op, c, cores))
    return {
        "meta": {
            "postgres": info["postgres"],
            "server_settings": info["server_settings"],
            "cores": cores,
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "seconds": args.seconds,
            "repeats": args.repeats,
        },
        "cells": cells,
        "derived": derived,
        "errors": errors,
    }


def text(doc: dict[str, Any]) -> str:
    lines = ["CPU per call (medians; client = the calling process, server = the whole server)", ""]
    lines.append(f"{'op':<17} {'c':>2} {'system':<19} {'ops/s':>9} {'client us':>10} {'server us':>10}")
    for r in doc["cells"]:
        lines.append(
            f"{r['op']:<17} {r['concurrency']:>2} {r['system']:<19} {r['ops_per_s']:>9,.1f} "
            f"{r['client_us']:>10,.1f} {r['server_us']:>10,.1f}"
        )
    lines += ["", "what each goal needs (convdb)", ""]
    for d in doc["derived"]:
        parts = [f"{d['op']} c={d['concurrency']}:"]
        for key in (
            "convdb_over_pgbench",
            "pgbench_goal",
            "convdb_over_raw",
            "convdb_cpu_us",
            "pgbench_cpu_us",
            "client_share",
            "client_busy",
            "cpu_busy",
            "pgbench_cpu_busy",
            "cpu_ceiling_ops",
            "client_us_allowed",
            "wall_us_now",
            "wall_us_allowed",
            "convdb_over_peer",
            "peer_server_us",
            "peer_client_us",
        ):
            if key in d:
                parts.append(f"{key}={d[key]}")
        lines.append(" ".join(parts))
    if doc["errors"]:
        lines += ["", "cells without figures:"] + [f"  {k}: {v}" for k, v in doc["errors"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.limits", description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", help="a server on this machine (default: an embedded PostgreSQL)")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per cell")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ops", type=lambda s: tuple(s.split(",")), default=OPS)
    parser.add_argument("--systems", type=lambda s: tuple(s.split(",")), default=SYSTEMS)
    parser.add_argument("--json", dest="json_path", metavar="FILE")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.ops) - set(OPS))
    if unknown:
        parser.error(f"unknown ops: {', '.join(unknown)}; choose from {', '.join(OPS)}")
    with _admin(args.dsn) as admin:
        doc = asyncio.run(run(args, admin))
    sys.stdout.write(text(doc))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
