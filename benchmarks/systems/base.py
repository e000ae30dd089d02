"""What every benchmarked system provides, and the shared context it is given."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from ..measure import Cell, OpFn, Timing, describe, run_workers
from ..server import BenchDatabase
from ..workload import Layout


class Unsupported(Exception):
    """The system cannot do this operation at all; the message says why and what users do instead."""


@dataclass
class Context:
    db: BenchDatabase
    layout: Layout
    progress: Callable[[str, int], None] = field(default=lambda label, n: None)


@dataclass(frozen=True)
class Operation:
    """An operation as this system's users would run it; ``note`` says where that differs from the op."""

    fn: OpFn
    note: str | None = None


class System(abc.ABC):
    """A store measured through its own public API.

    Lifecycle: ``prepare`` once (tables, seed data), then per cell ``open(concurrency)``,
    ``measure``, ``close``; ``teardown`` at the end.
    """

    name: ClassVar[str]

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def prepare(self) -> None:  # noqa: B027  (optional hook: convdb's family is seeded in SQL)
        """Create tables and seed this system's copy of the workload's conversations."""

    @abc.abstractmethod
    async def open(self, concurrency: int) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def teardown(self) -> None:  # noqa: B027  (optional hook)
        """Release anything ``prepare`` created that outlives cells."""

    @abc.abstractmethod
    def operation(self, op: str) -> Operation:
        """The callable for ``op``; raises ``Unsupported`` when the system cannot do it."""

    def versions(self) -> dict[str, str]:
        """Versions of the packages this system is measured through."""
        return {}

    def keys_for(self, op: str) -> list[int]:
        if op == "history_50":
            return self.ctx.layout.history_keys()
        if op.startswith("turn"):
            return self.ctx.layout.turn_keys()
        return self.ctx.layout.work_keys()

    async def measure(
        self, op: str, concurrency: int, timing: Timing, seed: int, keys: list[int] | None = None
    ) -> tuple[Cell, str | None]:
        """Run one cell (on ``keys``, default the op's own); returns the figures and the op's note."""
        try:
            operation = self.operation(op)
        except Unsupported as exc:
            return Cell.failed(f"unsupported: {exc}"), None
        await self.open(concurrency)
        try:
            cell = await run_workers(operation.fn, keys or self.keys_for(op), concurrency, timing, seed)
        except Exception as exc:
            cell = Cell.failed(describe(exc))
        finally:
            await self.close()
        return cell, operation.note


def package_versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found
