"""Migrations against a real server: every version's two build paths give the same catalog, each
migration is idempotent, stamps its version and floor, and refuses to run out of order leaving the
database exactly as it was; schema.sql refuses an older database instead of skipping its tables."""

from __future__ import annotations

import pytest

from convdb import SCHEMA_VERSION, ConversationStore
from convdb.migrations import MIGRATIONS
from convdb.testing import apply_schema, apply_sql, catalog_snapshot
from tests.schema.schema_support import (
    RELEASES_DIR,
    SCHEMA,
    SCHEMA_RLS,
    NewDatabase,
    fresh_install_file,
    new_db,
)

__all__ = ["new_db"]  # the fixture, imported for pytest

VERSIONS = [m.version for m in MIGRATIONS]


async def migrated(new_db: NewDatabase, to_version: int) -> str:
    dsn = await new_db()
    for m in MIGRATIONS[:to_version]:
        apply_sql(dsn, m.sql)
    return dsn


def test_every_released_version_has_its_fresh_install_sql() -> None:
    assert list(range(1, SCHEMA_VERSION + 1)) == VERSIONS
    for version in VERSIONS:
        assert fresh_install_file(version).exists(), f"keep schema.sql of version {version} in {RELEASES_DIR}"
        assert f"version {version}" in fresh_install_file(version).read_text().splitlines()[0]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("rls", [False, True], ids=["plain", "rls"])
async def test_migrations_give_the_catalog_of_the_fresh_install(
    new_db: NewDatabase, version: int, rls: bool
) -> None:
    fresh = await new_db()
    apply_schema(fresh, fresh_install_file(version))
    stepped = await migrated(new_db, version)
    if rls:
        apply_schema(fresh, SCHEMA_RLS)
        apply_schema(stepped, SCHEMA_RLS)
    expected = await catalog_snapshot(fresh)
    assert ("table", "messages", "r rls=" + ("true" if rls else "false") + " force=false", "") in expected
    assert any(row[0] == "policy" for row in expected) == rls
    assert await catalog_snapshot(stepped) == expected


async def test_an_old_release_upgraded_by_migrations_equals_schema_sql(new_db: NewDatabase) -> None:
    """What real databases are: built by an older release's schema.sql, then migrated."""
    for start in VERSIONS[:-1]:
        upgraded = await new_db()
        apply_schema(upgraded, fresh_install_file(start))
        for m in MIGRATIONS[start:]:
            apply_sql(upgraded, m.sql)
        fresh = await new_db()
        apply_schema(fresh, SCHEMA)
        assert await catalog_snapshot(upgraded) == await catalog_snapshot(fresh), f"from version {start}"


@pytest.mark.parametrize("migration", MIGRATIONS, ids=lambda m: m.filename)
async def test_each_migration_stamps_its_version_and_floor_and_reruns_as_a_no_op(
    new_db: NewDatabase, migration: object
) -> None:
    from convdb.migrations import Migration

    assert isinstance(migration, Migration)
    dsn = await migrated(new_db, migration.version)
    after = await catalog_snapshot(dsn)
    version_row = [row for row in after if row[0] == "version row"]
    assert len(version_row) == 1 and f'"version": {migration.version}' in version_row[0][1]
    if migration.version >= 2:  # the floor column arrives with 0002
        assert f'"compatible_from": {migration.floor}' in version_row[0][1]
    apply_sql(dsn, migration.sql)
    assert await catalog_snapshot(dsn) == after


@pytest.mark.parametrize("migration", MIGRATIONS[1:], ids=lambda m: m.filename)
async def test_a_migration_out_of_order_fails_and_changes_nothing(
    new_db: NewDatabase, migration: object
) -> None:
    from convdb.migrations import Migration

    assert isinstance(migration, Migration)
    # Too early: the database is two versions behind (or empty).
    behind = await migrated(new_db, migration.version - 2)
    before = await catalog_snapshot(behind)
    with pytest.raises(
        RuntimeError,
        match=rf"convdb migration {migration.version:04d} takes schema version "
        rf"{migration.version - 1} to {migration.version}",
    ):
        apply_sql(behind, migration.sql)
    assert await catalog_snapshot(behind) == before


