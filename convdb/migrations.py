"""The schema files the package ships: the fresh install and the numbered migrations.

Nothing here runs SQL: the package never applies DDL. These files are read so that the DBA command
(``python -m convdb``) can print them and ``verify_schema`` can name the migrations a database lacks.

A migration file is ``convdb/sql/migrations/NNNN_name.sql``; it takes the database from schema
version NNNN-1 to NNNN in one transaction and declares its kind in its header comment:

``-- kind: additive``
    new tables, nullable columns or columns with a constant default, new indexes: servers of every
    package the database supported before keep running; the floor stays.
``-- kind: breaking`` and ``-- floor: F``
    anything an older package cannot live with: the floor rises to F (< NNNN), the oldest package
    schema version that copes with the change. Applied only after every server runs a package
    built for schema F or later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from typing import Final, Literal

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_KIND = re.compile(r"^-- kind: *(\S+) *$", re.MULTILINE)
_FLOOR = re.compile(r"^-- floor: *(\S+) *$", re.MULTILINE)

Kind = Literal["additive", "breaking"]


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    #: The schema version this file takes the database to (from ``version - 1``).
    version: int
    #: The file name, e.g. ``0002_compatibility_floor.sql``: what a DBA is told to apply.
    filename: str
    #: ``additive`` keeps the floor; ``breaking`` raises it to ``floor``.
    kind: Kind
    #: The compatibility floor once this migration has run.
    floor: int
    #: The file's text, ready for ``psql -v ON_ERROR_STOP=1 -f -``.
    sql: str


def _header(text: str) -> str:
    """The leading comment block: headers are read there only, never from the SQL below."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("--") and line.strip():
            break
        lines.append(line)
    return "\n".join(lines)


def parse_migrations(files: dict[str, str]) -> tuple[Migration, ...]:
    """Check and order ``{filename: text}``: numbered 0001, 0002, ... without holes, each with a
    valid ``-- kind:`` header (and ``-- floor:`` when breaking). Raises ``ValueError`` otherwise."""
    numbered: dict[int, tuple[str, str]] = {}
    for filename, text in files.items():
        match = _FILE.match(filename)
        if match is None:
            raise ValueError(f"migration file name {filename!r} is not NNNN_name.sql")
        version = int(match.group(1))
        if version in numbered:
            raise ValueError(f"two migrations for version {version}: {numbered[version][0]}, {filename}")
        numbered[version] = (filename, text)
    if sorted(numbered) != list(range(1, len(numbered) + 1)):
        raise ValueError(f"migrations must be numbered from 0001 without holes; found {sorted(numbered)}")
    result: list[Migration] = []
    floor = 1
    for version in sorted(numbered):
        filename, text = numbered[version]
        header = _header(text)
        kinds = _KIND.findall(header)
        floors = _FLOOR.findall(header)
        if len(kinds) != 1 or kinds[0] not in ("additive", "breaking"):
            raise ValueError(
                f"{filename}: the header must say exactly once '-- kind: additive' or "
                f"'-- kind: breaking'; found {kinds}"
            )
        kind: Kind = "additive" if kinds[0] == "additive" else "breaking"
        if kind == "additive":
            if floors:
                raise ValueError(f"{filename}: an additive migration keeps the floor; remove '-- floor:'")
        else:
            if len(floors) != 1 or not floors[0].isdigit():
                raise ValueError(
                    f"{filename}: a breaking migration declares its new floor once: "
                    f"'-- floor: N'; found {floors}"
                )
            new_floor = int(floors[0])
            if not floor < new_floor < version:
                raise ValueError(
                    f"{filename}: the floor must rise above {floor} and stay below {version} (a package "
                    f"built for schema {new_floor} must already be deployable before this runs); "
                    f"found {new_floor}"
                )
            floor = new_floor
        result.append(Migration(version, filename, kind, floor, text))
    return tuple(result)


def load_migrations(directory: Traversable) -> tuple[Migration, ...]:
    """Every ``*.sql`` file of ``directory``, checked and in order (see ``parse_migrations``)."""
    files = {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in directory.iterdir()
        if entry.name.endswith(".sql")
    }
    return parse_migrations(files)


_SQL: Final = resources.files("convdb.sql")

#: The migrations this package ships, in order. The last one's version is ``SCHEMA_VERSION``.
MIGRATIONS: tuple[Migration, ...] = load_migrations(_SQL / "migrations")


def fresh_install_sql(*, row_level_security: bool = False, citus: bool = False) -> str:
    """``schema.sql`` (the fresh install of this package's schema version), followed by
    ``schema_citus.sql`` (the distribution over a Citus cluster, applied on the coordinator) when
    ``citus``, then ``schema_rls.sql`` when ``row_level_security``: after the distribution, since
    Citus refuses to distribute a table whose policies have subqueries, and schema_rls.sql writes
    its Citus rule only where the tables are Citus's (docs/citus.md, "Row-level security")."""
    text = (_SQL / "schema.sql").read_text(encoding="utf-8")
    if citus:
        text += "\n" + (_SQL / "schema_citus.sql").read_text(encoding="utf-8")
    if row_level_security:
        text += "\n" + (_SQL / "schema_rls.sql").read_text(encoding="utf-8")
    return text


def plan(
    from_version: int, to_version: int, migrations: tuple[Migration, ...] | None = None
) -> tuple[Migration, ...]:
    """The migrations that take a database from ``from_version`` to ``to_version``, in order.

    ``from_version`` 0 is an empty database. Raises ``ValueError`` for a version the package does
    not know or a range that goes backwards.
    """
    known = MIGRATIONS if migrations is None else migrations
    latest = known[-1].version if known else 0
    for name, value in (("from", from_version), ("to", to_version)):
        if not 0 <= value <= latest:
            raise ValueError(
                f"unknown schema version {value} (--{name}): this package knows versions "
                f"0 (an empty database) to {latest}"
            )
    if from_version > to_version:
        raise ValueError(
            f"cannot go from schema version {from_version} down to {to_version}: migrations only upgrade"
        )
    return tuple(m for m in known if from_version < m.version <= to_version)
