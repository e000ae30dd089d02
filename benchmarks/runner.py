"""The run: prepare every system, then the interleaved matrix, then the scaling sweeps."""

from __future__ import annotations

import gc
import statistics
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from . import seed as seeding
from .config import Mode
from .measure import Cell, Timing, describe, median_cell
from .progress import Progress
from .registry import Broken, display_name, load
from .systems.base import Context, System
from .workload import EXTRA_OPS, HISTORY_LENGTH, OPS, WORK_SEED_LENGTH

# Systems that run convdb's SQL on convdb's tables; the others are peers with their own tables.
CONVDB_FAMILY = ("convdb", "asyncpg-raw", "pgbench")
FILLER_BASE = 5_000_000  # keys of the conversations that grow the table in the --full sweep


@dataclass
class Row:
    system: str
    op: str
    concurrency: int
    cell: Cell
    note: str | None
    repeats: list[Cell] = field(default_factory=list)


@dataclass
class ScalingPoint:
    system: str
    messages_in_conversation: int
    total_messages: int
    p50_ms: float | None
    error: str | None = None
    # "counted": rows in convdb's messages table at the time; "seeded": what the peer was seeded with
    # (peers keep their own tables, grown a little further by their own appends).
    total_messages_source: str = "counted"


def ops_of(name: str) -> tuple[str, ...]:
    return (*OPS, *EXTRA_OPS) if name in CONVDB_FAMILY else OPS


def seeded_total(ctx: Context, name: str) -> int:
    layout = ctx.layout
    limit = None if name in CONVDB_FAMILY else layout.peer_scaling_max
    total = layout.history_conversations * HISTORY_LENGTH + 2 * layout.work_conversations * WORK_SEED_LENGTH
    total += sum(
        layout.scaling_conversations * n for n in layout.scaling_lengths if limit is None or n <= limit
    )
    return total


async def prepare(ctx: Context, names: list[str], quiet: bool) -> list[System]:
    """Seed convdb's tables, then let each system prepare itself; failures become Broken systems."""
    layout = ctx.layout
    total = seeded_total(ctx, "convdb") if any(n in CONVDB_FAMILY for n in names) else 0
    total += sum(seeded_total(ctx, n) for n in names if n not in CONVDB_FAMILY)
    systems: list[System] = []
    with Progress(total, "seeding", "msg", enabled=not quiet) as bar:
        ctx.progress = lambda label, n: bar.update(n, label)
        if any(n in CONVDB_FAMILY for n in names):
            plan = [
                (layout.history_keys(), HISTORY_LENGTH),
                (layout.work_keys(), WORK_SEED_LENGTH),
                (layout.turn_keys(), WORK_SEED_LENGTH),
            ]
            plan += [(layout.scaling_keys(n), n) for n in layout.scaling_lengths]
            for keys, length in plan:
                await seeding.seed_conversations(ctx.db.dsn, keys, length, lambda n: bar.update(n, "convdb"))
        for name in names:
            try:
                system = load(name, ctx)
                if name not in CONVDB_FAMILY:
                    await system.prepare()
            except Exception as exc:
                system = Broken(
                    ctx,
                    name,
                    f"failed to {'import' if isinstance(exc, ImportError) else 'set up'}: {describe(exc)}",
                )
                print(f"{name}: {system.error}", file=sys.stderr)
            systems.append(system)
    # Every peer's library lives in this one process; without this, a full garbage collection
    # scans all of them (measured ~180 ms pauses) and lands on whichever system allocates most.
    # Freezing what exists after set-up keeps each system's pauses to its own garbage.
    gc.collect()
    gc.freeze()
    return systems


def cell_plan(
    systems: list[System], concurrencies: list[int], repeats: int, only: Sequence[str] | None = None
) -> list[tuple[int, str, int, System]]:
    """Every (repeat, op, concurrency, system), systems interleaved and their order rotated;
    ``only``: these ops (in this order) where the systems have them (the --citus run's)."""
    plan = []
    ops = list(dict.fromkeys(op for s in systems for op in ops_of(display_name(s))))
    if only is not None:
        ops = [op for op in only if op in ops]
    for repeat in range(repeats):
        for op_index, op in enumerate(ops):
            for c in concurrencies:
                takers = [s for s in systems if op in ops_of(display_name(s))]
                shift = (repeat + op_index) % len(takers)
                for system in takers[shift:] + takers[:shift]:
                    plan.append((repeat, op, c, system))
    return plan


