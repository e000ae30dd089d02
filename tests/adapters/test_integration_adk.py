"""ConvDBSessionService against the real google-adk package and a real PostgreSQL.

ADK publishes no tests in its sdist or wheel (google-adk 2.13.0: checked by listing both), so these
are our own tests of every behaviour ``BaseSessionService`` documents and ADK's own services show:
sessions and their ids, the three persisted state scopes and ``temp:``, events kept losslessly,
windows, listing, deletion, the stale-session check, and a Runner over several turns with a tool.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from google.adk.agents import LlmAgent
from google.adk.errors import StaleSessionError
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.errors.session_not_found_error import SessionNotFoundError
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import Runner
from google.adk.sessions.base_session_service import GetSessionConfig
from google.adk.sessions.session import Session
from google.adk.tools.tool_context import ToolContext
from google.genai import types
from pydantic import Field

from convdb import ConversationStore, InvalidInput
from convdb.integrations.adk import (
    ConvDBSessionService,
    app_state_id,
    conversation_id,
    user_state_id,
)

APP, USER = "app1", "alice"


def event(
    author: str,
    text: str,
    ts: float = 1000.0,
    state_delta: dict[str, Any] | None = None,
) -> Event:
    return Event(
        author=author,
        invocation_id="inv1",
        timestamp=ts,
        content=types.Content(role="user" if author == "user" else "model", parts=[types.Part(text=text)]),
        actions=EventActions(state_delta=state_delta or {}),
    )


def texts(session: Session | None) -> list[str]:
    assert session is not None
    return [e.content.parts[0].text or "" for e in session.events if e.content and e.content.parts]


async def load(svc: ConvDBSessionService, sid: str = "s1", **kw: Any) -> Session:
    got = await svc.get_session(
        app_name=kw.pop("app_name", APP), user_id=kw.pop("user_id", USER), session_id=sid, **kw
    )
    assert got is not None
    return got


async def test_create_and_get(store: ConversationStore) -> None:
    svc = ConvDBSessionService(store)
    assert await svc.get_session(app_name=APP, user_id=USER, session_id="nope") is None
    s = await svc.create_session(app_name=APP, user_id=USER, session_id=" s1 ", state={"k": 1, "temp:x": 2})
    assert (s.id, s.app_name, s.user_id, s.state, s.events) == ("s1", APP, USER, {"k": 1}, [])
    generated = await svc.create_session(app_name=APP, user_id=USER)
    assert generated.id and generated.id != "s1"
    blank = await svc.create_session(app_name=APP, user_id=USER, session_id="   ")
    assert blank.id.strip() and blank.id not in ("s1", generated.id)
    with pytest.raises(AlreadyExistsError):
        await svc.create_session(app_name=APP, user_id=USER, session_id="s1")
    # The same id in another app is another session.
    other = await svc.create_session(app_name="app2", user_id=USER, session_id="s1")
    assert other.app_name == "app2" and other.state == {}
    got = await load(svc, "s1")
    assert (got.id, got.app_name, got.user_id, got.state) == ("s1", APP, USER, {"k": 1})
    assert got.last_update_time > 0


async def test_concurrent_creates_of_one_id_have_one_winner(store: ConversationStore) -> None:
    svc = ConvDBSessionService(store)
    results = await asyncio.gather(
        *(
            svc.create_session(app_name=APP, user_id=USER, session_id="race", state={"n": i})
            for i in range(6)
        ),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, Session)]
    assert len(won) == 1
    assert all(isinstance(r, AlreadyExistsError) for r in results if not isinstance(r, Session))
    assert (await load(svc, "race")).state == won[0].state


async def test_state_scopes(store: ConversationStore) -> None:
    """Session state is per session, ``user:`` per (app, user), ``app:`` per app, ``temp:`` never stored."""
    svc = ConvDBSessionService(store)
    s11 = await svc.create_session(app_name=APP, user_id="u1", session_id="s11", state={"key11": "v11"})
    s12 = await svc.create_session(app_name=APP, user_id="u1", session_id="s12", state={"key12": "v12"})
    s2 = await svc.create_session(app_name=APP, user_id="u2", session_id="s2")
    s3 = await svc.create_session(app_name="app2", user_id="u1", session_id="s3")
    delta = {"app:key": "shared", "user:key1": "mine", "key11": "v11-new", "temp:key": "t"}
    await svc.append_event(s11, event("agent", "set", state_delta=delta))
    assert s11.state["temp:key"] == "t"  # applied in memory for this invocation ...
    assert s11.state["app:key"] == "shared" and s11.state["user:key1"] == "mine"

    got11 = await load(svc, "s11", user_id="u1")
    assert got11.state == {"key11": "v11-new", "app:key": "shared", "user:key1": "mine"}  # ... never stored
    assert "temp:key" not in (got11.events[0].actions.state_delta or {})
    got12 = await load(svc, "s12", user_id="u1")
    assert got12.state == {"key12": "v12", "app:key": "shared", "user:key1": "mine"}
    got2 = await load(svc, "s2", user_id="u2")
    assert got2.state == {"app:key": "shared"}  # app state crosses users, user state does not
    got3 = await load(svc, "s3", app_name="app2", user_id="u1")
    assert got3.state == {}  # neither crosses apps
    assert await svc.get_user_state(app_name=APP, user_id="u1") == {"key1": "mine"}
    assert await svc.get_user_state(app_name=APP, user_id="u2") == {}
    assert await svc.get_user_state(app_name="app2", user_id="u1") == {}

    # A new session starts with the shared state merged; its own initial state can set shared keys.
    s13 = await svc.create_session(
        app_name=APP, user_id="u1", session_id="s13", state={"user:key2": 2, "app:key": "again", "own": 1}
    )
    assert s13.state == {"own": 1, "app:key": "again", "user:key1": "mine", "user:key2": 2}
    assert (await load(svc, "s2", user_id="u2")).state == {"app:key": "again"}
    assert (await load(svc, "s12", user_id="u1")).state["user:key2"] == 2
    # Later writes of a key win, across sessions.
    await svc.append_event(s12, event("agent", "x", state_delta={"user:key1": "changed"}))
    assert (await load(svc, "s11", user_id="u1")).state["user:key1"] == "changed"
    del s2, s3


async def test_shared_state_concurrent_writers_lose_nothing(store: ConversationStore) -> None:
    svc = ConvDBSessionService(store)
    sessions = [await svc.create_session(app_name=APP, user_id=USER, session_id=f"c{i}") for i in range(6)]
    await asyncio.gather(
        *(
            svc.append_event(s, event("agent", f"e{i}", state_delta={f"user:k{i}": i, f"app:k{i}": i}))
            for i, s in enumerate(sessions)
        )
    )
    assert await svc.get_user_state(app_name=APP, user_id=USER) == {f"k{i}": i for i in range(6)}
    state = (await load(svc, "c0")).state
    assert {k: v for k, v in state.items() if k.startswith("app:")} == {f"app:k{i}": i for i in range(6)}


async def test_session_state_is_the_fold_of_the_events(store: ConversationStore) -> None:
    """The delta is stored in the event's own row: a lost or stale snapshot changes nothing."""
    svc = ConvDBSessionService(store)
    s = await svc.create_session(app_name=APP, user_id=USER, session_id="s1", state={"a": 0})
    for i in range(4):
        await svc.append_event(s, event("agent", f"e{i}", 1000.0 + i, state_delta={"a": i + 1, f"k{i}": i}))
    want = {"a": 4, "k0": 0, "k1": 1, "k2": 2, "k3": 3}
    assert (await load(svc)).state == want
    cid = conversation_id(APP, USER, "s1")
    conv = await store.get_conversation(cid, USER)
    assert conv.metadata["adk_state"] == want and conv.metadata["adk_state_seq"] == 4
    # As if the snapshot writes after events 2..4 had been lost: the fold applies their deltas.
    await store.update_conversation(
        cid, USER, metadata={**conv.metadata, "adk_state": {"a": 1, "k0": 0}, "adk_state_seq": 1}
    )
    assert (await load(svc)).state == want
    windowed = await load(svc, config=GetSessionConfig(num_recent_events=1))
    assert windowed.state == want and texts(windowed) == ["e3"]  # the window is older than the snapshot
    none = await load(svc, config=GetSessionConfig(num_recent_events=0))
    assert none.state == want and none.events == []


