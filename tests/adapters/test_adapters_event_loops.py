"""Issue 15: the adapters from other event loops, the SDK's run context, and its 0.24 contracts.

Real threads and real loops, bounded by joins and counts, never by tuned sleeps.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from agents import Agent, RunContextWrapper, Runner
from agents.memory import SessionSettings
from agents.testing import ScriptedModel, assistant_message
from langchain_core.messages import AIMessage, HumanMessage

from convdb import ConversationNotFound, ConversationStore, InvalidInput, WrongEventLoop
from convdb.integrations import langchain as langchain_integration
from convdb.integrations.langchain import ConvDBChatMessageHistory
from convdb.integrations.openai_agents import ConvDBSession, SessionOwner

USER = "alice"


def agent(*replies: str) -> Agent[Any]:
    return Agent(name="a", model=ScriptedModel([[assistant_message(r)] for r in replies]))


async def pool_serves_its_full_size(store: ConversationStore) -> None:
    """The owner's pool is whole: every connection can be acquired at once and answers."""
    size = store.pool.get_max_size()
    conns = [await asyncio.wait_for(store.pool.acquire(), 10) for _ in range(size)]
    try:
        assert [await c.fetchval("SELECT 1") for c in conns] == [1] * size
    finally:
        for c in conns:
            await store.pool.release(c)


# -- OpenAI Agents SDK: run_sync, asyncio.run, threads --------------------------------------------
async def test_run_sync_in_a_worker_thread_is_served_by_the_owning_loop(store: ConversationStore) -> None:
    session = ConvDBSession(store, "rs", USER)
    result = await asyncio.to_thread(Runner.run_sync, agent("hello"), "hi", session=session)
    assert result.final_output == "hello"
    stored = await session.get_items()
    assert [i.get("content") if i.get("role") == "user" else i.get("type") for i in stored] == [
        "hi",
        "message",
    ]
    # Twice more in other threads, each with a loop of its own: the history grows in order.
    for turn in ("two", "three"):
        await asyncio.to_thread(Runner.run_sync, agent(turn), turn, session=session)
    assert await store.count_messages("rs", USER) == 6
    await pool_serves_its_full_size(store)


async def test_asyncio_run_in_another_thread_is_served_by_the_owning_loop(store: ConversationStore) -> None:
    session = ConvDBSession(store, "ar", USER)
    await session.add_items([{"role": "user", "content": "first"}])
    got = await asyncio.to_thread(lambda: asyncio.run(session.get_items()))
    assert got == [{"role": "user", "content": "first"}]
    await pool_serves_its_full_size(store)


async def test_threads_with_their_own_loops_share_one_session(store: ConversationStore) -> None:
    session = ConvDBSession(store, "th", USER)
    threads, per_thread = 4, 5

    async def writer(t: int) -> None:
        for i in range(per_thread):
            await session.add_items([{"role": "user", "content": f"{t}-{i}"}])

    await asyncio.gather(*(asyncio.to_thread(asyncio.run, writer(t)) for t in range(threads)))
    contents = [str(dict(i)["content"]) for i in await session.get_items()]
    assert sorted(contents) == sorted(f"{t}-{i}" for t in range(threads) for i in range(per_thread))
    for t in range(threads):  # each thread's items in its own order
        mine = [c for c in contents if c.startswith(f"{t}-")]
        assert mine == [f"{t}-{i}" for i in range(per_thread)]
    seqs = [m.seq for m in await store.get_history("th", USER, limit=100)]
    assert seqs == list(range(1, threads * per_thread + 1))
    await pool_serves_its_full_size(store)


