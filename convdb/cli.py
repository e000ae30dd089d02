"""The DBA command: ``python -m convdb schema | migrations | check``.

It prints SQL and reports; it never applies anything (the package runs no DDL). Errors are one line
on stderr and exit status 2; ``check`` exits 0 when this package can run on the database, 1 when it
cannot.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import NoReturn, TextIO
from urllib.parse import urlsplit

import asyncpg

from . import migrations, schema_check
from ._version import __version__
from .errors import ConvDBError, translate

EXIT_OK: int = 0
EXIT_INCOMPATIBLE: int = 1
EXIT_ERROR: int = 2

_APPLY = "psql -v ON_ERROR_STOP=1 -d <database> -f -"


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line (the default prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m convdb",
        description=f"convdb {__version__} (schema version {schema_check.SCHEMA_VERSION}): print the "
        "schema SQL for a DBA to apply, or check a database. Never applies anything.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"convdb {__version__}, schema version {schema_check.SCHEMA_VERSION}",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    schema = commands.add_parser(
        "schema",
        help="print the fresh-install SQL (schema.sql)",
        description="Print the fresh-install SQL of this package's schema version (schema.sql), "
        f"for an empty database:  python -m convdb schema | {_APPLY}",
    )
    schema.add_argument(
        "--rls",
        action="store_true",
        help="append schema_rls.sql: the least-privilege role convdb_app and "
        "row-level security (apply as the tables' owner; with --citus it comes after schema_citus.sql)",
    )
    schema.add_argument(
        "--citus",
        action="store_true",
        help="append schema_citus.sql: distribute the tables over a Citus cluster "
        "(apply on the coordinator, the citus extension and workers in place)",
    )
    upgrade = commands.add_parser(
        "migrations",
        help="print the SQL that upgrades a database from schema version N",
        description="Print, in order, the migrations that take a database from schema version N to "
        f"this package's version:  python -m convdb migrations --from N | {_APPLY}  "
        "Each migration is one transaction, refuses to run out of order, and is "
        "idempotent. Breaking ones (header '-- kind: breaking') run only after every "
        "server is upgraded: see docs/upgrading.md.",
    )
    upgrade.add_argument(
        "--from",
        dest="from_version",
        type=int,
        required=True,
        metavar="N",
        help="the database's schema version (python -m convdb check tells it; 0 for an empty database)",
    )
    upgrade.add_argument(
        "--to",
        dest="to_version",
        type=int,
        default=None,
        metavar="M",
        help=f"stop at schema version M (default: {schema_check.SCHEMA_VERSION}, "
        "this package's); e.g. to apply the additive migrations before a "
        "breaking one",
    )
    check = commands.add_parser(
        "check",
        help="say whether this package can run on a database (exit 0) or not (exit 1)",
        description="Connect, read the schema version and the catalog, and say in words whether this "
        "package can run there (exit status 0) or what to do (exit status 1). Errors "
        "(bad DSN, unreachable server) exit with status 2.",
    )
    check.add_argument(
        "--dsn", required=True, help="a libpq connection URI, e.g. postgresql://user@host:5432/database"
    )
    check.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="connect timeout (default 10)"
    )
    return parser


def _print_migrations(from_version: int, to_version: int | None, out: TextIO) -> None:
    target = schema_check.SCHEMA_VERSION if to_version is None else to_version
    steps = migrations.plan(from_version, target)
    if not steps:
        out.write(
            f"-- convdb {__version__}: a database at schema version {from_version} needs no "
            f"migration to reach version {target}.\n"
        )
        return
    names = ", ".join(m.filename for m in steps)
    out.write(
        f"-- convdb {__version__}: schema version {from_version} to {target}: {names}\n"
        f"-- Apply with: {_APPLY}\n"
    )
    for m in steps:
        out.write(f"\n-- ===== {m.filename} ({m.kind}; floor {m.floor} afterwards) =====\n")
        out.write(m.sql if m.sql.endswith("\n") else m.sql + "\n")


def _where(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgres", "postgresql"):
            return "(unparsable DSN)"
        host = parts.hostname or "(local socket)"
        port = f":{parts.port}" if parts.port else ""
        return f"{host}{port}{parts.path or ''}"
    except ValueError:
        return "(unparsable DSN)"


async def _check(dsn: str, connect_timeout: float) -> schema_check.SchemaReport:
    try:
        conn = await asyncpg.connect(dsn, timeout=connect_timeout)
    except ValueError as exc:  # asyncpg's DSN parser (urllib's, underneath)
        text = str(exc)
        raise ConvDBError(text if text.startswith("invalid DSN") else f"invalid DSN: {text}") from exc
    except Exception as exc:  # every other way a connect can fail ends as one line, see main()
        raise translate(exc) from exc
    try:
        return await schema_check.inspect(conn)
    except Exception as exc:
        raise translate(exc) from exc
    finally:
        await conn.close(timeout=connect_timeout)


def describe(report: schema_check.SchemaReport, where: str) -> str:
    """The ``check`` report in words."""
    lines = [f"package:  convdb {__version__}, built for schema version {report.package_version}"]
    if report.version is None:
        lines.append(f"database: {where}: no convdb schema version recorded")
    else:
        lines.append(
            f"database: {where}: schema version {report.version}, supports packages built "
            f"for schema {report.compatible_from} or later"
        )
    if report.delegated:
        lines.append(
            "citus:    schema_citus.sql's delegated functions are this package's: save_message "
            "(guarded too), get_or_create_conversation, save_and_get_history and save_messages "
            "call them"
        )
    elif report.stale_delegated:
        names = ", ".join(s.partition("(")[0] for s in report.stale_delegated)
        lines.append(
            f"citus:    {names} differ from this package's and are not used (the statements are "
            "sent instead): apply this package's schema_citus.sql again to update them"
        )
    if report.compatible:
        lines.append("OK: this package can run on this database.")
    else:
        lines.append("NOT COMPATIBLE: this package refuses to run on this database:")
        lines.extend(f"  - {problem}" for problem in report.problems)
        if report.missing_migrations:
            lines.append(f"Migrations to apply, in order: {', '.join(report.missing_migrations)}")
    return "\n".join(lines) + "\n"


def _fail(message: str) -> int:
    sys.stderr.write(f"python -m convdb: error: {' '.join(message.split())}\n")
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "schema":
            sys.stdout.write(migrations.fresh_install_sql(row_level_security=args.rls, citus=args.citus))
            return EXIT_OK
        if args.command == "migrations":
            _print_migrations(args.from_version, args.to_version, sys.stdout)
            return EXIT_OK
        where = _where(args.dsn)
        report = asyncio.run(_check(args.dsn, args.timeout))
        sys.stdout.write(describe(report, where))
        return EXIT_OK if report.compatible else EXIT_INCOMPATIBLE
    except ValueError as exc:  # an unknown version or a malformed DSN
        return _fail(str(exc))
    except ConvDBError as exc:
        return _fail(f"cannot check {_where(args.dsn)}: {exc}")
    except Exception as exc:  # one line, never a traceback: asyncpg raises many kinds at connect
        return _fail(f"{type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        return _fail("interrupted")
