"""A real Citus cluster for tests and benchmarks: one coordinator and N workers.

Either a cluster you run (``CitusCluster.from_dsn``: the coordinator's superuser DSN; the workers
are read from its ``pg_dist_node``), or a local one started from a Citus installation found on the
machine (``LocalCitusCluster``: ``initdb`` per node, loopback TCP, throwaway settings).

Per-test databases: Citus keeps its metadata (``pg_dist_node``, the shard placements) per database,
and a coordinator database reaches the *same-named* database on every worker. So a template
database is built once on every node (the extension in each, the nodes registered on the
coordinator, the schema files applied there, which creates the shards on the workers), then frozen:
``ALLOW_CONNECTIONS false`` and its sessions terminated, the Citus maintenance daemon's included
(one per database per node; it would otherwise keep the template busy and ``CREATE DATABASE ...
TEMPLATE`` would fail). A test's database is then cloned from it on every node, under one name,
and dropped coordinator first (so nothing routes to a worker copy being dropped).

Citus is AGPL-3.0: a test dependency built on the machine (.ci/citus.sh), never part of convdb.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from .embedded import EmbeddedPostgres, apply_schema

#: How to get a cluster, for the message of a test that has none.
HOW_TO_PROVIDE = (
    "No Citus cluster for the Citus-mode tests. Provide one of: "
    "CONVDB_TEST_CITUS_DSN=postgresql://postgres@coordinator:port/postgres (a superuser DSN of a "
    "Citus coordinator whose workers accept the same user); or a Citus installation for a local "
    "3-node cluster: bash .ci/citus.sh (builds Citus 13.2.2 from ../shared/citus for Debian's "
    "PostgreSQL 15; CONVDB_CITUS_PG_CONFIG=/path/to/pg_config picks another PostgreSQL)."
)

# Throwaway settings. max_worker_processes: Citus starts a maintenance daemon per database per
# node, and the default 8 ran out after a few hundred test databases (issue 16).
# max_prepared_transactions: multi-shard writes commit with two-phase commit on the workers.
CITUS_SETTINGS: Mapping[str, str] = {
    "shared_preload_libraries": "citus",
    # Loopback test cluster: no TLS between nodes (Citus defaults to sslmode=require, and libpq in
    # a server started by root as the pgserver user looks for client certificates in /root).
    "citus.node_conninfo": "sslmode=disable",
    "max_worker_processes": "64",
    "max_connections": "300",
    "max_prepared_transactions": "300",
    "shared_buffers": "64MB",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "listen_addresses": "127.0.0.1",
    "logging_collector": "on",
    "log_directory": "log",
    "log_filename": "postgresql.log",
    "log_line_prefix": "%m [%p] %d ",
}


class CitusUnavailable(RuntimeError):
    """No Citus installation or cluster could be found or started."""


def find_citus_pg_config() -> str:
    """The ``pg_config`` of a PostgreSQL that has Citus installed, or ``CitusUnavailable``.

    ``CONVDB_CITUS_PG_CONFIG`` first, then every ``/usr/lib/postgresql/*/bin/pg_config`` (Debian),
    then ``pg_config`` on PATH.
    """
    candidates: list[str] = []
    if os.environ.get("CONVDB_CITUS_PG_CONFIG"):
        candidates.append(os.environ["CONVDB_CITUS_PG_CONFIG"])
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_config"), reverse=True)
    on_path = shutil.which("pg_config")
    if on_path:
        candidates.append(on_path)
    for pg_config in candidates:
        try:
            pkglib = subprocess.run(
                [pg_config, "--pkglibdir"], capture_output=True, text=True, check=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if (Path(pkglib) / "citus.so").exists():
            return pg_config
    raise CitusUnavailable(f"no PostgreSQL with Citus found (looked at {candidates}). {HOW_TO_PROVIDE}")


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def _with_address(dsn: str, host: str, port: int) -> str:
    parts = urlsplit(dsn)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{host}:{port}" if auth else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=60)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class NodeAddress:
    host: str
    port: int


class CitusCluster:
    """A running Citus cluster, by its nodes' superuser DSNs (database ``postgres``).

    ``coordinator_host`` is the address the workers reach the coordinator at
    (``citus_set_coordinator_host``); ``workers`` are the addresses the coordinator reaches them at.
    """

    def __init__(
        self, coordinator_dsn: str, workers: Sequence[NodeAddress], *, coordinator_host: NodeAddress
    ) -> None:
        self.coordinator_dsn = _with_database(coordinator_dsn, "postgres")
        self.workers = list(workers)
        self.coordinator_host = coordinator_host

    @classmethod
    async def from_dsn(cls, dsn: str) -> CitusCluster:
        """A cluster you run: ``dsn`` is the coordinator's; its ``postgres`` database must have the
        extension and the workers registered (they are read from ``pg_dist_node`` there)."""
        conn = await asyncpg.connect(dsn, timeout=60)
        try:
            has = await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'citus'")
            if not has:
                raise CitusUnavailable(f"{dsn} has no citus extension in its database. {HOW_TO_PROVIDE}")
            rows = await conn.fetch(
                "SELECT nodename, nodeport, groupid FROM pg_dist_node "
                "WHERE isactive AND noderole = 'primary' ORDER BY groupid"
            )
        finally:
            await conn.close()
        coordinator = [NodeAddress(r[0], r[1]) for r in rows if r[2] == 0]
        workers = [NodeAddress(r[0], r[1]) for r in rows if r[2] != 0]
        if not workers:
            raise CitusUnavailable(f"{dsn}: no active worker in pg_dist_node. {HOW_TO_PROVIDE}")
        parts = urlsplit(dsn)
        host = (
            coordinator[0] if coordinator else NodeAddress(parts.hostname or "127.0.0.1", parts.port or 5432)
        )
        return cls(dsn, workers, coordinator_host=host)

    # -- addresses ---------------------------------------------------------------------------
    def dsn(self, database: str) -> str:
        """The coordinator's DSN for ``database`` (what the application connects to)."""
        return _with_database(self.coordinator_dsn, database)

    def worker_dsn(self, index: int, database: str = "postgres") -> str:
        worker = self.workers[index]
        return _with_database(_with_address(self.coordinator_dsn, worker.host, worker.port), database)

    def node_dsns(self, database: str = "postgres") -> list[str]:
        """Coordinator first, then the workers."""
        return [self.dsn(database)] + [self.worker_dsn(i, database) for i in range(len(self.workers))]

    # -- databases ---------------------------------------------------------------------------
    async def create_database(self, name: str) -> None:
        """An empty distributed database: the extension on every node, the nodes registered."""
        for node in self.node_dsns():
            await _execute(node, f"CREATE DATABASE {_quote(name)}")
        for worker in self.node_dsns(name)[1:]:
            await _execute(worker, "CREATE EXTENSION IF NOT EXISTS citus")
        host = self.coordinator_host
        statements = [
            "CREATE EXTENSION IF NOT EXISTS citus",
            f"SELECT citus_set_coordinator_host('{host.host}', {host.port})",
        ]
        statements += [f"SELECT citus_add_node('{w.host}', {w.port})" for w in self.workers]
        await _execute(self.dsn(name), *statements)

    async def build_template(self, name: str, schema_files: Sequence[str | Path]) -> None:
        """(Re)build the frozen template ``name`` on every node from ``schema_files``, applied on
        the coordinator with psql as a DBA would."""
        await self.drop_database(name)
        await self.create_database(name)
        for schema in schema_files:
            await asyncio.to_thread(apply_schema, self.dsn(name), schema)
        await self.freeze(name)

    async def freeze(self, name: str) -> None:
        """Make ``name`` usable as a template on every node: no connections, now or later."""
        for node in self.node_dsns():
            await _execute(node, f"ALTER DATABASE {_quote(name)} WITH ALLOW_CONNECTIONS false")
        for node in self.node_dsns():
            await self._terminate_sessions(node, name)

    async def _terminate_sessions(self, node_dsn: str, name: str) -> None:
        # The maintenance daemon and the coordinator's cached connections to the workers hold
        # sessions on the database; terminating them returns before the backends are gone, so
        # wait (bounded) until none is left.
        conn = await asyncpg.connect(node_dsn, timeout=60)
        try:
            deadline = time.monotonic() + 60
            while True:
                left = await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    name,
                )
                if not left:
                    return
                if time.monotonic() > deadline:
                    raise CitusUnavailable(f"sessions on {name} did not end within 60 s")
                await asyncio.sleep(0.05)
        finally:
            await conn.close()

    async def clone_database(self, name: str, template: str) -> None:
        """``name`` as a copy of the frozen ``template`` on every node (same shards, same ids)."""
        # The nodes copy in parallel (separate servers): about 1.7-2.5 s for three on this busy
        # 2-core machine, against 2.2-3.5 s one after the other.
        try:
            statement = f"CREATE DATABASE {_quote(name)} TEMPLATE {_quote(template)}"
            await asyncio.gather(*(_execute(node, statement) for node in self.node_dsns()))
        except BaseException:
            await self.drop_database(name)  # no half-cloned database left on some nodes
            raise

    async def drop_database(self, name: str) -> None:
        """Drop ``name`` everywhere, coordinator first; a missing copy is no error.

        WITH (FORCE) ends ordinary sessions only: a Citus maintenance daemon (a background
        worker) still on the database made about one drop in three fail with "being accessed by
        other users" on this machine, so its sessions are terminated and the drop retried, for
        at most 60 s.
        """
        for node in self.node_dsns():
            deadline = time.monotonic() + 60
            while True:
                try:
                    await _execute(node, f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)")
                    break
                except asyncpg.ObjectInUseError:
                    if time.monotonic() > deadline:
                        raise
                    await self._terminate_sessions(node, name)


# The state of a database that a test could change and TRUNCATE would not restore, as one digest
# per node: every relation, column, constraint, index, trigger, policy, function (body, grants,
# volatility, parallel safety: verify_schema checks the row rules' volatility), type, schema,
# grant and setting outside the system schemas; the planner's statistics (relpages, reltuples,
# pg_statistic rows); sequences; the Citus metadata (tables, shards, placements); prepared
# transactions; the version table's rows. A database whose digests after TRUNCATE equal those of
# a fresh clone after the same TRUNCATE is, for every test, the template's state again.
_STATE_DIGEST = """
WITH rels AS (
    SELECT c.oid, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
), parts(x) AS (
    SELECT format('class %s %s %s %s %s %s %s %s', c.oid::regclass, c.relkind, c.relacl,
                  c.relrowsecurity, c.relforcerowsecurity, c.relpages, c.reltuples, c.reloptions)
      FROM pg_class c JOIN rels r ON r.oid = c.oid
    UNION ALL
    SELECT format('att %s %s %s %s %s %s %s', a.attrelid::regclass, a.attnum, a.attname,
                  format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attisdropped,
                  pg_get_expr(d.adbin, d.adrelid))
      FROM pg_attribute a JOIN rels r ON r.oid = a.attrelid
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attnum > 0
    UNION ALL
    SELECT format('con %s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
      FROM pg_constraint WHERE connamespace IN (SELECT oid FROM pg_namespace
                                                 WHERE nspname NOT LIKE 'pg\\_%'
                                                   AND nspname <> 'information_schema')
    UNION ALL
    SELECT format('idx %s', pg_get_indexdef(i.indexrelid)) FROM pg_index i JOIN rels r ON r.oid = i.indrelid
    UNION ALL
    SELECT format('trg %s %s %s', t.tgrelid::regclass, t.tgname, t.tgenabled)
      FROM pg_trigger t JOIN rels r ON r.oid = t.tgrelid
    UNION ALL
    SELECT format('pol %s %s %s %s %s %s', p.polrelid::regclass, p.polname, p.polcmd, p.polroles,
                  pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))
      FROM pg_policy p
    UNION ALL
    SELECT format('fn %s %s %s %s %s', p.oid::regprocedure, md5(p.prosrc), p.proacl, p.provolatile,
                  p.proparallel)
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
    UNION ALL
    SELECT format('typ %s %s', t.oid::regtype, t.typacl) FROM pg_type t
      JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
    UNION ALL
    SELECT format('nsp %s %s %s', nspname, nspowner, nspacl) FROM pg_namespace
    UNION ALL
    SELECT format('ext %s %s', extname, extversion) FROM pg_extension
    UNION ALL
    SELECT format('evt %s %s', evtname, evtenabled) FROM pg_event_trigger
    UNION ALL
    SELECT format('dacl %s %s', defaclobjtype, defaclacl) FROM pg_default_acl
    UNION ALL
    SELECT format('set %s %s', setrole, setconfig) FROM pg_db_role_setting
     WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
    UNION ALL
    SELECT format('stat %s %s', s.starelid::regclass, count(*)) FROM pg_statistic s
      JOIN rels r ON r.oid = s.starelid GROUP BY s.starelid
    UNION ALL
    SELECT format('seq %s.%s %s', schemaname, sequencename, last_value) FROM pg_sequences
     WHERE schemaname NOT LIKE 'pg\\_%'
    UNION ALL
    SELECT format('xact %s', gid) FROM pg_prepared_xacts WHERE database = current_database()
    UNION ALL
    SELECT format('dist %s %s %s %s', logicalrelid, partmethod, colocationid, repmodel)
      FROM pg_dist_partition
    UNION ALL
    SELECT format('shard %s %s %s %s', logicalrelid, shardid, shardminvalue, shardmaxvalue)
      FROM pg_dist_shard
    UNION ALL
    SELECT format('placement %s %s', shardid, groupid) FROM pg_dist_placement
    UNION ALL
    SELECT format('node %s %s %s %s', nodename, nodeport, groupid, isactive) FROM pg_dist_node
)
SELECT md5(string_agg(x, E'\\n' ORDER BY x)) FROM parts
"""
# On the coordinator only (the version table is a reference table; its worker copies are shards).
_VERSION_ROWS = (
    "SELECT md5(coalesce(string_agg(v::text, ',' ORDER BY v::text), '')) FROM convdb_schema_version v"
)


class ClonePool:
    """Per-test databases: cloned from ``template`` ahead of use in a thread, and recycled.

    Cloning a database on three nodes took 2.4-4.2 s here (2 shared cores, other suites
    running), mostly waiting on the copy. Most tests change only rows, so a returned database
    is *recycled* (``recycle=True``): its sessions are ended, ``TRUNCATE conversations, messages
    CASCADE`` (and ``convdb_user_keys``) run, and its state digest on every node
    (``_STATE_DIGEST``: catalogs, grants, statistics, sequences, Citus metadata, the version rows)
    compared with that of a fresh clone
    after the same TRUNCATE. Equal, it is ready for the next test; different (the test changed
    the schema, a grant, a policy, the statistics...) or any error, it is dropped (coordinator
    first, as ``drop_database``) and a clone made. ``ahead`` databases are kept ready.

    Measured here under load 10 (other suites running): clone 3.5-6 s; reset 1.8-3.8 s, of it
    TRUNCATE 1.0 s (32 shard pairs, two-phase commit), the digests 0.2-0.25 s a node, ending
    sessions 0.2 s; both run in this thread, overlapping the test that holds the previous
    database. ``DELETE FROM conversations`` took 0.23 s but leaves the files (dead tuples) and so
    the planner's size estimates different from a fresh clone's: TRUNCATE does not. The one
    difference TRUNCATE itself makes (an empty index's relpages 1 -> 0 on the coordinator's
    shell tables, which hold no rows and are not planned on) is in the reference too.

    ``threads``: how many resets (or clones) run at once, each in a thread of its own. One reset
    took longer than most tests, so with one thread the suite waited on resets; they are
    independent (one database each) and mostly wait on the servers, so a few overlap well.
    """

    def __init__(
        self,
        cluster: CitusCluster,
        template: str,
        *,
        prefix: str = "t_",
        ahead: int = 1,
        recycle: bool = True,
        threads: int = 1,
    ) -> None:
        self.cluster = cluster
        self.template = template
        self.prefix = prefix
        self.ahead = ahead
        self.recycle = recycle
        self.reference: list[str] | None = None  # a fresh clone's digests after TRUNCATE, per node
        self.cloned = 0
        self.recycled = 0
        self.dropped_changed = 0
        self._ready: list[str | BaseException] = []
        self._doomed: list[str] = []
        self._cloning = 0  # clones being made now, counted against ``ahead``
        self._closed = False
        self._cond = threading.Condition()
        # Each thread runs its own event loop and takes the next job (a reset, or a clone while
        # fewer than ``ahead`` are ready or being made): resets of different databases are
        # independent, and a reset is mostly waiting (two-phase commit, sessions ending), so
        # several at once keep up with tests that are shorter than one reset.
        self._threads = [
            threading.Thread(target=self._work, name=f"citus-clones-{i}", daemon=True)
            for i in range(max(1, threads))
        ]
        for thread in self._threads:
            thread.start()

    def take(self, timeout: float = 300) -> str:
        """A fresh database (blocks until one is ready); raises what cloning raised."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._ready) or self._closed, timeout=timeout):
                raise CitusUnavailable(f"no cloned database within {timeout} s")
            if self._closed:
                raise CitusUnavailable("the clone pool is closed")
            item = self._ready.pop(0)
            self._cond.notify_all()
        if isinstance(item, BaseException):
            raise item
        return item

    def give_back(self, name: str) -> None:
        """Drop ``name`` (in the background)."""
        with self._cond:
            self._doomed.append(name)
            self._cond.notify_all()

    def close(self, timeout: float = 300) -> None:
        """Drop every database made or returned, then stop the thread."""
        with self._cond:
            self._closed = True
            self._doomed += [r for r in self._ready if isinstance(r, str)]
            self._ready.clear()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: (
                        bool(self._doomed) or self._closed or len(self._ready) + self._cloning < self.ahead
                    )
                )
                doomed = self._doomed.pop(0) if self._doomed else None
                if doomed is None and self._closed:
                    return
                if doomed is None:
                    self._cloning += 1
            if doomed is not None:
                if self.recycle and not self._closed and await self._reset(doomed):
                    with self._cond:
                        self.recycled += 1
                    self._put(doomed)
                    continue
                with contextlib.suppress(Exception):  # a failed drop must not stop the pool
                    await self.cluster.drop_database(doomed)
                continue
            name = f"{self.prefix}{uuid.uuid4().hex[:16]}"
            item: str | BaseException = name
            try:
                await self.cluster.clone_database(name, self.template)
                with self._cond:
                    self.cloned += 1
                if self.recycle and self.reference is None:
                    await self._truncate(name)
                    reference = await self._digests(name)
                    with self._cond:
                        if self.reference is None:
                            self.reference = reference
            except Exception as exc:
                item = exc
            with self._cond:
                self._cloning -= 1
            self._put(item)

    def _put(self, item: str | BaseException) -> None:
        with self._cond:
            if self._closed and isinstance(item, str):
                self._doomed.append(item)
            else:
                self._ready.append(item)
            self._cond.notify_all()

    async def _end_sessions(self, name: str) -> None:
        # Client sessions only: the Citus maintenance daemon restarts when ended, and is on a
        # fresh clone too. Coordinator first: its backends hold the connections to the workers.
        for node in self.cluster.node_dsns():
            conn = await asyncpg.connect(node, timeout=60)
            try:
                deadline = time.monotonic() + 60
                while await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                    name,
                ):
                    if time.monotonic() > deadline:
                        raise CitusUnavailable(f"sessions on {name} did not end within 60 s")
                    await asyncio.sleep(0.05)
            finally:
                await conn.close()

    async def _truncate(self, name: str) -> None:
        # The users' data keys too: they reference no conversation, so the CASCADE leaves them,
        # and a recycled database then held another test's key (a rotation test counted 10 keys
        # under the old master key where it had made 9).
        await _execute(
            self.cluster.dsn(name),
            "TRUNCATE conversations, messages CASCADE",
            "DO $$ BEGIN IF to_regclass('convdb_user_keys') IS NOT NULL THEN "
            "TRUNCATE convdb_user_keys; END IF; END $$",
        )

    async def _digests(self, name: str) -> list[str]:
        found = []
        for index, node in enumerate(self.cluster.node_dsns(name)):
            conn = await asyncpg.connect(node, timeout=60)
            try:
                found.append(str(await conn.fetchval(_STATE_DIGEST)))
                if index == 0:
                    found.append(str(await conn.fetchval(_VERSION_ROWS)))
            finally:
                await conn.close()
        return found

    async def _reset(self, name: str) -> bool:
        """Bring ``name`` back to the template's state; False if that cannot be shown (drop it)."""
        if self.reference is None:
            return False
        try:
            await self._end_sessions(name)
            await self._truncate(name)
            await self._end_sessions(name)
            same = await self._digests(name) == self.reference
        except (OSError, asyncpg.PostgresError, CitusUnavailable):
            return False
        if not same:
            with self._cond:
                self.dropped_changed += 1
        return same


class LocalCitusCluster(CitusCluster):
    """A coordinator and ``workers`` workers in folders under ``root``, on free loopback ports,
    from the PostgreSQL that ``pg_config`` belongs to (``find_citus_pg_config`` by default)."""

    def __init__(
        self,
        root: str | Path,
        *,
        workers: int = 2,
        pg_config: str | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.pg_config = pg_config or find_citus_pg_config()
        bin_dir = subprocess.run(
            [self.pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        merged = {**CITUS_SETTINGS, **(settings or {})}
        self.nodes = [
            EmbeddedPostgres(self.root / name, settings=merged, bin_dir=bin_dir)
            for name in ["coordinator", *(f"worker{i + 1}" for i in range(workers))]
        ]
        coordinator = self.nodes[0]
        super().__init__(
            coordinator.dsn(),
            [NodeAddress("127.0.0.1", n.port) for n in self.nodes[1:]],
            coordinator_host=NodeAddress("127.0.0.1", coordinator.port),
        )

    def start(self) -> None:
        """Init (first time) and start every node, then make ``postgres`` a distributed database
        (extension everywhere, nodes registered), so ``from_dsn`` works on this cluster too."""
        try:
            for node in self.nodes:
                node.start()
            asyncio.run(self._register())
        except (FileNotFoundError, RuntimeError, OSError, asyncpg.PostgresError) as exc:
            raise CitusUnavailable(f"the local Citus cluster did not start: {exc}") from exc

    async def _register(self) -> None:
        for worker in self.node_dsns()[1:]:
            await _execute(worker, "CREATE EXTENSION IF NOT EXISTS citus")
        host = self.coordinator_host
        statements = [
            "CREATE EXTENSION IF NOT EXISTS citus",
            f"SELECT citus_set_coordinator_host('{host.host}', {host.port})",
        ]
        statements += [f"SELECT citus_add_node('{w.host}', {w.port})" for w in self.workers]
        await _execute(self.coordinator_dsn, *statements)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def destroy(self) -> None:
        try:
            for node in self.nodes:
                with contextlib.suppress(RuntimeError):
                    node.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


__all__ = [
    "CITUS_SETTINGS",
    "HOW_TO_PROVIDE",
    "CitusCluster",
    "CitusUnavailable",
    "ClonePool",
    "LocalCitusCluster",
    "NodeAddress",
    "find_citus_pg_config",
]
