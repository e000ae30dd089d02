"""``close()`` with calls in flight, and a store called from an event loop that is not its own.

Calls in flight when ``close()`` begins finish normally; only calls made after it raise, and what
they raise is a ``ConvDBError`` (a server draining on SIGTERM takes exactly this path). A call
from another loop is served through the store's own loop while it runs (issue 15), and leaves
nothing busy.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from convdb import ConvDBError, ConversationStore

HANG = 60.0
IN_FLIGHT = 60


@pytest.mark.guarantee(13)
@pytest.mark.parametrize("max_size", [1, 3])
async def test_close_lets_calls_in_flight_finish_and_refuses_new_ones(dsn: str, max_size: int) -> None:
    store = await ConversationStore.connect(dsn, min_size=1, max_size=max_size)
    conv = await store.get_or_create_conversation("closing", "alice")

    async def call(i: int) -> Any:
        if i % 3 == 0:
            return await store.save_message(conv.id, "alice", "user", f"single {i}")
        if i % 3 == 1:
            return await store.get_history(conv.id, "alice")
        return await store.save_messages(
            conv.id, "alice", [{"role": "user", "content": f"b{i}.{j}"} for j in range(5)]
        )

    calls = [asyncio.ensure_future(call(i)) for i in range(IN_FLIGHT)]
    # One turn of the loop: every call has started and waits in the pool (at most max_size hold
    # a connection), so all of them are in flight when close() begins. Counted, not timed.
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(store.close())
    await asyncio.sleep(0)
    with pytest.raises(ConvDBError):  # a call made after close() began
        await store.get_history(conv.id, "alice")

    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), HANG)
    await asyncio.wait_for(closing, HANG)
    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, (
        f"{len(failed)} calls in flight failed at close(): {sorted({repr(f) for f in failed})[:5]}"
    )
    with pytest.raises(ConvDBError, match="closed"):
        await store.save_message(conv.id, "alice", "user", "too late")

    async with await ConversationStore.connect(dsn, min_size=1, max_size=1) as check:
        assert await check.count_messages(conv.id, "alice") == IN_FLIGHT // 3 + (IN_FLIGHT // 3) * 5


@pytest.mark.guarantee(13)
async def test_a_store_called_from_another_event_loop(dsn: str) -> None:
    store = await ConversationStore.connect(dsn, min_size=1, max_size=1)
    try:
        conv = await store.get_or_create_conversation("loops", "alice")
        await store.save_message(conv.id, "alice", "user", "hello")

        def from_another_loop(call: Any) -> BaseException | None:
            async def run() -> None:
                await call()

            try:
                asyncio.run(run())
            except BaseException as exc:
                return exc
            return None

        # Issue 15: while the owning loop runs, calls from another loop are served through it
        # (run_coroutine_threadsafe), so the pool is only ever driven by its own loop.
        for call in (
            lambda: store.get_history(conv.id, "alice"),
            lambda: store.save_message(conv.id, "alice", "user", "from elsewhere"),
            lambda: store.save_messages(conv.id, "alice", [{"role": "user", "content": "x"}]),
        ):
            error = await asyncio.to_thread(from_another_loop, call)
            assert error is None, repr(error)

        # Nothing was left busy: the one pooled connection serves its own loop at once.
        assert store.pool.get_idle_size() == 1
        history = await asyncio.wait_for(store.get_history(conv.id, "alice"), HANG)
        assert [m.content for m in history] == ["hello", "from elsewhere", "x"]
        # When the owning loop cannot serve (not running, closed, blocked): WrongEventLoop, a
        # ConvDBError, before the pool is touched (tests/adapters/test_adapters_event_loops.py).
    finally:
        await store.close()
