"""A real PostgreSQL server in a folder, from the binaries the ``pgserver`` wheel ships.

Unlike ``pgserver.get_server`` this listens on a loopback TCP port (poolers and pgbench need one),
takes server settings, and can be stopped and started again under load, which the fault tests need.
When run as root, the server runs as the unprivileged ``pgserver`` user, as PostgreSQL requires.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

DEFAULT_SETTINGS: Mapping[str, str] = {
    "max_connections": "200",
    "shared_buffers": "256MB",
    "listen_addresses": "127.0.0.1",
}

_SERVER_USER = "pgserver"


def _pgserver_bin() -> Path | None:
    try:
        with warnings.catch_warnings():  # pgserver's import warns about XDG_RUNTIME_DIR; harmless here
            warnings.simplefilter("ignore")
            import pgserver._commands as commands
    except ImportError:
        return None
    return Path(commands.POSTGRES_BIN_PATH)


def find_binary(name: str, bin_dir: str | Path | None = None) -> str:
    """Path of a PostgreSQL client or server program: from ``bin_dir`` when given (a Citus
    installation's PostgreSQL, see convdb.testing.citus), else pgserver's bundled copy, then PATH."""
    if bin_dir is not None:
        return str(Path(bin_dir) / name)
    bundled = _pgserver_bin()
    if bundled is not None and (bundled / name).exists():
        return str(bundled / name)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"PostgreSQL program {name!r} not found: install the embedded server with "
            "pip install -e '.[embedded]' or put PostgreSQL's bin directory on PATH"
        )
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _make_traversable(path: Path) -> None:
    """Let the unprivileged server user reach ``path`` (root-owned parents need o+x)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        parent.chmod(mode | 0o055)


class EmbeddedPostgres:
    """One PostgreSQL cluster in ``data_dir``, listening on 127.0.0.1:``port``."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
        bin_dir: str | Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.bin_dir = bin_dir
        self.port = port or _free_port()
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self._run_as = _SERVER_USER if os.geteuid() == 0 else None

    # -- lifecycle ---------------------------------------------------------------------------
    def _run(self, program: str, args: Sequence[str], *, timeout: float = 120) -> str:
        result = subprocess.run(
            [find_binary(program, self.bin_dir), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=self._run_as,
        )
        if result.returncode != 0:
            log = self.data_dir / "server.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{program} {' '.join(args)} failed:\n{result.stderr}\n{tail}")
        return result.stdout

    def _prepare_user(self) -> None:
        if self._run_as is None:
            return
        try:
            pwd.getpwnam(self._run_as)
        except KeyError:
            subprocess.run(["useradd", "-s", "/bin/bash", self._run_as], check=True, capture_output=True)
        binaries = _pgserver_bin()
        if binaries is not None:
            _make_traversable(binaries)
            for folder in (binaries, binaries.parent / "lib", binaries.parent / "share"):
                if folder.exists():
                    subprocess.run(["chmod", "-R", "go+rX", str(folder)], check=True)

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_user()
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
            _make_traversable(self.data_dir.parent)
        self._run(
            "initdb",
            ["-D", str(self.data_dir), "--auth=trust", "--encoding=UTF8", "--locale=C", "-U", "postgres"],
        )

    def _write_settings(self) -> None:
        conf = self.data_dir / "postgresql.conf"
        include = "include_if_exists = 'convdb_settings.conf'"
        if include not in conf.read_text():
            with conf.open("a") as out:
                out.write(f"\n{include}\n")
        lines = [f"{key} = '{value.replace(chr(39), chr(39) * 2)}'" for key, value in self.settings.items()]
        extra = self.data_dir / "convdb_settings.conf"
        extra.write_text("\n".join(lines) + "\n")
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            os.chown(extra, entry.pw_uid, entry.pw_gid)

    def start(self) -> None:
        self.init()
        self._write_settings()
        options = [f"-p {self.port}", f"-k {self.data_dir}"]
        self._run(
            "pg_ctl",
            [
                "-D",
                str(self.data_dir),
                "-w",
                "-t",
                "60",
                "-l",
                str(self.data_dir / "server.log"),
                "-o",
                " ".join(options),
                "start",
            ],
        )

    def stop(self, mode: str = "fast") -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", ["-D", str(self.data_dir), "-w", "-t", "60", "-m", mode, "stop"])

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def is_running(self) -> bool:
        result = subprocess.run(
            [find_binary("pg_isready", self.bin_dir), "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses ---------------------------------------------------------------------------
    def dsn(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"


def apply_schema(dsn: str, schema_file: str | Path) -> None:
    """Apply a schema file the way a DBA does: ``psql -v ON_ERROR_STOP=1 -f schema.sql``."""
    result = subprocess.run(
        [find_binary("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", str(schema_file)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"psql -f {schema_file} failed:\n{result.stderr}")


def apply_sql(dsn: str, sql: str) -> None:
    """Apply SQL text the way a DBA pipes it: ``... | psql -v ON_ERROR_STOP=1 -f -``."""
    result = subprocess.run(
        [find_binary("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", "-"],
        input=sql,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"psql -f - failed:\n{result.stderr}")
