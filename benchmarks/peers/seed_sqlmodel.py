"""The seed document's design, as that document shows it: SQLModel on SQLAlchemy's async engine.

A ``select(...)`` per call to check the conversation, a commit per message, history ordered by
created_at: the naive baseline this project replaces. Its tables are created by SQLModel itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ..systems.base import Operation, System, Unsupported, package_versions
from ..workload import BATCH_SIZES, HISTORY_LIMIT, USER_TEXT, conversation_id, message_dicts, user_of
from ._common import async_engine, chunks, seed_all

_MODELS: dict[str, Any] = {}


def _now() -> datetime:
    return datetime.now(UTC)


def models() -> tuple[Any, Any]:
    """The two table models, defined once per process (SQLModel keeps a global registry)."""
    if not _MODELS:
        from sqlalchemy import DateTime
        from sqlmodel import Field, SQLModel

        class SeedConversation(SQLModel, table=True):  # type: ignore[call-arg]  # SQLModel is Any without the bench extra
            __tablename__ = "seed_conversations"
            id: str = Field(primary_key=True)
            user_id: str = Field(index=True)
            title: str | None = None
            created_at: datetime = Field(default_factory=_now, sa_type=DateTime(timezone=True))
            updated_at: datetime = Field(default_factory=_now, sa_type=DateTime(timezone=True))

        class SeedMessage(SQLModel, table=True):  # type: ignore[call-arg]
            __tablename__ = "seed_messages"
            id: int | None = Field(default=None, primary_key=True)
            conversation_id: str = Field(foreign_key="seed_conversations.id", index=True)
            role: str
            content: str
            created_at: datetime = Field(default_factory=_now, sa_type=DateTime(timezone=True))

        _MODELS.update(conversation=SeedConversation, message=SeedMessage)
    return _MODELS["conversation"], _MODELS["message"]


class SeedSQLModelSystem(System):
    name = "seed-sqlmodel"

    _engine: Any = None

    def versions(self) -> dict[str, str]:
        return package_versions("sqlmodel", "sqlalchemy", "asyncpg")

    async def prepare(self) -> None:
        from sqlmodel import SQLModel
        from sqlmodel.ext.asyncio.session import AsyncSession

        conversation, message = models()
        engine = async_engine(self.ctx.db.sqlalchemy_url("asyncpg"), 2)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(
                    SQLModel.metadata.create_all, tables=[conversation.__table__, message.__table__]
                )

            async def seed_one(key: int, length: int) -> None:
                async with AsyncSession(engine) as session:
                    session.add(conversation(id=conversation_id(key), user_id=user_of(key)))
                    await session.commit()
                    for start, count in chunks(length, 5_000):
                        session.add_all(
                            [
                                message(conversation_id=conversation_id(key), **m)
                                for m in message_dicts(count, start)
                            ]
                        )
                        await session.commit()

            await seed_all(self.ctx, self.name, seed_one)
        finally:
            await engine.dispose()

    async def open(self, concurrency: int) -> None:
        self._engine = async_engine(self.ctx.db.sqlalchemy_url("asyncpg"), concurrency)

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def _owned(self, session: Any, key: int) -> Any:
        from sqlmodel import select

        conversation, _ = models()
        found = (
            await session.exec(
                select(conversation).where(
                    conversation.id == conversation_id(key), conversation.user_id == user_of(key)
                )
            )
        ).first()
        if found is None:
            raise LookupError("conversation not found")
        return found

    async def _save(self, key: int, messages: list[dict[str, Any]]) -> None:
        from sqlmodel.ext.asyncio.session import AsyncSession

        _, message = models()
        # expire_on_commit=False: the usual async setting (attribute access after a commit would
        # otherwise lazy-load, which the async engine refuses).
        async with AsyncSession(self._engine, expire_on_commit=False) as session:
            owner = await self._owned(session, key)
            for m in messages:  # a commit per message, as the seed document does
                session.add(message(conversation_id=owner.id, **m))
                owner.updated_at = _now()
                session.add(owner)
                await session.commit()

    async def _history(self, key: int) -> list[Any]:
        from sqlmodel import col, select
        from sqlmodel.ext.asyncio.session import AsyncSession

        _, message = models()
        async with AsyncSession(self._engine) as session:
            await self._owned(session, key)
            rows = (
                await session.exec(
                    select(message)
                    .where(message.conversation_id == conversation_id(key))
                    .order_by(col(message.created_at).desc())
                    .limit(HISTORY_LIMIT)
                )
            ).all()
            return list(reversed(rows))

    def operation(self, op: str) -> Operation:
        if op in ("append", *BATCH_SIZES):
            count = BATCH_SIZES.get(op, 1)
            messages = [{"role": "user", "content": USER_TEXT}] if count == 1 else message_dicts(count)

            async def append(key: int) -> None:
                await self._save(key, messages)

            return Operation(append, None if count == 1 else "a commit per message")
        if op == "history_50":
            return Operation(
                self._history, "select conversation, then select ... order by created_at limit 50"
            )
        if op == "get_or_create":
            from sqlmodel.ext.asyncio.session import AsyncSession

            conversation, _ = models()

            async def get_or_create(key: int) -> None:
                async with AsyncSession(self._engine) as session:
                    found = await session.get(conversation, conversation_id(key))
                    if found is None:
                        session.add(conversation(id=conversation_id(key), user_id=user_of(key)))
                        await session.commit()
                    elif found.user_id != user_of(key):
                        raise LookupError("conversation not found")

            return Operation(get_or_create, "session.get, add + commit when missing")
        if op == "turn":
            message = [{"role": "user", "content": USER_TEXT}]

            async def turn(key: int) -> None:
                await self._save(key, message)
                await self._history(key)

            return Operation(turn, "save + history: two calls")
        raise Unsupported(f"unknown operation {op}")
