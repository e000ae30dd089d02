"""Load with faults, then a consistency check: ``python -m tools.loadcheck``.

A bounded mixed workload (default 100,000 operations from 64 concurrent tasks over many users and
conversations) runs against a PostgreSQL this script controls (an embedded server in a temporary
folder, unless ``--dsn``), while faults are injected: backends killed with pg_terminate_backend,
random task cancellations, and a fast-shutdown restart of the server halfway. Clients behave as
real ones should: keyed writes are retried until acknowledged; unkeyed writes are not retried
(their outcome is "unknown" when they fail or are cancelled).

Then the checker reads every row back and verifies:
  * every acknowledged message is stored exactly once, in its conversation, at the seq the call
    returned, with its exact content;
  * every unknown-outcome message is stored at most once, and an unknown batch all or nothing;
  * nothing else is stored;
  * per conversation, seq is gap-free (1..n);
  * no read ever returned a row of another conversation or user, and every foreign access raised
    ConversationNotFound.

Exit status 0 when the check passes. ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from convdb import (
    ConversationNotFound,
    ConversationStore,
    DatabaseUnavailable,
    PoolTimeout,
    QueryTimeout,
)
from convdb.testing import EmbeddedPostgres, apply_schema

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
APP = "convdb-loadcheck"
RETRYABLE = (DatabaseUnavailable, PoolTimeout, QueryTimeout)
FILLER = [
    "",
    " 'quoted'",
    ' "double"',
    " ✓",
    " 😀",
    " \\backslash",
    " ; DROP TABLE messages; --",
    " ünï",
    "\n",
]


@dataclass
class LoadConfig:
    ops: int = 100_000
    concurrency: int = 64
    users: int = 200
    conversations: int = 2_000
    pool_size: int = 16
    kill_every: int = 1_000  # operations between two backend kills (0: none)
    cancel_rate: float = 0.02  # share of operations cancelled at a random moment
    restarts: int = 1  # fast-shutdown restarts, spread over the run (embedded server only)
    seed: int = 1
    progress: bool = True


@dataclass
class Report:
    config: dict[str, Any]
    operations: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    acknowledged_messages: int = 0
    unknown_messages: int = 0
    stored_rows: int = 0
    kills: int = 0
    cancellations: int = 0
    restarts: int = 0
    retried_errors: dict[str, int] = field(default_factory=dict)
    foreign_refused: int = 0
    reads_checked: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Sent:
    cid: str
    content: str
    seq: int | None = None  # the seq the call returned when acknowledged


class Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.started, self.last = total, enabled, time.monotonic(), 0.0

    def show(self, done: int, extra: str, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last < 0.5):
            return
        self.last = now
        width = 30
        filled = int(width * min(done, self.total) / self.total)
        rate = done / max(now - self.started, 1e-9)
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {done:,}/{self.total:,} ops "
            f"{rate:,.0f} ops/s  {extra}   "
        )
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


class Load:
    def __init__(
        self, store: ConversationStore, dsn: str, server: EmbeddedPostgres | None, config: LoadConfig
    ) -> None:
        self.store, self.dsn, self.server, self.config = store, dsn, server, config
        self.rng = random.Random(config.seed)
        self.report = Report(asdict(config))
        self.owner: dict[str, str] = {}
        self.acked: dict[str, Sent] = {}  # idempotency key or content marker -> what was sent
        self.unknown: dict[str, Sent] = {}
        self.unknown_batches: list[list[str]] = []
        self.next_op = 0
        self.done = 0
        self.kinds: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.progress = Progress(config.ops, config.progress)
        # The killer's admin connection and the restarter take turns: a kill whose connection
        # opened just before a fast shutdown met the server's "terminating" message before its
        # query, and asyncpg refused the connection (InternalClientError), failing the run.
        self.fault_turn = asyncio.Lock()

    # -- client behaviour --------------------------------------------------------------------
    async def until_acknowledged(self, call: Callable[[], Awaitable[T]]) -> T:
        """A keyed call, retried (with the same key) until acknowledged, like a careful client."""
        for _ in range(2_000):
            try:
                return await self.maybe_cancelled(call)
            except asyncio.CancelledError:
                raise
            except _Cancelled:
                continue
            except RETRYABLE as exc:
                self.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.02)
        raise RuntimeError("a keyed call was never acknowledged")

    async def maybe_cancelled(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call``; with probability cancel_rate cancel it at a random moment."""
        if self.rng.random() >= self.config.cancel_rate:
            return await call()
        task = asyncio.ensure_future(call())
        done, _ = await asyncio.wait({task}, timeout=self.rng.random() * 0.01)
        if not done:
            task.cancel()
        try:
            return await task
        except asyncio.CancelledError:
            if task.cancelled():
                self.report.cancellations += 1
                raise _Cancelled() from None
            raise

    def content(self, cid: str, op: int, part: int) -> tuple[str, str]:
        marker = f"{self.owner[cid]}|{cid}|{op}.{part}|"
        return marker, marker + "".join(self.rng.choice(FILLER) for _ in range(self.rng.randint(0, 3)))

    # -- the operations ----------------------------------------------------------------------
    async def one(self, op: int) -> None:
        rng = self.rng
        cid = rng.choice(list(self.owner))
        uid = self.owner[cid]
        kind = rng.choices(
            ["save_keyed", "save", "batch_keyed", "batch", "turn_keyed", "history", "read", "foreign"],
            weights=[30, 8, 10, 5, 5, 27, 8, 7],
        )[0]
        self.kinds[kind] += 1
        if kind == "save_keyed":
            marker, text = self.content(cid, op, 0)
            self.acked[marker] = Sent(cid, text)
            message = await self.until_acknowledged(
                lambda: self.store.save_message(cid, uid, "user", text, idempotency_key=marker)
            )
            self.acked[marker].seq = message.seq
        elif kind == "turn_keyed":
            marker, text = self.content(cid, op, 0)
            self.acked[marker] = Sent(cid, text)
            saved, window = await self.until_acknowledged(
                lambda: self.store.save_and_get_history(
                    cid, uid, {"role": "assistant", "content": text, "idempotency_key": marker}, limit=5
                )
            )
            self.acked[marker].seq = saved.seq
            self.check_read(cid, uid, window)
        elif kind == "batch_keyed":
            parts = [self.content(cid, op, j) for j in range(rng.randint(2, 8))]
            for marker, text in parts:
                self.acked[marker] = Sent(cid, text)
            stored = await self.until_acknowledged(
                lambda: self.store.save_messages(
                    cid, uid, [{"role": "assistant", "content": t, "idempotency_key": m} for m, t in parts]
                )
            )
            for (marker, _), message in zip(parts, stored, strict=True):
                self.acked[marker].seq = message.seq
        elif kind in ("save", "batch"):
            parts = [self.content(cid, op, j) for j in range(1 if kind == "save" else rng.randint(2, 8))]
            for marker, text in parts:
                self.unknown[marker] = Sent(cid, text)
            try:
                if kind == "save":
                    stored = [
                        await self.maybe_cancelled(
                            lambda: self.store.save_message(cid, uid, "user", parts[0][1])
                        )
                    ]
                else:
                    stored = await self.maybe_cancelled(
                        lambda: self.store.save_messages(
                            cid, uid, [{"role": "user", "content": t} for _, t in parts]
                        )
                    )
            except (_Cancelled, *RETRYABLE) as exc:
                self.errors[f"{type(exc).__name__} (unkeyed, outcome unknown)"] += 1
                self.unknown_batches.append([m for m, _ in parts])
                return
            for (marker, _), message in zip(parts, stored, strict=True):
                sent = self.unknown.pop(marker)
                sent.seq = message.seq
                self.acked[marker] = sent
        elif kind == "history":
            history = await self.read(lambda: self.store.get_history(cid, uid, limit=rng.randint(1, 60)))
            if history is not None:
                self.check_read(cid, uid, history)
        elif kind == "read":
            conv = await self.read(lambda: self.store.get_conversation(cid, uid))
            if conv is not None and (conv.id, conv.user_id) != (cid, uid):
                self.report.problems.append(f"get_conversation({cid}) returned {conv.id}/{conv.user_id}")
        else:
            other = f"user-{(int(uid.split('-')[1]) + 1) % self.config.users}"
            try:
                await self.store.get_history(cid, other)
                self.report.problems.append(f"{other} read {cid} of {uid}")
            except ConversationNotFound:
                self.report.foreign_refused += 1
            except RETRYABLE as exc:
                self.errors[type(exc).__name__] += 1

    async def read(self, call: Callable[[], Awaitable[T]]) -> T | None:
        try:
            return await self.maybe_cancelled(call)
        except (_Cancelled, *RETRYABLE) as exc:
            self.errors[type(exc).__name__] += 1
            return None

    def check_read(self, cid: str, uid: str, messages: list[Any]) -> None:
        self.report.reads_checked += 1
        seqs = [m.seq for m in messages]
        if seqs and seqs != list(range(seqs[0], seqs[0] + len(seqs))):
            self.report.problems.append(f"history of {cid} not consecutive: {seqs}")
        for m in messages:
            if m.conversation_id != cid or not (m.content or "").startswith(f"{uid}|{cid}|"):
                self.report.problems.append(f"read of {cid} by {uid} returned {m.content!r:.80}")

    # -- faults ------------------------------------------------------------------------------
    async def killer(self, stop: asyncio.Event) -> None:
        if not self.config.kill_every:
            return
        next_kill = self.config.kill_every
        while not stop.is_set():
            await asyncio.sleep(0.01)
            if self.done < next_kill:
                continue
            next_kill += self.config.kill_every
            async with self.fault_turn:
                await self.kill_one()

    async def kill_one(self) -> None:
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            admin = await asyncpg.connect(self.dsn)
            try:
                killed = await admin.fetchval(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM "
                    "(SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
                    " ORDER BY state = 'active' DESC, random() LIMIT 1) victim",
                    APP,
                )
                self.report.kills += int(killed or 0)
            finally:
                await admin.close()

    async def restarter(self, stop: asyncio.Event) -> None:
        if self.server is None or not self.config.restarts:
            return
        for n in range(1, self.config.restarts + 1):
            at = self.config.ops * n // (self.config.restarts + 1)
            while self.done < at and not stop.is_set():  # noqa: ASYNC110 - polls a counter
                await asyncio.sleep(0.01)
            if stop.is_set():
                return
            async with self.fault_turn:
                await asyncio.to_thread(self.server.restart, "fast")
            self.report.restarts += 1

    # -- driving -----------------------------------------------------------------------------
    async def setup(self) -> None:
        for i in range(self.config.conversations):
            uid = f"user-{i % self.config.users}"
            cid = f"conv-{i}"
            await self.store.get_or_create_conversation(cid, uid, title=f"load {i}")
            self.owner[cid] = uid

    async def worker(self) -> None:
        while self.next_op < self.config.ops:
            op = self.next_op
            self.next_op += 1
            await self.one(op)
            self.done += 1
            self.progress.show(self.done, self.status())

    def status(self) -> str:
        return (
            f"kills {self.report.kills} cancels {self.report.cancellations} "
            f"restarts {self.report.restarts} retried {sum(self.errors.values())}"
        )

    async def run(self) -> Report:
        await self.setup()
        started = time.monotonic()
        stop = asyncio.Event()
        faults = [asyncio.ensure_future(self.killer(stop)), asyncio.ensure_future(self.restarter(stop))]
        try:
            await asyncio.gather(*(self.worker() for _ in range(self.config.concurrency)))
        finally:
            stop.set()
            await asyncio.gather(*faults)
        self.report.seconds = round(time.monotonic() - started, 2)
        self.progress.show(self.done, self.status(), final=True)
        self.report.operations = self.done
        self.report.by_kind = dict(self.kinds)
        self.report.retried_errors = dict(self.errors)
        await self.check()
        return self.report

    # -- the checker -------------------------------------------------------------------------
    async def check(self) -> None:
        problems = self.report.problems
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch(
                "SELECT m.conversation_id, m.seq, m.content, c.user_id FROM messages m "
                "JOIN conversations c ON c.id = m.conversation_id ORDER BY 1, 2"
            )
        finally:
            await conn.close()
        self.report.stored_rows = len(rows)
        self.report.acknowledged_messages = len(self.acked)
        self.report.unknown_messages = len(self.unknown)
        found: dict[str, list[asyncpg.Record]] = defaultdict(list)
        seqs: dict[str, list[int]] = defaultdict(list)
        for row in rows:
            owner, cid, part, _ = row["content"].split("|", 3)
            found[f"{owner}|{cid}|{part}|"].append(row)
            seqs[row["conversation_id"]].append(row["seq"])
            if (cid, owner) != (row["conversation_id"], row["user_id"]):
                problems.append(f"row in {row['conversation_id']} of {row['user_id']} carries {owner}/{cid}")
        for marker, sent in self.acked.items():
            copies = found.get(marker, [])
            if len(copies) != 1:
                problems.append(f"acknowledged {marker} stored {len(copies)} times")
            elif (copies[0]["conversation_id"], copies[0]["seq"], copies[0]["content"]) != (
                sent.cid,
                sent.seq,
                sent.content,
            ):
                problems.append(f"acknowledged {marker} stored differently: {dict(copies[0])}")
        for marker in self.unknown:
            if len(found.get(marker, [])) > 1:
                problems.append(f"unknown-outcome {marker} stored {len(found[marker])} times")
        for batch in self.unknown_batches:
            present = {len(found.get(m, [])) > 0 for m in batch}
            if len(present) > 1:
                problems.append(f"batch stored in part: {batch[0]}..")
        for marker in set(found) - set(self.acked) - set(self.unknown):
            problems.append(f"stored but never sent: {marker}")
        for cid, numbers in seqs.items():
            if numbers != list(range(1, len(numbers) + 1)):
                problems.append(f"seq of {cid} not gap-free")