async def test_0001_refuses_a_newer_database(new_db: NewDatabase) -> None:
    dsn = await new_db()
    apply_schema(dsn, SCHEMA)
    before = await catalog_snapshot(dsn)
    with pytest.raises(
        RuntimeError, match=f"creates schema version 1, but this database is at version {SCHEMA_VERSION}"
    ):
        apply_sql(dsn, MIGRATIONS[0].sql)
    assert await catalog_snapshot(dsn) == before


async def test_schema_sql_refuses_an_older_database_instead_of_skipping_its_tables(
    new_db: NewDatabase,
) -> None:
    """The issue's v1 hazard: CREATE TABLE IF NOT EXISTS would skip every changed table and the
    stamp would claim version 2."""
    dsn = await new_db()
    apply_schema(dsn, fresh_install_file(1))
    before = await catalog_snapshot(dsn)
    with pytest.raises(RuntimeError) as info:
        apply_schema(dsn, SCHEMA)
    assert f"installs schema version {SCHEMA_VERSION}, but this database is at version 1" in str(info.value)
    assert "python -m convdb migrations --from 1" in str(info.value)
    assert await catalog_snapshot(dsn) == before


async def test_schema_sql_twice_and_the_package_accepts_it(new_db: NewDatabase) -> None:
    dsn = await new_db()
    apply_schema(dsn, SCHEMA)
    first = await catalog_snapshot(dsn)
    apply_schema(dsn, SCHEMA)
    assert await catalog_snapshot(dsn) == first
    async with await ConversationStore.connect(dsn, min_size=1, max_size=1) as store:
        await store.verify_schema()


async def test_the_snapshot_sees_what_the_equivalence_relies_on(new_db: NewDatabase) -> None:
    """The comparison above is only as good as the snapshot: each kind of drift changes it."""
    dsn = await new_db()
    apply_schema(dsn, SCHEMA)
    apply_schema(dsn, SCHEMA_RLS)
    base = await catalog_snapshot(dsn)
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        for change, undo in [
            (
                "ALTER TABLE messages ALTER COLUMN token_count SET DEFAULT 1",
                "ALTER TABLE messages ALTER COLUMN token_count SET DEFAULT 0",
            ),
            (
                "ALTER TABLE messages ALTER COLUMN content SET NOT NULL",
                "ALTER TABLE messages ALTER COLUMN content DROP NOT NULL",
            ),
            (
                "ALTER INDEX conversations_user_id RENAME TO x",
                "ALTER INDEX x RENAME TO conversations_user_id",
            ),
            (
                "ALTER TABLE messages RENAME CONSTRAINT messages_valid TO x",
                "ALTER TABLE messages RENAME CONSTRAINT x TO messages_valid",
            ),
            (
                "ALTER TABLE conversation_summaries RENAME CONSTRAINT conversation_summaries_role_known TO x",
                "ALTER TABLE conversation_summaries RENAME CONSTRAINT x TO conversation_summaries_role_known",
            ),
            (
                "ALTER FUNCTION convdb_check_message(bigint, text, text, text, text, jsonb, jsonb, integer, text, "
                "integer, integer, integer, integer, numeric, integer) VOLATILE",
                "ALTER FUNCTION convdb_check_message(bigint, text, text, text, text, jsonb, jsonb, integer, text, "
                "integer, integer, integer, integer, numeric, integer) IMMUTABLE",
            ),
            ("REVOKE DELETE ON messages FROM convdb_app", "GRANT DELETE ON messages TO convdb_app"),
            (
                "ALTER POLICY convdb_conversations_owner ON conversations USING (true)",
                "ALTER POLICY convdb_conversations_owner ON conversations "
                "USING (user_id = current_setting('convdb.user_id', true))",
            ),
            (
                "ALTER TABLE messages DISABLE ROW LEVEL SECURITY",
                "ALTER TABLE messages ENABLE ROW LEVEL SECURITY",
            ),
            (
                "UPDATE convdb_schema_version SET compatible_from = 2",
                f"UPDATE convdb_schema_version SET compatible_from = {MIGRATIONS[-1].floor}",
            ),
        ]:
            await conn.execute(change)
            assert await catalog_snapshot(dsn) != base, change
            await conn.execute(undo)
            assert await catalog_snapshot(dsn) == base, undo
    finally:
        await conn.close()


