"""The runner: how an operation meets the database.

It acquires a pooled connection and releases it; translates driver errors into ``ConvDBError``s
(the single seam: ``_Connection``, which calls ``errors.translate``); retries once on a lost
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

from .errors import ConvDBError, DatabaseUnavailable, PoolTimeout, QueryTimeout, WrongEventLoop, translate
from .ops import Begin, Conn, autocommit, begin

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

_CANCEL_GRACE_SECONDS: Final = 5.0
# How often a call forwarded to the owning loop checks that the loop still runs: a loop stopped
# with loop.stop() never completes (nor cancels) the forwarded task, so waiting on it alone would
# block the caller forever.
_HOME_POLL_SECONDS: Final = 0.5
RELEASE_GRACE_SECONDS: Final = 2.0
"""How long the release of a connection whose operation failed or was cancelled may take.

A cancelled statement leaves its connection waiting for the server to acknowledge the cancel (and
an open transaction to be rolled back). Against a stalled server (a stopped backend, a black-holed
network) that never happens, and asyncpg's release would wait with no limit, holding the caller
past its own timeout. After this grace the connection is terminated and its pool slot reopens
with a new one. A healthy server acknowledges in milliseconds (the cancellation storm of
test_reliability_faults.py releases thousands this way), so the grace only ever runs out on a
stall."""


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
    """An idempotent delete step of ``delete_user_data`` (resumable by design): a second run
    deletes only what the first left, so, like a keyed write, it is retried once when the store's
    ``retry_keyed_writes`` is on (the one switch for "retry writes that cannot duplicate"). The
    erasure's listing step is a ``READ``."""


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
                _free_if_closed(conn)
                # Bounded only after a failure or cancellation: a completed operation leaves nothing
                # to wait for (no transaction, no cancel in flight), so its release sends nothing.
                await self._pool.release(conn, timeout=None if exc is None else RELEASE_GRACE_SECONDS)
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


def _free_if_closed(conn: Conn) -> None:
    """Give a closed connection's pool slot back now, by terminating it.

    asyncpg's release does nothing for a connection that is already closed: it counts on the
    connection's cleanup (run when the socket closes) to free the slot. A server restart can close
    a connection without that cleanup: a batch on it (save_messages, under ``guarded``) failed with
    ``InternalClientError: cannot switch to state ...; another operation (2) is in progress`` and
    its connection was closed, but the slot stayed taken for good. The pool then ran one connection
    short, and ``Pool.close()`` waited forever for it
    (``test_restart_under_keyed_append_load_loses_and_duplicates_nothing``: 1 to 3 of 8 slots lost
    per run, on main too). ``terminate()`` runs that cleanup, which frees the slot (a new
    connection is opened on the next acquire); after it the release has nothing left to do.
    """
    with contextlib.suppress(asyncpg.InterfaceError):  # already back in the pool: nothing to free
        if conn.is_closed():
            conn.terminate()