async def run_matrix(
    systems: list[System],
    concurrencies: list[int],
    mode: Mode,
    quiet: bool,
    ops: Sequence[str] | None = None,
) -> list[Row]:
    plan = cell_plan(systems, concurrencies, mode.repeats, ops)
    cells: dict[tuple[str, str, int], list[Cell]] = {}
    notes: dict[tuple[str, str, int], str | None] = {}
    with Progress(len(plan), "measuring", "cell", enabled=not quiet) as bar:
        for repeat, op, c, system in plan:
            name = display_name(system)
            seed = zlib.crc32(f"{repeat}/{op}/{c}".encode())  # same calls for every system
            try:
                cell, note = await system.measure(op, c, mode.timing, seed)
            except Exception as exc:
                cell, note = Cell.failed(describe(exc)), None
            cells.setdefault((name, op, c), []).append(cell)
            notes[(name, op, c)] = note
            bar.update(1, f"{name} {op} c={c}")
    return [
        Row(name, op, c, median_cell(found), notes[(name, op, c)], found)
        for (name, op, c), found in cells.items()
    ]


async def _history_p50(system: System, keys: list[int], timing: Timing) -> tuple[float | None, str | None]:
    cell, _ = await system.measure("history_50", 1, timing, 7, keys=keys)
    return cell.p50_ms, cell.error


async def run_scaling(ctx: Context, systems: list[System], mode: Mode, quiet: bool) -> list[ScalingPoint]:
    """history_50 latency (c=1) against conversation length, per system."""
    layout = ctx.layout
    points: list[ScalingPoint] = []
    jobs = [
        (s, n)
        for n in layout.scaling_lengths
        for s in systems
        if display_name(s) in CONVDB_FAMILY or n <= layout.peer_scaling_max
    ]
    counted = await _count_messages(ctx.db.dsn)
    with Progress(len(jobs), "scaling", "cell", enabled=not quiet) as bar:
        for system, length in jobs:
            name = display_name(system)
            family = name in CONVDB_FAMILY
            samples = []
            error = None
            for _ in range(mode.repeats):
                p50, error = await _history_p50(system, layout.scaling_keys(length), mode.scaling_timing)
                if p50 is not None:
                    samples.append(p50)
            points.append(
                ScalingPoint(
                    name,
                    length,
                    counted if family else seeded_total(ctx, name),
                    statistics.median(samples) if samples else None,
                    None if samples else error,
                    "counted" if family else "seeded",
                )
            )
            bar.update(1, f"{name} {length}")
    return points


async def run_table_sizes(ctx: Context, systems: list[System], mode: Mode, quiet: bool) -> list[ScalingPoint]:
    """--full: grow convdb's messages table to each size, re-measure history_50 at 1k and the longest."""
    layout = ctx.layout
    family = [s for s in systems if display_name(s) in CONVDB_FAMILY]
    longest = max(layout.scaling_lengths)
    points: list[ScalingPoint] = []
    next_key = FILLER_BASE
    for target in layout.table_sizes:
        current = await _count_messages(ctx.db.dsn)
        missing = max(0, target - current)
        filler = (missing + HISTORY_LENGTH - 1) // HISTORY_LENGTH
        with Progress(
            filler * HISTORY_LENGTH, f"growing table to {target:,}", "msg", enabled=not quiet
        ) as bar:
            keys = list(range(next_key, next_key + filler))
            next_key += filler
            if keys:
                await seeding.seed_conversations(ctx.db.dsn, keys, HISTORY_LENGTH, bar.update)
        total = await _count_messages(ctx.db.dsn)
        for system in family:
            # A dict: when the longest sweep length is the history length, it is measured once.
            sweeps = {HISTORY_LENGTH: layout.history_keys(), longest: layout.scaling_keys(longest)}
            for length, keys in sweeps.items():
                samples = [
                    p
                    for p, _ in [
                        await _history_p50(system, keys, mode.scaling_timing) for _ in range(mode.repeats)
                    ]
                    if p is not None
                ]
                points.append(
                    ScalingPoint(
                        display_name(system),
                        length,
                        total,
                        statistics.median(samples) if samples else None,
                        None if samples else "no sample",
                    )
                )
    return points


async def _count_messages(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        value: Any = await conn.fetchval("SELECT count(*) FROM messages")
        return int(value)
    finally:
        await conn.close()


async def teardown(systems: list[System]) -> None:
    for system in systems:
        try:
            await system.teardown()
        except Exception as exc:
            print(f"{display_name(system)} teardown: {describe(exc)}", file=sys.stderr)
