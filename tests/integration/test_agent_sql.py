"""Every named statement prepares against schema.sql (types and names resolve)."""

import asyncpg
import pytest

from convdb.sql import QUERIES


@pytest.mark.parametrize("name", sorted(QUERIES))
async def test_statement_prepares(db: asyncpg.Connection, name: str) -> None:
    await db.prepare(QUERIES[name])
