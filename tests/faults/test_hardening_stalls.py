"""A stalled backend (SIGSTOP: a frozen VM, a black-holed network) cannot hold a caller past its
own timeout plus the documented grace, and the pool slot comes back.

The backend stays stopped for the whole test (SIGCONT only in ``finally``), so a call that waits
for it would wait forever: the bound below is what separates "ended" from "hung", whatever the
machine's speed. No assertion on speed: only that the call ended, how, and what the pool can do
afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from convdb import ConversationStore
from convdb.runner import RELEASE_GRACE_SECONDS
from tests.support.surface import enable_rls

# Against a server of its own, not through PgBouncer: the PgBouncer pass of .ci/run skips it.
pytestmark = pytest.mark.slow

CALLER_TIMEOUT = 1.0
# Beyond the caller's timeout plus the grace: room for a busy event loop, far below "forever".
SLACK = 15.0
HANG = 60.0

Call = Callable[[ConversationStore, str], Awaitable[Any]]
CALLS: dict[str, Call] = {
    "get_history": lambda store, cid: store.get_history(cid, "alice"),
    "get_conversation": lambda store, cid: store.get_conversation(cid, "alice"),
    "save_message": lambda store, cid: store.save_message(cid, "alice", "user", "during the stall"),
    "save_message_keyed": lambda store, cid: store.save_message(
        cid, "alice", "user", "during the stall", idempotency_key="stall-key"
    ),
    "pop_last_message": lambda store, cid: store.pop_last_message(cid, "alice"),
    "save_messages": lambda store, cid: store.save_messages(
        cid, "alice", [{"role": "user", "content": "b"}] * 3
    ),
    "save_and_get_history": lambda store, cid: store.save_and_get_history(
        cid, "alice", {"role": "user", "content": "during the stall"}
    ),
}


@pytest.mark.guarantee(11)
@pytest.mark.parametrize("mode", ["plain", "row_level_security"])
@pytest.mark.parametrize("name", sorted(CALLS))
async def test_caller_timeout_ends_a_call_on_a_stopped_backend(
    controlled_server: Any, controlled_dsn: str, name: str, mode: str
) -> None:
    rls = mode == "row_level_security"
    dsn = await enable_rls(controlled_dsn) if rls else controlled_dsn
    # One connection: the call must use the stopped backend, and the next one proves the slot
    # came back (a leaked slot would leave the pool empty, acquire_timeout=HANG would then fail).
    store = await ConversationStore.connect(
        dsn, min_size=1, max_size=1, acquire_timeout=HANG, row_level_security=rls, retry_reads=False
    )
    stopped: int | None = None
    try:
        conv = await store.get_or_create_conversation("stall", "alice")
        await store.save_message(conv.id, "alice", "user", "before")
        async with store.pool.acquire() as conn:
            stopped = await conn.fetchval("SELECT pg_backend_pid()")
        os.kill(stopped, signal.SIGSTOP)

        call = asyncio.ensure_future(asyncio.wait_for(CALLS[name](store, conv.id), CALLER_TIMEOUT))
        done, _ = await asyncio.wait({call}, timeout=CALLER_TIMEOUT + RELEASE_GRACE_SECONDS + SLACK)
        assert call in done, f"{name} still pending after its timeout plus the grace: held by the stall"
        with pytest.raises(TimeoutError):
            call.result()

        # The slot came back with a new connection while the old backend is still stopped.
        async with asyncio.timeout(HANG):
            history = await store.get_history(conv.id, "alice")
            async with store.pool.acquire() as conn:
                assert await conn.fetchval("SELECT pg_backend_pid()") != stopped
        assert history[0].content == "before"
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        await asyncio.wait_for(store.close(), HANG)
