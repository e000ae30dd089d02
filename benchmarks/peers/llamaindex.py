"""LlamaIndex: ``llama_index.storage.chat_store.postgres.PostgresChatStore`` (asyncpg for async calls)."""

from __future__ import annotations

from typing import Any

from ..systems.base import Operation, System, Unsupported, package_versions
from ..workload import BATCH_SIZES, HISTORY_LIMIT, USER_TEXT, conversation_id, message_dicts
from ._common import async_engine, seed_all

TABLE = "llamaindex_chatstore"


def _messages(messages: list[dict[str, Any]]) -> list[Any]:
    from llama_index.core.llms import ChatMessage

    return [ChatMessage(role=m["role"], content=m["content"]) for m in messages]


class LlamaIndexSystem(System):
    name = "llamaindex"

    _store: Any = None
    _engines: tuple[Any, Any] | None = None

    def versions(self) -> dict[str, str]:
        return package_versions("llama-index-storage-chat-store-postgres", "llama-index-core", "asyncpg")

    def _make_store(self, concurrency: int) -> Any:
        # The constructor takes sessionmakers, which lets its async engine get the same pool size as
        # every other system (from_uri would build default-sized engines). It creates its table with
        # the sync (psycopg) engine.
        from llama_index.storage.chat_store.postgres import PostgresChatStore
        from sqlalchemy import create_engine
        from sqlalchemy.ext.asyncio import AsyncSession
        from sqlalchemy.orm import sessionmaker

        sync_engine = create_engine(self.ctx.db.sqlalchemy_url("psycopg"), pool_size=1)
        engine = async_engine(self.ctx.db.sqlalchemy_url("asyncpg"), concurrency)
        self._engines = (sync_engine, engine)
        return PostgresChatStore(
            session=sessionmaker(sync_engine),
            async_session=sessionmaker(engine, class_=AsyncSession),
            table_name=TABLE,
        )

    async def prepare(self) -> None:
        store = self._make_store(2)
        try:

            async def seed_one(key: int, length: int) -> None:
                # One row per conversation holding an array of messages: aset_messages writes it whole.
                await store.aset_messages(conversation_id(key), _messages(message_dicts(length)))

            await seed_all(self.ctx, self.name, seed_one)
        finally:
            await self._dispose()

    async def _dispose(self) -> None:
        if self._engines is not None:
            sync_engine, engine = self._engines
            sync_engine.dispose()
            await engine.dispose()
            self._engines = None

    async def open(self, concurrency: int) -> None:
        self._store = self._make_store(concurrency)

    async def close(self) -> None:
        self._store = None
        await self._dispose()

    def operation(self, op: str) -> Operation:
        if op in ("append", *BATCH_SIZES):
            count = BATCH_SIZES.get(op, 1)
            batch = _messages(
                [{"role": "user", "content": USER_TEXT}] if count == 1 else message_dicts(count)
            )

            async def append(key: int) -> None:
                for message in batch:
                    await self._store.async_add_message(conversation_id(key), message)

            note = None if count == 1 else "no batch API: one async_add_message per message"
            return Operation(append, note)
        if op == "history_50":

            async def history(key: int) -> list[Any]:
                messages: list[Any] = await self._store.aget_messages(conversation_id(key))
                return messages[-HISTORY_LIMIT:]

            return Operation(
                history, "no limit in the API: reads the whole conversation (one array), keeps 50"
            )
        if op == "get_or_create":
            raise Unsupported("no conversation record: any key is a chat, nothing to load or create")
        if op == "turn":
            message = _messages([{"role": "user", "content": USER_TEXT}])[0]

            async def turn(key: int) -> list[Any]:
                await self._store.async_add_message(conversation_id(key), message)
                messages: list[Any] = await self._store.aget_messages(conversation_id(key))
                return messages[-HISTORY_LIMIT:]

            return Operation(
                turn, "async_add_message + aget_messages (whole conversation), keeps the last 50"
            )
        raise Unsupported(f"unknown operation {op}")
