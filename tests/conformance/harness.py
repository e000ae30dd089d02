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
(``pgserver``); a fresh database with schema.sql applied, as a DBA would, per pytest process.

The suites (and the OpenAI Agents SDK's, in three shards) run as parallel pytest processes,
``-j N`` at a time (default ``CONVDB_CONFORMANCE_JOBS``, else all of them): the tests wait on
the database and on their own timers much more than they compute. The run prints the CPU time
it used (pytest processes, embedded server) besides its wall time. Each process's
output goes to a log, printed when it failed or the process ended badly.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
    # Groups of ``modules`` run as separate pytest processes, in parallel with the other suites'
    # (each on a database of its own); empty: one process for all of them.
    shards: tuple[tuple[str, ...], ...] = ()

    @property
    def sdist_dir(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}"

    @property
    def groups(self) -> tuple[tuple[str, ...], ...]:
        if not self.shards:
            return (self.modules,)
        assert sorted(m for g in self.shards for m in g) == sorted(self.modules), self.name
        return self.shards


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
            # The Runner module holds a third of the tests and the slowest ones: a process of its own.
            shards=(
                ("tests/test_agent_runner.py",),
                (
                    "tests/test_agent_runner_streamed.py",
                    "tests/test_agent_runner_sync.py",
                    "tests/test_hitl_session_scenario.py",
                ),
                (
                    "tests/memory/test_session.py",
                    "tests/memory/test_session_limit.py",
                    "tests/deferred_session_writes",
                ),
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
        # Into a directory of its own, then renamed: an interrupted download never looks cached.
        with tempfile.TemporaryDirectory(dir=CACHE) as partial:
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
                    partial,
                ],
                check=True,
            )
            os.replace(Path(partial) / archive.name, archive)
    with tempfile.TemporaryDirectory(dir=CACHE) as partial:
        with tarfile.open(archive) as tar:
            tar.extractall(partial, filter="data")
        os.replace(Path(partial) / suite.sdist_dir, unpacked)
    return unpacked


@contextmanager
def server() -> Iterator[str]:
    """A superuser DSN: ``CONVDB_TEST_DSN``, else an embedded server started for the run."""
    from convdb.testing import EmbeddedPostgres

    admin = os.environ.get("CONVDB_TEST_DSN")
    if admin:
        yield admin
        return
    data = Path(tempfile.mkdtemp(prefix="convdb-conformance-")) / "data"
    embedded = EmbeddedPostgres(
        data,
        settings={"fsync": "off", "synchronous_commit": "off", "max_connections": "200"},
    )
    embedded.start()
    try:
        yield embedded.dsn()
        seconds = server_cpu_seconds(data)
        if seconds is not None:
            print(f"server CPU: {seconds:.0f} s (the embedded PostgreSQL and its backends)")
    finally:
        embedded.destroy()


def server_cpu_seconds(data: Path) -> float | None:
    """CPU time of the embedded server so far: its postmaster and the backends it has reaped.

    Read from /proc (Linux only; None elsewhere). With the pytest processes' own CPU time it
    says how long the run needs on an unshared machine, whatever the load of this one.
    """
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


@contextmanager
def database(admin: str) -> Iterator[str]:
    """A fresh database with schema.sql applied, on the server of ``admin``; its DSN."""
    from convdb.testing import apply_schema

    name = f"conformance_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
    try:
        dsn = f"{admin.rsplit('/', 1)[0]}/{name}"
        apply_schema(dsn, ROOT / "schema.sql")
        yield dsn
    finally:
        asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


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
        # A pytest process that ended badly (returncode 2-5: interrupted, internal or usage error,
        # nothing collected) fails the run even if the tests it reported passed.
        return bool(self.outcomes) and not self.failed and not self.stale and self.returncode in (0, 1)

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
        if self.returncode not in (0, 1):
            lines.append(f"  pytest exited with {self.returncode}")
        lines += [f"  FAILED (not listed): {n} [{self.outcomes[n]}]" for n in self.failed]
        lines += [f"  STALE listing (passes or is gone): {n}" for n in self.stale]
        return "\n".join(lines)


def load_not_applicable(suite: Suite) -> dict[str, str]:
    with NOT_APPLICABLE.open("rb") as f:
        table = tomllib.load(f).get(suite.name, {})
    return {str(k): str(v) for k, v in table.items()}


