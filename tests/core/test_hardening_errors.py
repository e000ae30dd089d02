"""Issue 10 item 9: every server error comes out as a documented type carrying its SQLSTATE.

The errors are produced by the real server (lock waits, a deadlock, a serialization failure),
never built by hand.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

import convdb
from convdb import ConstraintViolation, ConvDBError, ConversationStore, QueryTimeout, TransientError
from convdb.errors import translate
from tests.support.fix_server import Server

pytestmark = pytest.mark.guarantee(6)

U = "alice"


async def test_lock_timeout_is_a_query_timeout_with_its_sqlstate(
    dsn: str, db: asyncpg.Connection, pg_server: Server, db_name: str
) -> None:
    """On Citus the row lock is waited for on the worker holding the shard, by the connection the
    coordinator opened there, which does not carry the client's session settings: lock_timeout
    must be set on the workers too (here for the database, before the store connects; see
    docs/citus.md). The worker's 55P03 comes back through the coordinator unchanged."""
    if pg_server.citus is not None:
        for worker in pg_server.citus.node_dsns(db_name)[1:]:
            conn = await asyncpg.connect(worker)
            try:
                await conn.execute(f"ALTER DATABASE \"{db_name}\" SET lock_timeout = '200ms'")
            finally:
                await conn.close()
    async with await ConversationStore.connect(
        dsn, min_size=1, max_size=2, server_settings={"lock_timeout": "200ms"}
    ) as store:
        await store.get_or_create_conversation("c", U)
        holder = db.transaction()
        await holder.start()
        await db.execute("SELECT 1 FROM conversations WHERE id = 'c' FOR UPDATE")
        try:
            with pytest.raises(QueryTimeout) as caught:
                await store.save_message("c", U, "user", "blocked")
        finally:
            await holder.rollback()
        assert caught.value.sqlstate == "55P03"
        assert "lock_timeout" in str(caught.value)
        assert (await store.save_message("c", U, "user", "after")).seq == 1


async def _deadlock(dsn: str) -> asyncpg.PostgresError:
    """Two transactions that each wait for the other's row: the server aborts one of them."""
    a, b = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        await a.execute("INSERT INTO conversations (id, user_id) VALUES ('x', 'u'), ('y', 'u')")
        ta, tb = a.transaction(), b.transaction()
        await ta.start()
        await tb.start()
        await a.execute("UPDATE conversations SET title = 'a' WHERE id = 'x'")
        await b.execute("UPDATE conversations SET title = 'b' WHERE id = 'y'")
        results = await asyncio.gather(
            a.execute("UPDATE conversations SET title = 'a' WHERE id = 'y'"),
            b.execute("UPDATE conversations SET title = 'b' WHERE id = 'x'"),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1, results
        assert isinstance(errors[0], asyncpg.PostgresError)
        return errors[0]
    finally:
        await a.close()
        await b.close()


async def _serialization_failure(dsn: str) -> asyncpg.PostgresError:
    a, b = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        await a.execute("INSERT INTO conversations (id, user_id) VALUES ('s', 'u')")
        ta = a.transaction(isolation="repeatable_read")
        tb = b.transaction(isolation="repeatable_read")
        await ta.start()
        await tb.start()
        await a.fetchval("SELECT title FROM conversations WHERE id = 's'")
        await b.fetchval("SELECT title FROM conversations WHERE id = 's'")
        await b.execute("UPDATE conversations SET title = 'b' WHERE id = 's'")
        await tb.commit()
        with pytest.raises(asyncpg.PostgresError) as caught:
            await a.execute("UPDATE conversations SET title = 'a' WHERE id = 's'")
        return caught.value
    finally:
        await a.close()
        await b.close()


async def test_deadlock_and_serialization_failure_are_transient(dsn: str) -> None:
    for made, sqlstate in ((await _deadlock(dsn), "40P01"), (await _serialization_failure(dsn), "40001")):
        assert made.sqlstate == sqlstate
        out = translate(made)
        assert type(out) is TransientError, out
        assert out.sqlstate == sqlstate
        assert "retried" in str(out)


async def test_every_translated_server_error_carries_its_sqlstate(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    # The generic fallback: a server error convdb has no special type for.
    with pytest.raises(asyncpg.PostgresError) as raw:
        await db.execute("SELECT 1 / 0")
    generic = translate(raw.value)
    assert type(generic) is ConvDBError and generic.sqlstate == "22012"
    # Through the store: a DBA's own CHECK refuses a title convdb's validation lets through.
    await store.get_or_create_conversation("c", U)
    await db.execute("ALTER TABLE conversations ADD CONSTRAINT short_title CHECK (length(title) < 5)")
    with pytest.raises(ConstraintViolation) as caught:
        await store.update_conversation("c", U, title="far too long")
    assert caught.value.sqlstate == "23514" and caught.value.constraint == "short_title"
    # Errors that do not come from the server have none.
    not_from_server = translate(TimeoutError())
    assert isinstance(not_from_server, ConvDBError) and not_from_server.sqlstate is None


def test_transient_error_is_exported() -> None:
    assert convdb.TransientError is TransientError and "TransientError" in convdb.__all__
    assert issubclass(TransientError, ConvDBError)
