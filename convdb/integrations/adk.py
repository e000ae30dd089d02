"""Google ADK sessions on convdb (``pip install 'convdb[adk]'``).

``ConvDBSessionService(store)`` is an ADK ``BaseSessionService``.

**Sessions and events.** A session is a convdb conversation of its ``user_id`` whose id is
``"adk:<app_name>:<user_id>:<session_id>"`` (each part percent-encoded; ADK scopes a session id by
app and user, so two apps or two users never share a session; the whole id must fit convdb's 255
characters); its metadata holds
``adk_app``, ``adk_session_id``, the session-scoped state snapshot ``adk_state`` and the seq it
covers, ``adk_state_seq``. Each event is one convdb message (role ``user`` for the user's events,
else ``assistant``; content = the text parts) and the event itself is kept, as ADK's own database
service dumps it (``model_dump(mode="json", exclude_none=True)``), in the metadata under
``"adk_event"``, so it comes back equal. ``list_sessions`` is convdb's keyset listing filtered on
``adk_app`` (oldest update first, as ADK documents; without events or state, as the ABC says).
``num_recent_events`` is a convdb window of the newest N events, ``after_timestamp`` keeps the
newest events from that time on.

**State scopes.** ``temp:`` state is never persisted (the base class trims it from the event).
Session state is the fold of the events' own ``state_delta``: an event and its state change are
one message, so they are stored atomically by construction (one statement), and nothing is ever
read-modified-written. The metadata snapshot is a cache written after the event: a reader starts
from it and applies the deltas of every event after ``adk_state_seq``; a lost or late snapshot
write (a crash, two writers' snapshots landing out of order) costs a longer fold, never a wrong
state. ``user:`` state (shared by a user's sessions of an app) lives in that user's conversation
``"adk-user:<app_name>"`` and ``app:`` state (shared by every user of an app) in the conversation
``"adk-app:<app_name>"`` of the pseudo-user ``app_state_owner(app_name)`` (default
``"adk-app:<app_name>"``: never give a real user that id). Each change is one appended delta
message, its idempotency key naming the session and the event's id, and the state is their fold
in seq order: concurrent writers of different keys never lose each other's update, and the last
committed write of a key wins. These appends follow the event's own append: they are separate
statements (the app's state belongs to no user, so it cannot share the user's transaction under
convdb's per-user isolation). If one fails after the event was stored, ``append_event`` raises;
calling it again with the same event stores the event once and completes the shared-state writes
exactly once (their keys make them idempotent).

**Stale sessions.** Every session object this service returns carries the seq of the newest event
it has seen (ADK's ``_storage_update_marker``). ``append_event`` saves the event with convdb's
guarded write, ``expected_last_seq=<that seq>``: the insert happens only if that event is still
the newest, checked in the same single statement under the conversation's row lock, so two
servers holding one session can never both append after the same event (the check-then-write
interleaving of ADK #4751). The loser gets ADK's ``StaleSessionError`` and nothing of its event
is stored. The event is also keyed by its id (``"adk-event:<id>"``): re-sending an event that was
stored (a retry after a timeout or a cancellation) returns it, stored once. A session object
without a marker (built by hand) is checked against the stored newest event first.

Not supported: ``list_sessions(user_id=None)`` (every user's sessions): convdb lists one user's
conversations only (``InvalidInput``).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final
from urllib.parse import quote

try:
    from google.adk.errors import StaleSessionError
    from google.adk.errors.already_exists_error import AlreadyExistsError
    from google.adk.errors.session_not_found_error import SessionNotFoundError
    from google.adk.events.event import Event
    from google.adk.sessions.base_session_service import (
        BaseSessionService,
        GetSessionConfig,
        ListSessionsResponse,
    )
    from google.adk.sessions.session import Session
    from google.adk.sessions.state import State
    from pydantic_core import to_jsonable_python
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "convdb.integrations.adk needs Google ADK (google-adk >= 2.0): pip install 'convdb[adk]'"
    ) from exc

from ..errors import ConcurrentUpdate, ConversationNotFound, InvalidInput
from ..records import Conversation, Message
from ..store import ConversationStore
from ..validation import check_id
from ._common import read_all, read_window

EVENT_KEY: Final = "adk_event"
"""The metadata key under which the original ADK ``Event`` (JSON mode) is stored."""
DELTA_KEY: Final = "adk_state_delta"
"""The metadata key of a shared-state (``user:`` / ``app:``) delta message."""

_STALE: Final = (
    "The session was changed by another writer since this session object was read "
    "(convdb refused to interleave the two); reload it with get_session and retry."
)


def _part(value: str, field: str) -> str:
    # Percent-encoded, so that no two (app, user, session) triples share an id.
    return quote(check_id(value, field), safe="")


def conversation_id(app_name: str, user_id: str, session_id: str) -> str:
    """The convdb conversation id of an ADK session (ADK scopes session ids per app and user)."""
    return f"adk:{_part(app_name, 'app_name')}:{_part(user_id, 'user_id')}:{_part(session_id, 'session_id')}"


def user_state_id(app_name: str) -> str:
    """The conversation (of the user) holding a user's ``user:`` state for ``app_name``."""
    return f"adk-user:{_part(app_name, 'app_name')}"


