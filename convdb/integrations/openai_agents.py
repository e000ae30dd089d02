"""OpenAI Agents SDK sessions stored in convdb (``pip install 'convdb[openai-agents]'``).

``ConvDBSession(store, session_id, user_id)`` implements the SDK's ``Session`` protocol, so
``Runner.run(agent, input, session=ConvDBSession(...))`` reads and writes its history through convdb.

Each Responses-API item becomes one convdb message, and the item itself is kept, exactly, in the
message's metadata under ``"openai_item"``; ``get_items`` returns that stored item, so every item
type round-trips losslessly (as JSON: equal dicts). The columns are filled so that other readers
(``build_message_array``, SQL, analytics) see a normal chat history:

==========================================  ========== =============================================
item                                        role       columns
==========================================  ========== =============================================
message, role user                          user       content = its text
message, role system / developer            system     content = its text
message, role assistant                     assistant  content = its text (refusals included)
function_call                               assistant  tool_calls = [chat-completions function call],
                                                       tool_name = name
custom_tool_call                            assistant  tool_calls = [{"id", "type": "custom", ...}]
``*_output`` items (function_call_output,  tool       tool_call_id = call_id (``id`` for
computer_call_output, shell, custom, ...)              local_shell_call_output), content = its text
other items with a ``call_id`` (computer,   assistant  tool_calls = [{"id": call_id, "type": type}]
shell, apply_patch, tool_search, program)
anything else (reasoning, web/file search,  assistant  content NULL; only the item carries the data
MCP, compaction, item references, ...)
==========================================  ========== =============================================

Content-less items (the last row) get ``token_count`` from their JSON, so token-budgeted windows
account for replayed reasoning; the others are counted by the store from content and tool calls.

"Its text" is the text of the item's ``input_text`` / ``output_text`` / ``refusal`` parts joined
with newlines (a string content is taken as is); non-text parts (images, files, audio) live only in
the stored item. Messages written by other convdb clients (no ``"openai_item"``) are read back
as the equivalent items: user/system/assistant messages, one ``function_call`` per assistant tool
call, ``function_call_output`` for tool messages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

try:
    from agents.items import TResponseInputItem
    from agents.memory import Session, SessionSettings
    from agents.run_context import RunContextWrapper
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "convdb.integrations.openai_agents needs the OpenAI Agents SDK (openai-agents >= 0.8): "
        "pip install 'convdb[openai-agents]'"
    ) from exc

from ..errors import ConversationExists, ConversationNotFound, InvalidInput
from ..records import Message
from ..store import ConversationStore
from ..validation import MAX_HISTORY_LIMIT, check_id, check_token_budget
from ._common import append, read_all, read_window

METADATA_KEY: Final = "openai_item"
"""The metadata key under which the original Responses-API item is stored."""

_ROLES: Final[Mapping[str, str]] = {
    "user": "user",
    "system": "system",
    "developer": "system",
    "assistant": "assistant",
}
_TEXT_PART_FIELDS: Final[Mapping[str, str]] = {
    "input_text": "text",
    "output_text": "text",
    "text": "text",
    "refusal": "refusal",
}


@dataclass(frozen=True, slots=True)
class SessionOwner:
    """Whom a call of a ``ConvDBSession`` acts for, as an ``owner`` resolver returns it."""

    #: The convdb user the call reads and writes as: only that user's conversation is reachable.
    user_id: str
    #: The conversation (the SDK's session id) to use; None: the session's own ``session_id``.
    session_id: str | None = None


OwnerResolver = Callable[["RunContextWrapper[Any]"], "str | SessionOwner"]
"""``owner(wrapper) -> user_id | SessionOwner``: the user (and optionally the conversation) a call
made by the SDK's Runner acts for, taken from its run context (``wrapper.context``)."""


