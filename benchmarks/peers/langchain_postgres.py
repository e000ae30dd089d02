"""LangChain: ``langchain_postgres.PostgresChatMessageHistory`` on psycopg 3 (async)."""

from __future__ import annotations

from typing import Any

from ..systems.base import Operation, System, Unsupported, package_versions
from ..workload import BATCH_SIZES, HISTORY_LIMIT, USER_TEXT, message_dicts, uuid_of
from ._common import chunks, seed_all

TABLE = "langchain_chat_history"
_SEED_CHUNK = 5_000


def _messages(messages: list[dict[str, Any]]) -> list[Any]:
    from langchain_core.messages import AIMessage, HumanMessage

    return [
        HumanMessage(content=m["content"]) if m["role"] == "user" else AIMessage(content=m["content"])
        for m in messages
    ]


class LangchainPostgresSystem(System):
    name = "langchain-postgres"

    _pool: Any = None

    def versions(self) -> dict[str, str]:
        return package_versions("langchain-postgres", "langchain-core", "psycopg", "psycopg-pool")

    async def prepare(self) -> None:
        import psycopg
        from langchain_postgres import PostgresChatMessageHistory

        async with await psycopg.AsyncConnection.connect(self.ctx.db.dsn) as conn:
            await PostgresChatMessageHistory.acreate_tables(conn, TABLE)

            async def seed_one(key: int, length: int) -> None:
                # Session ids are UUIDs in this store (its session_id column is uuid).
                history = PostgresChatMessageHistory(TABLE, uuid_of(key), async_connection=conn)
                for start, count in chunks(length, _SEED_CHUNK):
                    await history.aadd_messages(_messages(message_dicts(count, start)))

            await seed_all(self.ctx, self.name, seed_one)

    async def open(self, concurrency: int) -> None:
        from psycopg_pool import AsyncConnectionPool

        # The documented pattern: a history object per request, on a pooled psycopg connection.
        self._pool = AsyncConnectionPool(
            self.ctx.db.dsn, min_size=concurrency, max_size=concurrency, open=False
        )
        await self._pool.open(wait=True)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def operation(self, op: str) -> Operation:
        from langchain_postgres import PostgresChatMessageHistory

        if op in ("append", *BATCH_SIZES):
            count = BATCH_SIZES.get(op, 1)
            batch = _messages(
                [{"role": "user", "content": USER_TEXT}] if count == 1 else message_dicts(count)
            )

            async def append(key: int) -> None:
                async with self._pool.connection() as conn:
                    await PostgresChatMessageHistory(
                        TABLE, uuid_of(key), async_connection=conn
                    ).aadd_messages(batch)

            return Operation(append)
        if op == "history_50":

            async def history(key: int) -> list[Any]:
                async with self._pool.connection() as conn:
                    messages = await PostgresChatMessageHistory(
                        TABLE, uuid_of(key), async_connection=conn
                    ).aget_messages()
                return list(messages[-HISTORY_LIMIT:])

            return Operation(history, "no limit in the API: reads the whole conversation, keeps the last 50")
        if op == "get_or_create":
            raise Unsupported("no conversation record: any UUID is a session id, nothing to load or create")
        if op == "turn":
            message = _messages([{"role": "user", "content": USER_TEXT}])

            async def turn(key: int) -> list[Any]:
                async with self._pool.connection() as conn:
                    history = PostgresChatMessageHistory(TABLE, uuid_of(key), async_connection=conn)
                    await history.aadd_messages(message)
                    return list((await history.aget_messages())[-HISTORY_LIMIT:])

            return Operation(turn, "aadd_messages + aget_messages (whole conversation), keeps the last 50")
        raise Unsupported(f"unknown operation {op}")
