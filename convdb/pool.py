"""Creating the asyncpg pool convdb runs on, and the per-connection setup it relies on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg


def _identity(text: str) -> str:
    return text


def _decode_json(text: str) -> Any:
    # Most messages carry no metadata: skipping the JSON parser for "{}" is a measurable share of a
    # 50-message history read. A fresh dict each time, never a shared one.
    return {} if text == "{}" else json.loads(text)


async def init_connection(conn: asyncpg.Connection) -> None:
    """Per new connection: decode jsonb into Python values once, in the driver.

    convdb sends JSON as text parameters cast in SQL (``$n::text::jsonb``), validated and encoded
    once before any I/O, so its statements never use this encoder; it passes text through for
    callers who bind jsonb parameters on the same pool.
    """
    await conn.set_type_codec(
        "jsonb", encoder=_identity, decoder=_decode_json, schema="pg_catalog", format="text"
    )


async def skip_reset(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's default reset query.

    The default (advisory unlock, CLOSE ALL, UNLISTEN *, RESET ALL) costs a round trip on every
    release. convdb keeps no session state: it never LISTENs, takes advisory locks, opens cursors
    outside transactions or SETs session parameters (transaction-scoped settings end with the
    transaction). asyncpg still rolls back any transaction left open before calling this.
    """


def chain_init(
    user_init: Callable[[asyncpg.Connection], Awaitable[None]] | None,
) -> Callable[[asyncpg.Connection], Awaitable[None]]:
    if user_init is None:
        return init_connection

    async def init(conn: asyncpg.Connection) -> None:
        await init_connection(conn)
        await user_init(conn)

    return init


_Connect = Callable[..., Awaitable[asyncpg.Connection]]
_orphans: set[asyncio.Future[asyncpg.Connection]] = set()


def uninterrupted(connect: _Connect) -> _Connect:
    """A pool ``connect=`` whose connection attempt is not cut short by the caller's cancellation.

    The pool opens a connection inside the call that needs one. Cancelled in the middle of the
    connect, asyncpg closes the half-open socket and its SSL probe's future (``TLSUpgradeProto.
    on_data``, sslmode=prefer, the default over TCP) gets a ``ConnectionError('unexpected
    connection_lost() call')`` nobody retrieves: asyncio logs "Future exception was never
    retrieved" at ERROR level (about 40 per 600 cancelled calls in a cancellation storm, where
    terminated batches make the pool reconnect). Here the attempt runs on in its own task: the
    caller still gets its cancellation at once, and a connection that arrives afterwards is closed.
    """

    async def connect_whole(*args: Any, **kwargs: Any) -> asyncpg.Connection:
        attempt = asyncio.ensure_future(connect(*args, **kwargs))
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            if not attempt.done():
                _orphans.add(attempt)  # a strong reference until it ends
                attempt.add_done_callback(_discard)
            raise

    return connect_whole


def _discard(attempt: asyncio.Future[asyncpg.Connection]) -> None:
    _orphans.discard(attempt)
    if attempt.cancelled():
        return
    if attempt.exception() is None:  # retrieved either way: nothing is logged
        attempt.result().terminate()


async def create_pool(
    dsn: str | None,
    *,
    min_size: int,
    max_size: int,
    statement_cache_size: int,
    **options: Any,
) -> asyncpg.Pool:
    """An asyncpg pool set up for convdb: jsonb codec per connection, no per-release reset, and
    connection attempts a cancelled caller does not cut short (``uninterrupted``).

    ``statement_cache_size=0`` is for PgBouncer older than 1.21 in transaction mode; with 1.21+ and
    ``max_prepared_statements > 0`` keep the cache on.
    """
    options["init"] = chain_init(options.get("init"))
    options.setdefault("reset", skip_reset)
    options["connect"] = uninterrupted(options.get("connect") or asyncpg.connect)
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, statement_cache_size=statement_cache_size, **options
    )
    return pool
