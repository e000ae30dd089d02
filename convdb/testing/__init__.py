"""Helpers for running convdb against a real PostgreSQL in tests, demos and benchmarks.

Not imported by ``convdb`` itself; needs the ``embedded`` extra for the bundled server.
"""

from .catalog import catalog_snapshot
from .embedded import EmbeddedPostgres, apply_schema, apply_sql, find_binary

__all__ = ["EmbeddedPostgres", "apply_schema", "apply_sql", "catalog_snapshot", "find_binary"]
