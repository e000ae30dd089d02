"""A real PostgreSQL for every test, never a mock.

Where the server comes from, in order: ``CONVDB_TEST_DSN`` (a superuser DSN of a server you run);
else a testcontainers PostgreSQL when a Docker engine answers; else the embedded server from the
``pgserver`` wheel. A template database is built once by applying ``schema.sql`` with psql, as a
DBA would, and each test gets its own database cloned from it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from convdb import ConversationStore
from convdb.testing import EmbeddedPostgres, apply_schema
from convdb.testing.citus import CitusCluster, ClonePool
from convdb.testing.pgbouncer import PgBouncer

ROOT = Path(__file__).resolve().parent.parent
# CONVDB_TEST_PGBOUNCER=1: the ``store`` fixture connects through a PgBouncer (transaction mode) in
# front of the test server, with statement_cache_size=0 (PgBouncer < 1.21 cannot carry named
# prepared statements across transactions). .ci/run runs the integration tests a second time so.
VIA_PGBOUNCER = os.environ.get("CONVDB_TEST_PGBOUNCER", "") not in ("", "0")
# The login role the row-level-security tests use; listed in PgBouncer's auth file.
RLS_TEST_ROLE = "convdb_test_app"
SCHEMA = ROOT / "schema.sql"
TEMPLATE = "convdb_template"

# --- Citus mode (issue 16) ---------------------------------------------------------------------
# CONVDB_TEST_CITUS=1 (a local 3-node cluster from the Citus installation found on the machine)
# or CONVDB_TEST_CITUS_DSN=<coordinator superuser DSN>: the pg_server / template_db / db_name
# fixtures give a Citus coordinator, a template built on every node from schema.sql +
# schema_citus.sql, and per-test databases cloned on every node (convdb.testing.citus).
# .ci/run runs the integration tests a second time so.
CITUS_DSN = os.environ.get("CONVDB_TEST_CITUS_DSN", "")
VIA_CITUS = bool(CITUS_DSN) or os.environ.get("CONVDB_TEST_CITUS", "") not in ("", "0")
SCHEMA_CITUS = ROOT / "schema_citus.sql"
# --- end Citus mode ----------------------------------------------------------------------------

HOW_TO_PROVIDE = (
    "No PostgreSQL for the tests. Provide one of: CONVDB_TEST_DSN=postgresql://postgres@host:port/postgres "
    "(a superuser that may create databases); a running Docker engine (testcontainers); or the embedded "
    "server: pip install -e '.[test]' (installs pgserver)."
)

# Fast, non-durable settings for throwaway test clusters; logging_collector lets tests read the
# statement log through SQL (pg_current_logfile), whatever server they run on.
EMBEDDED_TEST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "logging_collector": "on",
    "log_directory": "log",
    "log_filename": "postgresql.log",
    "log_line_prefix": "%m [%p] %d ",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """--- Citus mode: engine-specific tests ---
    A test marked ``engine_specific(engine, reason)`` checks something only one engine has (an
    EXPLAIN shape, a server log line, a catalog); on the other engine it is skipped with its
    reason, and a twin marked for that engine checks the same property its way."""
    engine = "citus" if VIA_CITUS else "postgresql"
    for item in items:
        marker = item.get_closest_marker("engine_specific")
        if marker is not None and marker.args[0] != engine:
            item.add_marker(pytest.mark.skip(
                reason=f"{marker.args[0]} only ({marker.args[1]}); this run is on {engine}"))


@dataclass
class Server:
    """The test server: an admin DSN and, when embedded, the handle that can stop and start it."""

    admin_dsn: str
    embedded: EmbeddedPostgres | None
    citus: CitusCluster | None = None  # Citus mode: the cluster whose coordinator admin_dsn is

    def dsn(self, database: str) -> str:
        base, _, _ = self.admin_dsn.rpartition("/")
        query = ""
        if "?" in self.admin_dsn.rpartition("/")[2]:
            query = "?" + self.admin_dsn.rpartition("?")[2]
        return f"{base}/{database}{query}"


def _docker_answers() -> bool:
    try:
        import docker
    except ImportError:
        return False
    try:
        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    if VIA_CITUS:  # --- Citus mode ---
        yield from _citus_server()
        return
    external = os.environ.get("CONVDB_TEST_DSN")
    if external:
        yield Server(external, None)
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield Server(container.get_connection_url(), None)
        return
    try:
        embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="convdb-test-")) / "data",
                                    settings=EMBEDDED_TEST_SETTINGS)
        embedded.start()
    except (FileNotFoundError, RuntimeError) as exc:
        pytest.fail(f"{HOW_TO_PROVIDE}\n(embedded server failed: {exc})", pytrace=False)
    try:
        yield Server(embedded.dsn(), embedded)
    finally:
        embedded.destroy()


def _citus_server() -> Iterator[Server]:
    """Citus mode's pg_server: the cluster at CONVDB_TEST_CITUS_DSN, else a local one."""
    from convdb.testing.citus import HOW_TO_PROVIDE as HOW_TO_PROVIDE_CITUS
    from convdb.testing.citus import CitusUnavailable, LocalCitusCluster

    if CITUS_DSN:
        try:
            cluster = asyncio.run(CitusCluster.from_dsn(CITUS_DSN))
        except (OSError, asyncpg.PostgresError, CitusUnavailable) as exc:
            pytest.fail(f"{HOW_TO_PROVIDE_CITUS}\n(CONVDB_TEST_CITUS_DSN: {exc})", pytrace=False)
        yield Server(cluster.dsn("postgres"), None, citus=cluster)
        return
    try:
        local = LocalCitusCluster(Path(tempfile.mkdtemp(prefix="convdb-citus-")))
        local.start()
    except CitusUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield Server(local.dsn("postgres"), None, citus=local)
    finally:
        local.destroy()


