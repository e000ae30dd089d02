"""The cost of encryption at rest: append, batch and history with ``encryption=`` off and on.

    python -m benchmarks.encryption_cost [--calls 300] [--repeats 5] [--content-bytes 400]

One embedded PostgreSQL, one store without encryption and one with (``StaticKeys``), each with
one connection, called sequentially; the rounds alternate (off, on, off, on, ...) after a warm-up,
and the figures are medians over the rounds. Per operation: ops/s (wall clock) and client CPU
per call (``time.process_time``: this process only, so the server's work is not in it), and the
ratio on / off of both. The client and the server share the machine's cores: quote the ratios.

Operations: ``append`` (save_message of one message), ``batch`` (save_messages of 10),
``history`` (get_history of the newest 50 of a 200-message conversation).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from convdb import ConversationStore, StaticKeys
from convdb.testing import EmbeddedPostgres, apply_schema

ROOT = Path(__file__).resolve().parents[1]
Op = Callable[[int], Awaitable[object]]


def operations(store: ConversationStore, tag: str, content: str) -> dict[str, Op]:
    meta = {"source": "bench", "n": 1}

    async def append(i: int) -> object:
        return await store.save_message(f"{tag}-append", "u", "user", content, metadata=meta)

    async def batch(i: int) -> object:
        rows = [{"role": "user", "content": content, "metadata": meta} for _ in range(10)]
        return await store.save_messages(f"{tag}-batch", "u", rows)

    async def history(i: int) -> object:
        return await store.get_history(f"{tag}-history", "u", limit=50)

    return {"append": append, "batch": batch, "history": history}


async def prepare(store: ConversationStore, tag: str, content: str) -> None:
    for name in ("append", "batch", "history"):
        await store.get_or_create_conversation(f"{tag}-{name}", "u", title="bench")
    rows = [{"role": "user", "content": content} for _ in range(200)]
    await store.save_messages(f"{tag}-history", "u", rows)


async def timed(op: Op, calls: int) -> tuple[float, float]:
    """(ops/s, client CPU microseconds per call) of ``calls`` sequential calls."""
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(calls):
        await op(i)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return calls / wall, cpu / calls * 1e6


async def measure(dsn: str, calls: int, repeats: int, content_bytes: int) -> None:
    content = ("lorem ipsum dolor sit amet " * (content_bytes // 27 + 1))[:content_bytes]
    provider = StaticKeys({"k1": os.urandom(32)}, "k1")
    plain = await ConversationStore.connect(dsn, min_size=1, max_size=1)
    sealed = await ConversationStore.connect(dsn, min_size=1, max_size=1, encryption=provider)
    try:
        await prepare(plain, "off", content)
        await prepare(sealed, "on", content)
        ops = {"off": operations(plain, "off", content), "on": operations(sealed, "on", content)}
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for name in ("append", "batch", "history"):
            for mode in ("off", "on"):  # warm-up: statements prepared, key cached
                await timed(ops[mode][name], max(10, calls // 10))
            for _ in range(repeats):
                for mode in ("off", "on"):
                    results.setdefault((name, mode), []).append(await timed(ops[mode][name], calls))
        print(f"{calls} calls x {repeats} rounds, content {content_bytes} bytes, medians; on/off ratios")
        print(
            f"{'operation':<9} {'ops/s off':>10} {'ops/s on':>10} {'ratio':>6}   "
            f"{'CPU us off':>10} {'CPU us on':>10} {'ratio':>6}"
        )
        for name in ("append", "batch", "history"):
            off, on = results[(name, "off")], results[(name, "on")]
            rate_off, rate_on = (statistics.median(r for r, _ in x) for x in (off, on))
            cpu_off, cpu_on = (statistics.median(c for _, c in x) for x in (off, on))
            print(
                f"{name:<9} {rate_off:>10.0f} {rate_on:>10.0f} {rate_on / rate_off:>6.2f}   "
                f"{cpu_off:>10.0f} {cpu_on:>10.0f} {cpu_on / cpu_off:>6.2f}"
            )
    finally:
        await plain.close()
        await sealed.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--content-bytes", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="convdb-crypto-") as folder:
        server = EmbeddedPostgres(Path(folder) / "data")
        server.start()
        try:
            dsn = server.dsn()
            apply_schema(dsn, ROOT / "schema.sql")
            asyncio.run(measure(dsn, args.calls, args.repeats, args.content_bytes))
        finally:
            server.destroy()


if __name__ == "__main__":
    main()