async def test_events_round_trip_losslessly(store: ConversationStore) -> None:
    svc = ConvDBSessionService(store)
    s = await svc.create_session(app_name=APP, user_id=USER, session_id="s1")
    image = bytes(range(256))
    call = Event(
        author="agent",
        invocation_id="inv7",
        branch="root.sub",
        content=types.Content(
            role="model",
            parts=[
                types.Part(text="thinking ☀️ \u00e9"),
                types.Part(
                    function_call=types.FunctionCall(id="c1", name="lookup", args={"q": "x", "n": [1, 2]})
                ),
            ],
        ),
        actions=EventActions(state_delta={"k": {"nested": [1, None, "s"]}}, artifact_delta={"f.txt": 2}),
        grounding_metadata=types.GroundingMetadata(web_search_queries=["q1"]),
        custom_metadata={"trace": "t-1"},
        long_running_tool_ids={"c1"},
    )
    reply = Event(
        author="agent",
        invocation_id="inv7",
        content=types.Content(
            role="user",
            parts=[
                types.Part(
                    function_response=types.FunctionResponse(id="c1", name="lookup", response={"r": 1})
                ),
                types.Part(inline_data=types.Blob(mime_type="image/png", data=image)),
            ],
        ),
        actions=EventActions(transfer_to_agent="other", escalate=True),
    )
    for e in (event("user", "hi", 999.0), call, reply):
        await svc.append_event(s, e)
    got = await load(svc)
    assert [e.model_dump(mode="json") for e in got.events] == [e.model_dump(mode="json") for e in s.events]
    assert got.events[2].content is not None and got.events[2].content.parts is not None
    blob = got.events[2].content.parts[1].inline_data
    assert blob is not None and blob.data == image
    # The columns hold what other readers need: roles and the text.
    stored = [m async for m in store.export_messages(conversation_id(APP, USER, "s1"), USER)]
    assert [(m.role, m.content) for m in stored] == [
        ("user", "hi"),
        ("assistant", "thinking ☀️ \u00e9"),
        ("assistant", None),
    ]
    assert base64.urlsafe_b64encode(image).decode() in str(stored[2].metadata)


