"""The runner: how an operation meets the database.

It acquires a pooled connection and releases it; translates driver errors into ``ConvDBError``s
(the single seam: ``_Connection``, which calls ``errors.translate``); serves calls made from
another event loop through the loop that owns the pool (``on_home``); retries once on a lost
connection when the operation's ``Policy`` allows it; applies row-level security (every
transaction starts by naming the user); and runs batches guarded, so that cancellation, a lost
connection or a stall ends them in bounded time. Operations themselves are ``convdb.ops``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Final, Protocol, TypeVar

import asyncpg

from .errors import DatabaseUnavailable, PoolTimeout, QueryTimeout, WrongEventLoop, translate
from .ops import Begin, Conn, begin
from .sql import QUERIES

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

_SET_RLS_USER: Final = QUERIES["set_rls_user"]
_CANCEL_GRACE_SECONDS: Final = 5.0
# How often a call forwarded to the owning loop checks that the loop still runs: a loop stopped
# with loop.stop() never completes (nor cancels) the forwarded task, so waiting on it alone would
# block the caller forever.
_HOME_POLL_SECONDS: Final = 0.5


class Policy(enum.Enum):
    """Whether an operation is run a second time, on a fresh connection, when its connection was lost.

    A lost connection (``DatabaseUnavailable``) leaves a write's outcome unknown: it may have
    committed. So the policy says what a second run would do.
    """

    READ = "read"
    """Changes nothing, or sets absolute values (running it twice equals running it once):
    retried once when the store's ``retry_reads`` is on."""
    WRITE = "write"
    """Never retried: a second run could store a second copy."""
    KEYED_WRITE = "keyed write"
    """Every message carries an idempotency key, so a second run is exactly-once: retried once
    when the store's ``retry_keyed_writes`` is on."""
    ERASE = "erase"
    """An idempotent delete step of ``delete_user_data`` (resumable by design): always retried once."""


class TransactionsOp(Protocol[T_co]):
    """An operation that opens its own transactions, each with ``begin``."""

    def __call__(self, conn: Conn, *, begin: Begin) -> Awaitable[T_co]: ...


class _Connection:
    """One pooled connection for one operation; the single seam where driver errors are translated."""

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: asyncpg.Pool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Conn | None = None

    async def __aenter__(self) -> Conn:
        try:
            if self._timeout is None:
                self._conn = await self._pool.acquire()
            else:
                # asyncio.timeout, not acquire(timeout=): asyncpg implements the latter with
                # wait_for, which costs a Task on every call of every method.
                async with asyncio.timeout(self._timeout):
                    self._conn = await self._pool.acquire()
        except TimeoutError as exc:
            raise PoolTimeout(
                f"no pooled connection became free within {self._timeout} s (acquire_timeout); "
                "raise max_size or lower the load"
            ) from exc
        except Exception as exc:
            raise translate(exc) from exc
        return self._conn

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                await self._pool.release(conn)
        except asyncpg.exceptions.InternalClientError:
            # asyncpg race: the server closed the connection between the op's end and this release
            # (a restart, a killed backend), and the pool already took the holder back. Nothing is
            # left to release, and the op's outcome (it completed, or its own error) stands.
            pass
        except Exception as release_error:
            if exc is None:
                raise translate(release_error) from release_error
        if exc is not None:
            translated = translate(exc)
            if translated is not exc:
                raise translated from exc


