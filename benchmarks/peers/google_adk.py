"""Google ADK: ``google.adk.sessions.DatabaseSessionService`` on SQLAlchemy + asyncpg."""

from __future__ import annotations

import time
from typing import Any

from ..systems.base import Operation, System, Unsupported, package_versions
from ..workload import BATCH_SIZES, HISTORY_LIMIT, USER_TEXT, conversation_id, message_dicts, user_of
from ._common import async_engine, chunks, seed_all

APP = "convdb-bench"
_SEED_CHUNK = 2_000


def _event(role: str, text: str, timestamp: float | None = None) -> Any:
    from google.adk.events import Event
    from google.genai import types

    author, content_role = ("user", "user") if role == "user" else ("assistant", "model")
    fields: dict[str, Any] = {
        "invocation_id": "bench",
        "author": author,
        "content": types.Content(role=content_role, parts=[types.Part(text=text)]),
    }
    if timestamp is not None:
        fields["timestamp"] = timestamp
    return Event(**fields)


class GoogleADKSystem(System):
    name = "google-adk"

    _service: Any = None
    _sessions: dict[int, Any]

    def versions(self) -> dict[str, str]:
        return package_versions("google-adk", "sqlalchemy", "asyncpg")

    async def prepare(self) -> None:
        from google.adk.sessions import DatabaseSessionService

        service = DatabaseSessionService(db_engine=async_engine(self.ctx.db.sqlalchemy_url("asyncpg"), 2))
        try:
            await service.prepare_tables()
            schema = service._get_schema_classes()

            async def seed_one(key: int, length: int) -> None:
                session = await service.create_session(
                    app_name=APP, user_id=user_of(key), session_id=conversation_id(key)
                )
                # append_event costs a locked read and a commit per event; seeding 100k-event
                # sessions that way takes too long, so events are bulk-inserted with ADK's own
                # storage class (StorageEvent.from_event), and read back through the public API.
                base = time.time() - length
                for start, count in chunks(length, _SEED_CHUNK):
                    rows = [
                        schema.StorageEvent.from_event(
                            session, _event(m["role"], m["content"], base + start + i)
                        )
                        for i, m in enumerate(message_dicts(count, start))
                    ]
                    async with service.database_session_factory() as sql:
                        sql.add_all(rows)
                        await sql.commit()

            await seed_all(self.ctx, self.name, seed_one)
        finally:
            await service.close()

    async def open(self, concurrency: int) -> None:
        from google.adk.sessions import DatabaseSessionService

        self._service = DatabaseSessionService(
            db_engine=async_engine(self.ctx.db.sqlalchemy_url("asyncpg"), concurrency)
        )
        await self._service.prepare_tables()
        self._sessions = {}

    async def close(self) -> None:
        if self._service is not None:
            await self._service.db_engine.dispose()
            self._service = None

    async def _get(self, key: int, recent: int) -> Any:
        from google.adk.sessions.base_session_service import GetSessionConfig

        return await self._service.get_session(
            app_name=APP,
            user_id=user_of(key),
            session_id=conversation_id(key),
            config=GetSessionConfig(num_recent_events=recent),
        )

    async def _append(self, key: int, event: Any) -> None:
        # An agent loop holds the Session it loaded and appends to it; cached per conversation here
        # (loaded once without events), and its in-memory event list is dropped after each append.
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = await self._get(key, 0)
        await self._service.append_event(session, event)
        session.events.clear()

    def operation(self, op: str) -> Operation:
        if op in ("append", *BATCH_SIZES):
            count = BATCH_SIZES.get(op, 1)
            messages = [{"role": "user", "content": USER_TEXT}] if count == 1 else message_dicts(count)

            async def append(key: int) -> None:
                for m in messages:  # a fresh Event (id, timestamp) per message, as the Runner makes
                    await self._append(key, _event(m["role"], m["content"]))

            note = (
                "append_event on a held Session" if count == 1 else "no batch API: append_event per message"
            )
            return Operation(append, note)
        if op == "history_50":

            async def history(key: int) -> None:
                await self._get(key, HISTORY_LIMIT)

            return Operation(history, "get_session(num_recent_events=50)")
        if op == "get_or_create":

            async def get_or_create(key: int) -> None:
                if await self._get(key, 0) is None:
                    await self._service.create_session(
                        app_name=APP, user_id=user_of(key), session_id=conversation_id(key)
                    )

            return Operation(get_or_create, "get_session(num_recent_events=0), create_session if None")
        if op == "turn":

            async def turn(key: int) -> None:
                await self._append(key, _event("user", USER_TEXT))
                await self._get(key, HISTORY_LIMIT)

            return Operation(turn, "append_event + get_session(num_recent_events=50): two calls")
        raise Unsupported(f"unknown operation {op}")