def expose_convdb() -> Path:
    """A directory holding only ``convdb`` (a symlink to this checkout's package).

    The framework's tests import their own ``tests`` package, so ours must not be importable. One
    directory per checkout: two checkouts sharing the cache never test each other's convdb.
    """
    exposed = CACHE / "pythonpath" / hashlib.sha256(str(ROOT.resolve()).encode()).hexdigest()[:16]
    exposed.mkdir(parents=True, exist_ok=True)
    link = exposed / "convdb"
    if not (link.is_symlink() and link.resolve() == (ROOT / "convdb").resolve()):
        temporary = exposed / f".convdb-{uuid.uuid4().hex}"
        temporary.symlink_to(ROOT / "convdb", target_is_directory=True)
        os.replace(temporary, link)  # atomic: a concurrent run never sees it missing
    return exposed


def run(
    suite: Suite,
    dsn: str,
    *,
    modules: tuple[str, ...] | None = None,
    extra: tuple[str, ...] = (),
    output: Path | None = None,
) -> Result:
    """Run ``modules`` (default: all of the suite's) in one pytest process on database ``dsn``.

    With ``output``, pytest's output goes to that file instead of this process's stdout.
    """
    tree = fetch(suite)
    report = Path(tempfile.mkstemp(prefix=f"conformance-{suite.name}-", suffix=".json")[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(expose_convdb()), str(PLUGINS), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
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
        *(modules or suite.modules),
    ]
    started = time.monotonic()
    if output is None:
        completed = subprocess.run(command, cwd=tree, env=env, check=False)
    else:
        with output.open("w", encoding="utf-8") as out:
            completed = subprocess.run(
                command, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT, check=False
            )
    seconds = time.monotonic() - started
    try:
        outcomes = json.loads(report.read_text(encoding="utf-8") or "{}")
    except ValueError:
        outcomes = {}
    finally:
        report.unlink(missing_ok=True)
    return Result(suite, outcomes, load_not_applicable(suite), seconds, completed.returncode)


def merge(suite: Suite, parts: list[Result]) -> Result:
    """One suite's result from its shards' (wall time: the slowest shard)."""
    outcomes: dict[str, str] = {}
    for part in parts:
        outcomes.update(part.outcomes)
    worst = max((p.returncode for p in parts), key=lambda code: (code not in (0, 1), code))
    return Result(suite, outcomes, load_not_applicable(suite), max(p.seconds for p in parts), worst)


def default_jobs() -> int:
    # Every process at once by default: they spend most of their time waiting (measured: about a
    # sixth of their wall time on CPU), and the slowest shard bounds the run either way.
    configured = os.environ.get("CONVDB_CONFORMANCE_JOBS")
    return max(1, int(configured)) if configured else 8


def main(argv: list[str]) -> int:
    args = list(argv)
    jobs = default_jobs()
    if args[:1] in (["-j"], ["--jobs"]) and len(args) >= 2 and args[1].isdigit():
        jobs, args = max(1, int(args[1])), args[2:]
    names = args or list(SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        print(f"unknown suite(s) {unknown}; known: {list(SUITES)}", file=sys.stderr)
        return 2
    suites = [SUITES[n] for n in names]
    for suite in suites:  # downloads first, one at a time, so that the jobs only read the cache
        fetch(suite)
    expose_convdb()
    work = [(suite, group) for suite in suites for group in suite.groups]
    logs = Path(tempfile.mkdtemp(prefix="convdb-conformance-logs-"))
    started = time.monotonic()
    with server() as admin:

        def job(index: int) -> Result:
            suite, group = work[index]
            with database(admin) as dsn:
                return run(suite, dsn, modules=group, output=logs / f"{index:02}-{suite.name}.log")

        # Threads only wait for their pytest processes; each job has a database of its own, and
        # the plugins key every conversation by the test's node id, so jobs never share a row.
        with ThreadPoolExecutor(max_workers=min(jobs, len(work))) as pool:
            parts = list(pool.map(job, range(len(work))))
        wall = time.monotonic() - started
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        print(f"pytest processes' CPU: {children.ru_utime + children.ru_stime:.0f} s")
    results = [
        merge(suite, [p for (s, _), p in zip(work, parts, strict=True) if s is suite]) for suite in suites
    ]
    for (suite, _), part, index in zip(work, parts, range(len(work)), strict=True):
        log = logs / f"{index:02}-{suite.name}.log"
        if not part.ok or part.returncode != 0:
            print(f"\n== {suite.name}: {' '.join(work[index][1])} (pytest output) ==")
            print(log.read_text(encoding="utf-8", errors="replace")[-20000:])
    print(
        f"\n== conformance ({len(work)} pytest processes, {min(jobs, len(work))} at a time, {wall:.0f} s) =="
    )
    for result in results:
        print(result.summary())
    return 0 if all(r.ok for r in results) else 1