class Runner:
    """Runs operations (``async (conn) -> T``) on a pool, under a ``Policy``.

    The attributes are the store's options of the same names (``ConversationStore`` forwards them).
    """

    __slots__ = ("acquire_timeout", "loop", "pool", "retry_keyed_writes", "retry_reads", "row_level_security")

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        acquire_timeout: float | None,
        retry_reads: bool,
        retry_keyed_writes: bool,
        row_level_security: bool,
    ) -> None:
        self.pool = pool
        #: The event loop that owns the pool: asyncpg binds a pool and its connections to the loop
        #: that created it (two loops driving one connection crashed the interpreter, issue 15).
        self.loop: asyncio.AbstractEventLoop | None = getattr(pool, "_loop", None)
        self.acquire_timeout = acquire_timeout
        self.retry_reads = retry_reads
        self.retry_keyed_writes = retry_keyed_writes
        self.row_level_security = row_level_security

    def _retries(self, policy: Policy) -> bool:
        if policy is Policy.READ:
            return self.retry_reads
        if policy is Policy.KEYED_WRITE:
            return self.retry_keyed_writes
        return policy is Policy.ERASE

    async def _attempts(self, op: Callable[[Conn], Awaitable[T]], policy: Policy) -> T:
        """``op`` on a pooled connection, once more on a fresh one if the first was lost and the
        policy allows it."""
        try:
            async with _Connection(self.pool, self.acquire_timeout) as conn:
                return await op(conn)
        except DatabaseUnavailable:
            if not self._retries(policy):
                raise
        async with _Connection(self.pool, self.acquire_timeout) as conn:
            return await op(conn)

    async def run(
        self, op: Callable[[Conn], Awaitable[T]], policy: Policy, *, user_id: str | None = None
    ) -> T:
        """Run ``op`` on one connection.

        ``user_id``: the validated user the op acts for. With ``row_level_security`` the op runs in
        a transaction where ``convdb.user_id`` is set to it (a method that leaves it out sees
        nothing under the policies: RLS fails closed).
        """
        if user_id is not None and self.row_level_security:
            op = _as_user(op, user_id)
        if asyncio.get_running_loop() is self.loop:
            return await self._attempts(op, policy)
        return await self.on_home(lambda: self._attempts(op, policy))

    async def on_home(self, work: Callable[[], Awaitable[T]]) -> T:
        """``work()`` run on the loop that owns the pool, whichever loop awaits this.

        On the owning loop it is simply awaited. From another loop (``Runner.run_sync`` of the
        OpenAI Agents SDK runs the agent on a new loop in a worker thread), it is handed to the
        owning loop with ``run_coroutine_threadsafe`` while that loop runs in another thread, so
        the pool is only ever driven by its own loop; cancelling the caller cancels it there.
        ``WrongEventLoop`` (nothing touched) when the owning loop is not running, or does not
        start the call within ``acquire_timeout`` seconds (it is blocked, e.g. by a synchronous
        wait on this very thread), or stops before the call ends.
        """
        home = self.loop
        if home is None or home is asyncio.get_running_loop():
            return await work()
        return await _forward(work, home, self.acquire_timeout)

    async def run_transactions(
        self,
        op: TransactionsOp[T],
        policy: Policy,
        *,
        user_id: str,
        guard_seconds: float | None = None,
    ) -> T:
        """Run ``op``, which opens its own transactions with the ``Begin`` it is given.

        With ``row_level_security`` each of those transactions first sets ``convdb.user_id`` (one
        round trip more per transaction, none per statement). With ``guard_seconds`` the op runs
        guarded (``guarded``): cancellation, a lost connection, or running past that bound plus a
        grace ends it and the connection, rolling back what it had not committed.
        """
        begin_as = _user_begin(user_id) if self.row_level_security else begin

        async def bound(conn: Conn) -> T:
            if guard_seconds is None:
                return await op(conn, begin=begin_as)
            return await guarded(conn, op(conn, begin=begin_as), guard_seconds)

        return await self.on_home(lambda: self._attempts(bound, policy))


def _not_running(home: asyncio.AbstractEventLoop) -> WrongEventLoop:
    state = "closed" if home.is_closed() else "not running"
    return WrongEventLoop(
        f"this ConversationStore was called from an event loop that does not own its pool, and the "
        f"loop that does is {state}: asyncpg connections cannot move between loops. Keep the "
        f"store's loop running for as long as the store is used (e.g. in a background thread, "
        f"see docs/adapters.md 'Event loops'), or call the store from its own loop"
    )