class Runner:
    """Runs operations (``async (conn) -> T``) on a pool, under a ``Policy``.

    The attributes are the store's options of the same names (``ConversationStore`` forwards them).
    """

    __slots__ = (
        "_closing",
        "_drained",
        "_in_flight",
        "_loop",
        "acquire_timeout",
        "pool",
        "retry_keyed_writes",
        "retry_reads",
        "row_level_security",
    )

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
        self.acquire_timeout = acquire_timeout
        self.retry_reads = retry_reads
        self.retry_keyed_writes = retry_keyed_writes
        self.row_level_security = row_level_security
        # The event loop the pool was created in (asyncpg keeps it as Pool._loop). A pool, its
        # queue and its connections belong to that loop; a call from another loop must not touch
        # them. Issue 15 (a store usable from several loops) would replace this one loop by one
        # pool per loop, looked up here, in _check_loop, the only place that needs to know.
        self._loop: asyncio.AbstractEventLoop | None = getattr(pool, "_loop", None)
        self._closing = False
        self._in_flight = 0
        self._drained: asyncio.Event | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop that owns the pool (calls from other loops are served on it, ``on_home``)."""
        return self._loop

    async def on_home(self, work: Callable[[], Awaitable[T]]) -> T:
        """``work()`` run on the loop that owns the pool, whichever loop awaits this.

        On the owning loop it is simply awaited. From another loop (``Runner.run_sync`` of the
        OpenAI Agents SDK runs the agent on a new loop in a worker thread), it is handed to the
        owning loop with ``run_coroutine_threadsafe`` while that loop runs in another thread, so
        the pool is only ever driven by its own loop; cancelling the caller cancels it there.
        ``WrongEventLoop`` (nothing touched) when the owning loop is not running, or does not
        start the call within ``acquire_timeout`` seconds (it is blocked, e.g. by a synchronous
        wait on this very thread), or stops before the call ends. (Issue 15: this replaces a
        pool per loop, which would open connections per ``run_sync`` thread, never closed.)
        """
        home = self._loop
        if home is None or home is asyncio.get_running_loop():
            return await work()
        return await _forward(work, home, self.acquire_timeout)

    def _check_loop(self) -> None:
        if self._loop is not None and asyncio.get_running_loop() is not self._loop:
            raise WrongEventLoop(
                "this ConversationStore belongs to another event loop (the one its pool was created "
                "in); create a store per event loop, or call it from its own loop "
                "(asyncio.run_coroutine_threadsafe)"
            )

    async def drain(self) -> None:
        """Refuse new operations, then wait until every operation in flight has ended.

        Operations in flight run to their end on the open pool (each is bounded by its own
        timeouts); a new one raises ``ConvDBError``. Closing the pool under them instead would have
        asyncpg cancel their statements mid-protocol and raise its internal errors.
        """
        self._check_loop()
        self._closing = True
        if self._in_flight:
            if self._drained is None:  # one event for every close() that waits
                self._drained = asyncio.Event()
            await self._drained.wait()

    def _retries(self, policy: Policy) -> bool:
        if policy is Policy.READ:
            return self.retry_reads
        if policy is Policy.KEYED_WRITE or policy is Policy.ERASE:
            return self.retry_keyed_writes
        return False

    async def _attempts(self, op: Callable[[Conn], Awaitable[T]], policy: Policy) -> T:
        """``op`` on a pooled connection, once more on a fresh one if the first was lost and the
        policy allows it."""
        self._check_loop()
        if self._closing:
            raise ConvDBError("the store is closed (close() was called)")
        self._in_flight += 1
        try:
            try:
                async with _Connection(self.pool, self.acquire_timeout) as conn:
                    return await op(conn)
            except DatabaseUnavailable:
                if not self._retries(policy):
                    raise
            async with _Connection(self.pool, self.acquire_timeout) as conn:
                return await op(conn)
        finally:
            self._in_flight -= 1
            if not self._in_flight and self._drained is not None:
                self._drained.set()

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
        if asyncio.get_running_loop() is self._loop:
            return await self._attempts(op, policy)
        return await self.on_home(lambda: self._attempts(op, policy))

    async def run_transactions(
        self,
        op: TransactionsOp[T],
        policy: Policy,
        *,
        user_id: str,
        guard_seconds: float | None = None,
        single_statements: bool = False,
    ) -> T:
        """Run ``op``, which opens its own transactions with the ``Begin`` it is given.

        With ``row_level_security`` each of those transactions first sets ``convdb.user_id`` (one
        round trip more per transaction, none per statement). ``single_statements``: the op's
        transactions are one statement each, so without row-level security they are sent bare
        (``ops.autocommit``: no BEGIN/COMMIT round trips). With ``guard_seconds`` the op runs
        guarded (``guarded``): cancellation, a lost connection, or running past that bound plus a
        grace ends it and the connection, rolling back what it had not committed.
        """
        if self.row_level_security:
            begin_as = _user_begin(user_id)
        else:
            begin_as = autocommit if single_statements else begin

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


async def _forward(
    work: Callable[[], Awaitable[T]], home: asyncio.AbstractEventLoop, start_timeout: float | None
) -> T:
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
                    "its outcome is unknown (a write may have committed)"
                )
            if not started and deadline is not None and time.monotonic() > deadline:
                waiter.cancel()
                raise WrongEventLoop(
                    f"the event loop that owns this ConversationStore's pool did not take the call "
                    f"within {start_timeout} s (acquire_timeout): it is blocked, e.g. by a "
                    f"synchronous call (such as Runner.run_sync) made on its thread, which waits "
                    f"for this one; nothing was sent"
                )
    except asyncio.CancelledError:
        waiter.cancel()
        raise
    if waiter.cancelled():
        # Cancelled on the owning loop (it is shutting down: asyncio.run cancels what is left).
        raise WrongEventLoop(
            "the event loop that owns this ConversationStore's pool cancelled the call (it is shutting "
            "down); its outcome is unknown (a write may have committed)"
        )
    return waiter.result()


def set_rls_user(user_id: str) -> str:
    """The first statement of every transaction with ``row_level_security``: ``SET LOCAL
    convdb.user_id``, the user the policies of schema_rls.sql admit. Transaction-local: it ends
    with the transaction, so a pooled (or PgBouncer-shared) connection never carries it to another
    user.

    ``SET LOCAL`` rather than ``set_config(..., true)``: on Citus only a SET statement reaches the
    workers, which evaluate the policies on the shards (with ``citus.propagate_set_commands =
    'local'``, which schema_rls.sql sets there); PostgreSQL reads both the same way. SET takes no
    parameter, so the validated id (1 to 255 characters, no NUL) is written as an escape string
    literal, its backslashes and quotes escaped: E'' strings mean the same whatever
    standard_conforming_strings says. The only convdb statement with a value in its text
    (tests/security/test_security_rls_setting.py sends hostile ids through it). One round trip,
    as the prepared set_config was."""
    escaped = user_id.replace("\\", "\\\\").replace("'", "\\'")
    return f"SET LOCAL convdb.user_id = E'{escaped}'"


def _as_user(op: Callable[[Conn], Awaitable[T]], user_id: str) -> Callable[[Conn], Awaitable[T]]:
    """``op`` in a transaction that first sets ``convdb.user_id`` (transaction-local) for RLS.

    Transactions ``op`` opens itself become savepoints. The transaction is ``ops.begin``'s: on a
    cancellation or a connection closed under the op (a terminated batch, a lost server) nothing
    more is sent, so the op's own error, or the caller's cancellation, is what propagates, and
    the release rolls back within its grace.
    """

    async def run(conn: Conn) -> T:
        async with begin(conn):
            await conn.execute(set_rls_user(user_id))
            return await op(conn)

    return run


def _user_begin(user_id: str) -> Begin:
    """A ``Begin`` whose transactions set ``convdb.user_id`` first (nested ones are savepoints)."""

    @contextlib.asynccontextmanager
    async def begin_as(conn: Conn) -> AsyncIterator[None]:
        nested = conn.is_in_transaction()
        async with begin(conn):
            if not nested:
                await conn.execute(set_rls_user(user_id))
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
