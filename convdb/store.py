"""ConversationStore: the facade agent servers call, one method per use case.

Each method validates its input before any I/O, then runs the statements named in
``sql/queries.sql`` on one pooled connection. Ownership is checked by those statements, in SQL.
Driver errors become ``ConvDBError``s in exactly one place: ``_Connection.__aexit__``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Final, TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from . import schema_check
from .errors import (
    ConvDBError,
    ConversationNotFound,
    DatabaseUnavailable,
    IdempotencyConflict,
    PoolTimeout,
    QueryTimeout,
    translate,
)
from .ids import new_conversation_id
from .pool import create_pool
from .records import Conversation, JSONValue, Message
from .sql import QUERIES
from .validation import (
    DEFAULT_MAX_CONTENT_BYTES,
    MessageRow,
    TokenCounter,
    check_id,
    check_limit,
    check_text,
    encode_json,
    estimate_tokens,
    prepare_batch,
    prepare_message,
)

T = TypeVar("T")
Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

_GET_OR_CREATE: Final = QUERIES["get_or_create_conversation"]
_GET_CONVERSATION: Final = QUERIES["get_conversation"]
_SAVE_MESSAGE: Final = QUERIES["save_message"]
_RESERVE_SEQ_RANGE: Final = QUERIES["reserve_seq_range"]
_LOCK_WITH_KEYS: Final = QUERIES["lock_conversation_with_keys"]
_INSERT_MESSAGE_AT: Final = QUERIES["insert_message_at"]
_GET_MESSAGE_BY_KEY: Final = QUERIES["get_message_by_key"]
_GET_HISTORY: Final = QUERIES["get_history"]

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
            self._conn = await self._pool.acquire(timeout=self._timeout)
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
    - ``count_tokens``: maps text to a token count, stored per message when the caller gives none.
    - ``acquire_timeout``: seconds to wait for a pooled connection before ``PoolTimeout``.
    - ``batch_timeout`` + ``batch_timeout_per_mib``: the bound on a ``save_messages`` call, scaled
      to its payload. The bound is what keeps a stalled batch from waiting forever.
    - ``retry_reads``: retry a read once when its connection was lost (safe: reads change nothing).
    - ``retry_keyed_writes``: retry a write once when its connection was lost, if every message
      carries an idempotency key (the key makes the retry exactly-once).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
        count_tokens: TokenCounter = estimate_tokens,
        acquire_timeout: float | None = 30.0,
        batch_timeout: float = 30.0,
        batch_timeout_per_mib: float = 2.0,
        max_batch_size: int = 10_000,
        retry_reads: bool = True,
        retry_keyed_writes: bool = True,
        _owns_pool: bool = False,
    ) -> None:
        self._pool = pool
        self._owns_pool = _owns_pool
        self.max_content_bytes = max_content_bytes
        self.count_tokens = count_tokens
        self.acquire_timeout = acquire_timeout
        self.batch_timeout = batch_timeout
        self.batch_timeout_per_mib = batch_timeout_per_mib
        self.max_batch_size = max_batch_size
        self.retry_reads = retry_reads
        self.retry_keyed_writes = retry_keyed_writes

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
        count_tokens: TokenCounter = estimate_tokens,
        acquire_timeout: float | None = 30.0,
        batch_timeout: float = 30.0,
        batch_timeout_per_mib: float = 2.0,
        max_batch_size: int = 10_000,
        retry_reads: bool = True,
        retry_keyed_writes: bool = True,
        **pool_options: Any,
    ) -> ConversationStore:
        """Create a pool (owned by the store) and check the schema unless ``verify_schema=False``."""
        try:
            pool = await create_pool(dsn, min_size=min_size, max_size=max_size,
                                     statement_cache_size=statement_cache_size, **pool_options)
        except Exception as exc:
            raise translate(exc) from exc
        store = cls(pool, max_content_bytes=max_content_bytes, count_tokens=count_tokens,
                    acquire_timeout=acquire_timeout, batch_timeout=batch_timeout,
                    batch_timeout_per_mib=batch_timeout_per_mib, max_batch_size=max_batch_size,
                    retry_reads=retry_reads, retry_keyed_writes=retry_keyed_writes, _owns_pool=True)
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

    async def _run(self, op: Callable[[Conn], Awaitable[T]], *, retry: bool) -> T:
        """Run ``op`` on a pooled connection, once more on a fresh one if the first was lost."""
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
        if title is not None:
            check_text(title, "title")
        meta_json = encode_json(metadata, "metadata", kind=dict)

        async def op(conn: Conn) -> Conversation:
            row = await conn.fetchrow(_GET_OR_CREATE, cid, uid, title, meta_json)
            if row is None:
                # Either another user owns the id, or a concurrent creator committed after our
                # statement's snapshot: a fresh read tells which.
                row = await conn.fetchrow(_GET_CONVERSATION, cid, uid)
                if row is None:
                    raise ConversationNotFound()
            return Conversation.from_record(row)

        return await self._run(op, retry=self.retry_reads)

    async def get_conversation(self, conversation_id: str, user_id: str) -> Conversation:
        cid = check_id(conversation_id, "conversation_id")
        uid = check_id(user_id, "user_id")

        async def op(conn: Conn) -> Conversation:
            row = await conn.fetchrow(_GET_CONVERSATION, cid, uid)
            if row is None:
                raise ConversationNotFound()
            return Conversation.from_record(row)

        return await self._run(op, retry=self.retry_reads)

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
            max_content_bytes=self.max_content_bytes, count_tokens=self.count_tokens,
        )

        async def op(conn: Conn) -> Message:
            try:
                stored = await conn.fetchrow(_SAVE_MESSAGE, cid, uid, *row)
            except asyncpg.UniqueViolationError as exc:
                if row.idempotency_key is None or exc.constraint_name != _IDEMPOTENCY_INDEX:
                    raise
                return await _stored_under_key(conn, cid, uid, row)
            if stored is None:
                raise ConversationNotFound()
            return _message(cid, stored[0], stored[1], row)

        return await self._run(op, retry=self.retry_keyed_writes and row.idempotency_key is not None)

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
                             count_tokens=self.count_tokens, max_batch=self.max_batch_size)
        payload = sum(len(r.content or "") + len(r.tool_calls_json or "") + len(r.metadata_json or "")
                      for r in rows)
        budget = self.batch_timeout + self.batch_timeout_per_mib * payload / 2**20
        keyed = all(r.idempotency_key is not None for r in rows)

        async def op(conn: Conn) -> list[Message]:
            return await _guarded(conn, _save_batch(conn, cid, uid, rows, budget), budget)

        return await self._run(op, retry=self.retry_keyed_writes and keyed)

    async def get_history(self, conversation_id: str, user_id: str, *, limit: int = 50) -> list[Message]:
        """The newest ``limit`` messages, oldest first, in one ownership-checked round trip.

        Raises ``ConversationNotFound`` for an unknown or foreign id; returns [] for an empty one.
        """
        cid = check_id(conversation_id, "conversation_id")
        uid = check_id(user_id, "user_id")
        n = check_limit(limit)

        async def op(conn: Conn) -> list[Message]:
            records = await conn.fetch(_GET_HISTORY, cid, uid, n)
            if not records:
                raise ConversationNotFound()
            if records[0][0] is None:
                return []
            return [Message.from_record(cid, r) for r in records]

        return await self._run(op, retry=self.retry_reads)


# -- internals -------------------------------------------------------------------------------
def _decode(text: str | None) -> Any:
    # A fresh copy of what was stored, not an alias of the caller's (mutable) argument.
    return None if text is None else json.loads(text)


def _message(cid: str, seq: int, created_at: datetime, row: MessageRow) -> Message:
    return Message(
        conversation_id=cid, seq=seq, role=row.role,  # type: ignore[arg-type]  # validated
        content=row.content, tool_name=row.tool_name, tool_call_id=row.tool_call_id,
        tool_calls=_decode(row.tool_calls_json), metadata=_decode(row.metadata_json) or {},
        created_at=created_at, token_count=row.token_count, idempotency_key=row.idempotency_key,
    )


def _check_same(stored: Message, row: MessageRow) -> Message:
    if stored.role != row.role or stored.content != row.content:
        raise IdempotencyConflict(row.idempotency_key or "")
    return stored


async def _stored_under_key(conn: Conn, cid: str, uid: str, row: MessageRow) -> Message:
    found = await conn.fetchrow(_GET_MESSAGE_BY_KEY, cid, uid, row.idempotency_key)
    if found is None:
        raise ConversationNotFound()
    return _check_same(Message.from_record(cid, found), row)


async def _save_batch(conn: Conn, cid: str, uid: str, rows: list[MessageRow], budget: float) -> list[Message]:
    keys = [r.idempotency_key for r in rows if r.idempotency_key is not None]
    for attempt in range(_KEYED_BATCH_ATTEMPTS):
        try:
            async with conn.transaction():
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


async def _guarded(conn: Conn, work: Awaitable[T], budget: float) -> T:
    """Run a batch so that cancellation or a stall ends it in bounded time, with nothing committed.

    The batch runs in its own task. If the caller is cancelled, or the batch outlives its budget,
    the connection is terminated: the server then rolls the transaction back, and the socket close
    wakes asyncpg from any wait for a drain that would never come. The pool replaces the
    connection on release, so no slot leaks.
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.wait_for(asyncio.shield(task), timeout=budget + _CANCEL_GRACE_SECONDS)
    except BaseException as exc:
        stalled = not task.done()
        if stalled or isinstance(exc, TimeoutError):
            conn.terminate()
        if stalled:
            task.cancel()
            await asyncio.wait({task}, timeout=_CANCEL_GRACE_SECONDS)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved here so asyncio does not log it as never retrieved
        if isinstance(exc, TimeoutError):
            raise QueryTimeout(f"batch did not finish within {budget:.1f} s; nothing was stored") from exc
        raise

__all__ = ["ConvDBError", "ConversationStore"]