async def _forward(work: Callable[[], Awaitable[T]], home: asyncio.AbstractEventLoop,
                   start_timeout: float | None) -> T:
    """``work()`` on ``home`` (running in another thread), awaited from the running loop."""
    if home.is_closed() or not home.is_running():
        raise _not_running(home)
    started = False

    async def on_home() -> T:
        nonlocal started
        started = True
        return await work()

    try:
        future = asyncio.run_coroutine_threadsafe(on_home(), home)
    except RuntimeError as exc:  # closed between the check and the hand-over
        raise _not_running(home) from exc
    waiter = asyncio.wrap_future(future)
    deadline = None if start_timeout is None else time.monotonic() + start_timeout
    try:
        while True:
            done, _ = await asyncio.wait({waiter}, timeout=_HOME_POLL_SECONDS)
            if done:
                break
            if not home.is_running():
                waiter.cancel()
                raise WrongEventLoop(
                    "the event loop that owns this ConversationStore's pool stopped during the call; "
                    "its outcome is unknown (a write may have committed)")
            if not started and deadline is not None and time.monotonic() > deadline:
                waiter.cancel()
                raise WrongEventLoop(
                    f"the event loop that owns this ConversationStore's pool did not take the call "
                    f"within {start_timeout} s (acquire_timeout): it is blocked, e.g. by a "
                    f"synchronous call (such as Runner.run_sync) made on its thread, which waits "
                    f"for this one; nothing was sent")
    except asyncio.CancelledError:
        waiter.cancel()
        raise
    if waiter.cancelled():
        # Cancelled on the owning loop (it is shutting down: asyncio.run cancels what is left).
        raise WrongEventLoop(
            "the event loop that owns this ConversationStore's pool cancelled the call (it is shutting "
            "down); its outcome is unknown (a write may have committed)")
    return waiter.result()


def _as_user(op: Callable[[Conn], Awaitable[T]], user_id: str) -> Callable[[Conn], Awaitable[T]]:
    """``op`` in a transaction that first sets ``convdb.user_id`` (transaction-local) for RLS.

    Transactions ``op`` opens itself become savepoints. If the connection was closed under the op
    (a terminated batch, a lost server) the server has rolled back already: nothing more is sent,
    so the op's own error, or the caller's cancellation, is what propagates.
    """

    async def run(conn: Conn) -> T:
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.execute(_SET_RLS_USER, user_id)
            result = await op(conn)
        except BaseException:
            if not conn.is_closed():
                await transaction.rollback()
            raise
        await transaction.commit()
        return result

    return run


def _user_begin(user_id: str) -> Begin:
    """A ``Begin`` whose transactions set ``convdb.user_id`` first (nested ones are savepoints)."""

    @contextlib.asynccontextmanager
    async def begin_as(conn: Conn) -> AsyncIterator[None]:
        nested = conn.is_in_transaction()
        async with conn.transaction():
            if not nested:
                await conn.execute(_SET_RLS_USER, user_id)
            yield

    def factory(conn: Conn) -> AbstractAsyncContextManager[Any]:
        return begin_as(conn)

    return factory


async def guarded(conn: Conn, work: Awaitable[T], seconds: float) -> T:
    """Run a batch so that cancellation, a lost connection or a stall ends it in bounded time.

    The batch runs in its own task, because asyncpg's executemany can otherwise wait forever for a
    socket drain (when the server stops reading mid-batch) and swallows the cancellation meanwhile.
    If the caller is cancelled or ``seconds`` (plus a grace) run out, the connection is terminated:
    the server then rolls the transaction back and the socket close wakes the driver. If the
    server ends the connection, the termination listener stops the task at once. Either way the
    pool replaces the connection, so no slot leaks.
    """
    task = asyncio.ensure_future(work)
    lost = False

    def on_terminated(_: object) -> None:
        nonlocal lost
        lost = True
        task.cancel()

    conn.add_termination_listener(on_terminated)
    try:
        return await asyncio.wait_for(asyncio.shield(task), timeout=seconds + _CANCEL_GRACE_SECONDS)
    except BaseException as exc:
        stalled = not task.done()
        if stalled or isinstance(exc, TimeoutError):
            with contextlib.suppress(asyncpg.InterfaceError):  # already detached by a lost connection
                conn.terminate()
        if stalled:
            task.cancel()
            await asyncio.wait({task}, timeout=_CANCEL_GRACE_SECONDS)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved here so asyncio does not log it as never retrieved
        if isinstance(exc, TimeoutError):
            raise QueryTimeout(f"batch did not finish within {seconds:.1f} s; nothing was stored") from exc
        current = asyncio.current_task()
        caller_cancelled = current is not None and current.cancelling() > 0
        if lost and isinstance(exc, asyncio.CancelledError) and not caller_cancelled:
            raise DatabaseUnavailable(
                "connection lost during the batch; it was rolled back unless the loss came during COMMIT"
            ) from exc
        raise
    finally:
        with contextlib.suppress(asyncpg.InterfaceError):
            conn.remove_termination_listener(on_terminated)


__all__ = ["Policy", "Runner", "TransactionsOp", "guarded"]
