"""Users' data keys for encryption at rest: read, create, destroy (shred), re-wrap (rotate).

The keys arrive and leave wrapped; unwrapping is the key provider's job, in the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import asyncpg

from ..sql import QUERIES
from . import Conn

_GET: Final = QUERIES["get_user_key"]
_CREATE: Final = QUERIES["create_user_key"]
_SHRED: Final = QUERIES["shred_user_key"]
_ROTATION_BATCH: Final = QUERIES["rotation_batch"]
_REWRAP: Final = QUERIES["rewrap_user_key"]
_PER_MASTER: Final = QUERIES["keys_per_master_key"]


async def get(conn: Conn, uid: str) -> asyncpg.Record | None:
    """The user's (key_id, master_key_id, wrapped_key), or None."""
    return await conn.fetchrow(_GET, uid)


async def create(
    conn: Conn, uid: str, key_id: str, master_key_id: str, wrapped: bytes
) -> asyncpg.Record | None:
    """Store a new data key unless the user has one; returns the user's key row either way (None
    only when a concurrent shred removed it between the two statements)."""
    row = await conn.fetchrow(_CREATE, uid, key_id, master_key_id, wrapped)
    return row if row is not None else await conn.fetchrow(_GET, uid)


async def shred(conn: Conn, uid: str) -> str | None:
    """Delete the user's data key; the id of the key destroyed, None when there was none."""
    key_id: str | None = await conn.fetchval(_SHRED, uid)
    return key_id


async def rotation_batch(conn: Conn, after: str, active: str, count: int) -> list[asyncpg.Record]:
    return await conn.fetch(_ROTATION_BATCH, after, active, count)


async def rewrap(conn: Conn, updates: Sequence[tuple[str, str, str, str, bytes]]) -> None:
    """(user_id, key_id, old master key id, new master key id, wrapped key) each; pipelined."""
    await conn.executemany(_REWRAP, updates)


async def per_master_key(conn: Conn) -> dict[str, int]:
    return {r[0]: r[1] for r in await conn.fetch(_PER_MASTER)}
