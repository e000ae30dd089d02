"""Every system of a run, in the issue's order; a peer that cannot even be loaded becomes Broken."""

from __future__ import annotations

import importlib

from .measure import Cell, Timing
from .peers import PEERS
from .systems.asyncpg_raw import AsyncpgRawSystem
from .systems.base import Context, Operation, System, Unsupported
from .systems.convdb_system import ConvdbSystem
from .systems.pgbench_system import PgbenchSystem

OWN_SYSTEMS: dict[str, type[System]] = {
    "convdb": ConvdbSystem,
    "asyncpg-raw": AsyncpgRawSystem,
    "pgbench": PgbenchSystem,
}
ALL_NAMES: tuple[str, ...] = (*OWN_SYSTEMS, *PEERS)


class Broken(System):
    """A system that failed to install, import or prepare: every cell reports why."""

    name = "broken"

    def __init__(self, ctx: Context, name: str, error: str) -> None:
        super().__init__(ctx)
        self.system_name = name
        self.error = error

    async def open(self, concurrency: int) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    def operation(self, op: str) -> Operation:
        raise Unsupported(self.error)

    async def measure(
        self, op: str, concurrency: int, timing: Timing, seed: int, keys: list[int] | None = None
    ) -> tuple[Cell, str | None]:
        return Cell.failed(self.error), None


def load(name: str, ctx: Context) -> System:
    if name in OWN_SYSTEMS:
        return OWN_SYSTEMS[name](ctx)
    module_name, class_name = PEERS[name]
    module = importlib.import_module(f"benchmarks.peers.{module_name}")
    system: System = getattr(module, class_name)(ctx)
    return system


def display_name(system: System) -> str:
    return system.system_name if isinstance(system, Broken) else system.name
