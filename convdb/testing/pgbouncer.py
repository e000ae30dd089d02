"""A PgBouncer in front of a test server, for the tests and benchmarks that go through a pooler.

Uses the ``pgbouncer`` program on PATH (Debian: ``apt-get install pgbouncer``, 1.18 in bookworm).
Every database of the server is reachable through it (a ``*`` fallback entry), with ``trust``
authentication for the users listed, on 127.0.0.1 only. As root it runs as the unprivileged
``pgserver`` user (PgBouncer refuses to run as root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from .embedded import _free_port

_RUN_AS = "pgserver"
HOW_TO_INSTALL = "PgBouncer not found on PATH: install it with  apt-get install -y pgbouncer"


def find_pgbouncer() -> str:
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/local/bin/pgbouncer") if os.path.exists(p)), None
    )
    if found is None:
        raise FileNotFoundError(HOW_TO_INSTALL)
    return found


def pgbouncer_version() -> str:
    result = subprocess.run([find_pgbouncer(), "--version"], capture_output=True, text=True, check=True)
    return result.stdout.splitlines()[0].strip()


class PgBouncer:
    """One PgBouncer process with its own config in ``work_dir``."""

    def __init__(
        self,
        work_dir: str | Path,
        *,
        server_host: str,
        server_port: int,
        users: Iterable[str] = ("postgres",),
        pool_mode: str = "transaction",
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.work_dir = Path(work_dir).resolve()
        self.server_host = server_host
        self.server_port = server_port
        self.users = list(users)
        self.pool_mode = pool_mode
        self.port = port or _free_port()
        self.settings = dict(settings or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._run_as = _RUN_AS if os.geteuid() == 0 else None

    def _write_config(self) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        userlist = self.work_dir / "userlist.txt"
        userlist.write_text("".join(f'"{user}" ""\n' for user in self.users))
        options = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(userlist),
            "pool_mode": self.pool_mode,
            "max_client_conn": "1000",
            "default_pool_size": "40",
            "admin_users": "postgres",
            "logfile": str(self.work_dir / "pgbouncer.log"),
            "pidfile": str(self.work_dir / "pgbouncer.pid"),
            # Drivers other than asyncpg send this at startup; PgBouncer 1.18 refuses unknown ones.
            "ignore_startup_parameters": "extra_float_digits",
            **self.settings,
        }
        ini = self.work_dir / "pgbouncer.ini"
        lines = ["[databases]", f"* = host={self.server_host} port={self.server_port}", "", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in options.items()]
        ini.write_text("\n".join(lines) + "\n")
        if self._run_as is not None:
            try:
                entry = pwd.getpwnam(self._run_as)
            except KeyError:
                subprocess.run(["useradd", "-s", "/bin/bash", self._run_as], check=True, capture_output=True)
                entry = pwd.getpwnam(self._run_as)
            for path in (self.work_dir, userlist, ini):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            for parent in self.work_dir.parents:
                parent.chmod(parent.stat().st_mode | 0o055)
        return ini

    def start(self, timeout: float = 30.0) -> None:
        ini = self._write_config()
        # Not a pipe: PgBouncer in the foreground also logs to stderr, and a pipe nobody reads fills
        # up and blocks it.
        with (self.work_dir / "stderr.log").open("wb") as stderr:
            self._process = subprocess.Popen(
                [find_pgbouncer(), "--quiet", str(ini)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                user=self._run_as,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = (self.work_dir / "stderr.log").read_text(errors="replace")
                raise RuntimeError(f"pgbouncer exited at start:\n{err}\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pgbouncer did not listen on 127.0.0.1:{self.port}:\n{self.log_tail()}")

    def log_tail(self) -> str:
        log = self.work_dir / "pgbouncer.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def dsn(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def __enter__(self) -> PgBouncer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