async def test_a_store_whose_loop_is_not_running_refuses_other_loops_and_stays_whole(dsn: str) -> None:
    def sync_program() -> None:
        loop = asyncio.new_event_loop()
        try:
            owned = loop.run_until_complete(ConversationStore.connect(dsn, min_size=1, max_size=2))
            session = ConvDBSession(owned, "idle", USER)
            loop.run_until_complete(session.add_items([{"role": "user", "content": "kept"}]))
            for _ in range(3):  # a new loop each time: refused, never a crash or a poisoned pool
                with pytest.raises(WrongEventLoop, match="not running"):
                    asyncio.run(session.get_items())
            assert loop.run_until_complete(session.get_items()) == [{"role": "user", "content": "kept"}]
            loop.run_until_complete(pool_serves_its_full_size(owned))
            loop.run_until_complete(owned.close())
        finally:
            loop.close()
        with pytest.raises(WrongEventLoop, match="closed"):
            asyncio.run(session.get_items())

    await asyncio.to_thread(sync_program)


async def test_a_blocked_owning_loop_is_reported_within_acquire_timeout(dsn: str) -> None:
    async with await ConversationStore.connect(dsn, min_size=1, max_size=2, acquire_timeout=1.0) as store:
        session = ConvDBSession(store, "blocked", USER)
        outcome: list[BaseException] = []

        def other_thread() -> None:
            try:
                asyncio.run(session.get_items())
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=other_thread, daemon=True)
        thread.start()
        thread.join(60)  # blocks the owning loop on purpose: the forwarded call cannot start
        assert not thread.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], WrongEventLoop), outcome
        assert "did not take the call" in str(outcome[0])
        assert await session.get_items() == []  # the owner's pool is untouched
        await pool_serves_its_full_size(store)


async def test_the_owning_loop_stopping_during_a_call_ends_it(dsn: str) -> None:
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    store = asyncio.run_coroutine_threadsafe(
        ConversationStore.connect(dsn, min_size=1, max_size=2), loop
    ).result(60)
    session = ConvDBSession(store, "stop", USER)
    try:
        held = threading.Event()
        release = threading.Event()

        async def hold_the_loop() -> None:
            held.set()
            release.wait(60)  # a synchronous wait: the owning loop takes nothing meanwhile
            loop.stop()

        loop.call_soon_threadsafe(lambda: loop.create_task(hold_the_loop()))
        assert held.wait(60)
        call = asyncio.ensure_future(session.get_items())
        await asyncio.sleep(0)
        release.set()
        with pytest.raises(WrongEventLoop, match=r"stopped during the call|not running"):
            await asyncio.wait_for(call, 60)
    finally:
        runner.join(60)
        await asyncio.to_thread(lambda: loop.run_until_complete(store.close()))
        loop.close()


# -- OpenAI Agents SDK: the run context (wrapper=) ------------------------------------------------
def by_context(wrapper: RunContextWrapper[Any]) -> str:
    return str(wrapper.context["user"])


async def test_one_session_object_serves_many_users_from_the_run_context(store: ConversationStore) -> None:
    shared = ConvDBSession(store, "tenant-conv", owner=by_context)
    await Runner.run(agent("hi alice"), "alice here", session=shared, context={"user": "alice"})
    before = await store.get_history("tenant-conv", "alice", limit=100)
    assert [m.content for m in before] == ["alice here", "hi alice"]

    # Another user's context on the same object and conversation id: nothing readable, nothing written.
    with pytest.raises(ConversationNotFound):
        await Runner.run(agent("leak?"), "mallory here", session=shared, context={"user": "mallory"})
    wrapper = RunContextWrapper(context={"user": "mallory"})
    assert await shared.get_items(wrapper=wrapper) == []
    assert await shared.pop_item(wrapper=wrapper) is None
    await shared.clear_session(wrapper=wrapper)
    with pytest.raises(ConversationNotFound):
        await shared.add_items([{"role": "user", "content": "intrude"}], wrapper=wrapper)
    assert await store.get_history("tenant-conv", "alice", limit=100) == before

    # With a SessionOwner naming the conversation too, each user gets a conversation of their own.
    per_user = ConvDBSession(
        store, "unused", owner=lambda w: SessionOwner(w.context["user"], f"conv-{w.context['user']}")
    )
    for user in ("bob", "carol"):
        await Runner.run(agent(f"hi {user}"), f"{user} here", session=per_user, context={"user": user})
    assert [m.content for m in await store.get_history("conv-bob", "bob")] == ["bob here", "hi bob"]
    assert [m.content for m in await store.get_history("conv-carol", "carol")] == ["carol here", "hi carol"]
    with pytest.raises(ConversationNotFound):
        await store.get_history("conv-bob", "carol")