async def test_windows(store: ConversationStore) -> None:
    svc = ConvDBSessionService(store)
    s = await svc.create_session(app_name=APP, user_id=USER, session_id="s1")
    for i in range(5):
        await svc.append_event(s, event("user", f"m{i}", 1000.0 + i))
    assert texts(await load(svc, config=GetSessionConfig(num_recent_events=2))) == ["m3", "m4"]
    assert texts(await load(svc, config=GetSessionConfig(num_recent_events=50))) == [
        f"m{i}" for i in range(5)
    ]
    assert texts(await load(svc, config=GetSessionConfig(num_recent_events=0))) == []
    after = await load(svc, config=GetSessionConfig(after_timestamp=1003.0))
    assert [e.timestamp for e in after.events] == [1003.0, 1004.0]
    both = await load(svc, config=GetSessionConfig(num_recent_events=3, after_timestamp=1003.5))
    assert [e.timestamp for e in both.events] == [1004.0]
    assert texts(await load(svc, config=GetSessionConfig(after_timestamp=5000.0))) == []
    with pytest.raises(ValueError, match="num_recent_events"):
        GetSessionConfig(num_recent_events=-1)
    # A windowed session object can go on appending (it knows the newest event).
    w = await load(svc, config=GetSessionConfig(num_recent_events=1))
    await svc.append_event(w, event("user", "m5", 1005.0))
    assert texts(await load(svc))[-2:] == ["m4", "m5"]


