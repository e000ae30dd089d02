"""Rolling upgrades with the test-only migrations V+1 (additive) and V+2 (breaking, floor V+1), V
being this package's SCHEMA_VERSION (the files in schema_test_migrations/ are renumbered when it moves):
this package keeps working on an additively migrated database, refuses one whose floor is above it,
a later package (SCHEMA_VERSION monkeypatched) refuses a database that lacks its migrations and
names them, and migrations applied out of order fail and change nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from convdb import (
    SCHEMA_VERSION,
    ConstraintViolation,
    ConversationStore,
    SchemaMismatch,
    migrations,
    schema_check,
)
from convdb.migrations import Migration
from convdb.testing import apply_schema, apply_sql, catalog_snapshot
from tests.schema.schema_support import SCHEMA, NewDatabase, new_db, with_test_migrations

__all__ = ["new_db"]  # the fixture, imported for pytest

ALL = with_test_migrations()
V = SCHEMA_VERSION
ADDITIVE, BREAKING = ALL[V], ALL[V + 1]


def test_the_test_migrations_declare_their_kinds() -> None:
    # An additive migration keeps the floor the database had (the last shipped migration's).
    assert (ADDITIVE.version, ADDITIVE.kind, ADDITIVE.floor) == (V + 1, "additive", ALL[V - 1].floor)
    assert (BREAKING.version, BREAKING.kind, BREAKING.floor) == (V + 2, "breaking", V + 1)


async def current_database(new_db: NewDatabase) -> str:
    dsn = await new_db()
    apply_schema(dsn, SCHEMA)
    return dsn


async def exercise(store: ConversationStore, user: str) -> None:
    """A few real operations, each on a different statement."""
    conv = await store.get_or_create_conversation(None, user, title="t")
    await store.save_message(conv.id, user, "user", "hello", idempotency_key="k1")
    await store.save_message(conv.id, user, "user", "hello", idempotency_key="k1")  # the retry
    await store.save_messages(
        conv.id, user, [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "bye"}]
    )
    history = await store.get_history(conv.id, user)
    assert [(m.seq, m.content) for m in history] == [(1, "hello"), (2, "hi"), (3, "bye")]
    assert [c.id for c in (await store.list_conversations(user)).items] == [conv.id]
    assert await store.count_messages(conv.id, user) == 3
    await store.delete_conversation(conv.id, user)


async def test_this_package_keeps_working_on_an_additively_migrated_database(new_db: NewDatabase) -> None:
    dsn = await current_database(new_db)
    async with await ConversationStore.connect(dsn, min_size=1, max_size=2) as running:
        await exercise(running, "before")
        apply_sql(dsn, ADDITIVE.sql)  # under a running server
        await exercise(running, "running")
    async with await ConversationStore.connect(
        dsn, min_size=1, max_size=2
    ) as restarted:  # connect() accepts V + 1
        await exercise(restarted, "restarted")


async def test_a_breaking_migration_raises_the_floor_and_this_package_refuses(new_db: NewDatabase) -> None:
    dsn = await current_database(new_db)
    apply_sql(dsn, ADDITIVE.sql)
    async with await ConversationStore.connect(dsn, min_size=1, max_size=2) as running:
        conv = await running.get_or_create_conversation(None, "alice")
        apply_sql(dsn, BREAKING.sql)
        # What the floor protects against: this package does not write the column BREAKING requires.
        with pytest.raises(ConstraintViolation):
            await running.save_message(conv.id, "alice", "user", "x")
    with pytest.raises(SchemaMismatch) as info:
        await ConversationStore.connect(dsn, min_size=1, max_size=1)
    assert (
        f"the database is at schema version {V + 2} and supports packages built for schema {V + 1} or later; "
        f"this package is built for schema {V}: it is too old, upgrade convdb"
    ) in str(info.value)


@pytest.fixture
def later_package(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """This code standing in for a package built for a later schema that ships the test migrations."""

    def become(version: int) -> None:
        monkeypatch.setattr(schema_check, "SCHEMA_VERSION", version)
        monkeypatch.setattr(migrations, "MIGRATIONS", ALL[:version])

    return become


async def test_a_later_package_refuses_a_database_without_its_migrations_and_names_them(
    new_db: NewDatabase, later_package: Callable[[int], None]
) -> None:
    later_package(V + 2)
    dsn = await current_database(new_db)
    with pytest.raises(SchemaMismatch) as info:
        await ConversationStore.connect(dsn, min_size=1, max_size=1)
    assert (
        f"the database is at schema version {V} and this package needs version {V + 2}: apply, in order, "
        f"{ADDITIVE.filename}, {BREAKING.filename} with: python -m convdb migrations --from {V} "
        "| psql -v ON_ERROR_STOP=1 -d <database> -f -"
    ) in str(info.value)
    apply_sql(dsn, ADDITIVE.sql)
    with pytest.raises(
        SchemaMismatch,
        match=rf"at schema version {V + 1} .* apply, in order, {BREAKING.filename.replace('.', '[.]')} "
        rf"with: python -m convdb migrations --from {V + 1}",
    ):
        await ConversationStore.connect(dsn, min_size=1, max_size=1)
    apply_sql(dsn, BREAKING.sql)
    async with await ConversationStore.connect(dsn, min_size=1, max_size=1) as store:
        await store.verify_schema()
    later_package(V + 1)  # a package built for schema V + 1 is at the floor: accepted
    async with await ConversationStore.connect(dsn, min_size=1, max_size=1) as store:
        await store.verify_schema()


@pytest.mark.parametrize(
    ("applied", "migration"),
    [
        pytest.param(V, BREAKING, id="breaking-on-current"),
        pytest.param(V + 2, ADDITIVE, id="additive-on-breaking"),
        pytest.param(V + 1, ALL[V - 1], id="current-on-additive"),
        pytest.param(V + 2, ALL[V - 1], id="current-on-breaking"),
    ],
)
async def test_out_of_order_fails_and_changes_nothing(
    new_db: NewDatabase, applied: int, migration: Migration
) -> None:
    dsn = await current_database(new_db)
    for m in ALL[V:applied]:
        apply_sql(dsn, m.sql)
    before = await catalog_snapshot(dsn)
    with pytest.raises(
        RuntimeError,
        match=rf"convdb migration {migration.version:04d} takes schema version "
        rf"{migration.version - 1} to {migration.version}, but this "
        rf"database is at version {applied}",
    ):
        apply_sql(dsn, migration.sql)
    assert await catalog_snapshot(dsn) == before


async def test_the_test_migrations_rerun_as_no_ops(new_db: NewDatabase) -> None:
    dsn = await current_database(new_db)
    for m in (ADDITIVE, BREAKING):
        apply_sql(dsn, m.sql)
        after = await catalog_snapshot(dsn)
        apply_sql(dsn, m.sql)
        assert await catalog_snapshot(dsn) == after
    assert (
        "version row",
        f'{{"version": {V + 2}, "singleton": true, "compatible_from": {V + 1}}}',
        "",
        "",
    ) in after