def app_state_id(app_name: str) -> str:
    """The conversation (of ``app_state_owner(app_name)``) holding the app's ``app:`` state."""
    return f"adk-app:{_part(app_name, 'app_name')}"


def default_app_state_owner(app_name: str) -> str:
    return f"adk-app:{app_name}"


class ConvDBSessionService(BaseSessionService):
    """ADK sessions stored in convdb (see the module docstring).

    Round trips: ``create_session`` two (one more per scope its state touches);
    ``get_session`` one for the conversation, one for a window (two for the whole history) and
    two per shared scope; ``append_event`` one (one per shared scope its delta touches, two for
    the state snapshot when it changes session state); ``list_sessions`` one per 100 sessions.
    """

    def __init__(
        self,
        store: ConversationStore,
        *,
        app_state_owner: Callable[[str], str] = default_app_state_owner,
    ) -> None:
        self.store = store
        self.app_state_owner = app_state_owner

    # -- sessions --------------------------------------------------------------------------
    async def create_session(
        self,
        *,
        app_name: str,
        user_id: str,
        state: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> Session:
        sid = session_id.strip() if session_id and session_id.strip() else str(uuid.uuid4())
        cid = conversation_id(app_name, user_id, sid)
        uid = check_id(user_id, "user_id")
        scoped = split_state(_json_state(state or {}))
        token = uuid.uuid4().hex
        conv = await self.store.get_or_create_conversation(
            cid,
            uid,
            metadata={
                "adk_app": app_name,
                "adk_session_id": sid,
                "adk_state": scoped["session"],
                "adk_state_seq": 0,
                "adk_created": token,
            },
        )
        # One row per id, decided by the database: a creator whose token is not the stored one
        # lost the race (or the session existed before).
        if conv.metadata.get("adk_created") != token:
            raise AlreadyExistsError(f"Session with id {sid} already exists.")
        await self._save_shared(app_name, uid, scoped, key=f"{cid}#create:{token}")
        session = _session(conv, [], state=scoped["session"])
        await self._merge_shared(session)
        session._storage_update_marker = "0"
        return session

    async def get_session(
        self,
        *,
        app_name: str,
        user_id: str,
        session_id: str,
        config: GetSessionConfig | None = None,
    ) -> Session | None:
        sid = session_id.strip() if isinstance(session_id, str) else session_id
        cid = conversation_id(app_name, user_id, sid)
        uid = check_id(user_id, "user_id")
        try:
            conv = await self.store.get_conversation(cid, uid)
        except ConversationNotFound:
            return None
        if not _is_session(conv, app_name) or conv.metadata.get("adk_session_id") != sid:
            return None
        snapshot_seq = _int(conv.metadata.get("adk_state_seq"))
        wanted = None if config is None else config.num_recent_events
        messages: list[Message] = []
        if wanted is not None:
            # A window of at least one: its newest message gives the marker even when none is wanted.
            messages = await read_window(self.store, cid, uid, max(wanted, 1), trim=False)
            if messages and messages[0].seq - 1 > snapshot_seq:
                messages = []  # the snapshot is older than the window: fold the whole history
                wanted_all = True
            else:
                wanted_all = False
        else:
            wanted_all = True
        if wanted_all:
            messages = await read_all(self.store, cid, uid)
        state = dict(_dict(conv.metadata.get("adk_state")))
        for m in messages:
            if m.seq > snapshot_seq:
                event = to_event(m)
                if event.actions and event.actions.state_delta:
                    state.update(split_state(event.actions.state_delta)["session"])
        marker = str(messages[-1].seq) if messages else "0"
        events = [to_event(m) for m in messages]
        if wanted is not None:
            events = events[-wanted:] if wanted else []
        if config is not None and config.after_timestamp is not None:
            start = len(events)
            while start > 0 and events[start - 1].timestamp >= config.after_timestamp:
                start -= 1
            events = events[start:]
        session = _session(conv, events, state=state)
        await self._merge_shared(session)
        session._storage_update_marker = marker
        return session

    async def list_sessions(self, *, app_name: str, user_id: str | None = None) -> ListSessionsResponse:
        if user_id is None:
            raise InvalidInput("user_id", "convdb lists one user's sessions: pass user_id")
        uid = check_id(user_id, "user_id")
        check_id(app_name, "app_name")
        found: list[Conversation] = []
        cursor: str | None = None
        while True:
            page = await self.store.list_conversations(
                uid, limit=100, cursor=cursor, metadata_contains={"adk_app": app_name}
            )
            found.extend(c for c in page.items if _is_session(c, app_name))
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        found.reverse()  # ADK lists oldest update first
        return ListSessionsResponse(sessions=[_session(c, [], state={}) for c in found])

    async def delete_session(self, *, app_name: str, user_id: str, session_id: str) -> None:
        with contextlib.suppress(ConversationNotFound):
            await self.store.delete_conversation(
                conversation_id(app_name, user_id, session_id), check_id(user_id, "user_id")
            )

    async def get_user_state(self, *, app_name: str, user_id: str) -> dict[str, Any]:
        """The user's ``user:`` state for ``app_name``, keys without the prefix ({} when none)."""
        return await self._fold(user_state_id(app_name), check_id(user_id, "user_id"))

    # -- events ----------------------------------------------------------------------------
    async def append_event(self, session: Session, event: Event) -> Event:
        if event.partial:
            return event
        # The base class's steps, with the save between trimming and the in-memory commit: a
        # refused save leaves the caller's session object as it was (temp: state aside).
        if any(e.id == event.id and e == event for e in session.events):
            return event  # already appended through this object (ADK's services do the same)
        self._apply_temp_state(session, event)
        event = self._trim_temp_delta_state(event)
        cid = conversation_id(session.app_name, session.user_id, session.id)
        uid = check_id(session.user_id, "user_id")
        marker = session._storage_update_marker
        trusted = marker is not None and marker.isdigit()
        after = int(marker) if trusted and marker is not None else await self._marker_of(session, cid, uid)
        row = event_to_row(event)
        try:
            stored = await self.store.save_message(
                cid,
                uid,
                row["role"],
                row["content"],
                metadata=row["metadata"],
                idempotency_key=f"adk-event:{event.id}",
                expected_last_seq=after,
            )
        except ConversationNotFound:
            raise SessionNotFoundError(f"Session {session.id} not found.") from None
        except ConcurrentUpdate:
            raise StaleSessionError(_STALE) from None
        delta = event.actions.state_delta if event.actions and event.actions.state_delta else {}
        scoped = split_state(_json_state(delta))
        await self._save_shared(session.app_name, uid, scoped, key=f"{cid}#{event.id}")
        self._commit_event_to_session(session, event)
        if scoped["session"] and trusted:
            # The object was current (the keyed insert proved it), so its session-scoped state is
            # the fold through this event: the snapshot a reader can start from.
            persisted = {
                k: v
                for k, v in session.state.items()
                if not k.startswith((State.APP_PREFIX, State.USER_PREFIX, State.TEMP_PREFIX))
            }
            await self._snapshot(cid, uid, _json_state(persisted), stored.seq)
        session.last_update_time = event.timestamp
        session._storage_update_marker = str(stored.seq)
        return event

    # -- helpers ---------------------------------------------------------------------------
    async def _marker_of(self, session: Session, cid: str, uid: str) -> int:
        """The newest stored seq, when ``session`` (built without a marker) has seen that event."""
        newest = await read_window(self.store, cid, uid, 1, trim=False)
        if not newest:
            if session.events:
                raise StaleSessionError(_STALE)
            return 0
        if not session.events or session.events[-1].id != _event_id(newest[0]):
            raise StaleSessionError(_STALE)
        return newest[0].seq

    async def _snapshot(self, cid: str, uid: str, state: dict[str, Any], seq: int) -> None:
        with contextlib.suppress(ConversationNotFound):  # deleted meanwhile: nothing to cache
            conv = await self.store.get_conversation(cid, uid)
            if _int(conv.metadata.get("adk_state_seq")) < seq:
                await self.store.update_conversation(
                    cid, uid, metadata={**conv.metadata, "adk_state": state, "adk_state_seq": seq}
                )

    async def _save_shared(
        self, app_name: str, uid: str, scoped: Mapping[str, dict[str, Any]], *, key: str
    ) -> None:
        for scope, holder, owner in (
            ("user", user_state_id(app_name), uid),
            ("app", app_state_id(app_name), check_id(self.app_state_owner(app_name), "app_state_owner")),
        ):
            delta = scoped[scope]
            if not delta:
                continue
            text = json.dumps(delta, ensure_ascii=False, sort_keys=True)
            row = {"role": "system", "content": text, "metadata": {DELTA_KEY: delta}, "idempotency_key": key}
            try:
                await self.store.save_messages(holder, owner, [row])
            except ConversationNotFound:
                await self.store.get_or_create_conversation(holder, owner, metadata={"adk_scope": scope})
                await self.store.save_messages(holder, owner, [row])

    async def _fold(self, holder: str, owner: str) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for m in await read_all(self.store, holder, owner):
            state.update(_dict(m.metadata.get(DELTA_KEY)))
        return state

    async def _merge_shared(self, session: Session) -> None:
        app = await self._fold(
            app_state_id(session.app_name),
            check_id(self.app_state_owner(session.app_name), "app_state_owner"),
        )
        user = await self._fold(user_state_id(session.app_name), session.user_id)
        session.state.update({State.APP_PREFIX + k: v for k, v in app.items()})
        session.state.update({State.USER_PREFIX + k: v for k, v in user.items()})


def split_state(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``state`` split into its ``app`` / ``user`` / ``session`` deltas, prefixes removed (no temp:)."""
    out: dict[str, dict[str, Any]] = {"app": {}, "user": {}, "session": {}}
    for key, value in state.items():
        if key.startswith(State.APP_PREFIX):
            out["app"][key.removeprefix(State.APP_PREFIX)] = value
        elif key.startswith(State.USER_PREFIX):
            out["user"][key.removeprefix(State.USER_PREFIX)] = value
        elif not key.startswith(State.TEMP_PREFIX):
            out["session"][key] = value
    return out


def _json_state(state: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return dict(to_jsonable_python(dict(state)))
    except Exception as exc:  # pydantic_core raises PydanticSerializationError
        raise InvalidInput("state", f"must be JSON-serialisable: {exc}") from None


def _is_session(conv: Conversation, app_name: str) -> bool:
    return conv.metadata.get("adk_app") == app_name and isinstance(conv.metadata.get("adk_session_id"), str)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _dict(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _event_id(message: Message) -> object:
    stored = message.metadata.get(EVENT_KEY)
    return stored.get("id") if isinstance(stored, dict) else None


def _session(conv: Conversation, events: Iterable[Event], *, state: dict[str, Any]) -> Session:
    return Session(
        id=str(conv.metadata.get("adk_session_id")),
        app_name=str(conv.metadata.get("adk_app")),
        user_id=conv.user_id,
        state=state,
        events=list(events),
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
