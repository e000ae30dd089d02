"""The frameworks' own published tests, run against convdb's adapters.

For each suite: the framework's sdist at a pinned version is downloaded from PyPI (``pip
download --no-deps --no-binary :all:``) into a cache directory and unpacked; its test modules
run in a pytest subprocess, in the unpacked tree, with two plugins of ours loaded
(``plugins/``): one swaps the framework's session / history construction for convdb's adapter,
one records each test's outcome. Nothing of the framework's tests is copied into this repository,
and no assertion is touched. A test that cannot apply to an adapter is listed, with the reason, in
``not_applicable.toml``; every other test must pass, and a listed test that passes is reported
too (the listing is stale).

The database: ``CONVDB_TEST_DSN`` (a superuser DSN) if set, else convdb's embedded server
(``pgserver``); a fresh database with schema.sql applied, as a DBA would.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PLUGINS = HERE / "plugins"
NOT_APPLICABLE = HERE / "not_applicable.toml"
CACHE = Path(os.environ.get("CONVDB_CONFORMANCE_CACHE", Path.home() / ".cache" / "convdb-conformance"))


@dataclass(frozen=True)
class Suite:
    name: str
    package: str  # the PyPI name
    version: str
    plugin: str
    modules: tuple[str, ...]  # test paths inside the unpacked sdist

    @property
    def sdist_dir(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}"


SUITES: dict[str, Suite] = {
    suite.name: suite
    for suite in (
        Suite(
            "openai-agents",
            "openai-agents",
            "0.24.0",
            "convdb_conformance_openai_agents",
            (
                "tests/memory/test_session.py",
                "tests/memory/test_session_limit.py",
                "tests/test_agent_runner.py",
                "tests/test_agent_runner_streamed.py",
                "tests/test_agent_runner_sync.py",
                "tests/test_hitl_session_scenario.py",
                "tests/deferred_session_writes",
            ),
        ),
        Suite(
            "langchain-core",
            "langchain-core",
            "1.8.3",
            "convdb_conformance_langchain_core",
            (
                "tests/unit_tests/chat_history/test_chat_history.py",
                "tests/unit_tests/runnables/test_history.py",
            ),
        ),
        Suite(
            "langchain-postgres",
            "langchain-postgres",
            "0.0.19",
            "convdb_conformance_langchain_postgres",
            ("tests/unit_tests/v1/test_chat_histories.py",),
        ),
    )
}


def fetch(suite: Suite) -> Path:
    """The unpacked sdist of the suite's pinned version (downloaded once into the cache)."""
    unpacked = CACHE / suite.sdist_dir
    if (unpacked / "tests").is_dir():
        return unpacked
    CACHE.mkdir(parents=True, exist_ok=True)
    archive = CACHE / f"{suite.sdist_dir}.tar.gz"
    if not archive.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"{suite.package}=={suite.version}",
                "-d",
                str(CACHE),
            ],
            check=True,
        )
    with tarfile.open(archive) as tar:
        tar.extractall(CACHE, filter="data")
    return unpacked


@contextmanager
def database() -> Iterator[str]:
    """A fresh database with schema.sql applied; its DSN."""
    from convdb.testing import EmbeddedPostgres, apply_schema

    embedded = None
    admin = os.environ.get("CONVDB_TEST_DSN")
    if not admin:
        embedded = EmbeddedPostgres(
            Path(tempfile.mkdtemp(prefix="convdb-conformance-")) / "data",
            settings={"fsync": "off", "synchronous_commit": "off"},
        )
        embedded.start()
        admin = embedded.dsn()
    name = f"conformance_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
        base = admin.rsplit("/", 1)[0]
        dsn = f"{base}/{name}"
        apply_schema(dsn, ROOT / "schema.sql")
        yield dsn
    finally:
        try:
            asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            if embedded is not None:
                embedded.destroy()


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@dataclass
class Result:
    suite: Suite
    outcomes: dict[str, str]
    not_applicable: dict[str, str]
    seconds: float
    returncode: int

    @property
    def failed(self) -> list[str]:
        """Tests that did not pass and are not listed as not applicable."""
        return sorted(n for n, o in self.outcomes.items() if o != "passed" and n not in self.not_applicable)

    @property
    def stale(self) -> list[str]:
        """Listed tests that passed, or that no longer exist."""
        return sorted(
            n for n in self.not_applicable if self.outcomes.get(n, "missing") in ("passed", "missing")
        )

    @property
    def ok(self) -> bool:
        return bool(self.outcomes) and not self.failed and not self.stale

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for outcome in self.outcomes.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        listed = sum(1 for n in self.not_applicable if n in self.outcomes)
        lines = [
            f"{self.suite.package} {self.suite.version}: {len(self.outcomes)} tests, "
            + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
            + f"; {listed} listed as not applicable; {self.seconds:.0f} s"
        ]
        lines += [f"  FAILED (not listed): {n} [{self.outcomes[n]}]" for n in self.failed]
        lines += [f"  STALE listing (passes or is gone): {n}" for n in self.stale]
        return "\n".join(lines)


def load_not_applicable(suite: Suite) -> dict[str, str]:
    with NOT_APPLICABLE.open("rb") as f:
        table = tomllib.load(f).get(suite.name, {})
    return {str(k): str(v) for k, v in table.items()}


def run(suite: Suite, dsn: str, *, extra: tuple[str, ...] = ()) -> Result:
    tree = fetch(suite)
    report = Path(tempfile.mkstemp(prefix=f"conformance-{suite.name}-", suffix=".json")[1])
    env = dict(os.environ)
    # convdb from this checkout and our plugins, but not our ``tests`` package: the framework's
    # tests import their own ``tests`` package, so only ``convdb`` is exposed (a symlink).
    exposed = CACHE / "pythonpath"
    exposed.mkdir(parents=True, exist_ok=True)
    link = exposed / "convdb"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(ROOT / "convdb", target_is_directory=True)
    env["PYTHONPATH"] = os.pathsep.join([str(exposed), str(PLUGINS), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env["CONVDB_CONFORMANCE_DSN"] = dsn
    env["CONVDB_CONFORMANCE_REPORT"] = str(report)
    address = urlsplit(dsn)
    env.update(
        {  # langchain-postgres's tests open their own psycopg connection from these
            "POSTGRES_USER": address.username or "postgres",
            "POSTGRES_PASSWORD": address.password or "",
            "POSTGRES_HOST": address.hostname or "localhost",
            "POSTGRES_PORT": str(address.port or 5432),
            "POSTGRES_DB": address.path.lstrip("/"),
        }
    )
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        suite.plugin,
        "-p",
        "convdb_conformance_report",
        "-o",
        "addopts=",
        *extra,
        *suite.modules,
    ]
    started = time.monotonic()
    completed = subprocess.run(command, cwd=tree, env=env, check=False)
    seconds = time.monotonic() - started
    try:
        outcomes = json.loads(report.read_text(encoding="utf-8") or "{}")
    except ValueError:
        outcomes = {}
    finally:
        report.unlink(missing_ok=True)
    return Result(suite, outcomes, load_not_applicable(suite), seconds, completed.returncode)


def main(argv: list[str]) -> int:
    names = argv or list(SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        print(f"unknown suite(s) {unknown}; known: {list(SUITES)}", file=sys.stderr)
        return 2
    results = []
    with database() as dsn:
        for name in names:
            results.append(run(SUITES[name], dsn))
    print("\n== conformance ==")
    for result in results:
        print(result.summary())
    return 0 if all(r.ok for r in results) else 1