async def _admin(server: Server, sql: str) -> None:
    conn = await asyncpg.connect(server.admin_dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db(pg_server: Server) -> str:
    if pg_server.citus is not None:  # --- Citus mode: the template on every node, frozen ---
        asyncio.run(pg_server.citus.build_template(TEMPLATE, [SCHEMA, SCHEMA_CITUS]))
        return TEMPLATE
    asyncio.run(_admin(pg_server, f'DROP DATABASE IF EXISTS "{TEMPLATE}"'))
    asyncio.run(_admin(pg_server, f'CREATE DATABASE "{TEMPLATE}"'))
    apply_schema(pg_server.dsn(TEMPLATE), SCHEMA)
    return TEMPLATE


@pytest.fixture
async def db_name(request: pytest.FixtureRequest, pg_server: Server, template_db: str) -> AsyncIterator[str]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    if pg_server.citus is not None:  # --- Citus mode: cloned on every node ahead of use, dropped behind ---
        clones = request.getfixturevalue("citus_clones")
        name = await asyncio.to_thread(clones.take)
        try:
            yield name
        finally:
            clones.give_back(name)
        return
    await _admin(pg_server, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    try:
        yield name
    finally:
        await _admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def citus_clones(pg_server: Server, template_db: str) -> Iterator[ClonePool]:
    """--- Citus mode: per-test databases cloned from the template on every node, one ahead ---"""
    assert pg_server.citus is not None
    clones = ClonePool(pg_server.citus, template_db)
    try:
        yield clones
    finally:
        clones.close()


@pytest.fixture
def dsn(pg_server: Server, db_name: str) -> str:
    return pg_server.dsn(db_name)


@pytest.fixture(scope="session")
def controlled_server() -> Iterator[Server]:
    """A server the fault tests may restart and whose backends they may kill: always our own
    embedded cluster (whatever ``pg_server`` is), so no other test's server is disturbed."""
    try:
        embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="convdb-faults-")) / "data",
                                    settings=EMBEDDED_TEST_SETTINGS)
        embedded.start()
    except (FileNotFoundError, RuntimeError) as exc:
        pytest.fail(f"the fault tests need the embedded server (pip install -e '.[test]'): {exc}",
                    pytrace=False)
    try:
        server = Server(embedded.dsn(), embedded)
        import asyncio

        asyncio.run(_admin(server, f'CREATE DATABASE "{TEMPLATE}"'))
        apply_schema(server.dsn(TEMPLATE), SCHEMA)
        yield server
    finally:
        embedded.destroy()
        shutil.rmtree(embedded.data_dir.parent, ignore_errors=True)


@pytest.fixture
async def controlled_dsn(controlled_server: Server) -> AsyncIterator[str]:
    """A fresh database from schema.sql on ``controlled_server``."""
    name = f"f_{uuid.uuid4().hex[:16]}"
    await _admin(controlled_server, f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
    try:
        yield controlled_server.dsn(name)
    finally:
        await _admin(controlled_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pgbouncer(pg_server: Server) -> Iterator[PgBouncer]:
    """A PgBouncer 1.18+ in transaction mode in front of the test server (every database)."""
    from urllib.parse import urlsplit

    from convdb.testing.pgbouncer import PgBouncer

    address = urlsplit(pg_server.admin_dsn)
    users = {"postgres", address.username or "postgres", RLS_TEST_ROLE}
    bouncer = PgBouncer(Path(tempfile.mkdtemp(prefix="convdb-pgbouncer-")), users=sorted(users),
                        server_host=address.hostname or "127.0.0.1", server_port=address.port or 5432)
    try:
        bouncer.start()
    except (FileNotFoundError, RuntimeError) as exc:
        pytest.fail(f"PgBouncer is required for these tests: {exc}", pytrace=False)
    try:
        yield bouncer
    finally:
        bouncer.stop()
        shutil.rmtree(bouncer.work_dir, ignore_errors=True)


def bouncer_dsn(bouncer: PgBouncer, direct_dsn: str) -> str:
    """The DSN of the same database and user, through PgBouncer."""
    from urllib.parse import urlsplit

    address = urlsplit(direct_dsn)
    return bouncer.dsn(address.path.lstrip("/"), address.username or "postgres")


@pytest.fixture
async def store(request: pytest.FixtureRequest, dsn: str) -> AsyncIterator[ConversationStore]:
    if VIA_PGBOUNCER:
        bouncer = request.getfixturevalue("pgbouncer")
        async with await ConversationStore.connect(bouncer_dsn(bouncer, dsn), min_size=1, max_size=10,
                                                   statement_cache_size=0) as s:
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
                if await other.fetchval(f"SELECT count(*) FROM {activity} "
                                        "WHERE wait_event_type = 'Lock' AND datname = current_database()"):
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
