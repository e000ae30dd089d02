"""Compaction that keeps every item, for the OpenAI Agents SDK (``pip install 'convdb[openai-agents]'``).

``ConvDBCompactionSession`` is ``ConvDBSession`` plus the SDK's compaction-aware session protocol
(``run_compaction``), on convdb summaries: compaction records a summary (``save_summary``) and
deletes nothing, and ``get_items`` reads the summarized window (the summary as one message item
in place of the items it covers, then the newer items). The SDK's own compaction session clears
and re-adds items, so a concurrent writer can lose them; here the stored items never change.

- ``summarizer``: the application's callable, ``await summarizer(previous_summary, items)`` ->
  the new summary text, given the newest summary so far (None for the first) and the items to fold
  into it. Any model, any prompt; tests pass a scripted one.
- ``store_run_usage(result)``: records a run's usage (``RunResult.context_wrapper.usage``) on the
  newest assistant message of the session, the way ``AdvancedSQLiteSession.store_run_usage``
  records it per turn; ``usage_report`` then sums it.
- ``guard_writes=True`` (opt-in): ``add_items`` saves with ``expected_last_seq`` set to the newest
  seq this session instance last read or wrote, so a second server interleaving the same session
  makes the write fail with ``ConcurrentUpdate`` (nothing written) instead of mixing turns.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from agents.items import TResponseInputItem
from agents.memory import SessionSettings
from agents.run_context import RunContextWrapper

from ..errors import ConversationNotFound, InvalidInput
from ..records import Message, Usage
from ..store import ConversationStore
from ..validation import MAX_HISTORY_LIMIT, check_limit
from ._common import read_all
from .openai_agents import (
    METADATA_KEY,
    ConvDBSession,
    OwnerResolver,
    coerce_settings,
    item_to_message,
    message_to_items,
)

if TYPE_CHECKING:
    from agents.memory import OpenAIResponsesCompactionArgs, OpenAIResponsesCompactionAwareSession
    from agents.result import RunResult

Summarizer = Callable[[str | None, list[TResponseInputItem]], Awaitable[str]]
"""``await summarizer(previous_summary, items)`` -> the text of the new summary."""

COMPACTION_KEY = "openai_compaction"
"""The summary metadata key recording what triggered a compaction (the response id, if any)."""


class ConvDBCompactionSession(ConvDBSession):
    """A ``ConvDBSession`` whose compaction is a convdb summary (see the module docstring).

    ``compact_after``: a compaction that is not forced runs once at least that many messages
    follow the newest summary. ``keep_recent``: that many of the newest messages stay outside the
    summary (extended so that a tool call and its outputs are never split by it).
    ``owner=`` (one session object for many users, from the run context) works as on
    ``ConvDBSession``; ``guard_writes`` then is refused, since its guard is the seq this one
    instance last saw, which means nothing across users.
    """

    def __init__(
        self,
        store: ConversationStore,
        session_id: str,
        user_id: str,
        *,
        summarizer: Summarizer,
        compact_after: int = 40,
        keep_recent: int = 8,
        guard_writes: bool = False,
        session_settings: SessionSettings | Mapping[str, Any] | None = None,
        max_tokens: int | None = None,
        title: str | None = None,
        owner: OwnerResolver | None = None,
    ) -> None:
        super().__init__(
            store,
            session_id,
            user_id,
            session_settings=session_settings,
            max_tokens=max_tokens,
            title=title,
            owner=owner,
        )
        if guard_writes and owner is not None:
            raise InvalidInput("guard_writes", "cannot be combined with owner= (the guard is per instance)")
        if not callable(summarizer):
            raise InvalidInput("summarizer", "must be an async callable (previous_summary, items) -> str")
        self.summarizer = summarizer
        self.compact_after = check_limit(compact_after, "compact_after")
        if isinstance(keep_recent, bool) or not isinstance(keep_recent, int) or keep_recent < 0:
            raise InvalidInput("keep_recent", f"must be an int >= 0, got {keep_recent!r}")
        self.keep_recent = keep_recent
        self.guard_writes = guard_writes
        #: The newest seq this instance read or wrote (the guard of ``guard_writes``); None: not yet read.
        self.last_seq: int | None = None

    async def get_items(
        self, limit: int | None = None, *, wrapper: RunContextWrapper[Any] | None = None
    ) -> list[TResponseInputItem]:
        """The summarized window: the newest summary (as a message item of its role), then the items
        after it, the newest ``limit`` in all (``session_settings.limit`` when None)."""
        cid, uid = self._key(wrapper)
        effective = limit
        if effective is None and self.session_settings is not None:
            effective = coerce_settings(self.session_settings).limit
        if effective is not None and effective <= 0:
            return []
        window_size = MAX_HISTORY_LIMIT if effective is None else min(effective, MAX_HISTORY_LIMIT)
        try:
            window = await self.store.get_history(
                cid, uid, limit=window_size, max_tokens=self.max_tokens, summarized=True
            )
        except ConversationNotFound:
            window = []
        if self.guard_writes:
            await self._remember_newest(cid, uid, window)
        items: list[TResponseInputItem] = []
        for message in window:
            if message.summary_through is not None:
                items.append(cast(TResponseInputItem, {"role": message.role, "content": message.content}))
            else:
                items.extend(message_to_items(message))
        return items

    async def _remember_newest(self, cid: str, uid: str, window: list[Message]) -> None:
        if window:
            self.last_seq = window[-1].seq  # a summary sits at its through_seq: the newest it covers
        else:
            with contextlib.suppress(ConversationNotFound):
                newest = await self.store.get_history(cid, uid, limit=1)
                self.last_seq = newest[-1].seq if newest else 0
            if self.last_seq is None:
                self.last_seq = 0

    async def add_items(
        self, items: list[TResponseInputItem], *, wrapper: RunContextWrapper[Any] | None = None
    ) -> None:
        if not self.guard_writes or self.last_seq is None:
            await super().add_items(items, wrapper=wrapper)
            if self.guard_writes:
                await self._remember_newest(*self._key(wrapper), [])
            return
        cid, uid = self._key(wrapper)
        rows = self._rows(items)
        if not rows:
            return
        try:
            saved = await self.store.save_messages(cid, uid, rows, expected_last_seq=self.last_seq)
        except ConversationNotFound:
            if self.last_seq != 0:
                raise
            await self.store.get_or_create_conversation(cid, uid, title=self.title)
            saved = await self.store.save_messages(cid, uid, rows, expected_last_seq=0)
        self.last_seq = saved[-1].seq

    def _rows(self, items: list[TResponseInputItem]) -> list[dict[str, Any]]:
        rows = [item_to_message(item) for item in items]
        for row in rows:
            if row.get("content") is None and not row.get("tool_calls"):
                # As ConvDBSession.add_items: content-less items are counted from their JSON.
                row["token_count"] = self.store.count_tokens(
                    json.dumps(row["metadata"][METADATA_KEY], ensure_ascii=False, default=str)
                )
        return rows

    async def run_compaction(self, args: OpenAIResponsesCompactionArgs | None = None) -> None:
        """Fold the messages after the newest summary, except the ``keep_recent`` newest, into a new
        summary, when at least ``compact_after`` follow it (always with ``force``). Deletes nothing."""
        options = dict(args or {})
        cid, uid = self._key(None)
        summaries = await self._summaries(cid, uid)
        through = summaries[-1].through_seq if summaries else 0
        previous = summaries[-1].content if summaries else None
        pending = [m for m in await read_all(self.store, cid, uid) if m.seq > through]
        if not pending or (not options.get("force") and len(pending) < self.compact_after):
            return
        cut = len(pending) - self.keep_recent
        while 0 < cut < len(pending) and pending[cut].role == "tool":
            cut += 1  # a tool output stays with its call: both go into the summary
        if cut <= 0:
            return
        folded = pending[:cut]
        text = await self.summarizer(previous, [item for m in folded for item in message_to_items(m)])
        await self.store.save_summary(
            cid,
            uid,
            text,
            through_seq=folded[-1].seq,
            metadata={COMPACTION_KEY: {"response_id": options.get("response_id")}},
        )

    async def _summaries(self, cid: str, uid: str) -> list[Any]:
        try:
            return await self.store.list_summaries(cid, uid)
        except ConversationNotFound:
            return []

    async def store_run_usage(self, result: RunResult) -> bool:
        """Record ``result``'s usage on the newest assistant message without usage; False when there
        is none (or the run had no usage)."""
        usage = result.context_wrapper.usage
        if usage is None:
            return False
        model = getattr(result.last_agent, "model", None)
        recorded = Usage(
            model=model if isinstance(model, str) and model else None,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_tokens=getattr(usage.input_tokens_details, "cached_tokens", 0) or 0,
            reasoning_tokens=getattr(usage.output_tokens_details, "reasoning_tokens", 0) or 0,
        )
        cid, uid = self._key(result.context_wrapper)  # the run's own context names its owner
        try:
            window = await self.store.get_history(cid, uid, limit=50)
        except ConversationNotFound:
            return False
        for message in reversed(window):
            if message.role == "assistant" and message.usage is None:
                return await self.store.record_usage(cid, uid, message.seq, recorded)
        return False


if TYPE_CHECKING:
    _protocol_check: type[OpenAIResponsesCompactionAwareSession] = ConvDBCompactionSession
