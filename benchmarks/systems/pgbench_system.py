"""pgbench, the ceiling: convdb's exact SQL run by PostgreSQL's own load generator.

``pgbench -n -M prepared -c N -j N -T secs -f script`` against the same database. The scripts are
generated from convdb.sql.QUERIES: each ``$n`` becomes a pgbench variable (conversation and user
from ``\\set`` random ids, message fields from ``-D``) or ``NULL`` where convdb passes None. A
batch is BEGIN, reserve_seq_range, the inserts in one pipeline (what asyncpg's executemany sends:
one round trip), COMMIT. Latency percentiles come from pgbench's per-transaction log (``-l``).
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from convdb.sql import QUERIES
from convdb.testing import find_binary

from ..measure import Cell, Timing, percentile
from ..workload import (
    BATCH_SIZES,
    HISTORY_LIMIT,
    USER_TEXT,
    USERS,
    message_dicts,
)
from .base import Operation, System, Unsupported

_PARAM = re.compile(r"\$(\d+)\b")
_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)


def bind(statement: str, values: dict[int, str]) -> str:
    """Replace $n by the pgbench expression for it (":var" or "NULL"), on one line."""
    missing = sorted({int(n) for n in _PARAM.findall(statement)} - set(values))
    if missing:
        raise Unsupported(f"no value for ${missing[0]} of a statement")
    bound = _PARAM.sub(lambda m: values[int(m.group(1))], statement)
    return " ".join(bound.split())  # pgbench reads one command per line


@dataclass
class Script:
    text: str
    variables: dict[str, str] = field(default_factory=dict)


def _message_values(prefix: str, role: str, content: str, variables: dict[str, str]) -> dict[int, str]:
    variables[f"{prefix}role"] = role
    variables[f"{prefix}content"] = content
    variables[f"{prefix}tokens"] = str((len(content) + 3) // 4)
    return {
        3: f":{prefix}role",
        4: f":{prefix}content",
        5: "NULL",
        6: "NULL",
        7: "NULL",
        8: "NULL",
        9: f":{prefix}tokens",
        10: "NULL",
        **dict.fromkeys(range(11, 18), "NULL"),  # usage (schema version 3): none
    }


def script_for(op: str, first_key: int, keys: int, concurrency: int) -> Script:
    """The pgbench script of ``op``; clients draw keys from their own slice, like the Python workers."""
    if keys >= concurrency:
        draw = f"{first_key} + :client_id + {concurrency} * random(0, {keys // concurrency - 1})"
    else:  # fewer conversations than clients (read-only sweeps): all clients draw from all
        draw = f"random({first_key}, {first_key + keys - 1})"
    header = [f"\\set cid {draw}", f"\\set uid :cid % {USERS}"]
    ids = {1: ":cid", 2: ":uid"}
    variables: dict[str, str] = {}
    if op == "append":
        body = [
            bind(QUERIES["save_message"], {**ids, **_message_values("", "user", USER_TEXT, variables)}) + ";"
        ]
    elif op in BATCH_SIZES:
        size = BATCH_SIZES[op]
        variables["n"] = str(size)
        body = ["BEGIN;", bind(QUERIES["reserve_seq_range"], {**ids, 3: ":n"}) + " \\gset"]
        body += [f"\\set s{i} :first_seq + {i}" for i in range(size)]
        body.append("\\startpipeline")
        for i, message in enumerate(message_dicts(size)):
            values = _message_values(f"m{i}_", message["role"], message["content"], variables)
            body.append(bind(QUERIES["insert_message_at"], {1: ":cid", 2: f":s{i}", **values}) + ";")
        body += ["\\endpipeline", "COMMIT;"]
    elif op == "history_50":
        variables["lim"] = str(HISTORY_LIMIT)
        body = [bind(QUERIES["get_history"], {**ids, 3: ":lim"}) + ";"]
    elif op == "get_or_create":
        # The conversations exist (the per-request path): convdb sends its ownership-checked read
        # alone; the create statement runs only when that read misses.
        body = [bind(QUERIES["get_conversation"], ids) + ";"]
    elif op == "turn_two_calls":
        variables["lim"] = str(HISTORY_LIMIT)
        body = [
            bind(QUERIES["save_message"], {**ids, **_message_values("", "user", USER_TEXT, variables)}) + ";",
            bind(QUERIES["get_history"], {**ids, 3: ":lim"}) + ";",
        ]
    elif op == "turn":
        if "save_and_get_history" not in QUERIES:
            raise Unsupported("convdb.sql.QUERIES has no save_and_get_history statement")
        variables["lim"] = str(HISTORY_LIMIT)
        values = {
            **ids,
            **_message_values("", "user", USER_TEXT, variables),
            18: ":lim",
            19: "NULL",
            20: "false",
            21: "NULL",
        }
        body = [bind(QUERIES["save_and_get_history"], values) + ";"]
    else:
        raise Unsupported(f"unknown operation {op}")
    return Script("\n".join(header + body) + "\n", variables)


def read_latencies(prefix: str) -> list[float]:
    """Per-transaction latencies in seconds from pgbench -l logs (third field, microseconds)."""
    values: list[float] = []
    for path in glob.glob(prefix + ".*"):
        with open(path) as log:
            for line in log:
                fields = line.split()
                if len(fields) >= 3 and fields[2].isdigit():
                    values.append(int(fields[2]) / 1e6)
    return values


class PgbenchSystem(System):
    name = "pgbench"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.binary = find_binary("pgbench")

    async def open(self, concurrency: int) -> None:
        """pgbench opens its own connections per run."""

    async def close(self) -> None:
        """Nothing stays open between runs."""

    def operation(self, op: str) -> Operation:
        raise Unsupported("pgbench runs as a separate program; see measure()")

    def versions(self) -> dict[str, str]:
        return {"pgbench": self._version()}

    def _version(self) -> str:
        import subprocess

        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, check=False)
        return out.stdout.strip().split()[-1] if out.stdout else "unknown"

    async def _run(self, script: Script, concurrency: int, seconds: int, log_prefix: str | None) -> str:
        folder = Path(tempfile.mkdtemp(prefix="convdb-pgbench-"))
        try:
            path = folder / "script.sql"
            path.write_text(script.text)
            args = [
                self.binary,
                "-n",
                "-M",
                "prepared",
                "-c",
                str(concurrency),
                "-j",
                str(concurrency),
                "-T",
                str(seconds),
                "-f",
                str(path),
            ]
            for name, value in script.variables.items():
                args += ["-D", f"{name}={value}"]
            if log_prefix is not None:
                args += ["-l", f"--log-prefix={log_prefix}"]
            args.append(self.ctx.db.dsn)
            process = await asyncio.create_subprocess_exec(
                *args,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=folder,
                env={**os.environ, "PGAPPNAME": "convdb-bench-pgbench"},
            )
            out, err = await process.communicate()
            if process.returncode != 0:
                lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
                raise RuntimeError(f"pgbench exited {process.returncode}: {' | '.join(lines[-3:])}")
            return out.decode()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    async def measure(
        self, op: str, concurrency: int, timing: Timing, seed: int, keys: list[int] | None = None
    ) -> tuple[Cell, str | None]:
        keys = keys or self.keys_for(op)
        try:
            script = script_for(op, keys[0], len(keys), concurrency)
        except Unsupported as exc:
            return Cell.failed(f"unsupported: {exc}"), None
        note = "same SQL, -M prepared" + ("; inserts in one pipeline" if op in BATCH_SIZES else "")
        # pgbench's -T counts whole seconds.
        seconds = max(1, round(timing.duration_s))
        logs = Path(tempfile.mkdtemp(prefix="convdb-pgbench-log-"))
        try:
            if timing.warmup_s >= 1:
                await self._run(script, concurrency, max(1, round(timing.warmup_s)), None)
            output = await self._run(script, concurrency, seconds, str(logs / "tx"))
            match = _TPS.search(output)
            latencies = sorted(read_latencies(str(logs / "tx")))
        except Exception as exc:
            return Cell.failed(f"{type(exc).__name__}: {exc}"), note
        finally:
            shutil.rmtree(logs, ignore_errors=True)
        if match is None or not latencies:
            return Cell.failed("pgbench printed no tps"), note
        return Cell(
            ops_per_s=float(match.group(1)),
            p50_ms=percentile(latencies, 50) * 1000,
            p99_ms=percentile(latencies, 99) * 1000,
            calls=len(latencies),
        ), note
