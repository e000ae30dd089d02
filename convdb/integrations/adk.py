"""Google ADK sessions on convdb (``pip install 'convdb[adk]'``) - PARTIAL, see "Not yet" below.

``ConvDBSessionService(store)`` is an ADK ``BaseSessionService``: a session is a convdb
conversation of its ``user_id`` whose id is ``"adk:<app_name>:<session_id>"`` (so two apps never
share a session) and whose metadata holds ``{"adk_app": app_name, "adk_session_id": session_id,
"adk_state": <session-scoped state>}``; ``list_sessions`` is convdb's keyset listing filtered on
``adk_app``. Each event is one convdb message (role ``user`` for the user's events, else
``assistant``; content = the text parts) and the event itself is kept, as ADK's own database
service dumps it (``model_dump(mode="json", exclude_none=True)``), in the metadata under
``"adk_event"``, so it comes back equal. ``temp:`` state is never persisted (the base class trims
it from the event before it is stored). ``GetSessionConfig.num_recent_events`` is a convdb window
of the newest N events, ``after_timestamp`` a filter on the events' own timestamps.

Not yet (the lead's task list): ``app:`` and ``user:`` state are kept in the session's own
metadata like session state (ADK's services share them across an app's / a user's sessions);
``get_user_state`` is not implemented; the session-state update after an event is a second
statement (read-modify-write of the metadata), not atomic with the event's save; there is no
stale-session check (it needs issue 12's ``expected_last_seq`` to be free of ADK #4751's
interleaving); ``list_sessions(user_id=None)`` (every user) is refused: convdb lists one user's
conversations only.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any, Final

try:
    from google.adk.errors.already_exists_error import AlreadyExistsError
    from google.adk.events.event import Event
    from google.adk.sessions.base_session_service import (
        BaseSessionService,
        GetSessionConfig,
        ListSessionsResponse,
    )
    from google.adk.sessions.session import Session
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "convdb.integrations.adk needs Google ADK (google-adk >= 1.0): pip install 'convdb[adk]'"
    ) from exc

from ..errors import ConversationNotFound, InvalidInput
from ..records import Conversation, Message
from ..store import ConversationStore
from ..validation import check_id
from ._common import read_all, read_window

EVENT_KEY: Final = "adk_event"
"""The metadata key under which the original ADK ``Event`` (JSON mode) is stored."""


def conversation_id(app_name: str, session_id: str) -> str:
    """The convdb conversation id of an ADK session."""
    return f"adk:{check_id(app_name, 'app_name')}:{check_id(session_id, 'session_id')}"


class ConvDBSessionService(BaseSessionService):
    """ADK sessions stored in convdb (see the module docstring, including what is not yet done)."""

    def __init__(self, store: ConversationStore) -> None:
        self.store = store

    async def create_session(
        self,
        *,
        app_name: str,
        user_id: str,
        state: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> Session:
        sid = session_id.strip() if session_id and session_id.strip() else str(uuid.uuid4())
        cid = conversation_id(app_name, sid)
        uid = check_id(user_id, "user_id")
        initial = {k: v for k, v in (state or {}).items() if not k.startswith("temp:")}
        try:
            await self.store.get_conversation(cid, uid)
        except ConversationNotFound:
            pass
        else:
            raise AlreadyExistsError(f"Session with id {sid} already exists.")
        conv = await self.store.get_or_create_conversation(
            cid, uid, metadata={"adk_app": app_name, "adk_session_id": sid, "adk_state": initial}
        )
        return _session(conv, [])

    async def get_session(
        self,
        *,
        app_name: str,
        user_id: str,
        session_id: str,
        config: GetSessionConfig | None = None,
    ) -> Session | None:
        cid = conversation_id(app_name, session_id)
        uid = check_id(user_id, "user_id")
        try:
            conv = await self.store.get_conversation(cid, uid)
        except ConversationNotFound:
            return None
        if config is not None and config.num_recent_events is not None:
            messages = await read_window(self.store, cid, uid, config.num_recent_events)
        else:
            messages = await read_all(self.store, cid, uid)
        events = [to_event(m) for m in messages]
        if config is not None and config.after_timestamp is not None:
            events = [e for e in events if e.timestamp >= config.after_timestamp]
        return _session(conv, events)

    async def list_sessions(self, *, app_name: str, user_id: str | None = None) -> ListSessionsResponse:
        if user_id is None:
            raise InvalidInput("user_id", "convdb lists one user's sessions: pass user_id")
        uid = check_id(user_id, "user_id")
        found: list[Conversation] = []
        cursor: str | None = None
        while True:
            page = await self.store.list_conversations(
                uid, limit=100, cursor=cursor, metadata_contains={"adk_app": app_name}
            )
            found.extend(page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        found.reverse()  # ADK lists oldest update first
        return ListSessionsResponse(sessions=[_session(c, [], with_state=False) for c in found])

    async def delete_session(self, *, app_name: str, user_id: str, session_id: str) -> None:
        with contextlib.suppress(ConversationNotFound):
            await self.store.delete_conversation(
                conversation_id(app_name, session_id), check_id(user_id, "user_id")
            )

    async def append_event(self, session: Session, event: Event) -> Event:
        if event.partial:
            return event
        # The base class's steps, with the save between trimming and the in-memory commit: a
        # refused save leaves the caller's session object as it was (temp: state aside).
        self._apply_temp_state(session, event)
        event = self._trim_temp_delta_state(event)
        cid = conversation_id(session.app_name, session.id)
        # save_messages, not the lazily-creating append: a deleted session is not re-created
        # (without its metadata); the save raises ConversationNotFound instead.
        await self.store.save_messages(cid, session.user_id, [event_to_row(event)])
        self._commit_event_to_session(session, event)
        if event.actions and event.actions.state_delta:
            persisted = {k: v for k, v in session.state.items() if not k.startswith("temp:")}
            conv = await self.store.get_conversation(cid, session.user_id)
            await self.store.update_conversation(
                cid, session.user_id, metadata={**conv.metadata, "adk_state": persisted}
            )
        session.last_update_time = event.timestamp
        return event


def _session(conv: Conversation, events: list[Event], *, with_state: bool = True) -> Session:
    state = conv.metadata.get("adk_state")
    return Session(
        id=str(conv.metadata.get("adk_session_id")),
        app_name=str(conv.metadata.get("adk_app")),
        user_id=conv.user_id,
        state=dict(state) if with_state and isinstance(state, dict) else {},
        events=events,
        last_update_time=conv.updated_at.timestamp(),
    )


def event_to_row(event: Event) -> dict[str, Any]:
    """The ``save_messages`` row for one event (see the module docstring)."""
    texts = [p.text for p in (event.content.parts or [])] if event.content else []
    text = "\n".join(t for t in texts if t)
    return {
        "role": "user" if event.author == "user" else "assistant",
        "content": text or None,
        "metadata": {EVENT_KEY: event.model_dump(mode="json", exclude_none=True)},
    }


def to_event(message: Message) -> Event:
    """The stored event (messages written by other clients are not ADK events: InvalidInput)."""
    stored = message.metadata.get(EVENT_KEY)
    if not isinstance(stored, dict):
        raise InvalidInput("conversation", f"message {message.seq} was not written by ConvDBSessionService")
    return Event.model_validate(stored)
