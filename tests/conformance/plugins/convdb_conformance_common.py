"""What the conformance plugins share: one ConversationStore, on an event loop of its own.

Loaded inside a framework's own test run (``pytest -p convdb_conformance_<framework>``), never by
convdb's suite. The store's loop runs in a daemon thread for the whole run, so every test -- each
on its own pytest-asyncio loop, in ``Runner.run_sync``'s loop, in threads of its own, or in plain
synchronous code -- reaches the store from a loop that does not own it: the path convdb serves by
handing the call to the owning loop (``ConversationStore.loop``). ``CONVDB_CONFORMANCE_DSN`` names
a database with schema.sql applied (the harness creates it).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from convdb import ConversationStore

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_store: ConversationStore | None = None


def _start() -> tuple[asyncio.AbstractEventLoop, ConversationStore]:
    dsn = os.environ.get("CONVDB_CONFORMANCE_DSN")
    if not dsn:
        raise RuntimeError(
            "CONVDB_CONFORMANCE_DSN is not set: run the suites with python -m tests.conformance"
        )
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="convdb-store-loop", daemon=True).start()
    connect = ConversationStore.connect(dsn, min_size=1, max_size=8)
    store = asyncio.run_coroutine_threadsafe(connect, loop).result(timeout=60)
    return loop, store


def store() -> ConversationStore:
    """The shared store (connected on first use)."""
    global _loop, _store
    with _lock:
        if _store is None:
            _loop, _store = _start()
        return _store


def on_store_loop(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` on the store's loop and wait for it (harness bookkeeping only)."""
    store()
    assert _loop is not None
    return asyncio.run_coroutine_threadsafe(work, _loop).result(timeout=60)


def key(*parts: str) -> str:
    """A conversation id for the framework's own naming (a table, a file, a session id): unique
    per test, so that two tests reusing a session id never see each other's items."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    digest = hashlib.sha256("\x1f".join((test, *parts)).encode()).hexdigest()[:32]
    return f"conf-{digest}"


def close() -> None:
    global _store
    with _lock:
        if _store is not None and _loop is not None:
            asyncio.run_coroutine_threadsafe(_store.close(), _loop).result(timeout=60)
            _loop.call_soon_threadsafe(_loop.stop)
            _store = None
