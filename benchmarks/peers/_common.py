"""What several peers share: SQLAlchemy engines sized like the other systems' pools, seeding loops."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ..systems.base import Context


def async_engine(url: str, concurrency: int) -> Any:
    """A SQLAlchemy async engine with exactly ``concurrency`` pooled connections, like every system."""
    from sqlalchemy.ext.asyncio import create_async_engine

    return create_async_engine(url, pool_size=concurrency, max_overflow=0)


def seeding_plan(ctx: Context) -> list[tuple[list[int], int]]:
    """(keys, messages per conversation) for everything a peer seeds: history, work, scaling."""
    from ..workload import HISTORY_LENGTH, WORK_SEED_LENGTH

    layout = ctx.layout
    plan = [
        (layout.history_keys(), HISTORY_LENGTH),
        (layout.work_keys(), WORK_SEED_LENGTH),
        (layout.turn_keys(), WORK_SEED_LENGTH),
    ]
    for length in layout.scaling_lengths:
        if length <= layout.peer_scaling_max:
            plan.append((layout.scaling_keys(length), length))
    return plan


async def seed_all(ctx: Context, label: str, seed_one: Callable[[int, int], Awaitable[None]]) -> None:
    """Call ``seed_one(key, length)`` for every conversation of the plan, reporting progress."""
    for keys, length in seeding_plan(ctx):
        for key in keys:
            await seed_one(key, length)
            ctx.progress(label, length)


def chunks(total: int, size: int) -> Iterable[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(size, total - start)
