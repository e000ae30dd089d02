"""The test server: where the real PostgreSQL comes from, and a fresh database per test.

Where the server comes from, in order (:func:`start_server`, the one place that decides):
``CONVDB_TEST_DSN`` (a superuser DSN of a server you run); else a testcontainers PostgreSQL when a
Docker engine answers; else the embedded server from the ``pgserver`` wheel. In Citus mode
(``CONVDB_TEST_CITUS=1``, or ``CONVDB_TEST_CITUS_DSN=<coordinator superuser DSN>``) the server is a
Citus cluster instead: the one at the DSN, else a local 3-node cluster started from the Citus
installation found on the machine (``convdb.testing.citus``); the template is built on every node
from schema.sql + schema_citus.sql and frozen, and each test's database is cloned on every node. A template database is
built once by applying ``schema.sql`` with psql, as a DBA would, and each test gets its own
database cloned from it.

The fault tests get a server of their own (``controlled_server``), always embedded, so that
restarting it or killing its backends disturbs no other test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from convdb.testing import EmbeddedPostgres, apply_schema
from convdb.testing.citus import CitusCluster, ClonePool

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "schema.sql"
TEMPLATE = "convdb_template"
SCHEMA_CITUS = ROOT / "schema_citus.sql"
CITUS_DSN = os.environ.get("CONVDB_TEST_CITUS_DSN", "")
VIA_CITUS = bool(CITUS_DSN) or os.environ.get("CONVDB_TEST_CITUS", "") not in ("", "0")
# Citus mode: databases reset (or cloned) at once in the background, and kept ready, so that
# tests shorter than one reset (most) do not wait for it (ClonePool's ``threads``).
CITUS_RESETS = int(os.environ.get("CONVDB_TEST_CITUS_RESETS", "3"))

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


@contextmanager
def embedded_server(prefix: str, *, how_to_provide: str = HOW_TO_PROVIDE) -> Iterator[Server]:
    """A throwaway embedded cluster in a temp dir; fails the test, saying how to fix it, if it cannot start."""
    try:
        embedded = EmbeddedPostgres(
            Path(tempfile.mkdtemp(prefix=prefix)) / "data", settings=EMBEDDED_TEST_SETTINGS
        )
        embedded.start()
    except (FileNotFoundError, RuntimeError) as exc:
        pytest.fail(f"{how_to_provide}\n(embedded server failed: {exc})", pytrace=False)
    try:
        yield Server(embedded.dsn(), embedded)
    finally:
        embedded.destroy()
        shutil.rmtree(embedded.data_dir.parent, ignore_errors=True)


@contextmanager
def start_server() -> Iterator[Server]:
    """The server every database test runs on, chosen from the environment (see the module docstring).

    New server kinds are added here and nowhere else.
    """
    if VIA_CITUS:
        with citus_server() as server:
            yield server
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
    with embedded_server("convdb-test-") as server:
        yield server


@contextmanager
def citus_server() -> Iterator[Server]:
    """Citus mode's server: the cluster at CONVDB_TEST_CITUS_DSN, else a local 3-node one."""
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


async def admin(server: Server, sql: str) -> None:
    """Run one statement as the server's superuser (CREATE/DROP DATABASE, roles)."""
    conn = await asyncpg.connect(server.admin_dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def build_template(server: Server) -> str:
    """(Re)create the template database from schema.sql, applied with psql; returns its name.

    On a Citus cluster: on every node, from schema.sql + schema_citus.sql, then frozen."""
    if server.citus is not None:
        asyncio.run(server.citus.build_template(TEMPLATE, [SCHEMA, SCHEMA_CITUS]))
        return TEMPLATE
    asyncio.run(admin(server, f'DROP DATABASE IF EXISTS "{TEMPLATE}"'))
    asyncio.run(admin(server, f'CREATE DATABASE "{TEMPLATE}"'))
    apply_schema(server.dsn(TEMPLATE), SCHEMA)
    return TEMPLATE


ENGINE = "citus" if VIA_CITUS else "postgresql"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``engine_specific(engine, reason)`` checks something only one engine has (an
    EXPLAIN shape, a server log line, a catalog); on the other engine it is skipped with its reason,
    and a twin marked for that engine checks the same property its way."""
    for item in items:
        marker = item.get_closest_marker("engine_specific")
        if marker is not None and marker.args[0] != ENGINE:
            reason = f"{marker.args[0]} only ({marker.args[1]}); this run is on {ENGINE}"
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    with start_server() as server:
        yield server


@pytest.fixture(scope="session")
def template_db(pg_server: Server) -> str:
    return build_template(pg_server)


@pytest.fixture
async def db_name(request: pytest.FixtureRequest, pg_server: Server, template_db: str) -> AsyncIterator[str]:
    if pg_server.citus is not None:  # cloned on every node ahead of use, dropped behind
        clones: ClonePool = request.getfixturevalue("citus_clones")
        cloned = await asyncio.to_thread(clones.take)
        try:
            yield cloned
        finally:
            clones.give_back(cloned)
        return
    name = f"t_{uuid.uuid4().hex[:16]}"
    await admin(pg_server, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    try:
        yield name
    finally:
        await admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def citus_clones(request: pytest.FixtureRequest, pg_server: Server, template_db: str) -> Iterator[ClonePool]:
    """Citus mode: per-test databases cloned from the template on every node, one made ahead,
    recycled after a test when TRUNCATE brings them back to the template's state (ClonePool)."""
    assert pg_server.citus is not None
    clones = ClonePool(pg_server.citus, template_db, ahead=CITUS_RESETS, threads=CITUS_RESETS)
    try:
        yield clones
    finally:
        clones.close()
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"citus databases: {clones.cloned} cloned, {clones.recycled} recycled after TRUNCATE, "
                f"{clones.dropped_changed} dropped because the test changed their state"
            )


@pytest.fixture
def dsn(pg_server: Server, db_name: str) -> str:
    return pg_server.dsn(db_name)


@pytest.fixture(scope="session")
def controlled_server() -> Iterator[Server]:
    """A server the fault tests may restart and whose backends they may kill: always our own
    embedded cluster (whatever ``pg_server`` is), so no other test's server is disturbed."""
    with embedded_server(
        "convdb-faults-",
        how_to_provide="The fault tests need the embedded server: "
        "pip install -e '.[test]' (installs pgserver).",
    ) as server:
        build_template(server)
        yield server


@pytest.fixture
async def controlled_dsn(controlled_server: Server) -> AsyncIterator[str]:
    """A fresh database from schema.sql on ``controlled_server``."""
    name = f"f_{uuid.uuid4().hex[:16]}"
    await admin(controlled_server, f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
    try:
        yield controlled_server.dsn(name)
    finally:
        await admin(controlled_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