async def test_listing(store: ConversationStore) -> None:
    svc = ConvDBSessionService(store)
    for i in range(103):  # more than one page of convdb's keyset listing (100)
        await svc.create_session(app_name=APP, user_id=USER, session_id=f"s{i:03}", state={"i": i})
    await svc.create_session(app_name="app2", user_id=USER, session_id="x")
    await svc.create_session(app_name=APP, user_id="bob", session_id="y")
    await svc.append_event(await load(svc, "s000"), event("user", "touch"))
    listed = await svc.list_sessions(app_name=APP, user_id=USER)
    ids = [x.id for x in listed.sessions]
    assert ids == [f"s{i:03}" for i in range(1, 103)] + ["s000"]  # oldest update first
    assert all(
        x.events == [] and x.state == {} and x.app_name == APP and x.user_id == USER for x in listed.sessions
    )
    assert [x.id for x in (await svc.list_sessions(app_name="app2", user_id=USER)).sessions] == ["x"]
    assert (await svc.list_sessions(app_name="nope", user_id=USER)).sessions == []
    with pytest.raises(InvalidInput):
        await svc.list_sessions(app_name=APP)  # every user's sessions: convdb lists one user's
    # The shared-state conversations are not sessions.
    await svc.append_event(
        await load(svc, "s001"), event("agent", "u", state_delta={"user:a": 1, "app:b": 2})
    )
    assert len((await svc.list_sessions(app_name=APP, user_id=USER)).sessions) == 103


async def test_delete(store: ConversationStore) -> None:
    svc = ConvDBSessionService(store)
    s = await svc.create_session(app_name=APP, user_id=USER, session_id="s1")
    await svc.append_event(s, event("user", "hi", state_delta={"user:keep": 1}))
    await svc.delete_session(app_name=APP, user_id="bob", session_id="s1")  # not bob's: nothing happens
    assert await svc.get_session(app_name=APP, user_id=USER, session_id="s1") is not None
    await svc.delete_session(app_name=APP, user_id=USER, session_id="s1")
    assert await svc.get_session(app_name=APP, user_id=USER, session_id="s1") is None
    await svc.delete_session(app_name=APP, user_id=USER, session_id="s1")  # idempotent
    with pytest.raises(SessionNotFoundError):  # a deleted session is not re-created by a stale object
        await svc.append_event(s, event("user", "late"))
    assert len(s.events) == 1  # and the refused event was not added to the object
    assert await svc.get_session(app_name=APP, user_id=USER, session_id="s1") is None
    assert await svc.get_user_state(app_name=APP, user_id=USER) == {"keep": 1}  # user state outlives it
    again = await svc.create_session(app_name=APP, user_id=USER, session_id="s1")
    assert again.events == [] and again.state == {"user:keep": 1}


async def test_stale_session_is_refused_and_stores_nothing(store: ConversationStore) -> None:
    svc = ConvDBSessionService(store)
    await svc.create_session(app_name=APP, user_id=USER, session_id="s1")
    a, b = await load(svc), await load(svc)
    await svc.append_event(a, event("user", "from a", state_delta={"k": "a"}))
    with pytest.raises(StaleSessionError):
        await svc.append_event(
            b, event("user", "from b", state_delta={"k": "b", "user:u": "b", "app:p": "b"})
        )
    assert b.events == [] and "k" not in b.state
    got = await load(svc)
    assert texts(got) == ["from a"] and got.state == {"k": "a"}
    assert await svc.get_user_state(app_name=APP, user_id=USER) == {}
    # The same text from a stale object is still another event (the event id decides).
    c = await load(svc)
    await svc.append_event(a, event("user", "same"))
    with pytest.raises(StaleSessionError):
        await svc.append_event(c, event("user", "same"))
    assert texts(await load(svc)) == ["from a", "same"]
    fresh = await load(svc)
    await svc.append_event(fresh, event("user", "after reload"))
    assert texts(await load(svc)) == ["from a", "same", "after reload"]


