"""Run the OpenAI Agents SDK's own tests with its sessions backed by convdb's ``ConvDBSession``.

The SDK's tests build sessions in two ways: ``SQLiteSession(session_id, db_path, ...)`` (the
SDK's reference session, in its session tests and some Runner tests) and the test helper
``tests.utils.simple_session.SimpleListSession(session_id, history)`` (most Runner tests, and the
helpers derived from it: ``CountingSession``, ``IdStrippingSession``, classes defined in tests).
This plugin replaces the storage methods of both classes in place -- construction, ``get_items``,
``add_items``, ``pop_item``, ``clear_session`` -- with a ``ConvDBSession`` each instance owns, so
subclasses and ``super()`` calls reach convdb too. Test files and assertions are untouched.

Each instance maps to its own convdb conversation: an in-memory ``SQLiteSession`` and every
``SimpleListSession`` to a fresh one; a file ``SQLiteSession`` to one per (test, file,
session_id), so two instances on one file share their items, as SQLite's do. The SQLite-specific
private hooks (``_get_compaction_snapshot``, ``_pop_item_with_validation``) are removed, so the
SDK drives the replacement exactly as it drives any third-party session.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from convdb_conformance_common import close, key, on_store_loop, store

from convdb.integrations.openai_agents import ConvDBSession

USER = "conformance-user"


def _new_session(conversation_id: str, settings: Any = None) -> ConvDBSession:
    return ConvDBSession(store(), conversation_id, USER, session_settings=settings)


def _patch_sqlite_session() -> None:
    from agents.memory import sqlite_session

    cls = sqlite_session.SQLiteSession

    def __init__(
        self: Any,
        session_id: str,
        db_path: str | Path = ":memory:",
        sessions_table: str = "agent_sessions",
        messages_table: str = "agent_messages",
        session_settings: Any = None,
    ) -> None:
        self.session_id = session_id
        self.db_path = db_path
        self.sessions_table = sessions_table
        self.messages_table = messages_table
        if str(db_path) == ":memory:":
            conversation = key("sqlite-memory", uuid.uuid4().hex)
        else:
            conversation = key("sqlite-file", str(Path(db_path).resolve()), messages_table, session_id)
        self._convdb = _new_session(conversation, session_settings)
        self.session_settings = self._convdb.session_settings

    async def get_items(self: Any, limit: int | None = None) -> Any:
        self._convdb.session_settings = self.session_settings
        return await self._convdb.get_items(limit)

    async def add_items(self: Any, items: Any) -> None:
        await self._convdb.add_items(items)

    async def pop_item(self: Any) -> Any:
        return await self._convdb.pop_item()

    async def clear_session(self: Any) -> None:
        await self._convdb.clear_session()

    def close_session(self: Any) -> None:
        """Nothing to close: the store is shared by the whole run."""

    cls.__init__ = __init__
    cls.get_items = get_items
    cls.add_items = add_items
    cls.pop_item = pop_item
    cls.clear_session = clear_session
    cls.close = close_session
    for private in ("_get_compaction_snapshot", "_pop_item_with_validation"):
        if private in cls.__dict__:
            delattr(cls, private)


def _patch_simple_list_session() -> None:
    from tests.utils import simple_session

    cls = simple_session.SimpleListSession

    def __init__(self: Any, session_id: str = "test", history: Any = None) -> None:
        self.session_id = session_id
        self._convdb = _new_session(key("simple", uuid.uuid4().hex))
        self._ignore_ids_for_matching = False
        if history:
            on_store_loop(self._convdb.add_items(list(history)))

    async def get_items(self: Any, limit: int | None = None) -> Any:
        return await self._convdb.get_items(limit)

    async def add_items(self: Any, items: Any) -> None:
        await self._convdb.add_items(items)

    async def pop_item(self: Any) -> Any:
        return await self._convdb.pop_item()

    async def clear_session(self: Any) -> None:
        await self._convdb.clear_session()

    def stored(self: Any) -> Any:
        """What the helper's list held: every stored item, read back from convdb."""
        return on_store_loop(self._convdb.get_items())

    cls.__init__ = __init__
    cls.get_items = get_items
    cls.add_items = add_items
    cls.pop_item = pop_item
    cls.clear_session = clear_session
    cls._items = property(stored)
    cls.saved_items = property(stored)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    # After the SDK's own conftest (which puts its tests package on sys.path), before collection.
    _patch_sqlite_session()
    _patch_simple_list_session()


def pytest_unconfigure(config: pytest.Config) -> None:
    close()