async def test_the_run_context_reaches_all_four_methods_and_the_sdk_sees_it(store: ConversationStore) -> None:
    from agents.memory.session import _session_accepts_wrapper

    seen: list[Any] = []

    def owner(wrapper: RunContextWrapper[Any]) -> str:
        seen.append(wrapper)
        return "dave"

    session = ConvDBSession(store, "ctx", owner=owner)
    assert _session_accepts_wrapper(session)
    result = await Runner.run(agent("ok"), "go", session=session, context={"n": 1})
    assert seen and all(w is result.context_wrapper for w in seen)
    assert await store.count_messages("ctx", "dave") == 2


async def test_owner_resolution_is_checked_before_any_io(store: ConversationStore) -> None:
    with pytest.raises(InvalidInput, match="user_id"):
        ConvDBSession(store, "x")
    with pytest.raises(InvalidInput, match="owner"):
        ConvDBSession(store, "x", USER, owner="alice")  # type: ignore[arg-type]
    only_context = ConvDBSession(store, "x", owner=by_context)
    with pytest.raises(InvalidInput, match="wrapper"):
        await only_context.get_items()  # called outside a run, without a context
    bad = ConvDBSession(store, "x", owner=lambda w: 42)  # type: ignore[arg-type, return-value]
    with pytest.raises(InvalidInput, match="owner"):
        await bad.get_items(wrapper=RunContextWrapper(context=None))
    with pytest.raises(InvalidInput, match="user_id"):
        await ConvDBSession(store, "x", owner=lambda w: "").add_items(
            [{"role": "user", "content": "a"}], wrapper=RunContextWrapper(context=None)
        )
    fallback = ConvDBSession(store, "x", USER, owner=by_context)  # no context: the fixed user
    await fallback.add_items([{"role": "user", "content": "mine"}])
    assert await store.count_messages("x", USER) == 1
    assert [c.id for c in (await store.list_conversations(USER)).items] == ["x"]


# -- OpenAI Agents SDK: session_settings as SessionSettings | dict ---------------------------------
async def test_session_settings_accept_a_dict_like_the_sdks_sessions(store: ConversationStore) -> None:
    s = ConvDBSession(store, "st", USER, session_settings={"limit": 2})
    assert isinstance(s.session_settings, SessionSettings) and s.session_settings.limit == 2
    await s.add_items([{"role": "user", "content": f"m{i}"} for i in range(4)])
    assert [i["content"] for i in await s.get_items()] == ["m2", "m3"]  # type: ignore[typeddict-item]
    assert ConvDBSession(store, "st", USER, session_settings={}).session_settings == SessionSettings()
    with pytest.raises(TypeError, match="Unknown session settings: limitt"):
        ConvDBSession(store, "st", USER, session_settings={"limitt": 1})
    with pytest.raises(TypeError, match="SessionSettings instance or a dict"):
        ConvDBSession(store, "st", USER, session_settings=5)  # type: ignore[arg-type]
    s.session_settings = {"limit": 1}  # type: ignore[assignment]  # assigned later, as a dict
    assert [i["content"] for i in await s.get_items()] == ["m3"]  # type: ignore[typeddict-item]


