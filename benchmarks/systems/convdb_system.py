"""convdb through its public API only."""

from __future__ import annotations

from typing import Any

from convdb import ConversationStore

from ..workload import BATCH_SIZES, HISTORY_LIMIT, USER_TEXT, conversation_id, message_dicts, user_of
from .base import Operation, System, Unsupported, package_versions


class ConvdbSystem(System):
    name = "convdb"

    _store: ConversationStore | None = None

    async def open(self, concurrency: int) -> None:
        self._store = await ConversationStore.connect(
            self.ctx.db.dsn, min_size=concurrency, max_size=concurrency
        )

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None

    @property
    def store(self) -> ConversationStore:
        assert self._store is not None, "open() first"
        return self._store

    def versions(self) -> dict[str, str]:
        return package_versions("convdb", "asyncpg")

    def operation(self, op: str) -> Operation:
        if op == "append":

            async def append(key: int) -> None:
                await self.store.save_message(conversation_id(key), user_of(key), "user", USER_TEXT)

            return Operation(append)
        if op in BATCH_SIZES:
            batch = message_dicts(BATCH_SIZES[op])

            async def append_batch(key: int) -> None:
                await self.store.save_messages(conversation_id(key), user_of(key), batch)

            return Operation(append_batch)
        if op == "history_50":

            async def history(key: int) -> None:
                await self.store.get_history(conversation_id(key), user_of(key), limit=HISTORY_LIMIT)

            return Operation(history)
        if op == "get_or_create":

            async def get_or_create(key: int) -> None:
                await self.store.get_or_create_conversation(conversation_id(key), user_of(key))

            return Operation(get_or_create, "an existing conversation: the per-request path")
        if op == "turn":
            if not hasattr(ConversationStore, "save_and_get_history"):
                raise Unsupported("this convdb has no ConversationStore.save_and_get_history")
            message: dict[str, Any] = {"role": "user", "content": USER_TEXT}

            async def turn(key: int) -> None:
                await self.store.save_and_get_history(
                    conversation_id(key), user_of(key), message, limit=HISTORY_LIMIT
                )

            return Operation(turn, "save_and_get_history: one round trip")
        if op == "turn_two_calls":

            async def turn_two_calls(key: int) -> None:
                cid, uid = conversation_id(key), user_of(key)
                await self.store.save_message(cid, uid, "user", USER_TEXT)
                await self.store.get_history(cid, uid, limit=HISTORY_LIMIT)

            return Operation(turn_two_calls, "save_message + get_history")
        raise Unsupported(f"unknown operation {op}")