async def test_two_runs_of_a_migration_at_once_serialise(new_db: NewDatabase) -> None:
    """Two DBAs apply 0002 at the same moment: the second waits for the first's lock, then finds the
    work done and re-runs as a no-op (no deadlock, no error)."""
    import asyncio

    import asyncpg

    from convdb.testing import find_binary

    dsn = await new_db()
    apply_schema(dsn, fresh_install_file(1))
    first = await asyncpg.connect(dsn)
    monitor = await asyncpg.connect(dsn)
    try:
        tx = first.transaction()
        await tx.start()
        body = "\n".join(line for line in MIGRATIONS[1].sql.splitlines() if line not in ("BEGIN;", "COMMIT;"))
        await first.execute(body)  # holds its locks until COMMIT
        second = await asyncio.create_subprocess_exec(
            find_binary("psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            dsn,
            "-f",
            "-",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert second.stdin is not None
        second.stdin.write(MIGRATIONS[1].sql.encode())
        await second.stdin.drain()
        second.stdin.close()
        for _ in range(1000):
            # A fresh transaction each time: pg_stat_activity is a snapshot per transaction.
            if await monitor.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            ):
                break
            await asyncio.sleep(0.01)
        else:
            second.kill()
            raise AssertionError("the second run never waited for the first one's lock")
        await tx.commit()
    finally:
        await first.close()
        await monitor.close()
    _, err = await asyncio.wait_for(second.communicate(), 120)
    assert second.returncode == 0, err.decode()
    fresh = await new_db()
    apply_schema(fresh, fresh_install_file(2))
    assert await catalog_snapshot(dsn) == await catalog_snapshot(fresh)


@pytest.mark.parametrize("version", [7, 8])
async def test_a_migration_locking_both_tables_never_deadlocks_a_writer(
    new_db: NewDatabase, version: int
) -> None:
    """Writers lock messages and conversations in both orders (save_message's statement takes
    messages first). The exact interleaving that deadlocked 0007 and 0008 under a live writer: a
    writer holds messages, the migration takes conversations and queues for messages, then the
    writer asks for conversations. Without the migrations' lock-both-or-neither block PostgreSQL
    cancels one of the two after deadlock_timeout; with it the migration gives back what it took
    within 100 ms, the writer's update runs, and the migration follows."""
    import asyncio

    import asyncpg

    from convdb.testing import find_binary

    dsn = await new_db()
    apply_schema(dsn, fresh_install_file(version - 1))
    writer = await asyncpg.connect(dsn)
    monitor = await asyncpg.connect(dsn)
    psql = None
    try:
        await writer.execute("INSERT INTO conversations (id, user_id) VALUES ('c', 'u')")
        tx = writer.transaction()
        await tx.start()
        await writer.execute("LOCK TABLE messages IN ROW EXCLUSIVE MODE")  # as an INSERT's first step
        psql = await asyncio.create_subprocess_exec(
            find_binary("psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            dsn,
            "-f",
            "-",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert psql.stdin is not None
        psql.stdin.write(MIGRATIONS[version - 1].sql.encode())
        await psql.stdin.drain()
        psql.stdin.close()
        for _ in range(3000):
            # The migration holds conversations and waits for messages (the writer's).
            if await monitor.fetchval(
                "SELECT count(*) FROM pg_locks l JOIN pg_locks w ON w.pid = l.pid "
                "WHERE l.relation = 'conversations'::regclass AND l.mode = 'AccessExclusiveLock' AND l.granted "
                "AND w.relation = 'messages'::regclass AND NOT w.granted"
            ):
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError("the migration never held conversations while waiting for messages")
        # The writer's next step: the conversation row (what save_message's CTE updates).
        await asyncio.wait_for(
            writer.execute("UPDATE conversations SET next_seq = next_seq + 1 WHERE id = 'c'"), 30
        )
        await tx.commit()
        _, err = await asyncio.wait_for(psql.communicate(), 60)
        assert psql.returncode == 0, err.decode()
        assert await monitor.fetchval("SELECT version FROM convdb_schema_version") == version
        assert await monitor.fetchval("SELECT next_seq FROM conversations WHERE id = 'c'") == 2
    finally:
        if psql is not None and psql.returncode is None:
            psql.kill()
            await psql.wait()
        await writer.close()
        await monitor.close()
