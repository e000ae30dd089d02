"""Issue 10 item 13: the LangChain sync bridge raises once the owning loop is gone, instead of
blocking its thread forever (which, in a non-daemon executor thread, blocks interpreter exit)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import asyncio, concurrent.futures, sys, threading, time
    from convdb import ConvDBError, ConversationStore
    from convdb.integrations.langchain import ConvDBChatMessageHistory

    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever)  # non-daemon, like LangChain's executors
    runner.start()

    async def setup():
        store = await ConversationStore.connect(sys.argv[1], min_size=1, max_size=1, acquire_timeout=None)
        held = await store.pool.acquire()  # the only connection: the history's call waits for it
        return store, held

    async def pending_tasks():
        return len(asyncio.all_tasks()) - 1

    store, held = asyncio.run_coroutine_threadsafe(setup(), loop).result(60)
    history = ConvDBChatMessageHistory(store, "c", "u", loop=loop)
    executor = concurrent.futures.ThreadPoolExecutor(1)  # non-daemon worker thread
    waiting = executor.submit(lambda: history.messages)
    deadline = time.monotonic() + 60
    while asyncio.run_coroutine_threadsafe(pending_tasks(), loop).result(60) < 1:
        assert time.monotonic() < deadline, "the sync call never reached the loop"
        assert not waiting.done(), waiting.exception()
        time.sleep(0.01)
    loop.call_soon_threadsafe(loop.stop)  # the owning loop stops while the call waits
    runner.join(60)
    try:
        waiting.result(timeout=60)
    except ConvDBError as exc:
        print("RAISED ConvDBError", type(exc).__name__, exc, flush=True)  # caught as ConvDBError: its subclass named after
    else:
        print("RETURNED", flush=True)
    print("EXITING", flush=True)
""")


def test_sync_call_raises_when_the_loop_stops_and_the_process_exits(dsn: str) -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, dsn], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"the process did not exit within 120 s: {exc.stdout!r} {exc.stderr!r}"
        ) from None
    assert done.returncode == 0, done.stderr
    assert "RAISED ConvDBError" in done.stdout and "stopped while the call waited" in done.stdout, done.stdout
    assert "EXITING" in done.stdout