class ConvDBSession:
    """The OpenAI Agents SDK ``Session`` protocol on a convdb conversation.

    ``session_id`` is the convdb conversation id and ``user_id`` its owner; the conversation is
    created (with ``title``) on the first write. An id that belongs to another user behaves as
    an empty session that refuses writes with ``ConversationNotFound``: as everywhere in convdb,
    nothing tells it apart from an unknown id. ``session_settings`` (a ``SessionSettings`` or a
    dict of its fields, normalised; unknown keys raise ``TypeError``, as in the SDK's sessions)
    gives the default ``limit`` of ``get_items`` (``None``: the whole history); ``max_tokens`` (a
    convdb extension) bounds every read to the newest items that fit that many tokens.

    **One session object for many users.** With ``owner=`` (an ``OwnerResolver``), each call the
    SDK's Runner makes passes its run context (the ``wrapper`` keyword, SDK #4209) and the call
    acts for ``owner(wrapper)``: a user id, or a ``SessionOwner`` naming the user and the
    conversation. Ownership is then checked by convdb in SQL as for any call, so a context naming
    another user reads an empty session and cannot write to this user's conversation. A call
    without a context (your own code calling ``get_items()``) acts for ``user_id``; with
    ``owner=`` and no ``user_id`` it raises ``InvalidInput``, before any I/O.

    Event loops: the session may be used from any loop (``Runner.run_sync`` runs on its own loop
    in a worker thread): see ``ConversationStore.loop``.

    Round trips: ``get_items(limit)`` one; ``get_items()`` two (plus one per further 10,000
    items, streamed); ``add_items`` one atomic batch (two more the first time, to create the
    conversation); ``pop_item`` and ``clear_session`` one each.
    """

    session_id: str
    session_settings: SessionSettings | None

    def __init__(
        self,
        store: ConversationStore,
        session_id: str,
        user_id: str | None = None,
        *,
        session_settings: SessionSettings | Mapping[str, Any] | None = None,
        max_tokens: int | None = None,
        title: str | None = None,
        owner: OwnerResolver | None = None,
    ) -> None:
        self.store = store
        self.session_id = check_id(session_id, "session_id")
        if user_id is None and owner is None:
            raise InvalidInput("user_id", "required unless owner= takes the user from the run context")
        self.user_id = None if user_id is None else check_id(user_id, "user_id")
        if owner is not None and not callable(owner):
            raise InvalidInput("owner", f"must be callable, got {type(owner).__name__}")
        self.owner = owner
        self.session_settings = (
            SessionSettings() if session_settings is None else coerce_settings(session_settings)
        )
        self.max_tokens = check_token_budget(max_tokens)
        self.title = title

    def _key(self, wrapper: RunContextWrapper[Any] | None) -> tuple[str, str]:
        """(conversation id, user id) of one call, validated before any I/O."""
        if self.owner is not None and wrapper is not None:
            resolved = self.owner(wrapper)
            if isinstance(resolved, SessionOwner):
                user, conversation = resolved.user_id, resolved.session_id or self.session_id
            elif isinstance(resolved, str):
                user, conversation = resolved, self.session_id
            else:
                raise InvalidInput(
                    "owner", f"must return a user id (str) or a SessionOwner, got {type(resolved).__name__}"
                )
            return check_id(conversation, "session_id"), check_id(user, "user_id")
        if self.user_id is None:
            raise InvalidInput(
                "wrapper",
                "this session takes its user from the run context (owner=) and was called "
                "without one: call it through the Runner, or pass wrapper=",
            )
        return self.session_id, self.user_id

    async def get_items(
        self, limit: int | None = None, *, wrapper: RunContextWrapper[Any] | None = None
    ) -> list[TResponseInputItem]:
        """The newest ``limit`` items in chronological order; every item when ``limit`` is None.

        ``limit=None`` falls back to ``session_settings.limit``; a limit of 0 or less returns [].
        As the SDK's contract says, a limited read is the raw newest ``limit`` items, exactly as
        written, tool outputs whose call is older included: the SDK's Runner prunes those itself,
        and hands the raw history to ``session_input_callback``. With ``max_tokens`` the read is
        further bounded to the newest items whose stored token counts fit the budget.
        """
        cid, uid = self._key(wrapper)
        effective = limit
        if effective is None and self.session_settings is not None:
            effective = coerce_settings(self.session_settings).limit
        if effective is not None and effective <= 0:
            return []
        if effective is None and self.max_tokens is None:
            messages = await read_all(self.store, cid, uid)
        else:
            window = MAX_HISTORY_LIMIT if effective is None else effective
            messages = await read_window(self.store, cid, uid, window, self.max_tokens, trim=False)
        items = [item for message in messages for item in message_to_items(message)]
        # Only messages written by other clients stand for several items (an assistant turn with
        # several tool calls), so the newest `effective` items may start inside one of them.
        return items if effective is None else items[-effective:]

    async def add_items(
        self, items: list[TResponseInputItem], *, wrapper: RunContextWrapper[Any] | None = None
    ) -> None:
        """Append the items in order, all or nothing, in one ``save_messages`` batch."""
        cid, uid = self._key(wrapper)
        rows = [item_to_message(item) for item in items]
        for row in rows:
            if row.get("content") is None and not row.get("tool_calls"):
                # Reasoning, search and other content-less items still cost the model tokens when
                # replayed: count their JSON, so token-budgeted windows see them.
                row["token_count"] = self.store.count_tokens(
                    json.dumps(row["metadata"][METADATA_KEY], ensure_ascii=False, default=str)
                )
        await append(self.store, cid, uid, rows, title=self.title)

    async def pop_item(self, *, wrapper: RunContextWrapper[Any] | None = None) -> TResponseInputItem | None:
        """Remove and return the newest item (None when the session is empty).

        Safe under concurrent pops: each stored message is returned by at most one of them.
        """
        cid, uid = self._key(wrapper)
        try:
            message = await self.store.pop_last_message(cid, uid)
        except ConversationNotFound:
            return None
        if message is None:
            return None
        # A message written by another client may stand for several items (an assistant turn
        # with several tool calls); popping removes the whole message and returns its last item.
        return message_to_items(message)[-1]

    async def clear_session(self, *, wrapper: RunContextWrapper[Any] | None = None) -> None:
        """Delete every item of the session; the conversation row itself stays."""
        cid, uid = self._key(wrapper)
        with contextlib.suppress(ConversationNotFound):  # never written: nothing to clear
            await self.store.clear_conversation(cid, uid)


