"""What the statement-cache-off fallback costs behind PgBouncer: ``python -m tools.pgbouncer_cost``.

Same embedded server, same data, same client count; each configuration runs ``save_message`` and
``get_history`` for a fixed time, interleaved with the others, repeated, medians reported:

  direct, cache on          asyncpg's named prepared statements (the default)
  direct, cache off         statement_cache_size=0: unnamed statements, parsed on every call
  pgbouncer-tx, cache off   PgBouncer 1.18 in transaction mode: the only setting that works there
  pgbouncer-session, cache on  PgBouncer in session mode: the pooler hop without the cache loss
  direct, cache on, RLS     row_level_security=True under schema_rls.sql's role

Ratios matter more than absolute numbers: client, pooler and server share two cores here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from convdb import ConversationStore
from convdb.testing import EmbeddedPostgres, apply_schema
from convdb.testing.pgbouncer import PgBouncer, pgbouncer_version

ROOT = Path(__file__).resolve().parent.parent
APP_ROLE = "convdb_bench_app"


async def measure(
    store: ConversationStore, op: str, clients: int, seconds: float, conversations: int
) -> float:
    done = 0
    stop = time.monotonic() + seconds

    async def client(i: int) -> None:
        nonlocal done
        n = 0
        while time.monotonic() < stop:
            cid = f"bench-{(i * 7 + n) % conversations}"
            if op == "save_message":
                await store.save_message(
                    cid,
                    "bench-user",
                    "user",
                    "a message of ordinary length, say a sentence or two of chat text",
                )
            else:
                await store.get_history(cid, "bench-user", limit=20)
            n += 1
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return done / (time.monotonic() - started)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="convdb-pgbouncer-cost-"))
    server = EmbeddedPostgres(work / "data", settings={"fsync": "off", "synchronous_commit": "off"})
    server.start()
    bouncers: list[PgBouncer] = []
    try:
        dsn = server.dsn()
        apply_schema(dsn, ROOT / "schema.sql")
        apply_schema(dsn, ROOT / "schema_rls.sql")
        admin = await asyncpg.connect(dsn)
        await admin.execute(f"CREATE ROLE {APP_ROLE} LOGIN IN ROLE convdb_app")
        await admin.close()
        tx = PgBouncer(
            work / "tx", server_host="127.0.0.1", server_port=server.port, users=["postgres", APP_ROLE]
        )
        session = PgBouncer(
            work / "session",
            server_host="127.0.0.1",
            server_port=server.port,
            pool_mode="session",
            users=["postgres"],
        )
        for bouncer in (tx, session):
            bouncer.start()
            bouncers.append(bouncer)
        configs: dict[str, tuple[str, dict[str, Any]]] = {
            "direct, cache on": (dsn, {}),
            "direct, cache off": (dsn, {"statement_cache_size": 0}),
            "pgbouncer-tx, cache off": (tx.dsn(), {"statement_cache_size": 0}),
            "pgbouncer-session, cache on": (session.dsn(), {}),
            "direct, cache on, RLS": (server.dsn(user=APP_ROLE), {"row_level_security": True}),
        }
        stores: dict[str, ConversationStore] = {}
        for name, (target, options) in configs.items():
            stores[name] = await ConversationStore.connect(
                target, min_size=args.clients, max_size=args.clients, **options
            )
        seed = stores["direct, cache on"]
        for i in range(args.conversations):
            await seed.get_or_create_conversation(f"bench-{i}", "bench-user")
            await seed.save_messages(f"bench-{i}", "bench-user", [{"role": "user", "content": "seed"}] * 30)
        results: dict[str, dict[str, list[float]]] = {op: {n: [] for n in configs} for op in args.ops}
        for name in configs:  # warm-up: prepare statements, fill caches
            for op in args.ops:
                await measure(stores[name], op, args.clients, 0.5, args.conversations)
        for _ in range(args.repeats):
            for op in args.ops:
                for name in configs:
                    results[op][name].append(
                        await measure(stores[name], op, args.clients, args.seconds, args.conversations)
                    )
        for store in stores.values():
            await store.close()
        medians = {op: {n: statistics.median(v) for n, v in by.items()} for op, by in results.items()}
        return {
            "pgbouncer": pgbouncer_version(),
            "clients": args.clients,
            "seconds": args.seconds,
            "repeats": args.repeats,
            "ops_per_second": results,
            "median": medians,
        }
    finally:
        for bouncer in bouncers:
            bouncer.stop()
        server.destroy()


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['pgbouncer']}, {report['clients']} clients, "
        f"{report['repeats']} x {report['seconds']} s "
        "per cell, medians (ops/s) and ratio to 'direct, cache on':"
    ]
    for op, by in report["median"].items():
        base = by["direct, cache on"]
        lines.append(f"  {op}:")
        lines += [f"    {name:<30} {value:>9,.0f}  {value / base:5.2f}x" for name, value in by.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.pgbouncer_cost")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--ops", nargs="+", default=["save_message", "get_history"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report = asyncio.run(bench(args))
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
