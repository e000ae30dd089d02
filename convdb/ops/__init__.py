"""Data access: one function per operation, ``async (conn, ...) -> T``.

Each function runs the statements named in ``sql/queries.sql`` on the connection it is given and
maps the rows to records. Nothing here validates input (the facade did, before any I/O), picks a
connection, retries or translates driver errors (the runner does): the functions can be read as
the SQL they send, in order.

Operations that need transaction boundaries of their own (a batch, an import, erasure chunks)
open them with the ``begin`` they are given, so that the runner decides what every transaction
starts with (the row-level-security user) without the operation knowing about it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"
Begin: TypeAlias = Callable[[Conn], AbstractAsyncContextManager[Any]]
"""Opens a transaction on a connection (``async with begin(conn): ...``); a savepoint when nested."""


def begin(conn: Conn) -> AbstractAsyncContextManager[Any]:
    """The plain ``Begin``: an asyncpg transaction block."""
    return conn.transaction()


__all__ = ["Begin", "Conn", "begin"]
