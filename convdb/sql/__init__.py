"""Every static SQL statement of convdb, loaded once from ``queries.sql``.

Keeping the statements in one SQL file makes them reviewable by a DBA in one place; the loader
only splits the file on ``-- name: <name>`` markers.
"""

from __future__ import annotations

import re
from importlib import resources
from types import MappingProxyType
from typing import Final

_NAME = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split a queries file into {name: statement}, comments stripped, trailing ';' removed."""
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"duplicate query name in queries.sql: {name}")
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        statement = "\n".join(lines).strip().rstrip(";").strip()
        if not statement:
            raise ValueError(f"empty query in queries.sql: {name}")
        queries[name] = statement
    return queries


def _load() -> MappingProxyType[str, str]:
    text = resources.files(__package__).joinpath("queries.sql").read_text(encoding="utf-8")
    return MappingProxyType(parse_queries(text))


QUERIES: Final = _load()
