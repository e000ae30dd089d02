"""Run modes: how long each cell runs, how many repeats, how much data is seeded."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .measure import Timing
from .workload import Layout


@dataclass(frozen=True)
class Mode:
    name: str
    timing: Timing
    repeats: int
    scaling_timing: Timing
    layout: Layout


MODES: dict[str, Mode] = {
    # For the test suite: exercises every path, measures nothing worth quoting.
    "tiny": Mode(
        "tiny",
        Timing(0.05, 0.2),
        1,
        Timing(0.0, 0.1),
        Layout(
            history_conversations=4,
            work_conversations=8,
            scaling_lengths=(100, 1_000),
            scaling_conversations=1,
            peer_scaling_max=1_000,
        ),
    ),
    # Under 3 minutes on 2 cores.
    "quick": Mode(
        "quick",
        Timing(0.2, 0.7),
        1,
        Timing(0.1, 0.4),
        Layout(
            history_conversations=16,
            work_conversations=64,
            scaling_lengths=(100, 1_000, 10_000, 100_000),
            scaling_conversations=2,
            peer_scaling_max=10_000,
        ),
    ),
    # The default, what the README's first command runs: about 5 minutes on 2 cores. Three repeats
    # of short cells (medians survive a busy machine better than one long cell does), peers'
    # whole-history reads swept up to 10,000 messages (seeding 100,000 through their APIs was
    # most of the old default's 21 minutes).
    "default": Mode(
        "default",
        Timing(0.2, 0.5),
        3,
        Timing(0.1, 0.4),
        Layout(
            history_conversations=32,
            work_conversations=256,
            scaling_lengths=(100, 1_000, 10_000, 100_000),
            scaling_conversations=2,
            peer_scaling_max=10_000,
        ),
    ),
    # --thorough: the former default (about 21 minutes on 2 cores): 2 s cells, peers swept to
    # 100,000 messages.
    "thorough": Mode(
        "thorough",
        Timing(1.0, 2.0),
        3,
        Timing(0.5, 2.0),
        Layout(
            history_conversations=32,
            work_conversations=256,
            scaling_lengths=(100, 1_000, 10_000, 100_000),
            scaling_conversations=3,
            peer_scaling_max=100_000,
        ),
    ),
}
# Thorough plus the table-size sweep: convdb's messages table grown to 10 million rows.
MODES["full"] = replace(
    MODES["thorough"],
    name="full",
    layout=replace(MODES["thorough"].layout, table_sizes=(1_000_000, 3_000_000, 10_000_000)),
)