def coerce_settings(value: object) -> SessionSettings:
    """``SessionSettings`` from itself or a dict of its fields, as the SDK's own sessions take them.

    Unknown keys and other types raise ``TypeError`` (the SDK's behaviour, so code written for
    its sessions behaves the same here).
    """
    if isinstance(value, SessionSettings):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"session must be a SessionSettings instance or a dict, got {type(value).__name__}")
    known = {f.name for f in dataclasses.fields(SessionSettings) if f.init}
    unknown = sorted(str(name) for name in value if name not in known)
    if unknown:
        raise TypeError(f"Unknown session settings: {', '.join(unknown)}")
    return SessionSettings(**dict(value))


# -- mapping ---------------------------------------------------------------------------------
def item_to_message(item: TResponseInputItem) -> dict[str, Any]:
    """The ``save_messages`` row for one Responses-API item (see the module docstring's table)."""
    data: Mapping[str, Any] = cast(Mapping[str, Any], item)
    row: dict[str, Any] = {"metadata": {METADATA_KEY: dict(data)}}
    kind = data.get("type", "message")
    role = data.get("role")
    call_id = data.get("call_id")
    if kind == "message" and isinstance(role, str) and role in _ROLES:
        row["role"] = _ROLES[role]
        row["content"] = _text(data.get("content"))
    elif kind == "function_call":
        row["role"] = "assistant"
        row["tool_name"] = data.get("name")
        row["tool_calls"] = [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": data.get("name"), "arguments": data.get("arguments")},
            }
        ]
    elif kind == "custom_tool_call":
        row["role"] = "assistant"
        row["tool_name"] = data.get("name")
        row["tool_calls"] = [
            {
                "id": call_id,
                "type": "custom",
                "custom": {"name": data.get("name"), "input": data.get("input")},
            }
        ]
    elif kind == "local_shell_call_output" and isinstance(data.get("id"), str):
        # The one output that names its call by "id" rather than "call_id".
        row["role"] = "tool"
        row["tool_call_id"] = data["id"]
        row["content"] = _text(data.get("output"))
    elif isinstance(call_id, str) and isinstance(kind, str) and kind.endswith("_output"):
        row["role"] = "tool"
        row["tool_call_id"] = call_id
        row["content"] = _text(data.get("output"))
    elif isinstance(call_id, str):
        row["role"] = "assistant"
        row["tool_calls"] = [{"id": call_id, "type": kind}]
    else:
        row["role"] = "assistant"
        row["content"] = None
    return row


