"""A handled cancellation logs nothing at ERROR level.

Two messages an embedding server used to see under cancellations, each provoked here on purpose:

- "Future exception was never retrieved ... ConnectionError('unexpected connection_lost() call')":
  a call cancelled while the pool opens a new connection for it (after a terminated batch, or
  expired connections) cut asyncpg's SSL probe short, orphaning its future;
- "Resetting connection with an active transaction": a call cancelled while its row-level-security
  transaction was starting left it for the pool's release to find.

The cancellation point is swept over successive turns of the event loop (counted, not timed), so
it lands inside each window whatever the machine's speed. asyncio reports both messages through
the loop's exception handler, which the test replaces to count them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import Any

import pytest

from convdb import ConversationStore
from tests.support.surface import enable_rls

TURNS = 40  # loop turns swept before cancelling: more than a connect or a BEGIN takes
HANG = 60.0


async def _cancel_after(call: Any, turns: int) -> None:
    task = asyncio.ensure_future(call())
    for _ in range(turns):
        if task.done():
            break
        await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, HANG)


def _messages(reported: list[dict[str, Any]]) -> list[str]:
    gc.collect()  # an orphaned future reports its exception when it is collected
    return [f"{c.get('message')}: {c.get('exception')!r}" for c in reported]


@pytest.mark.guarantee(13)
async def test_cancelled_calls_during_reconnects_log_nothing(dsn: str) -> None:
    async with await ConversationStore.connect(dsn, min_size=1, max_size=2) as store:
        reported: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        try:
            conv = await store.get_or_create_conversation("logs", "alice")
            for turns in range(TURNS):
                for _ in range(2):
                    # Every pooled connection is replaced on its next acquire: the call connects.
                    await store.pool.expire_connections()
                    await _cancel_after(lambda: store.get_conversation(conv.id, "alice"), turns)
            assert (await store.get_conversation(conv.id, "alice")).id == conv.id
            assert _messages(reported) == []
        finally:
            loop.set_exception_handler(previous)


@pytest.mark.guarantee(13)
async def test_cancelled_calls_under_row_level_security_log_nothing(dsn: str) -> None:
    app_dsn = await enable_rls(dsn)
    async with await ConversationStore.connect(
        app_dsn, min_size=1, max_size=1, row_level_security=True
    ) as store:
        reported: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        try:
            conv = await store.get_or_create_conversation("logs", "alice")
            await store.save_message(conv.id, "alice", "user", "hello")
            for turns in range(TURNS):
                key = f"k{turns}"
                for call in (
                    lambda: store.get_history(conv.id, "alice"),
                    lambda key=key: store.save_message(conv.id, "alice", "user", "x", idempotency_key=key),
                ):
                    await _cancel_after(call, turns)
            history = await store.get_history(conv.id, "alice", limit=1000)
            assert history[0].content == "hello"
            assert _messages(reported) == []
        finally:
            loop.set_exception_handler(previous)
