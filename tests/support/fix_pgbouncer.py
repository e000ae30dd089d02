"""A PgBouncer in transaction mode in front of the test server, and DSNs through it.

CONVDB_TEST_PGBOUNCER=1 sends every test's ``store`` fixture through it (see ``fix_store``): .ci/run
runs the database tests a second time so (``make test-pgbouncer``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from convdb.testing.pgbouncer import PgBouncer
from tests.support.fix_server import Server

# statement_cache_size=0 goes with it: PgBouncer < 1.21 cannot carry named prepared statements
# across transactions (docs/pgbouncer.md).
VIA_PGBOUNCER = os.environ.get("CONVDB_TEST_PGBOUNCER", "") not in ("", "0")
# The login role the row-level-security tests use; listed in PgBouncer's auth file.
RLS_TEST_ROLE = "convdb_test_app"


@pytest.fixture(scope="session")
def pgbouncer(pg_server: Server) -> Iterator[PgBouncer]:
    """A PgBouncer 1.18+ in transaction mode in front of the test server (every database)."""
    address = urlsplit(pg_server.admin_dsn)
    users = {"postgres", address.username or "postgres", RLS_TEST_ROLE}
    bouncer = PgBouncer(
        Path(tempfile.mkdtemp(prefix="convdb-pgbouncer-")),
        users=sorted(users),
        server_host=address.hostname or "127.0.0.1",
        server_port=address.port or 5432,
    )
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
    address = urlsplit(direct_dsn)
    return bouncer.dsn(address.path.lstrip("/"), address.username or "postgres")