# -- LangChain: the sync methods ----------------------------------------------------------------
async def test_langchain_sync_methods_from_async_code_on_another_loop(dsn: str) -> None:
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    store = asyncio.run_coroutine_threadsafe(
        ConversationStore.connect(dsn, min_size=1, max_size=2), loop
    ).result(60)
    try:
        h = ConvDBChatMessageHistory(store, "lc", USER)
        # langchain-core's own interface test does this: sync reads inside a coroutine.
        h.add_messages([HumanMessage(content="hello")])
        h.add_ai_message("hi")
        assert h.messages == [HumanMessage(content="hello"), AIMessage(content="hi")]
        assert await h.aget_messages() == h.messages  # the async path from this loop too
        h.clear()
        assert h.messages == []
    finally:
        asyncio.run_coroutine_threadsafe(store.close(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        runner.join(60)
        loop.close()


async def test_langchain_sync_methods_in_a_sync_program(dsn: str) -> None:
    def sync_program() -> list[Any]:
        loop = asyncio.new_event_loop()
        try:
            owned = loop.run_until_complete(ConversationStore.connect(dsn, min_size=1, max_size=2))
            h = ConvDBChatMessageHistory(owned, "sync", USER)
            h.add_user_message("one")  # the store's loop is idle: run here until done
            got = h.messages
            loop.run_until_complete(owned.close())
            return got
        finally:
            loop.close()

    assert await asyncio.to_thread(sync_program) == [HumanMessage(content="one")]


async def test_langchain_sync_call_waiting_on_a_stopped_loop_raises(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    store = asyncio.run_coroutine_threadsafe(
        ConversationStore.connect(dsn, min_size=1, max_size=2), loop
    ).result(60)
    h = ConvDBChatMessageHistory(store, "stopped", USER)
    held, release = threading.Event(), threading.Event()

    async def hold_then_stop() -> None:
        held.set()
        release.wait(60)
        loop.stop()

    try:
        loop.call_soon_threadsafe(lambda: loop.create_task(hold_then_stop()))
        assert held.wait(60)

        # The loop is released only once the call has been handed to it and is waited for:
        # released earlier, the loop could stop before the reader thread got there, and the
        # read would then (rightly) run on the idle loop in the reader's thread instead.
        handed = threading.Event()
        original_wait = langchain_integration._wait

        def wait_after_hand_over(*args: Any) -> Any:
            handed.set()
            return original_wait(*args)

        monkeypatch.setattr(langchain_integration, "_wait", wait_after_hand_over)

        def read() -> Any:
            return h.messages

        reader = asyncio.ensure_future(asyncio.to_thread(read))
        assert await asyncio.to_thread(handed.wait, 60)
        release.set()
        with pytest.raises(WrongEventLoop, match=r"stopped while the call waited|not running"):
            await asyncio.wait_for(reader, 60)
    finally:
        runner.join(60)
        await asyncio.to_thread(lambda: loop.run_until_complete(store.close()))
        loop.close()


# -- the store: get_history(trim=False), behind the SDK's raw newest-N contract ------------------
async def test_get_history_untrimmed_keeps_leading_tool_results(store: ConversationStore) -> None:
    await store.get_or_create_conversation("w", USER)
    await store.save_messages(
        "w",
        USER,
        [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "content": "r1", "tool_call_id": "c1"},
            {"role": "assistant", "content": "a"},
        ],
    )
    assert [m.seq for m in await store.get_history("w", USER, limit=2)] == [4]
    assert [m.seq for m in await store.get_history("w", USER, limit=2, trim=False)] == [3, 4]
    assert [m.seq for m in await store.get_history("w", USER, limit=2, max_tokens=100, trim=False)] == [3, 4]
    assert [m.seq for m in await store.get_history("w", USER, limit=2, max_tokens=100)] == [4]
    with pytest.raises(ConversationNotFound):
        await store.get_history("w", "mallory", limit=2, trim=False)


async def test_get_history_trim_must_be_a_bool(store: ConversationStore) -> None:
    for bad in ("no", 0, None):
        with pytest.raises(InvalidInput, match="trim"):
            await store.get_history("w", USER, trim=bad)  # type: ignore[arg-type]