def message_to_items(message: Message) -> list[TResponseInputItem]:
    """The items one stored message stands for: the stored item, else its equivalent items."""
    stored = message.metadata.get(METADATA_KEY)
    if isinstance(stored, dict):
        return [cast(TResponseInputItem, stored)]
    content = message.content if message.content is not None else ""
    if message.role == "tool":
        return [
            cast(
                TResponseInputItem,
                {
                    "type": "function_call_output",
                    "call_id": message.tool_call_id,
                    "output": content,
                },
            )
        ]
    items: list[Any] = []
    if message.role != "assistant" or message.content or not message.tool_calls:
        items.append({"role": message.role, "content": content})
    for call in message.tool_calls or []:
        items.append(_call_item(call))
    return cast(list[TResponseInputItem], items)


def _call_item(call: Any) -> dict[str, Any]:
    """A chat-completions tool call as a Responses-API ``function_call`` item."""
    function = call.get("function", {}) if isinstance(call, dict) else {}
    arguments = function.get("arguments", "")
    return {
        "type": "function_call",
        "call_id": call.get("id") if isinstance(call, dict) else None,
        "name": function.get("name"),
        "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
    }


def _text(content: Any) -> str | None:
    """The readable text of a message content or a tool output: a string, or its text parts."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                field = _TEXT_PART_FIELDS.get(str(part.get("type")))
                value = part.get(field) if field is not None else None
                if isinstance(value, str):
                    texts.append(value)
        return "\n".join(texts) if texts else None
    return None


if TYPE_CHECKING:
    # A static check that ConvDBSession satisfies the SDK's Session protocol.
    _protocol_check: type[Session] = ConvDBSession


class ConvDBBranchingSession(ConvDBSession):
    """``ConvDBSession`` with the branch operations of the SDK's ``AdvancedSQLiteSession``, on
    convdb forks: a branch is a conversation forked from the session's root conversation (or from
    another branch), so every branch has convdb's guarantees and reads stay single-conversation.

    ``session_id`` is the root conversation, whose branch id is ``"main"``; other branch ids are
    the forks' conversation ids. ``current_branch_id`` names the conversation that ``get_items``,
    ``add_items``, ``pop_item`` and ``clear_session`` act on.
    """

    MAIN: Final = "main"

    def __init__(self, store: ConversationStore, session_id: str, user_id: str, **options: Any) -> None:
        # One user per branching session: the branch operations take no run context, and a
        # resolver naming another conversation would bypass current_branch_id.
        if options.get("owner") is not None:
            raise InvalidInput("owner", "a branching session acts for one user: pass user_id, not owner=")
        super().__init__(store, session_id, user_id, **options)
        self.branch_user_id: str = check_id(user_id, "user_id")
        self.root_id = self.session_id
        self.current_branch_id = self.MAIN

    def _conversation(self, branch_id: str) -> str:
        return self.root_id if branch_id == self.MAIN else branch_id

    async def create_branch_from_turn(self, turn_number: int, branch_name: str | None = None) -> str:
        """Fork the current branch just before its ``turn_number``-th user message (1-based) and
        switch to the fork, as ``AdvancedSQLiteSession`` does; returns the new branch id.

        ``branch_name`` becomes the fork's conversation id (a new id when None). ``ValueError``
        when the turn does not exist or the name is blank or taken.
        """
        if branch_name is not None and not branch_name.strip():
            raise ValueError("Branch name cannot be empty")
        if isinstance(turn_number, bool) or not isinstance(turn_number, int) or turn_number < 1:
            raise ValueError(f"Turn {turn_number} does not exist")
        source = self._conversation(self.current_branch_id)
        turn, at_seq = 0, None
        async for message in self.store.export_messages(source, self.branch_user_id):
            if message.role == "user":
                turn += 1
                if turn == turn_number:
                    at_seq = message.seq - 1
                    break
        if at_seq is None:
            raise ValueError(f"Turn {turn_number} does not contain a user message")
        try:
            fork = await self.store.fork_conversation(
                source, self.branch_user_id, at_seq=at_seq, new_conversation_id=branch_name
            )
        except ConversationExists as exc:
            raise ValueError(f"Branch {branch_name!r} already exists") from exc
        self.current_branch_id = self.session_id = fork.id
        return fork.id

    async def switch_to_branch(self, branch_id: str) -> None:
        """Make ``branch_id`` current; ``ValueError`` if it is not a branch of this session."""
        if branch_id != self.MAIN:
            try:
                conversation = await self.store.get_conversation(branch_id, self.branch_user_id)
            except ConversationNotFound:
                conversation = None
            if conversation is None or conversation.root_id != self.root_id:
                raise ValueError(f"Branch {branch_id!r} does not exist")
        self.current_branch_id = branch_id
        self.session_id = self._conversation(branch_id)

    async def list_branches(self) -> list[dict[str, Any]]:
        """Every branch: ``branch_id``, ``message_count``, ``is_current``, ``created_at``, plus
        convdb's ``parent_id`` and ``forked_at_seq`` (None for main)."""
        result: list[dict[str, Any]] = []
        with contextlib.suppress(ConversationNotFound):  # the root was never written
            root = await self.store.get_conversation(self.root_id, self.branch_user_id)
            result.append({"branch_id": self.MAIN, "conversation": root})
        cursor = None
        while True:
            page = await self.store.list_conversations(
                self.branch_user_id, root_id=self.root_id, limit=1000, cursor=cursor
            )
            result += [{"branch_id": c.id, "conversation": c} for c in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        branches = []
        for entry in sorted(result, key=lambda e: e["conversation"].created_at):
            conversation = entry.pop("conversation")
            branches.append(
                {
                    **entry,
                    "message_count": await self.store.count_messages(conversation.id, self.branch_user_id),
                    "is_current": entry["branch_id"] == self.current_branch_id,
                    "created_at": conversation.created_at.isoformat(),
                    "parent_id": conversation.parent_id,
                    "forked_at_seq": conversation.forked_at_seq,
                }
            )
        return branches

    async def delete_branch(self, branch_id: str, force: bool = False) -> None:
        """Delete a branch (its conversation). Never ``main``; the current branch only with
        ``force=True``, which switches to ``main`` first."""
        if not branch_id or not branch_id.strip():
            raise ValueError("Branch ID cannot be empty")
        if branch_id == self.MAIN:
            raise ValueError("Cannot delete the main branch")
        if branch_id == self.current_branch_id:
            if not force:
                raise ValueError(
                    f"Cannot delete current branch {branch_id!r}. Use force=True or switch branches first"
                )
            await self.switch_to_branch(self.MAIN)
        try:
            conversation = await self.store.get_conversation(branch_id, self.branch_user_id)
        except ConversationNotFound:
            conversation = None
        if conversation is None or conversation.root_id != self.root_id:
            raise ValueError(f"Branch {branch_id!r} does not exist")
        await self.store.delete_conversation(branch_id, self.branch_user_id)