async def test_concurrent_appends_from_one_revision_have_one_winner(store: ConversationStore) -> None:
    """No check-then-write interleaving (ADK #4751): the guard (expected_last_seq) decides inside the insert."""
    svc = ConvDBSessionService(store)
    await svc.create_session(app_name=APP, user_id=USER, session_id="s1")
    for rounds in range(3):
        copies = [await load(svc) for _ in range(5)]
        results = await asyncio.gather(
            *(
                svc.append_event(c, event("agent", f"r{rounds}w{i}", state_delta={"w": i}))
                for i, c in enumerate(copies)
            ),
            return_exceptions=True,
        )
        winners = [i for i, r in enumerate(results) if isinstance(r, Event)]
        assert len(winners) == 1, results
        assert all(isinstance(r, StaleSessionError) for r in results if not isinstance(r, Event))
        got = await load(svc)
        assert len(got.events) == rounds + 1 and got.state == {"w": winners[0]}
    seqs = [m.seq async for m in store.export_messages(conversation_id(APP, USER, "s1"), USER)]
    assert seqs == sorted(set(seqs)) and len(seqs) == 3


async def test_resending_an_event_stores_it_once(store: ConversationStore) -> None:
    svc = ConvDBSessionService(store)
    await svc.create_session(app_name=APP, user_id=USER, session_id="s1")
    s = await load(svc)
    before = await load(svc)  # as a retry would hold it: read before the first attempt
    e = event("agent", "once", state_delta={"user:n": 1, "app:m": 1})
    await svc.append_event(s, e)
    await svc.append_event(s, e)  # the same object again: already in it
    assert len(s.events) == 1
    await svc.append_event(before, e)  # a retry from the earlier revision: stored already
    assert texts(await load(svc)) == ["once"]
    user = [m async for m in store.export_messages(user_state_id(APP), USER)]
    assert len(user) == 1  # the shared-state delta was applied once
    shared = [m async for m in store.export_messages(app_state_id(APP), "adk-app:" + APP)]
    assert len(shared) == 1


async def test_a_session_object_built_by_hand_is_checked_against_the_store(store: ConversationStore) -> None:
    svc = ConvDBSessionService(store)
    await svc.create_session(app_name=APP, user_id=USER, session_id="s1")
    first = event("user", "one")
    await svc.append_event(await load(svc), first)
    current = Session(id="s1", app_name=APP, user_id=USER, events=[first])
    await svc.append_event(current, event("user", "two"))
    stale = Session(id="s1", app_name=APP, user_id=USER, events=[first])
    with pytest.raises(StaleSessionError):
        await svc.append_event(stale, event("user", "three"))
    with pytest.raises(StaleSessionError):
        await svc.append_event(Session(id="s1", app_name=APP, user_id=USER), event("user", "four"))
    assert texts(await load(svc)) == ["one", "two"]


