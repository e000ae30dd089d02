"""ConvDBSessionService (partial) against the real google-adk package and a real PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.sessions.base_session_service import GetSessionConfig
from google.genai import types

from convdb import ConversationNotFound, ConversationStore, InvalidInput
from convdb.integrations.adk import ConvDBSessionService

APP, USER = "app1", "alice"


def event(author: str, text: str, ts: float, state_delta: dict[str, Any] | None = None) -> Event:
    return Event(
        author=author,
        invocation_id="inv1",
        timestamp=ts,
        content=types.Content(role="user" if author == "user" else "model", parts=[types.Part(text=text)]),
        actions=EventActions(state_delta=state_delta or {}),
    )


async def test_sessions_are_scoped_by_app_and_events_round_trip(store: ConversationStore) -> None:
    svc = ConvDBSessionService(store)
    s = await svc.create_session(app_name=APP, user_id=USER, session_id="s1", state={"k": 1, "temp:x": 2})
    assert s.state == {"k": 1}
    with pytest.raises(AlreadyExistsError):
        await svc.create_session(app_name=APP, user_id=USER, session_id="s1")
    other = await svc.create_session(app_name="app2", user_id=USER, session_id="s1")
    assert other.app_name == "app2"
    events = [
        event("user", "hi ☀️", 1000.0),
        event("agent", "hello", 1001.5, state_delta={"k": 2, "temp:t": 9}),
        event("user", "bye", 1002.0),
    ]
    for e in events:
        await svc.append_event(s, e)
    assert s.state["temp:t"] == 9  # applied in memory for this invocation ...
    got = await svc.get_session(app_name=APP, user_id=USER, session_id="s1")
    assert got is not None
    assert got.state == {"k": 2}  # ... never persisted
    assert [e.model_dump(mode="json") for e in got.events] == [e.model_dump(mode="json") for e in s.events]
    assert "temp:t" not in (got.events[1].actions.state_delta or {})
    assert (await svc.get_session(app_name="app2", user_id=USER, session_id="s1")).events == []  # type: ignore[union-attr]
    assert await svc.get_session(app_name=APP, user_id="bob", session_id="s1") is None


async def test_windows_and_listing(store: ConversationStore) -> None:
    svc = ConvDBSessionService(store)
    s = await svc.create_session(app_name=APP, user_id=USER, session_id="s1")
    for i in range(5):
        await svc.append_event(s, event("user", f"m{i}", 1000.0 + i))
    recent = await svc.get_session(
        app_name=APP, user_id=USER, session_id="s1", config=GetSessionConfig(num_recent_events=2)
    )
    assert recent is not None and [e.content.parts[0].text for e in recent.events] == ["m3", "m4"]  # type: ignore[union-attr,index]
    after = await svc.get_session(
        app_name=APP, user_id=USER, session_id="s1", config=GetSessionConfig(after_timestamp=1003.0)
    )
    assert after is not None and [e.timestamp for e in after.events] == [1003.0, 1004.0]
    none = await svc.get_session(
        app_name=APP, user_id=USER, session_id="s1", config=GetSessionConfig(num_recent_events=0)
    )
    assert none is not None and none.events == []
    await svc.create_session(app_name=APP, user_id=USER, session_id="s2")
    await svc.create_session(app_name="app2", user_id=USER, session_id="s3")
    await svc.create_session(app_name=APP, user_id="bob", session_id="s4")
    listed = await svc.list_sessions(app_name=APP, user_id=USER)
    assert [x.id for x in listed.sessions] == ["s1", "s2"]  # oldest update first, app1 and alice only
    with pytest.raises(InvalidInput):
        await svc.list_sessions(app_name=APP)
    await svc.delete_session(app_name=APP, user_id=USER, session_id="s1")
    assert await svc.get_session(app_name=APP, user_id=USER, session_id="s1") is None
    await svc.delete_session(app_name=APP, user_id=USER, session_id="s1")  # idempotent
    with pytest.raises(ConversationNotFound):  # a deleted session is not re-created by a stale object
        await svc.append_event(s, event("user", "late", 2000.0))
    assert len(s.events) == 5  # and the refused event was not added to the object
    assert await svc.get_session(app_name=APP, user_id=USER, session_id="s1") is None
