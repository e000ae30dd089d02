"""A store and a direct connection on each test's fresh database, and the row-lock race helper."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from convdb import ConversationStore
from tests.support import delegated
from tests.support.fix_pgbouncer import VIA_PGBOUNCER, bouncer_dsn
from tests.support.fix_server import VIA_CITUS


@pytest.fixture
async def store(request: pytest.FixtureRequest, dsn: str) -> AsyncIterator[ConversationStore]:
    if VIA_PGBOUNCER:
        bouncer = request.getfixturevalue("pgbouncer")
        async with await ConversationStore.connect(
            bouncer_dsn(bouncer, dsn), min_size=1, max_size=10, statement_cache_size=0
        ) as s:
            yield s
        return
    async with await ConversationStore.connect(dsn, min_size=1, max_size=10) as s:
        yield s


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the test database, for checking what was really stored."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def delegated_db(db: asyncpg.Connection) -> asyncpg.Connection:
    """``db`` with schema_citus.sql's delegated functions: created here on a single node (without
    the distribution), already there on Citus. A store connected after it calls them."""
    await delegated.install(db)
    return db


RaceRowLock = Callable[..., Awaitable[Any]]


@pytest.fixture
def race_row_lock(dsn: str) -> RaceRowLock:
    """Run ``call`` while another transaction, having run ``statements``, holds a row lock it needs.

    The other transaction commits only once ``call`` is seen waiting for that lock, so the race
    (a writer committing between the call's snapshot and its lock) happens every time. Returns
    what ``call`` returns.
    """

    async def race(call: Awaitable[Any], *statements: tuple[Any, ...]) -> Any:
        other = await asyncpg.connect(dsn)
        try:
            tx = other.transaction()
            await tx.start()
            for sql, *args in statements:
                await other.execute(sql, *args)
            task = asyncio.ensure_future(call)
            # Citus mode: the lock wait happens on a worker; citus_stat_activity sees every node.
            activity = "citus_stat_activity" if VIA_CITUS else "pg_stat_activity"
            for _ in range(500):
                if await other.fetchval(
                    f"SELECT count(*) FROM {activity} "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                ):
                    break
                await asyncio.sleep(0.01)
            else:
                task.cancel()
                raise AssertionError("the statement never waited for the row lock")
            await tx.commit()
            return await task
        finally:
            await other.close()

    return race