async def test_another_user_cannot_reach_a_session(store: ConversationStore) -> None:
    svc = ConvDBSessionService(store)
    await svc.create_session(app_name=APP, user_id=USER, session_id="s1", state={"secret": 1})
    assert await svc.get_session(app_name=APP, user_id="bob", session_id="s1") is None
    forged = Session(id="s1", app_name=APP, user_id="bob")
    with pytest.raises(SessionNotFoundError):
        await svc.append_event(forged, event("user", "bob writes"))
    await svc.delete_session(app_name=APP, user_id="bob", session_id="s1")
    # Session ids are scoped per user, as in ADK: bob's "s1" is another session.
    bobs = await svc.create_session(app_name=APP, user_id="bob", session_id="s1")
    assert bobs.state == {}
    await svc.append_event(bobs, event("user", "bob's own"))
    assert texts(await load(svc, user_id="bob")) == ["bob's own"]
    assert (await load(svc)).state == {"secret": 1} and (await load(svc)).events == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"app_name": "", "user_id": USER}, "app_name"),
        ({"app_name": APP, "user_id": ""}, "user_id"),
        ({"app_name": APP, "user_id": "a\x00b"}, "user_id"),
        ({"app_name": APP, "user_id": USER, "session_id": "x" * 300}, "session_id"),
        ({"app_name": APP, "user_id": USER, "state": {"f": object()}}, "state"),
    ],
)
async def test_bad_input_is_refused_before_any_write(
    store: ConversationStore, kwargs: dict[str, Any], field: str
) -> None:
    svc = ConvDBSessionService(store)
    with pytest.raises(InvalidInput) as err:
        await svc.create_session(**kwargs)
    assert err.value.field == field
    assert (await store.list_conversations(USER)).items == []


class ScriptedLlm(BaseLlm):
    """A model that calls ``remember`` with the user's text, then answers with the tool's result."""

    model: str = "scripted"
    requests: list[int] = Field(default_factory=list)

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        self.requests.append(len(llm_request.contents))
        part = (llm_request.contents[-1].parts or [types.Part()])[0]
        if part.function_response is not None:
            answer = f"noted {part.function_response.response}"
            yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text=answer)]))
        else:
            call = types.FunctionCall(
                id=f"call{len(self.requests)}", name="remember", args={"note": part.text}
            )
            yield LlmResponse(content=types.Content(role="model", parts=[types.Part(function_call=call)]))


def remember(note: str, tool_context: ToolContext) -> dict[str, int]:
    """Remember a note for this user."""
    notes = [*tool_context.state.get("user:notes", []), note]
    tool_context.state["user:notes"] = notes
    tool_context.state["turns"] = tool_context.state.get("turns", 0) + 1
    tool_context.state["temp:scratch"] = note
    return {"count": len(notes)}


async def test_a_runner_over_several_turns_with_a_tool(store: ConversationStore) -> None:
    svc = ConvDBSessionService(store)
    model = ScriptedLlm()
    runner = Runner(
        app_name="demo", agent=LlmAgent(name="helper", model=model, tools=[remember]), session_service=svc
    )
    session = await svc.create_session(app_name="demo", user_id=USER)
    for text in ("a", "b", "c"):
        message = types.Content(role="user", parts=[types.Part(text=text)])
        async for _ in runner.run_async(user_id=USER, session_id=session.id, new_message=message):
            pass
    got = await svc.get_session(app_name="demo", user_id=USER, session_id=session.id)
    assert got is not None
    # Each turn: the user's text, the call, the tool's response, the answer (stored in order).
    shape = [
        (
            e.author,
            [
                p.text or (p.function_call or p.function_response or types.FunctionCall()).name
                for p in (e.content.parts or [])
            ],
        )
        for e in got.events
        if e.content
    ]
    assert shape == [
        step
        for i, t in enumerate("abc", 1)
        for step in (
            ("user", [t]),
            ("helper", ["remember"]),
            ("helper", ["remember"]),
            ("helper", [f"noted {{'count': {i}}}"]),
        )
    ]
    assert got.state == {"turns": 3, "user:notes": ["a", "b", "c"]}  # temp: was not kept
    # The model saw the whole stored history each time (loaded back through the service).
    assert model.requests == [1, 3, 5, 7, 9, 11]
    # Another session of the same user starts with the user: state.
    other = await svc.create_session(app_name="demo", user_id=USER)
    assert other.state == {"user:notes": ["a", "b", "c"]}
