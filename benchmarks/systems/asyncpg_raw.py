"""Plain asyncpg running convdb's exact SQL (from convdb.sql.QUERIES) on a default pool.

No validation, no result objects, asyncpg's default pool (with its per-release reset) and default
statement cache: what convdb's own layer costs, and what its pool tuning wins, show against this.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from convdb.sql import QUERIES

from ..workload import BATCH_SIZES, HISTORY_LIMIT, USER_TEXT, conversation_id, message_dicts, user_of
from .base import Operation, System, Unsupported, package_versions


def tokens(text: str) -> int:
    # convdb's default estimate (estimate_tokens), so both store the same token_count.
    return (len(text) + 3) // 4


def message_args(role: str, content: str) -> tuple[Any, ...]:
    """$3..$17 of save_message / insert_message_at: role, content, tool_name, tool_call_id,
    tool_calls, metadata, token_count, idempotency_key, then the seven usage columns (none)."""
    return (role, content, None, None, None, None, tokens(content), None, *(None,) * 7)


class AsyncpgRawSystem(System):
    name = "asyncpg-raw"

    _pool: asyncpg.Pool | None = None

    async def open(self, concurrency: int) -> None:
        self._pool = await asyncpg.create_pool(self.ctx.db.dsn, min_size=concurrency, max_size=concurrency)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "open() first"
        return self._pool

    def versions(self) -> dict[str, str]:
        return package_versions("asyncpg")

    def operation(self, op: str) -> Operation:
        save, history_sql = QUERIES["save_message"], QUERIES["get_history"]
        if op == "append":
            args = message_args("user", USER_TEXT)

            async def append(key: int) -> None:
                await self.pool.fetchrow(save, conversation_id(key), user_of(key), *args)

            return Operation(append)
        if op in BATCH_SIZES:
            reserve, insert = QUERIES["reserve_seq_range"], QUERIES["insert_message_at"]
            rows = [message_args(m["role"], m["content"]) for m in message_dicts(BATCH_SIZES[op])]

            async def append_batch(key: int) -> None:
                cid, uid = conversation_id(key), user_of(key)
                async with self.pool.acquire() as conn, conn.transaction():
                    head = await conn.fetchrow(reserve, cid, uid, len(rows))
                    assert head is not None, "seeded conversations exist"
                    first = head[0]
                    await conn.executemany(insert, [(cid, first + i, *r) for i, r in enumerate(rows)])

            return Operation(
                append_batch, "reserve_seq_range + executemany(insert_message_at) in a transaction"
            )
        if op == "history_50":

            async def history(key: int) -> None:
                await self.pool.fetch(history_sql, conversation_id(key), user_of(key), HISTORY_LIMIT)

            return Operation(history)
        if op == "get_or_create":
            read_sql = QUERIES["get_conversation"]
            get_or_create_sql = QUERIES["get_or_create_conversation"]

            async def get_or_create(key: int) -> None:
                # convdb's order: the ownership-checked read, the create statement only when it
                # misses (no title or metadata; no retention: $5..$9 expires_at, ttl, sliding,
                # temporary, cap).
                cid, uid = conversation_id(key), user_of(key)
                async with self.pool.acquire() as conn:
                    if await conn.fetchrow(read_sql, cid, uid) is None:
                        no_retention = (None, None, False, False, None)
                        await conn.fetchrow(get_or_create_sql, cid, uid, None, None, *no_retention)

            return Operation(get_or_create, "an existing conversation: the per-request path")
        if op == "turn":
            return self._turn()
        if op == "turn_two_calls":
            args = message_args("user", USER_TEXT)

            async def turn_two_calls(key: int) -> None:
                cid, uid = conversation_id(key), user_of(key)
                await self.pool.fetchrow(save, cid, uid, *args)
                await self.pool.fetch(history_sql, cid, uid, HISTORY_LIMIT)

            return Operation(turn_two_calls, "save_message + get_history")
        raise Unsupported(f"unknown operation {op}")

    def _turn(self) -> Operation:
        if "save_and_get_history" not in QUERIES:
            raise Unsupported("convdb.sql.QUERIES has no save_and_get_history statement")
        turn_sql = QUERIES["save_and_get_history"]
        args = message_args("user", USER_TEXT)

        async def turn(key: int) -> None:
            # $18 the window's size, $19 the token budget (None: none), $20 summarized, $21 the guard.
            await self.pool.fetch(
                turn_sql, conversation_id(key), user_of(key), *args, HISTORY_LIMIT, None, False, None
            )

        return Operation(turn, "save_and_get_history: one statement")
