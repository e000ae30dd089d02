"""Data access: one function per operation, ``async (conn, ...) -> T``.

Each function runs the statements named in ``sql/queries.sql`` on the connection it is given and
maps the rows to records. Nothing here validates input (the facade did, before any I/O), picks a
connection, retries or translates driver errors (the runner does): the functions can be read as
the SQL they send, in order.

Operations that need transaction boundaries of their own (a batch, an import, erasure chunks)
open them with the ``begin`` they are given, so that the runner decides what every transaction
starts with (the row-level-security user) without the operation knowing about it. Every
transaction is opened by ``begin`` here (or by a ``Begin`` built on it): none with a bare
``conn.transaction()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Final, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"
Begin: TypeAlias = Callable[[Conn], AbstractAsyncContextManager[Any]]
"""Opens a transaction on a connection (``async with begin(conn): ...``); a savepoint when nested."""


ISOLATION: Final = "read_committed"
"""The isolation every convdb transaction runs at. The statements rely on READ COMMITTED's re-check
of a row that changed while they waited for its lock (a counter bump, an xmin comparison): under
REPEATABLE READ or SERIALIZABLE concurrent writers fail with serialization errors instead."""


class _Transaction:
    """``BEGIN ISOLATION LEVEL READ COMMITTED`` (a savepoint when nested) ... COMMIT or ROLLBACK.

    One difference from asyncpg's block: when the block ends by cancellation, or on a connection
    already closed, nothing more is sent. A cancelled statement leaves the connection waiting for
    the server to acknowledge the cancel, so a ROLLBACK sent now would wait as long as a stalled
    server does, and hold the caller past its own timeout. The pool's release rolls the
    transaction back instead, within the runner's release grace (and terminates the connection
    when that runs out); asyncpg's transaction stays "managed", so that release logs nothing.
    """

    __slots__ = ("_conn", "_transaction")

    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self._transaction = conn.transaction(isolation=ISOLATION)

    async def __aenter__(self) -> None:
        await self._transaction.__aenter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None and (issubclass(exc_type, asyncio.CancelledError) or self._conn.is_closed()):
            return
        await self._transaction.__aexit__(exc_type, exc, tb)


def begin(conn: Conn) -> AbstractAsyncContextManager[Any]:
    """The plain ``Begin``: a READ COMMITTED transaction block that never waits on a cancelled
    connection (see ``_Transaction``)."""
    return _Transaction(conn)


class _Autocommit:
    __slots__ = ()

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


_AUTOCOMMIT: Final = _Autocommit()


def autocommit(conn: Conn) -> AbstractAsyncContextManager[Any]:
    """A ``Begin`` for units of one statement each: no BEGIN/COMMIT, the statement is its own
    (implicit) transaction. Only for units that are a single statement."""
    return _AUTOCOMMIT


def transaction_of(given: Begin) -> Begin:
    """A ``Begin`` for a unit of several statements, from the ``Begin`` an operation was given.

    ``autocommit`` suits single statements only; for a unit that must be one transaction (a lock,
    then a statement that relies on it) it gives way to the plain ``begin``. That loses nothing:
    the runner hands out ``autocommit`` only without row-level security, where a transaction has
    nothing to set first. Any other ``Begin`` (the row-level-security one) is returned as is.
    """
    return begin if given is autocommit else given


__all__ = ["ISOLATION", "Begin", "Conn", "autocommit", "begin", "transaction_of"]
