"""Every public method through PgBouncer in transaction mode (Debian's 1.18 in CI), with the setting
that makes it work: ``statement_cache_size=0``.

Why that setting: in transaction mode PgBouncer hands each transaction (each statement, outside
one) to whichever server connection is free. asyncpg's statement cache keeps *named* prepared
statements per connection; the next use of a name can land on a server connection that never saw
it (``prepared statement "__asyncpg_stmt_1__" does not exist``). With the cache off asyncpg uses
the unnamed statement, parsed and executed within one message sequence, which PgBouncer keeps on
one server connection. PgBouncer >= 1.21 with ``max_prepared_statements > 0`` tracks named
statements itself; then keep the cache on (docs/pgbouncer.md).

.ci/run also runs the database tests a second time with CONVDB_TEST_PGBOUNCER=1 (make test-pgbouncer), which sends the
``store`` fixture of every test through PgBouncer.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from convdb import ConvDBError, ConversationStore
from convdb.testing import find_binary
from convdb.testing.pgbouncer import PgBouncer, pgbouncer_version
from tests.support.fix_pgbouncer import bouncer_dsn
from tests.support.fix_server import Server
from tests.support.surface import enable_rls, exercise_every_method, public_methods


def _version() -> tuple[int, int]:
    found = re.search(r"(\d+)\.(\d+)", pgbouncer_version())
    assert found is not None
    return int(found.group(1)), int(found.group(2))


@pytest.mark.guarantee(10)
def test_pgbouncer_runs_in_transaction_mode(pgbouncer: PgBouncer) -> None:
    result = subprocess.run(
        [find_binary("psql"), "-X", "-At", "-d", pgbouncer.dsn("pgbouncer"), "-c", "SHOW CONFIG"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    config = {line.split("|")[0]: line.split("|")[1] for line in result.stdout.splitlines() if "|" in line}
    assert config["pool_mode"] == "transaction"
    print(f"\n{pgbouncer_version()}, pool_mode={config['pool_mode']}")


@pytest.mark.parametrize(
    "rls",
    [
        False,
        True,
    ],
    ids=["plain", "row_level_security"],
)
@pytest.mark.guarantee(10)
async def test_every_public_method_through_pgbouncer(pgbouncer: PgBouncer, dsn: str, rls: bool) -> None:
    target = await enable_rls(dsn) if rls else dsn
    async with await ConversationStore.connect(
        bouncer_dsn(pgbouncer, target), min_size=2, max_size=6, statement_cache_size=0, row_level_security=rls
    ) as store:
        async with store.pool.acquire() as conn:
            # Really through PgBouncer: it answers SHOW on its admin console only, and the server
            # sees PgBouncer's own client address for our sessions.
            assert await conn.fetchval("SELECT current_user") == ("convdb_test_app" if rls else "postgres")
        called = await exercise_every_method(store, "alice", "bouncer")
    assert called == set(public_methods())


@pytest.mark.guarantee(10)
async def test_concurrent_load_through_pgbouncer(pgbouncer: PgBouncer, dsn: str) -> None:
    """More clients than server connections: transactions interleave on shared server connections."""
    import asyncio

    async with await ConversationStore.connect(
        bouncer_dsn(pgbouncer, dsn), min_size=8, max_size=16, statement_cache_size=0
    ) as store:

        async def client(i: int) -> None:
            conv = await store.get_or_create_conversation(f"b{i % 4}", f"user{i % 4}")
            for j in range(10):
                await store.save_message(
                    conv.id, conv.user_id, "user", f"{i}-{j}", idempotency_key=f"{i}-{j}"
                )
                await store.save_messages(
                    conv.id,
                    conv.user_id,
                    [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}],
                )
                await store.get_history(conv.id, conv.user_id, limit=5)

        await asyncio.gather(*(client(i) for i in range(16)))
        for c in range(4):
            history = await store.get_history(f"b{c}", f"user{c}", limit=1000)
            assert [m.seq for m in history] == list(range(1, 4 * 10 * 3 + 1))


@pytest.mark.guarantee(10)
async def test_statement_cache_on_fails_through_pgbouncer_118_transaction_mode(
    pg_server: Server, dsn: str, tmp_path: Path
) -> None:
    """The reason for statement_cache_size=0 on PgBouncer < 1.21, demonstrated deterministically: with
    server_round_robin the next transaction goes to the other server connection, which never saw the
    named statement prepared on the first."""
    address = urlsplit(pg_server.admin_dsn)
    with PgBouncer(
        tmp_path / "rr",
        server_host=address.hostname or "127.0.0.1",
        server_port=address.port or 5432,
        users=[address.username or "postgres"],
        settings={"server_round_robin": "1"},
    ) as bouncer:
        target = bouncer_dsn(bouncer, dsn)
        # Two server connections exist: two clients in a transaction at the same time.
        holders = [await asyncpg.connect(target, statement_cache_size=0) for _ in range(2)]
        for holder in holders:
            await holder.execute("BEGIN; SELECT 1")
        for holder in holders:
            await holder.execute("COMMIT")
            await holder.close()
        async with await ConversationStore.connect(
            target, min_size=1, max_size=1, verify_schema=False
        ) as store:

            async def create_and_read() -> None:
                # Which statement meets the other server connection first depends on the server's
                # answers (on Citus already the create): the sequence as a whole must fail.
                conv = await store.get_or_create_conversation("cached", "alice")
                for _ in range(4):
                    await store.get_conversation(conv.id, "alice")

            if _version() >= (1, 21):
                await create_and_read()  # PgBouncer tracks the names itself
                return
            with pytest.raises(ConvDBError, match="prepared statement"):
                await create_and_read()
        # The same sequence with the cache off works.
        async with await ConversationStore.connect(
            target, min_size=1, max_size=1, statement_cache_size=0
        ) as store:
            conv = await store.get_or_create_conversation("cached", "alice")
            for _ in range(4):
                await store.get_conversation(conv.id, "alice")
