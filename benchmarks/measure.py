"""One measurement cell: a system running one operation at one concurrency for a fixed time."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from .workload import Picker

OpFn = Callable[[int], Awaitable[object]]


@dataclass(frozen=True)
class Timing:
    warmup_s: float
    duration_s: float


@dataclass(frozen=True)
class Cell:
    """The figures of one run of one cell; ``error`` says why there are none (or what failed)."""

    ops_per_s: float | None
    p50_ms: float | None
    p99_ms: float | None
    calls: int = 0
    failed_calls: int = 0
    error: str | None = None
    # This process's CPU time per call (µs), warm-up included: the client-side cost, which on a
    # shared machine is steadier than wall-clock figures. None for external programs (pgbench).
    client_cpu_us: float | None = None

    @classmethod
    def failed(cls, error: str) -> Cell:
        return cls(None, None, None, error=error)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def summarise(latencies_s: list[float], completed: int, duration_s: float, failures: list[str]) -> Cell:
    if not latencies_s:
        return Cell.failed(failures[0] if failures else "no call completed within the cell's duration")
    ordered = sorted(latencies_s)
    error = None
    if failures:
        error = f"{len(failures)} of {len(failures) + completed} calls failed; first: {failures[0]}"
    return Cell(
        ops_per_s=completed / duration_s,
        p50_ms=percentile(ordered, 50) * 1000,
        p99_ms=percentile(ordered, 99) * 1000,
        calls=completed,
        failed_calls=len(failures),
        error=error,
    )


def describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


async def run_workers(fn: OpFn, keys: Sequence[int], concurrency: int, timing: Timing, seed: int) -> Cell:
    """``concurrency`` tasks call ``fn`` back to back on random conversations of their own slice.

    Calls started during the warm-up are discarded. A call counts when it starts inside the
    measured window; workers start no call after the window ends, except that each worker gets at
    least one counted call, so an operation slower than the window still gets a figure. Throughput
    is counted calls over the time from the window's start to the last counted completion.
    """
    loop = asyncio.get_running_loop()
    cpu_start = time.process_time()
    calls_total = 0
    window_start = loop.time() + timing.warmup_s
    window_end = window_start + timing.duration_s
    latencies: list[float] = []
    failures: list[str] = []
    last_done = window_start

    async def worker(index: int) -> None:
        nonlocal last_done, calls_total
        pick = Picker(list(keys), index, concurrency, random.Random(seed * 1_000 + index))
        counted = 0
        while True:
            now = loop.time()
            if now >= window_end and counted:
                return
            measured = now >= window_start
            key = pick()
            began = time.perf_counter()
            calls_total += 1
            try:
                await fn(key)
            except Exception as exc:
                if measured:
                    failures.append(describe(exc))
                    counted += 1
                continue
            if measured:
                latencies.append(time.perf_counter() - began)
                counted += 1
                last_done = max(last_done, loop.time())

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    cell = summarise(latencies, len(latencies), max(last_done - window_start, 1e-9), failures)
    cpu_us = (time.process_time() - cpu_start) / max(1, calls_total) * 1e6
    return dataclasses.replace(cell, client_cpu_us=cpu_us) if cell.ops_per_s is not None else cell


def median_cell(cells: Sequence[Cell]) -> Cell:
    """Median of each figure across repeats (each figure on its own, as is usual)."""
    good = [c for c in cells if c.ops_per_s is not None]
    if not good:
        return cells[0] if cells else Cell.failed("not run")
    errors = [c.error for c in cells if c.error]
    cpu = [c.client_cpu_us for c in good if c.client_cpu_us is not None]
    return Cell(
        ops_per_s=statistics.median(c.ops_per_s for c in good if c.ops_per_s is not None),
        p50_ms=statistics.median(c.p50_ms for c in good if c.p50_ms is not None),
        p99_ms=statistics.median(c.p99_ms for c in good if c.p99_ms is not None),
        calls=sum(c.calls for c in cells),
        failed_calls=sum(c.failed_calls for c in cells),
        error=errors[0] if errors else None,
        client_cpu_us=statistics.median(cpu) if cpu else None,
    )
