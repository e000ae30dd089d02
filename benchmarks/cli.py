"""``python -m benchmarks``: argument parsing and the run from start to finish."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import meta as run_meta
from . import report, runner, server
from .config import MODES, Mode
from .registry import ALL_NAMES, display_name
from .systems.base import Context

# The run the README and docs/benchmarks.md quote: every run is compared with it.
PUBLISHED = Path(__file__).resolve().parent / "results" / "default.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="convdb against raw asyncpg, pgbench and its peers, on one server, in one run.",
    )
    parser.add_argument(
        "--dsn",
        help="a server to use (any database; the benchmark creates and drops its "
        "own); default: start the embedded PostgreSQL in a temp dir",
    )
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument(
        "--quick", action="store_const", const="quick", dest="mode", help="under 3 minutes, 1 repeat"
    )
    speed.add_argument(
        "--full",
        action="store_const",
        const="full",
        dest="mode",
        help="the thorough run plus the table-size sweep up to 10 million messages",
    )
    speed.add_argument(
        "--thorough",
        action="store_const",
        const="thorough",
        dest="mode",
        help="about 21 minutes: 2 s cells, peers' histories swept to 100,000 messages",
    )
    speed.add_argument(
        "--tiny",
        action="store_const",
        const="tiny",
        dest="mode",
        help="seconds; checks that everything runs (the test suite uses it)",
    )
    parser.add_argument("--concurrency", default="1,8", help="client counts, e.g. 1,8,32 (default 1,8)")
    parser.add_argument(
        "--systems", default=",".join(ALL_NAMES), help=f"comma-separated subset of: {', '.join(ALL_NAMES)}"
    )
    parser.add_argument("--repeats", type=int, help="override the mode's number of repeats")
    parser.add_argument("--duration", type=float, help="override the mode's seconds per cell")
    parser.add_argument("--json", dest="json_path", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--plot", dest="plot_path", metavar="FILE.png", help="draw the chart")
    parser.add_argument(
        "--server-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an embedded-server setting (repeatable), e.g. synchronous_commit=off",
    )
    parser.add_argument(
        "--previous",
        default=str(PUBLISHED),
        metavar="FILE.json",
        help="the run to compare with (this ÷ previous, per op); default: the published run "
        f"{PUBLISHED.relative_to(PUBLISHED.parents[2])}; 'none' for no comparison",
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the client's event loop (uvloop: pip install uvloop); recorded in the JSON",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    citus = parser.add_argument_group(
        "Citus", "convdb through a local Citus cluster against one PostgreSQL (docs/citus.md)"
    )
    citus.add_argument(
        "--citus",
        action="store_true",
        help="start a local coordinator + 2 workers and one PostgreSQL from the installed Citus "
        "(bash .ci/citus.sh) and measure convdb's hot paths on both; default concurrency 1,8,32",
    )
    citus.add_argument(
        "--scale",
        type=int,
        default=0,
        metavar="MESSAGES",
        help="with --citus: then grow both to this many more messages and measure again",
    )
    citus.add_argument("--scale-concurrency", type=int, default=8, help="with --scale (default 8)")
    citus.add_argument(
        "--capacity-calls",
        type=int,
        default=200,
        help="with --citus: calls per op in the capacity pass (statements and server CPU per call); 0: none",
    )
    args = parser.parse_args(argv)
    if args.citus and args.concurrency == "1,8":
        args.concurrency = "1,8,32"
    if (args.scale or args.capacity_calls != 200) and not args.citus:
        parser.error("--scale and --capacity-calls go with --citus")
    args.mode = args.mode or "default"
    return args


def mode_of(args: argparse.Namespace) -> Mode:
    mode = MODES[args.mode]
    if args.repeats is not None or args.duration is not None:
        from dataclasses import replace

        timing = mode.timing if args.duration is None else replace(mode.timing, duration_s=args.duration)
        mode = replace(mode, timing=timing, repeats=args.repeats or mode.repeats)
    return mode


@contextlib.contextmanager
def admin_dsn(args: argparse.Namespace) -> Iterator[str]:
    if args.dsn:
        yield args.dsn
        return
    settings = dict(item.split("=", 1) for item in args.server_setting)
    with server.embedded_server(settings) as dsn:
        yield dsn


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """None for asyncio's default loop; uvloop's when asked for (an optional faster loop)."""
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError as exc:
        raise SystemExit(f"--loop uvloop needs uvloop (pip install -e '.[bench]'): {exc}") from exc
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def previous_run(args: argparse.Namespace) -> tuple[dict[str, Any] | None, str]:
    """The run to compare with (read before this one runs, which may overwrite it) and its path."""
    if args.previous == "none":
        return None, ""
    previous = report.read_previous(args.previous)
    if previous is None:
        print(f"no previous run to compare with at {args.previous}", file=sys.stderr)
    source = Path(args.previous).resolve()
    shown = source.relative_to(run_meta.ROOT) if source.is_relative_to(run_meta.ROOT) else source
    return previous, str(shown)


async def run(
    args: argparse.Namespace, admin: str, previous: tuple[dict[str, Any] | None, str] = (None, "")
) -> dict[str, Any]:
    mode = mode_of(args)
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ALL_NAMES))
    if unknown:
        raise SystemExit(f"unknown systems: {', '.join(unknown)}; choose from {', '.join(ALL_NAMES)}")
    levels = sorted({int(x) for x in args.concurrency.split(",") if x.strip()})
    if max(levels) > mode.layout.work_conversations:
        raise SystemExit(
            f"--concurrency {max(levels)} needs more than the {mode.layout.work_conversations} "
            "work conversations of this mode"
        )
    db = await server.create_database(admin)
    try:
        ctx = Context(db, mode.layout)
        commit = run_meta.git_commit()  # the code this run loads, before anyone changes the tree
        started = run_meta.now()
        load_before = run_meta.load_average()
        systems = await runner.prepare(ctx, names, args.no_progress)
        rows = await runner.run_matrix(systems, levels, mode, args.no_progress)
        scaling = await runner.run_scaling(ctx, systems, mode, args.no_progress)
        if mode.layout.table_sizes:
            scaling += await runner.run_table_sizes(ctx, systems, mode, args.no_progress)
        info = await server.server_info(db.dsn)
        versions: dict[str, str] = {}
        for system in systems:
            with contextlib.suppress(Exception):
                versions.update(system.versions())
        await runner.teardown(systems)
    finally:
        await server.drop_database(db)
    meta = {
        "commit": commit,
        "cores": os.cpu_count(),
        "postgres": info["postgres"],
        "versions": dict(sorted(versions.items())),
        "server_settings": info["server_settings"],
        "server": "given by --dsn" if args.dsn else "embedded (pgserver), in a temp dir",
        "machine": run_meta.machine(),
        "mode": mode.name,
        "event_loop": args.loop,
        "started": started,
        "finished": run_meta.now(),
        "load_average_before": load_before,
        "load_average_after": run_meta.load_average(),
        "concurrency": levels,
        "repeats": mode.repeats,
        "warmup_s": mode.timing.warmup_s,
        "duration_s": mode.timing.duration_s,
        "systems": [display_name(s) for s in systems],
        "layout": {
            "history_conversations": mode.layout.history_conversations,
            "work_conversations": mode.layout.work_conversations,
            "scaling_lengths": list(mode.layout.scaling_lengths),
            "peer_scaling_max": mode.layout.peer_scaling_max,
            "table_sizes": list(mode.layout.table_sizes),
        },
    }
    return report.document(meta, rows, scaling, *previous)


def citus_main(args: argparse.Namespace) -> int:
    from . import citus

    if args.dsn:
        raise SystemExit("--citus starts its own local cluster and single node; it takes no --dsn")
    levels = sorted({int(x) for x in args.concurrency.split(",") if x.strip()})
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as loop_runner:
        doc = loop_runner.run(citus.run(args, mode_of(args), levels))
    doc["meta"]["event_loop"] = args.loop
    sys.stdout.write(citus.text(doc))
    if args.json_path:
        report.write_json(args.json_path, doc)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.citus:
        return citus_main(args)
    with admin_dsn(args) as admin, asyncio.Runner(loop_factory=loop_factory(args.loop)) as loop_runner:
        doc = loop_runner.run(run(args, admin, previous_run(args)))
    sys.stdout.write(report.text(doc))
    if args.json_path:
        report.write_json(args.json_path, doc)
    if args.plot_path:
        try:
            from . import plot

            plot.draw(doc, args.plot_path)
        except ImportError as exc:
            print(f"--plot needs matplotlib (pip install -e '.[bench]'): {exc}", file=sys.stderr)
            return 1
    return 0
