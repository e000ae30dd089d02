"""ConversationStore: the facade agent servers call, one method per use case.

Each method validates its input before any I/O, then runs the statements named in
``sql/queries.sql`` on one pooled connection. Ownership is checked by those statements, in SQL.
Driver errors become ``ConvDBError``s in exactly one place: ``_Connection.__aexit__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Final, TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from . import management, schema_check
from .errors import (
    ConvDBError,
    ConversationNotFound,
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidInput,
    PoolTimeout,
    QueryTimeout,
    translate,
)
from .export import MessageParser, aiter_records, header_record, message_record, parse_header
from .ids import new_conversation_id
from .listing import build_listing, encode_cursor
from .management import UNSET, Unset, check_budget, check_flag
from .pool import create_pool
from .records import Conversation, ErasureCounts, JSONValue, Message, Page
from .sql import QUERIES
from .validation import (
    DEFAULT_MAX_CONTENT_BYTES,
    DEFAULT_MAX_METADATA_BYTES,
    DEFAULT_MAX_TITLE_BYTES,
    DEFAULT_MAX_TOOL_CALLS_BYTES,
    MessageRow,
    SizeLimits,
    TokenCounter,
    check_id,
    check_limit,
    check_seconds,
    check_title,
    encode_json,
    estimate_tokens,
    prepare_batch,
    prepare_message,
    prepare_message_dict,
)
from .windows import history_from_records, trim_orphan_tool_results

T = TypeVar("T")
Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

_GET_OR_CREATE: Final = QUERIES["get_or_create_conversation"]
_GET_OR_CREATE_LOCKED: Final = QUERIES["get_or_create_conversation_locked"]
_GET_CONVERSATION: Final = QUERIES["get_conversation"]
_SAVE_MESSAGE: Final = QUERIES["save_message"]
_RESERVE_SEQ_RANGE: Final = QUERIES["reserve_seq_range"]
_LOCK_WITH_KEYS: Final = QUERIES["lock_conversation_with_keys"]
_INSERT_MESSAGE_AT: Final = QUERIES["insert_message_at"]
_GET_MESSAGE_BY_KEY: Final = QUERIES["get_message_by_key"]
_GET_HISTORY: Final = QUERIES["get_history"]
_SET_RLS_USER: Final = QUERIES["set_rls_user"]
_SAVE_AND_GET_HISTORY: Final = QUERIES["save_and_get_history"]
_COUNT_MESSAGES: Final = QUERIES["count_messages"]
_UPDATE_CONVERSATION: Final = QUERIES["update_conversation"]
_DELETE_CONVERSATION: Final = QUERIES["delete_conversation"]
_CLEAR_CONVERSATION: Final = QUERIES["clear_conversation"]
_POP_LAST_MESSAGE: Final = QUERIES["pop_last_message"]
_EXPORT_HEADER: Final = QUERIES["export_header"]
_EXPORT_MESSAGES: Final = QUERIES["export_messages"]

_IDEMPOTENCY_INDEX: Final = "messages_idempotency_key"
# A keyed batch whose key another writer stored between our snapshot and our lock is re-run once
# with a fresh snapshot; more than that would mean keys are being reused in a loop.
_KEYED_BATCH_ATTEMPTS: Final = 3
_CANCEL_GRACE_SECONDS: Final = 5.0


class _Connection:
    """One pooled connection for one operation; the single seam where driver errors are translated."""

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: asyncpg.Pool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Conn | None = None

    async def __aenter__(self) -> Conn:
        try:
            if self._timeout is None:
                self._conn = await self._pool.acquire()
            else:
                # asyncio.timeout, not acquire(timeout=): asyncpg implements the latter with
                # wait_for, which costs a Task on every call of every method.
                async with asyncio.timeout(self._timeout):
                    self._conn = await self._pool.acquire()
        except TimeoutError as exc:
            raise PoolTimeout(
                f"no pooled connection became free within {self._timeout} s (acquire_timeout); "
                "raise max_size or lower the load"
            ) from exc
        except Exception as exc:
            raise translate(exc) from exc
        return self._conn

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                await self._pool.release(conn)
        except asyncpg.exceptions.InternalClientError:
            # asyncpg race: the server closed the connection between the op's end and this release
            # (a restart, a killed backend), and the pool already took the holder back. Nothing is
            # left to release, and the op's outcome (it completed, or its own error) stands.
            pass
        except Exception as release_error:
            if exc is None:
                raise translate(release_error) from release_error
        if exc is not None:
            translated = translate(exc)
            if translated is not exc:
                raise translated from exc


class ConversationStore:
    """Conversations and their messages in PostgreSQL, with per-user isolation.

    ``ConversationStore(pool)`` borrows an asyncpg pool (create it with
    ``init=convdb.pool.init_connection`` so jsonb decodes to Python values); ``connect()`` creates and
    owns one. Options:

    - ``max_content_bytes``: the largest message content accepted, in UTF-8 bytes (default 1 MiB).
    - ``max_title_bytes`` (default 64 KiB), ``max_metadata_bytes`` and ``max_tool_calls_bytes``
      (default 4 MiB each): the largest title (UTF-8) and metadata / tool_calls (their JSON text)
      accepted; larger ones raise ``InvalidInput`` before any I/O.
    - ``count_tokens``: maps text to a token count, stored per message when the caller gives none.
    - ``acquire_timeout``: seconds to wait for a pooled connection before ``PoolTimeout``.
    - ``batch_timeout`` + ``batch_timeout_per_mib``: the bound on a ``save_messages`` call, scaled
      to its payload. The bound is what keeps a stalled batch from waiting forever.
    - ``retry_reads``: retry a read once when its connection was lost (safe: reads change nothing).
    - ``retry_keyed_writes``: retry a write once when its connection was lost, if every message
      carries an idempotency key (the key makes the retry exactly-once); also the steps of
      ``delete_user_data``, which are idempotent deletes.
    - ``row_level_security``: for databases with ``schema_rls.sql`` applied. Every operation runs
      in a transaction that first sets ``convdb.user_id`` transaction-locally (``set_config(...,
      true)``), which the policies key on: three more round trips per single-statement operation
      (BEGIN, the setting, COMMIT), one more per batch. Off by default, and then it costs nothing.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
        max_title_bytes: int = DEFAULT_MAX_TITLE_BYTES,
        max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES,
        max_tool_calls_bytes: int = DEFAULT_MAX_TOOL_CALLS_BYTES,
        count_tokens: TokenCounter = estimate_tokens,
        acquire_timeout: float | None = 30.0,
        batch_timeout: float = 30.0,
        batch_timeout_per_mib: float = 2.0,
        max_batch_size: int = 10_000,
        retry_reads: bool = True,
        retry_keyed_writes: bool = True,
        row_level_security: bool = False,
        _owns_pool: bool = False,
    ) -> None:
        self._pool = pool
        self._owns_pool = _owns_pool
        self.max_content_bytes = max_content_bytes
        self.limits = SizeLimits(max_title_bytes, max_metadata_bytes, max_tool_calls_bytes)
        self.count_tokens = count_tokens
        self.acquire_timeout = acquire_timeout
        self.batch_timeout = batch_timeout
        self.batch_timeout_per_mib = batch_timeout_per_mib
        self.max_batch_size = max_batch_size
        self.retry_reads = retry_reads
        self.retry_keyed_writes = retry_keyed_writes
        self.row_level_security = row_level_security

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    async def connect(
        cls,
        dsn: str | None = None,
        *,
        min_size: int = 2,
        max_size: int = 10,
        statement_cache_size: int = 100,
        verify_schema: bool = True,
        max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
        max_title_bytes: int = DEFAULT_MAX_TITLE_BYTES,
        max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES,
        max_tool_calls_bytes: int = DEFAULT_MAX_TOOL_CALLS_BYTES,
        count_tokens: TokenCounter = estimate_tokens,
        acquire_timeout: float | None = 30.0,
        batch_timeout: float = 30.0,
        batch_timeout_per_mib: float = 2.0,
        max_batch_size: int = 10_000,
        retry_reads: bool = True,
        retry_keyed_writes: bool = True,
        row_level_security: bool = False,
        **pool_options: Any,
    ) -> ConversationStore:
        """Create a pool (owned by the store) and check the schema unless ``verify_schema=False``."""
        try:
            pool = await create_pool(dsn, min_size=min_size, max_size=max_size,
                                     statement_cache_size=statement_cache_size, **pool_options)
        except Exception as exc:
            raise translate(exc) from exc
        store = cls(pool, max_content_bytes=max_content_bytes, max_title_bytes=max_title_bytes,
                    max_metadata_bytes=max_metadata_bytes, max_tool_calls_bytes=max_tool_calls_bytes,
                    count_tokens=count_tokens,
                    acquire_timeout=acquire_timeout, batch_timeout=batch_timeout,
                    batch_timeout_per_mib=batch_timeout_per_mib, max_batch_size=max_batch_size,
                    retry_reads=retry_reads, retry_keyed_writes=retry_keyed_writes,
                    row_level_security=row_level_security, _owns_pool=True)
        if verify_schema:
            try:
                await store.verify_schema()
            except BaseException:
                await store.close()
                raise
        return store

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    async def close(self) -> None:
        """Close the pool if the store created it; a borrowed pool stays open."""
        if self._owns_pool:
            await self._pool.close()

    async def __aenter__(self) -> ConversationStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _connection(self) -> _Connection:
        return _Connection(self._pool, self.acquire_timeout)

    async def _run(
        self, op: Callable[[Conn], Awaitable[T]], *, retry: bool, user_id: str | None = None
    ) -> T:
        """Run ``op`` on a pooled connection, once more on a fresh one if the first was lost.

        ``user_id``: the validated user the op acts for. With ``row_level_security`` the op runs in
        a transaction where ``convdb.user_id`` is set to it (a method that leaves it out sees
        nothing under the policies: RLS fails closed).
        """
        if user_id is not None and self.row_level_security:
            op = _as_user(op, user_id)
        try:
            async with self._connection() as conn:
                return await op(conn)
        except DatabaseUnavailable:
            if not retry:
                raise
        async with self._connection() as conn:
            return await op(conn)

    async def verify_schema(self) -> None:
        """Raise ``SchemaMismatch`` naming what differs between the database and this package."""
        await self._run(schema_check.verify, retry=self.retry_reads)

    # -- conversations -----------------------------------------------------------------------
    async def get_or_create_conversation(
        self,
        conversation_id: str | None,
        user_id: str,
        *,
        title: str | None = None,
        metadata: Mapping[str, JSONValue] | None = None,
    ) -> Conversation:
        """Load this user's conversation, or create it (with a new time-ordered id when None).

        An id that belongs to another user raises ``ConversationNotFound``; ``title`` and
        ``metadata`` apply only when the conversation is created.
        """
        if conversation_id is None:
            cid = new_conversation_id()
        else:
            cid = check_id(conversation_id, "conversation_id")
        uid = check_id(user_id, "user_id")
        check_title(title, self.limits)
        meta_json = encode_json(metadata, "metadata", kind=dict, max_bytes=self.limits.metadata)

        async def op(conn: Conn) -> Conversation:
            row = await conn.fetchrow(_GET_OR_CREATE, cid, uid, title, meta_json)
            if row is None:
                # Another user owns the id, or a concurrent creator or delete changed the row
                # after our snapshot: the locking variant decides on the newest version.
                row = await conn.fetchrow(_GET_OR_CREATE_LOCKED, cid, uid, title, meta_json)
                if row is None:
                    raise ConversationNotFound()
            return Conversation.from_record(row)

        return await self._run(op, retry=self.retry_reads, user_id=uid)

    async def get_conversation(self, conversation_id: str, user_id: str) -> Conversation:
        cid = check_id(conversation_id, "conversation_id")
        uid = check_id(user_id, "user_id")

        async def op(conn: Conn) -> Conversation:
            row = await conn.fetchrow(_GET_CONVERSATION, cid, uid)
            if row is None:
                raise ConversationNotFound()
            return Conversation.from_record(row)

        return await self._run(op, retry=self.retry_reads, user_id=uid)

    # -- messages ----------------------------------------------------------------------------
    async def save_message(
        self,
        conversation_id: str,
        user_id: str,
        role: str,
        content: str | None,
        *,
        tool_name: str | None = None,
        tool_call_id: str | None = None,
        tool_calls: Sequence[JSONValue] | None = None,
        metadata: Mapping[str, JSONValue] | None = None,
        token_count: int | None = None,
        idempotency_key: str | None = None,
    ) -> Message:
        """Append one message in one statement (one round trip) and return it as stored.

        With ``idempotency_key``, a retry of a save that was stored returns the stored message and
        writes nothing; a different role or content under the same key raises IdempotencyConflict.
        """
        cid = check_id(conversation_id, "conversation_id")
        uid = check_id(user_id, "user_id")
        row = prepare_message(
            role, content, tool_name=tool_name, tool_call_id=tool_call_id, tool_calls=tool_calls,
            metadata=metadata, token_count=token_count, idempotency_key=idempotency_key,
            max_content_bytes=self.max_content_bytes, count_tokens=self.count_tokens, limits=self.limits,
        )

        async def op(conn: Conn) -> Message:
            try:
                stored = await _keyed(conn, row, conn.fetchrow(_SAVE_MESSAGE, cid, uid, *row))
            except asyncpg.UniqueViolationError as exc:
                if row.idempotency_key is None or exc.constraint_name != _IDEMPOTENCY_INDEX:
                    raise
                return await _stored_under_key(conn, cid, uid, row)
            if stored is None:
                raise ConversationNotFound()
            return _message(cid, stored[0], stored[1], row)

        return await self._run(op, retry=self.retry_keyed_writes and row.idempotency_key is not None,
                               user_id=uid)

    async def save_messages(
        self, conversation_id: str, user_id: str, messages: Iterable[Mapping[str, Any]]
    ) -> list[Message]:
        """Append a batch atomically, in order; return the stored messages.

        One transaction: a statement that checks ownership, locks the conversation row, reserves
        the sequence range and touches updated_at, then ``executemany`` of the inserts. On any
        error or cancellation nothing of the batch is stored.
        """
        cid = check_id(conversation_id, "conversation_id")
        uid = check_id(user_id, "user_id")
        rows = prepare_batch(messages, max_content_bytes=self.max_content_bytes,
                             count_tokens=self.count_tokens, max_batch=self.max_batch_size,
                             limits=self.limits)
        payload = sum(len(r.content or "") + len(r.tool_calls_json or "") + len(r.metadata_json or "")
                      for r in rows)
        budget = self.batch_timeout + self.batch_timeout_per_mib * payload / 2**20
        keyed = all(r.idempotency_key is not None for r in rows)
        # The batch sets the RLS user inside its own transaction (see _save_batch), not via _run.
        rls_user = uid if self.row_level_security else None

        async def op(conn: Conn) -> list[Message]:
            return await _guarded(conn, _save_batch(conn, cid, uid, rows, budget, set_user=rls_user), budget)

        return await self._run(op, retry=self.retry_keyed_writes and keyed)  # RLS: see rls_user

    async def get_history(
        self, conversation_id: str, user_id: str, *, limit: int = 50, max_tokens: int | None = None
    ) -> list[Message]:
        """A model-ready window: the newest ``limit`` messages, oldest first, in one round trip.

        With ``max_tokens``, only the newest messages whose stored token counts sum to at most
        ``max_tokens`` (``limit`` still applies); the sum is computed in SQL, in the same
        ownership-checked statement. Leading ``tool`` results whose assistant ``tool_calls``
        message fell outside the window are trimmed (see ``convdb.windows``), so the window can
        hold fewer than ``limit`` messages. Raises ``ConversationNotFound`` for an unknown or
        foreign id; returns [] for an empty one (or when nothing fits the budget).
        """
        cid = check_id(conversation_id, "conversation_id")
        uid = check_id(user_id, "user_id")
        n = check_limit(limit)
        budget = check_budget(max_tokens)

        async def op(conn: Conn) -> list[Message]:
            if budget is not None:
                return await management.window_until(conn, cid, uid, management.MAX_SEQ, n, budget)
            window = history_from_records(cid, await conn.fetch(_GET_HISTORY, cid, uid, n))
            if window is None:
                raise ConversationNotFound()
            return window

        return await self._run(op, retry=self.retry_reads, user_id=uid)

    # -- agent turns -------------------------------------------------------------------------
    async def save_and_get_history(
        self,
        conversation_id: str,
        user_id: str,
        message: Mapping[str, Any],
        *,
        limit: int = 50,
        max_tokens: int | None = None,
    ) -> tuple[Message, list[Message]]:
        """Save ``message`` and return it with the window that ends at it: one statement.

        ``message`` holds ``save_message``'s fields (``role``, ``content``, ``tool_calls``,
        ``idempotency_key``, ...). The save has save_message's semantics (ownership, seq under the
        row lock, updated_at); the window is what ``get_history(limit=, max_tokens=)`` returns
        right after the save, the new message included when it fits. With an idempotency key
        that is already stored, nothing is written and the stored message is returned with the
        window that ends at it. One round trip; two when another writer committed to the
        conversation during the statement (the window is then re-read) or on a keyed replay.
        """
        cid = check_id(conversation_id, "conversation_id")
        uid = check_id(user_id, "user_id")
        row = prepare_message_dict(message, max_content_bytes=self.max_content_bytes,
                                   count_tokens=self.count_tokens, limits=self.limits)
        n = check_limit(limit)
        budget = check_budget(max_tokens)

        async def op(conn: Conn) -> tuple[Message, list[Message]]:
            try:
                records = await _keyed(
                    conn, row, conn.fetch(_SAVE_AND_GET_HISTORY, cid, uid, *row, n, budget))
            except asyncpg.UniqueViolationError as exc:
                if row.idempotency_key is None or exc.constraint_name != _IDEMPOTENCY_INDEX:
                    raise
                stored = await _stored_under_key(conn, cid, uid, row)
                return stored, await management.window_until(conn, cid, uid, stored.seq, n, budget)
            if not records:
                raise ConversationNotFound()
            saved = next(Message.from_record(cid, r) for r in records if r["is_new"])
            if records[0]["stale"]:
                return saved, await management.window_until(conn, cid, uid, saved.seq, n, budget)
            window = [Message.from_record(cid, r) for r in records if r["in_window"]]
            return saved, trim_orphan_tool_results(window)

        return await self._run(op, retry=self.retry_keyed_writes and row.idempotency_key is not None,
                               user_id=uid)

    # -- conversation management -------------------------------------------------------------
    async def list_conversations(
        self,
        user_id: str,
        *,
        limit: int = 20,
        cursor: str | None = None,
        title_contains: str | None = None,
        metadata_contains: Mapping[str, JSONValue] | None = None,
        updated_after: datetime | None = None,
        updated_before: datetime | None = None,
    ) -> Page[Conversation]:
        """This user's conversations, most recently updated first (ties by id), a page at a time.

        Keyset pagination: pass ``next_cursor`` back as ``cursor`` with the same filters; a cursor
        that was altered or made for other filters raises ``InvalidInput``. ``title_contains`` is
        a case-insensitive substring match (``%`` and ``_`` match themselves);
        ``metadata_contains`` keeps conversations whose metadata contains that JSON object
        (``@>``); ``updated_after``/``updated_before`` are exclusive bounds (timezone-aware).
        One round trip per page.
        """
        query = build_listing(user_id, limit=limit, cursor=cursor, title_contains=title_contains,
                              metadata_contains=metadata_contains, updated_after=updated_after,
                              updated_before=updated_before)
        uid = check_id(user_id, "user_id")  # validated by build_listing; named for row-level security

        async def op(conn: Conn) -> Page[Conversation]:
            records = await conn.fetch(query.sql, *query.args)
            items = [Conversation.from_record(r) for r in records[: query.limit]]
            last = items[-1] if len(records) > query.limit else None
            next_cursor = None if last is None else encode_cursor(last.updated_at, last.id, query.context)
            return Page(items, next_cursor)

        return await self._run(op, retry=self.retry_reads, user_id=uid)

    async def update_conversation(
        self,
        conversation_id: str,
        user_id: str,
        *,
        title: str | Unset | None = UNSET,
        metadata: Mapping[str, JSONValue] | Unset | None = UNSET,
    ) -> Conversation:
        """Set the title and/or replace the metadata; returns the updated conversation.

        An argument left out is left alone; ``title=None`` clears the title and ``metadata=None``
        (or ``{}``) empties the metadata. Touches ``updated_at``. One round trip.
        """
        cid = check_id(conversation_id, "conversation_id")
        uid = check_id(user_id, "user_id")
        if isinstance(title, Unset) and isinstance(metadata, Unset):
            raise InvalidInput("title", "nothing to update: pass title= and/or metadata=")
        new_title = None if isinstance(title, Unset) else check_title(title, self.limits)
        meta_json = None if isinstance(metadata, Unset) else encode_json(
            metadata, "metadata", kind=dict, max_bytes=self.limits.metadata)

        async def op(conn: Conn) -> Conversation:
            row = await conn.fetchrow(_UPDATE_CONVERSATION, cid, uid, not isinstance(title, Unset),
                                      new_title, not isinstance(metadata, Unset), meta_json)
            if row is None:
                raise ConversationNotFound()
            return Conversation.from_record(row)

        return await self._run(op, retry=self.retry_reads, user_id=uid)

    async def delete_conversation(self, conversation_id: str, user_id: str) -> int:
        """Delete the conversation and its messages in one statement; returns the messages deleted.

        One transaction whatever the size: for a conversation of millions of messages,
        ``delete_user_data`` shows the chunked way.
        """
        cid = check_id(conversation_id, "conversation_id")
        uid = check_id(user_id, "user_id")

        async def op(conn: Conn) -> int:
            # A "fresh view" statement: re-run behind the row lock when a writer raced it, so the
            # count includes a batch that committed while the delete waited for the lock.
            records = await management.run_fresh(conn, _DELETE_CONVERSATION, cid, uid)
            deleted: int = records[0]["deleted"]
            return deleted

        return await self._run(op, retry=False, user_id=uid)

    async def clear_conversation(self, conversation_id: str, user_id: str) -> int:
        """Delete every message, keep the conversation; returns how many were deleted.

        Sequence numbers are never reused: the next message continues after the highest seq the
        conversation ever had, so a seq seen before the clear never names another message.
        Touches ``updated_at``. One round trip (five when a writer races it: the first attempt
        changes nothing, then BEGIN, lock, the statement, COMMIT).
        """
        cid = check_id(conversation_id, "conversation_id")
        uid = check_id(user_id, "user_id")

        async def op(conn: Conn) -> int:
            records = await management.run_fresh(conn, _CLEAR_CONVERSATION, cid, uid)
            deleted: int = records[0]["deleted"]
            return deleted

        return await self._run(op, retry=False, user_id=uid)

    async def pop_last_message(self, conversation_id: str, user_id: str) -> Message | None:
        """Delete and return the newest message, or None when the conversation is empty.

        Safe under concurrency: concurrent pops each return a different message, and a pop only
        ever removes the newest message as of the moment it holds the conversation's lock. Its
        seq is not reused. Touches ``updated_at`` when it removes something. One round trip
        (five when a writer races it, as for ``clear_conversation``).
        """
        cid = check_id(conversation_id, "conversation_id")
        uid = check_id(user_id, "user_id")

        async def op(conn: Conn) -> Message | None:
            records = await management.run_fresh(conn, _POP_LAST_MESSAGE, cid, uid)
            return None if records[0][0] is None else Message.from_record(cid, records[0])

        return await self._run(op, retry=False, user_id=uid)

    async def count_messages(self, conversation_id: str, user_id: str) -> int:
        """How many messages the conversation holds (an index-only count); one round trip."""
        cid = check_id(conversation_id, "conversation_id")
        uid = check_id(user_id, "user_id")

        return await self._run(functools.partial(_owned_count, sql=_COUNT_MESSAGES, cid=cid, uid=uid),
                               retry=self.retry_reads, user_id=uid)

    # -- erasure, export, import -------------------------------------------------------------
    async def delete_user_data(
        self, user_id: str, *, conversations_per_batch: int = 100, messages_per_batch: int = 5000
    ) -> ErasureCounts:
        """Erase every conversation and message of a user (an erasure request); returns the counts.

        Works in short transactions: messages ``messages_per_batch`` at a time, then the emptied
        conversations ``conversations_per_batch`` at a time, so a user with millions of messages
        never holds one long transaction or lock. Resumable: if it is interrupted (cancelled,
        connection lost, process killed), what was deleted stays deleted and calling it again
        finishes the job, returning what that call deleted. Each step is an idempotent delete, so
        a step whose connection was lost is retried once when ``retry_keyed_writes`` is on (the
        listing step, a read, when ``retry_reads`` is); the counts include what the interrupted
        attempt had committed. Messages a concurrent writer adds meanwhile are deleted and
        counted too. An unknown user deletes nothing (counts 0).
        """
        uid = check_id(user_id, "user_id")
        per_batch = check_limit(conversations_per_batch, "conversations_per_batch")
        chunk = check_limit(messages_per_batch, "messages_per_batch", maximum=100_000)
        progress = management.ErasureProgress()
        after = ""
        while True:

            async def take(conn: Conn, start: str = after) -> list[str]:
                return await management.next_conversations(conn, uid, start, per_batch)

            ids = await self._run(take, retry=self.retry_reads, user_id=uid)
            if not ids:
                if after == "":
                    return ErasureCounts(progress.conversations, progress.messages)
                after = ""  # one more look from the start (see below)
                continue

            async def erase(conn: Conn, ids: list[str] = ids) -> None:
                await management.erase_conversations(conn, uid, ids, chunk, progress)

            await self._run(erase, retry=self.retry_keyed_writes, user_id=uid)
            # After the last batch, one more look from the start: it finds conversations created
            # meanwhile below the cursor, and otherwise ends the loop.
            after = ids[-1] if len(ids) == per_batch else ""

    def export_conversation(
        self, conversation_id: str, user_id: str, *, chunk_size: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream a conversation as JSON-ready dicts: the conversation record, then each message.

        Messages are read in keyset chunks of ``chunk_size`` (one round trip each, no connection
        or transaction held between chunks), so a huge conversation is never in memory. The
        export covers the messages that existed when it started (seq below the next_seq read
        first). Arguments are checked at the call; ``ConversationNotFound`` comes on the first
        iteration (or later, if the conversation is deleted during the export). The format is
        described in ``convdb.export``; ``import_conversation`` restores it exactly.
        """
        cid = check_id(conversation_id, "conversation_id")
        uid = check_id(user_id, "user_id")
        size = check_limit(chunk_size, "chunk_size")
        return self._export(cid, uid, size)

    def export_messages(
        self, conversation_id: str, user_id: str, *, chunk_size: int = 1000
    ) -> AsyncIterator[Message]:
        """Stream every message of a conversation, oldest first, as ``Message``s, in keyset chunks.

        Like ``export_conversation`` (same chunks, same bound, same errors) without the
        conversation record; for reading a whole long history without holding it all in memory.
        """
        cid = check_id(conversation_id, "conversation_id")
        uid = check_id(user_id, "user_id")
        size = check_limit(chunk_size, "chunk_size")
        return self._stream_messages(cid, uid, size)

    async def _export(self, cid: str, uid: str, size: int) -> AsyncIterator[dict[str, Any]]:
        stream = self._export_rows(cid, uid, size)
        yield header_record(await anext(stream))
        async for record in stream:
            yield message_record(Message.from_record(cid, record))

    async def _stream_messages(self, cid: str, uid: str, size: int) -> AsyncIterator[Message]:
        stream = self._export_rows(cid, uid, size)
        await anext(stream)
        async for record in stream:
            yield Message.from_record(cid, record)

    async def _export_rows(self, cid: str, uid: str, size: int) -> AsyncIterator[asyncpg.Record]:
        """The conversation row, then its message rows with seq below its next_seq, in chunks."""

        async def header(conn: Conn) -> asyncpg.Record:
            row = await conn.fetchrow(_EXPORT_HEADER, cid, uid)
            if row is None:
                raise ConversationNotFound()
            return row

        head = await self._run(header, retry=self.retry_reads, user_id=uid)
        yield head
        after, bound = 0, head["next_seq"]
        while True:

            async def chunk(conn: Conn, after: int = after) -> list[asyncpg.Record]:
                records = await conn.fetch(_EXPORT_MESSAGES, cid, uid, after, bound, size)
                if not records:
                    raise ConversationNotFound()
                return [] if records[0][0] is None else records

            records = await self._run(chunk, retry=self.retry_reads, user_id=uid)
            for record in records:
                yield record
            if len(records) < size:
                return
            after = records[-1][0]

    async def import_conversation(
        self,
        user_id: str,
        records: Iterable[Mapping[str, Any]] | AsyncIterable[Mapping[str, Any]],
        *,
        conversation_id: str | None = None,
        replace: bool = False,
        time_limit: float = 300.0,
    ) -> Conversation:
        """Restore an export (``export_conversation``'s records) for ``user_id``, exactly.

        Same id (or ``conversation_id=`` to import a copy under another id), title, metadata,
        created_at, updated_at and next_seq; every message with its seq, role, content, tool
        fields, metadata, token count, idempotency key and created_at. All or nothing: one
        transaction, messages sent in pipelined chunks as the records are read (``records`` may
        be a lazy or async iterable, such as ``convdb.export.read_jsonl``). Records are validated
        before they are sent; the first bad one raises ``InvalidInput`` and nothing is stored.

        An id that already holds a conversation of this user raises ``ConversationExists``
        unless ``replace=True``, which overwrites it (its messages are replaced) atomically. An
        id of another user's conversation raises ``ConversationNotFound`` and is never touched.
        ``time_limit`` (seconds) bounds each pipelined chunk, and the whole import with a few
        seconds' grace; when it runs out (``QueryTimeout``), or the call is cancelled, the
        connection is closed and nothing is stored.
        """
        uid = check_id(user_id, "user_id")
        override = None if conversation_id is None else check_id(conversation_id, "conversation_id")
        overwrite = check_flag(replace, "replace")
        time_limit = check_seconds(time_limit, "time_limit")
        stream = aiter_records(records)
        header = parse_header(await anext(stream, None), self.limits)
        cid = override or header.id
        parser = MessageParser(header, max_content_bytes=self.max_content_bytes,
                               count_tokens=self.count_tokens, limits=self.limits)
        numbered = _numbered(stream)
        first = []  # validated before any I/O; the rest is validated chunk by chunk
        async for index, record in numbered:
            first.append(parser.parse(record, index))
            if len(first) >= management.IMPORT_CHUNK:
                break

        async def work(conn: Conn) -> None:
            async with conn.transaction():
                await management.import_in_transaction(conn, cid, uid, header, parser, first, numbered,
                                                       overwrite, time_limit)

        async def op(conn: Conn) -> None:
            await _guarded(conn, work(conn), time_limit)

        await self._run(op, retry=False, user_id=uid)
        return Conversation(id=cid, user_id=uid, title=header.title,
                            metadata=json.loads(header.metadata_json or "{}"),
                            created_at=header.created_at, updated_at=header.updated_at)


# -- internals -------------------------------------------------------------------------------
async def _numbered(stream: AsyncIterator[Any]) -> AsyncIterator[tuple[int, Any]]:
    index = 0
    async for record in stream:
        yield index, record
        index += 1


async def _owned_count(conn: Conn, *, sql: str, cid: str, uid: str) -> int:
    """The count a statement returns for this user's conversation; no row: not theirs."""
    row = await conn.fetchrow(sql, cid, uid)
    if row is None:
        raise ConversationNotFound()
    count: int = row[0]
    return count


def _message(cid: str, seq: int, created_at: datetime, row: MessageRow) -> Message:
    # The stored message, built the way rows are (the column order of queries.sql); the JSON is
    # decoded from what was sent, so the result is a fresh copy, never the caller's own objects.
    metadata = {} if row.metadata_json is None else json.loads(row.metadata_json)
    return Message.from_record(cid, (  # type: ignore[arg-type]  # a tuple in the row's shape
        seq, row.role, row.content, row.tool_name, row.tool_call_id, row.tool_calls_json,
        metadata, row.token_count, row.idempotency_key, created_at))


def _check_same(stored: Message, row: MessageRow) -> Message:
    if stored.role != row.role or stored.content != row.content:
        raise IdempotencyConflict(row.idempotency_key or "")
    return stored


async def _stored_under_key(conn: Conn, cid: str, uid: str, row: MessageRow) -> Message:
    found = await conn.fetchrow(_GET_MESSAGE_BY_KEY, cid, uid, row.idempotency_key)
    if found is None:
        raise ConversationNotFound()
    return _check_same(Message.from_record(cid, found), row)


async def _save_batch(
    conn: Conn, cid: str, uid: str, rows: list[MessageRow], budget: float, *, set_user: str | None = None
) -> list[Message]:
    keys = [r.idempotency_key for r in rows if r.idempotency_key is not None]
    for attempt in range(_KEYED_BATCH_ATTEMPTS):
        try:
            async with conn.transaction():
                if set_user is not None:
                    await conn.execute(_SET_RLS_USER, set_user)
                return await _save_batch_in_transaction(conn, cid, uid, rows, keys, budget)
        except asyncpg.UniqueViolationError as exc:
            # Another writer stored one of our keys after this transaction's first snapshot.
            if not keys or exc.constraint_name != _IDEMPOTENCY_INDEX or attempt + 1 == _KEYED_BATCH_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


async def _save_batch_in_transaction(
    conn: Conn, cid: str, uid: str, rows: list[MessageRow], keys: list[str], budget: float
) -> list[Message]:
    stored: dict[str, Message] = {}
    if keys:
        found = await conn.fetch(_LOCK_WITH_KEYS, cid, uid, keys)
        if not found:
            raise ConversationNotFound()
        stored = {r[8]: Message.from_record(cid, r) for r in found if r[0] is not None}
    new_rows = [r for r in rows if r.idempotency_key not in stored] if stored else rows
    first_seq = 0
    created_at: datetime | None = None
    if new_rows:
        head = await conn.fetchrow(_RESERVE_SEQ_RANGE, cid, uid, len(new_rows))
        if head is None:
            raise ConversationNotFound()
        first_seq, created_at = head[0], head[1]
        args = [(cid, first_seq + i, *r) for i, r in enumerate(new_rows)]
        # Always bounded: without a timeout asyncpg can wait forever for a socket drain when the
        # server stops reading mid-batch (asyncpg #873, #1265).
        await conn.executemany(_INSERT_MESSAGE_AT, args, timeout=budget)
    result: list[Message] = []
    next_seq = first_seq
    for r in rows:
        if r.idempotency_key is not None and r.idempotency_key in stored:
            result.append(_check_same(stored[r.idempotency_key], r))
        else:
            assert created_at is not None
            result.append(_message(cid, next_seq, created_at, r))
            next_seq += 1
    return result


async def _keyed(conn: Conn, row: MessageRow, statement: Awaitable[T]) -> T:
    """Run a keyed save so that a replayed key can still be looked up afterwards.

    Outside a transaction (the default) the duplicate-key error ends only its own statement. Inside
    one (row_level_security) it would abort the transaction, so the save runs in a savepoint.
    """
    if row.idempotency_key is None or not conn.is_in_transaction():
        return await statement
    async with conn.transaction():
        return await statement


def _as_user(op: Callable[[Conn], Awaitable[T]], user_id: str) -> Callable[[Conn], Awaitable[T]]:
    """``op`` in a transaction that first sets ``convdb.user_id`` (transaction-local) for RLS.

    Transactions ``op`` opens itself become savepoints. If the connection was closed under the op
    (a terminated batch, a lost server) the server has rolled back already: nothing more is sent,
    so the op's own error, or the caller's cancellation, is what propagates.
    """

    async def run(conn: Conn) -> T:
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.execute(_SET_RLS_USER, user_id)
            result = await op(conn)
        except BaseException:
            if not conn.is_closed():
                await transaction.rollback()
            raise
        await transaction.commit()
        return result

    return run


async def _guarded(conn: Conn, work: Awaitable[T], budget: float) -> T:
    """Run a batch so that cancellation, a lost connection or a stall ends it in bounded time.

    The batch runs in its own task, because asyncpg's executemany can otherwise wait forever for a
    socket drain (when the server stops reading mid-batch) and swallows the cancellation meanwhile.
    If the caller is cancelled or the budget runs out, the connection is terminated: the server
    then rolls the transaction back and the socket close wakes the driver. If the server ends the
    connection, the termination listener stops the task at once. Either way the pool replaces the
    connection, so no slot leaks.
    """
    task = asyncio.ensure_future(work)
    lost = False

    def on_terminated(_: object) -> None:
        nonlocal lost
        lost = True
        task.cancel()

    conn.add_termination_listener(on_terminated)
    try:
        return await asyncio.wait_for(asyncio.shield(task), timeout=budget + _CANCEL_GRACE_SECONDS)
    except BaseException as exc:
        stalled = not task.done()
        if stalled or isinstance(exc, TimeoutError):
            with contextlib.suppress(asyncpg.InterfaceError):  # already detached by a lost connection
                conn.terminate()
        if stalled:
            task.cancel()
            await asyncio.wait({task}, timeout=_CANCEL_GRACE_SECONDS)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved here so asyncio does not log it as never retrieved
        if isinstance(exc, TimeoutError):
            raise QueryTimeout(f"batch did not finish within {budget:.1f} s; nothing was stored") from exc
        current = asyncio.current_task()
        caller_cancelled = current is not None and current.cancelling() > 0
        if lost and isinstance(exc, asyncio.CancelledError) and not caller_cancelled:
            raise DatabaseUnavailable(
                "connection lost during the batch; it was rolled back unless the loss came during COMMIT"
            ) from exc
        raise
    finally:
        with contextlib.suppress(asyncpg.InterfaceError):
            conn.remove_termination_listener(on_terminated)

__all__ = ["ConvDBError", "ConversationStore"]
