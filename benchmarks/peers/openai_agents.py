"""OpenAI Agents SDK: ``SQLAlchemySession`` (extra ``openai-agents[sqlalchemy]``) on asyncpg."""

from __future__ import annotations

from typing import Any

from ..systems.base import Operation, System, Unsupported, package_versions
from ..workload import BATCH_SIZES, HISTORY_LIMIT, USER_TEXT, conversation_id, message_dicts
from ._common import async_engine, chunks, seed_all

_SEED_CHUNK = 1_000  # items per add_items call while seeding


def _items(messages: list[dict[str, Any]]) -> list[Any]:
    # Responses-API input items: what the SDK's Runner stores for user and assistant turns.
    return [{"role": m["role"], "content": m["content"]} for m in messages]


class OpenAIAgentsSystem(System):
    name = "openai-agents"

    _engine: Any = None
    _sessions: dict[int, Any]

    def versions(self) -> dict[str, str]:
        return package_versions("openai-agents", "sqlalchemy", "asyncpg")

    def _session(self, key: int) -> Any:
        # Session objects are cached per conversation (the SDK's best case: building one builds
        # SQLAlchemy Table metadata).
        session = self._sessions.get(key)
        if session is None:
            from agents.extensions.memory import SQLAlchemySession

            session = SQLAlchemySession(conversation_id(key), engine=self._engine)
            self._sessions[key] = session
        return session

    async def prepare(self) -> None:
        from agents.extensions.memory import SQLAlchemySession

        engine = async_engine(self.ctx.db.sqlalchemy_url("asyncpg"), 2)
        try:
            # create_tables=True is the SDK's own way to create its tables (sessions, messages, index).
            await SQLAlchemySession("bench-setup", engine=engine, create_tables=True).get_items(limit=1)

            async def seed_one(key: int, length: int) -> None:
                session = SQLAlchemySession(conversation_id(key), engine=engine)
                for start, count in chunks(length, _SEED_CHUNK):
                    await session.add_items(_items(message_dicts(count, start)))

            await seed_all(self.ctx, self.name, seed_one)
        finally:
            await engine.dispose()

    async def open(self, concurrency: int) -> None:
        self._engine = async_engine(self.ctx.db.sqlalchemy_url("asyncpg"), concurrency)
        self._sessions = {}

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    def operation(self, op: str) -> Operation:
        if op == "append":
            item = _items([{"role": "user", "content": USER_TEXT}])

            async def append(key: int) -> None:
                await self._session(key).add_items(item)

            return Operation(append)
        if op in BATCH_SIZES:
            items = _items(message_dicts(BATCH_SIZES[op]))

            async def append_batch(key: int) -> None:
                await self._session(key).add_items(items)

            return Operation(append_batch)
        if op == "history_50":

            async def history(key: int) -> None:
                await self._session(key).get_items(limit=HISTORY_LIMIT)

            return Operation(history)
        if op == "get_or_create":
            raise Unsupported(
                "no conversation record to load or create: a session row is created "
                "implicitly by its first add_items"
            )
        if op == "turn":
            item = _items([{"role": "user", "content": USER_TEXT}])

            async def turn(key: int) -> None:
                session = self._session(key)
                await session.add_items(item)
                await session.get_items(limit=HISTORY_LIMIT)

            return Operation(turn, "add_items + get_items(limit=50): two calls, no one-call turn")
        raise Unsupported(f"unknown operation {op}")