class _Cancelled(Exception):
    """An operation this client cancelled on purpose (the fault), as opposed to its own cancellation."""


async def run(config: LoadConfig, dsn: str, server: EmbeddedPostgres | None) -> Report:
    store = await ConversationStore.connect(
        dsn,
        min_size=4,
        max_size=config.pool_size,
        acquire_timeout=60,
        server_settings={"application_name": APP},
    )
    try:
        return await Load(store, dsn, server, config).run()
    finally:
        await store.close()


def summary(report: Report) -> str:
    lines = [
        f"operations: {report.operations:,} in {report.seconds:,.1f} s "
        f"({report.operations / max(report.seconds, 1e-9):,.0f} ops/s), by kind: {report.by_kind}",
        f"faults injected: {report.kills} backends killed, {report.cancellations} operations cancelled, "
        f"{report.restarts} server restarts (fast shutdown)",
        f"errors seen by clients (keyed writes and reads retried): {report.retried_errors}",
        f"messages: {report.acknowledged_messages:,} acknowledged, "
        f"{report.unknown_messages:,} unknown outcome, "
        f"{report.stored_rows:,} rows stored",
        f"isolation: {report.foreign_refused:,} foreign reads refused, "
        f"{report.reads_checked:,} reads checked",
        "CHECK PASSED: every acknowledged message exactly once with its content, seq gap-free, no "
        "partial batch, nothing foreign read"
        if report.ok
        else f"CHECK FAILED: {len(report.problems)} problems, first: {report.problems[:10]}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.loadcheck", description=(__doc__ or "").split("\n")[0]
    )
    defaults = LoadConfig()
    for name in (
        "ops",
        "concurrency",
        "users",
        "conversations",
        "pool_size",
        "kill_every",
        "restarts",
        "seed",
    ):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--cancel-rate", type=float, default=defaults.cancel_rate)
    parser.add_argument(
        "--dsn",
        help="a database with schema.sql applied (no restarts then); default: an "
        "embedded server in a temporary folder",
    )
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    config = LoadConfig(
        ops=args.ops,
        concurrency=args.concurrency,
        users=args.users,
        conversations=args.conversations,
        pool_size=args.pool_size,
        kill_every=args.kill_every,
        cancel_rate=args.cancel_rate,
        restarts=args.restarts,
        seed=args.seed,
        progress=not args.no_progress,
    )
    server = None
    if args.dsn:
        dsn = args.dsn
        config.restarts = 0
    else:
        server = EmbeddedPostgres(
            Path(tempfile.mkdtemp(prefix="convdb-loadcheck-")) / "data",
            settings={"fsync": "off", "synchronous_commit": "off"},
        )
        server.start()
        dsn = server.dsn()
        apply_schema(dsn, ROOT / "schema.sql")
    try:
        report = asyncio.run(run(config, dsn, server))
    finally:
        if server is not None:
            server.destroy()
    print(summary(report))
    if args.json:
        args.json.write_text(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
