"""Messages: append (one, a batch, a turn), history windows, pop, count.

Positional row access (``r[0]``, ``head[1]``) follows the column order of the statements in
``queries.sql``; tests/core/test_core_column_order.py pins it for every message-returning
statement (it is the order ``Message.from_record`` reads, measured to matter on history reads).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Final, TypeVar

import asyncpg

from ..crypto import Codec
from ..errors import ConcurrentUpdate, ConversationNotFound, IdempotencyConflict
from ..records import Message, summary_or_message_from_row
from ..sql import QUERIES
from ..validation import MAX_SEQ, MessageRow
from ..windows import history_from_records, summarized_from_records, trim_orphan_tool_results
from . import Begin, Conn, begin
from . import retention as retention_ops
from .conversations import owned_count, run_fresh
from .forms import STATEMENTS, Forms

T = TypeVar("T")

_RESERVE_SEQ_RANGE: Final = QUERIES["reserve_seq_range"]
_RESERVE_SEQ_RANGE_GUARDED: Final = QUERIES["reserve_seq_range_guarded"]
_LOCK_WITH_KEYS: Final = QUERIES["lock_conversation_with_keys"]
_INSERT_MESSAGE_AT: Final = QUERIES["insert_message_at"]
_GET_MESSAGE_BY_KEY: Final = QUERIES["get_message_by_key"]
_GET_HISTORY: Final = QUERIES["get_history"]
_GET_HISTORY_WINDOW: Final = QUERIES["get_history_window"]
_GET_HISTORY_SUMMARIZED: Final = QUERIES["get_history_summarized"]
_COUNT_MESSAGES: Final = QUERIES["count_messages"]
_POP_LAST_MESSAGE: Final = QUERIES["pop_last_message"]

IDEMPOTENCY_INDEX: Final = "messages_idempotency_key"
# The index's name as PostgreSQL reports it, or as Citus does: suffixed with the shard id
# ("messages_idempotency_key_102041"), and not always in constraint_name.
_IDEMPOTENCY_NAME: Final = re.compile(rf"\b{IDEMPOTENCY_INDEX}(?:_\d+)?\b")
_IDEMPOTENCY_DETAIL: Final = "Key (conversation_id, idempotency_key)="
# A keyed batch whose key another writer stored between our snapshot and our lock is re-run once
# with a fresh snapshot; more than that would mean keys are being reused in a loop.
_KEYED_BATCH_ATTEMPTS: Final = 3


def is_replayed_key(exc: asyncpg.UniqueViolationError) -> bool:
    """Whether this unique violation is the idempotency-key index refusing a key already stored.

    ``constraint_name`` when the server sends it; otherwise the index name in the server's message
    or the key columns in its detail (Citus relays a shard's error without constraint_name, its
    index name suffixed with the shard id). The detail's values are never searched: they hold
    caller text. Any other unique violation is a real constraint error.
    """
    name = exc.constraint_name
    if name is not None:
        return _IDEMPOTENCY_NAME.fullmatch(name) is not None
    if _IDEMPOTENCY_NAME.search(exc.message or "") is not None:
        return True
    return (exc.detail or "").startswith(_IDEMPOTENCY_DETAIL)


def _stored(cid: str, seq: int, created_at: datetime, row: MessageRow) -> Message:
    # The stored message, built the way rows are (the column order of queries.sql); the JSON is
    # decoded from what was sent, so the result is a fresh copy, never the caller's own objects.
    metadata = {} if row.metadata_json is None else json.loads(row.metadata_json)
    message = Message.from_record(
        cid,
        (  # type: ignore[arg-type]  # a tuple in the row's shape
            seq,
            row.role,
            row.content,
            row.tool_name,
            row.tool_call_id,
            row.tool_calls_json,
            metadata,
            row.token_count,
            row.idempotency_key,
            created_at,
            *row[8:],  # the usage columns
        ),
    )
    return message


def _check_same(stored: Message, row: MessageRow) -> Message:
    if stored.role != row.role or stored.content != row.content:
        raise IdempotencyConflict(row.idempotency_key or "")
    return stored


async def _stored_under_key(conn: Conn, cid: str, uid: str, row: MessageRow) -> Message:
    found = await conn.fetchrow(_GET_MESSAGE_BY_KEY, cid, uid, row.idempotency_key)
    if found is None:
        raise ConversationNotFound()
    return _check_same(Message.from_record(cid, found), row)


async def _keyed(conn: Conn, row: MessageRow, statement: Callable[[], Awaitable[T]]) -> T:
    """Run a keyed save so that a replayed key can still be looked up afterwards.

    Outside a transaction (the default) the duplicate-key error ends only its own statement. Inside
    one (row_level_security) it would abort the transaction, so the save runs in a savepoint.
    ``statement`` is called, not passed as a coroutine, so that a cancellation during the
    savepoint's start leaves no coroutine behind never awaited.
    """
    if row.idempotency_key is None or not conn.is_in_transaction():
        return await statement()
    async with begin(conn):
        return await statement()


async def _refused(conn: Conn, cid: str, uid: str, row: MessageRow, expected: int, last_seq: int) -> Message:
    """A guarded save found another newest message. A retry of a keyed save that was stored the
    first time is a replay, not a conflict: the stored message comes back."""
    if row.idempotency_key is not None:
        found = await conn.fetchrow(_GET_MESSAGE_BY_KEY, cid, uid, row.idempotency_key)
        if found is not None:
            return _check_same(Message.from_record(cid, found), row)
    raise ConcurrentUpdate(expected, last_seq)


async def save_guarded(
    conn: Conn, cid: str, uid: str, row: MessageRow, expected_last_seq: int, forms: Forms = STATEMENTS
) -> Message:
    """Append one message only if the newest stored seq is ``expected_last_seq`` (one statement,
    or one delegated call, which reads under the row lock and so is always fresh)."""
    statement = forms.save_message_guarded
    try:
        records = await _keyed(
            conn,
            row,
            lambda: run_fresh(conn, statement, cid, uid, args=(*row, expected_last_seq)),
        )
    except asyncpg.UniqueViolationError as exc:
        if row.idempotency_key is None or not is_replayed_key(exc):
            raise
        return await _stored_under_key(conn, cid, uid, row)
    head = records[0]
    if head[0] is None:
        return await _refused(conn, cid, uid, row, expected_last_seq, head["last_seq"])
    return _stored(cid, head[0], head[1], row)


async def save(conn: Conn, cid: str, uid: str, row: MessageRow, forms: Forms = STATEMENTS) -> Message:
    """Append one message (one statement, or one delegated call); a replayed idempotency key
    returns the stored one."""
    try:
        stored = await _keyed(conn, row, lambda: conn.fetchrow(forms.save_message, cid, uid, *row))
    except asyncpg.UniqueViolationError as exc:
        if row.idempotency_key is None or not is_replayed_key(exc):
            raise
        return await _stored_under_key(conn, cid, uid, row)
    if stored is None:
        raise ConversationNotFound()
    return _stored(cid, stored[0], stored[1], row)


async def save_batch(
    conn: Conn,
    cid: str,
    uid: str,
    rows: list[MessageRow],
    *,
    time_budget: float,
    expected_last_seq: int | None = None,
    codec: Codec | None = None,
    begin: Begin = begin,
) -> list[Message]:
    """Append a batch in one transaction (opened with ``begin``); ``time_budget`` bounds its inserts.

    With ``expected_last_seq`` the range is reserved only if the newest stored seq is that one
    (``ConcurrentUpdate`` otherwise, and nothing is written).

    With ``codec`` (encryption on) each row is sealed once its seq is reserved (the seq is part
    of the associated data), and messages already stored under a key are opened before they are
    compared and returned."""
    keys = [r.idempotency_key for r in rows if r.idempotency_key is not None]
    for attempt in range(_KEYED_BATCH_ATTEMPTS):
        try:
            async with begin(conn):
                return await _save_batch_in_transaction(
                    conn, cid, uid, rows, keys, time_budget, expected_last_seq, codec
                )
        except asyncpg.UniqueViolationError as exc:
            # Another writer stored one of our keys after this transaction's first snapshot.
            if not keys or not is_replayed_key(exc) or attempt + 1 == _KEYED_BATCH_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


async def save_batch_delegated(
    conn: Conn,
    cid: str,
    uid: str,
    rows: list[MessageRow],
    *,
    statement: str,
    time_budget: float,
    expected_last_seq: int | None = None,
    begin: Begin = begin,
) -> list[Message]:
    """``save_batch`` as one delegated call (``Forms.save_messages``; no encryption): the same
    checks in the same order and the same result, the rows sent as one array per column.

    The call runs in a transaction (``begin``: BEGIN, the call, COMMIT), though one statement is
    atomic on its own: a bare call that the caller gave up on (the batch's time bound, a
    cancellation, a lost connection) would still commit on the worker once it got there, and
    "nothing was stored" would be false. Committed by the client, it is rolled back instead, as
    the statements' transaction is. Citus delegates it inside the transaction block
    (schema_citus.sql gives the function ``force_delegation``).
    """
    # Every column as text[] (the function casts the numbers back): see schema_citus.sql.
    columns = [[None if v is None else str(v) for v in column] for column in zip(*rows, strict=True)]
    async with begin(conn):
        records = await conn.fetch(statement, cid, uid, expected_last_seq, *columns, timeout=time_budget)
    if not records:
        raise ConversationNotFound()
    head = records[0]
    if head["refused"]:
        assert expected_last_seq is not None
        raise ConcurrentUpdate(expected_last_seq, head["last_seq"])
    if head["conflict_key"] is not None:
        raise IdempotencyConflict(head["conflict_key"])
    by_place = {r["ord"]: r for r in records}
    result: list[Message] = []
    for place, row in enumerate(rows, start=1):
        r = by_place[place]
        result.append(
            Message.from_record(cid, r) if r["replayed"] else _stored(cid, r[0], r["created_at"], row)
        )
    return result


async def _reserve(
    conn: Conn, cid: str, uid: str, count: int, expected_last_seq: int | None
) -> asyncpg.Record:
    if expected_last_seq is None:
        head = await conn.fetchrow(_RESERVE_SEQ_RANGE, cid, uid, count)
        if head is None:
            raise ConversationNotFound()
        return head
    head = await conn.fetchrow(_RESERVE_SEQ_RANGE_GUARDED, cid, uid, count, expected_last_seq)
    if head is None:
        raise ConversationNotFound()
    if not head["fresh"]:
        # The statement locked the row (until commit) before finding its snapshot stale: run again,
        # this time with a snapshot taken under the lock.
        head = await conn.fetchrow(_RESERVE_SEQ_RANGE_GUARDED, cid, uid, count, expected_last_seq)
        assert head is not None
        assert head["fresh"], "the conversation row is locked by this transaction"
    if head[0] is None:
        raise ConcurrentUpdate(expected_last_seq, head["last_seq"])
    return head


async def _save_batch_in_transaction(
    conn: Conn,
    cid: str,
    uid: str,
    rows: list[MessageRow],
    keys: list[str],
    time_budget: float,
    expected_last_seq: int | None = None,
    codec: Codec | None = None,
) -> list[Message]:
    stored: dict[str, Message] = {}
    if keys:
        found = await conn.fetch(_LOCK_WITH_KEYS, cid, uid, keys)
        if not found:
            raise ConversationNotFound()
        stored = {r[8]: Message.from_record(cid, r) for r in found if r[0] is not None}
        if codec is not None:
            stored = {k: codec.open_message(m) for k, m in stored.items()}
    new_rows = [r for r in rows if r.idempotency_key not in stored] if stored else rows
    first_seq = 0
    created_at: datetime | None = None
    if new_rows:
        head = await _reserve(conn, cid, uid, len(new_rows), expected_last_seq)
        first_seq, created_at = head[0], head[1]
        if codec is None:
            args = [(cid, first_seq + i, *r) for i, r in enumerate(new_rows)]
        else:
            args = [(cid, first_seq + i, *codec.seal_row(first_seq + i, r)) for i, r in enumerate(new_rows)]
        # Always bounded: without a timeout asyncpg can wait forever for a socket drain when the
        # server stops reading mid-batch (asyncpg #873, #1265).
        await conn.executemany(_INSERT_MESSAGE_AT, args, timeout=time_budget)
        cap = head["max_messages"]
        if cap is not None and first_seq + len(new_rows) - 1 > cap:
            # The cap, in this transaction (which holds the row's lock): one more round trip,
            # only for capped conversations whose cap this batch exceeds.
            await retention_ops.cap(conn, cid, uid, first_seq + len(new_rows) - 1 - cap)
    result: list[Message] = []
    next_seq = first_seq
    for r in rows:
        if r.idempotency_key is not None and r.idempotency_key in stored:
            result.append(_check_same(stored[r.idempotency_key], r))
        else:
            assert created_at is not None
            result.append(_stored(cid, next_seq, created_at, r))
            next_seq += 1
    return result


async def window_until(
    conn: Conn,
    cid: str,
    uid: str,
    seq: int,
    limit: int,
    token_budget: int | None,
    *,
    trim: bool = True,
    summarized: bool = False,
) -> list[Message]:
    """The window of at most ``limit`` messages ending at ``seq``, within ``token_budget``, trimmed
    unless ``trim`` is False.

    One round trip (get_history_window, or get_history_summarized); ``seq=MAX_SEQ`` is "up to the
    newest".
    """
    if summarized:
        records = await conn.fetch(_GET_HISTORY_SUMMARIZED, cid, uid, seq, limit, token_budget)
        window = summarized_from_records(cid, records, trim=trim)
    else:
        records = await conn.fetch(_GET_HISTORY_WINDOW, cid, uid, seq, limit, token_budget)
        window = history_from_records(cid, records, trim=trim)
    if window is None:
        raise ConversationNotFound()
    return window


async def history(
    conn: Conn,
    cid: str,
    uid: str,
    limit: int,
    token_budget: int | None,
    trim: bool = True,
    summarized: bool = False,
) -> list[Message]:
    """The newest ``limit`` messages (within ``token_budget`` tokens when given), trimmed unless
    ``trim`` is False; with ``summarized``, the summarized window."""
    if token_budget is not None or summarized:
        return await window_until(
            conn, cid, uid, MAX_SEQ, limit, token_budget, trim=trim, summarized=summarized
        )
    window = history_from_records(cid, await conn.fetch(_GET_HISTORY, cid, uid, limit), trim=trim)
    if window is None:
        raise ConversationNotFound()
    return window


async def save_and_get_history(
    conn: Conn,
    cid: str,
    uid: str,
    row: MessageRow,
    limit: int,
    token_budget: int | None,
    summarized: bool = False,
    expected_last_seq: int | None = None,
    forms: Forms = STATEMENTS,
) -> tuple[Message, list[Message]]:
    """Save one message and return it with the window that ends at it (one statement, or one
    delegated call, which is never stale)."""
    args = (*row, limit, token_budget, summarized, expected_last_seq)
    statement = forms.save_and_get_history
    try:
        if expected_last_seq is None:
            records = await _keyed(conn, row, lambda: conn.fetch(statement, cid, uid, *args))
        else:
            records = await _keyed(conn, row, lambda: run_fresh(conn, statement, cid, uid, args=args))
    except asyncpg.UniqueViolationError as exc:
        if row.idempotency_key is None or not is_replayed_key(exc):
            raise
        stored = await _stored_under_key(conn, cid, uid, row)
        return stored, await window_until(
            conn, cid, uid, stored.seq, limit, token_budget, summarized=summarized
        )
    if not records:
        raise ConversationNotFound()
    head = records[0]
    if not head["written"]:
        assert expected_last_seq is not None
        stored = await _refused(conn, cid, uid, row, expected_last_seq, head["last_seq"])
        return stored, await window_until(
            conn, cid, uid, stored.seq, limit, token_budget, summarized=summarized
        )
    saved = next(Message.from_record(cid, r) for r in records if r["is_new"])
    if head["stale"]:
        return saved, await window_until(
            conn, cid, uid, saved.seq, limit, token_budget, summarized=summarized
        )
    if summarized:
        window = [summary_or_message_from_row(cid, r) for r in records if r["in_window"]]
    else:
        window = [Message.from_record(cid, r) for r in records if r["in_window"]]
    return saved, trim_orphan_tool_results(window)


async def pop_last(conn: Conn, cid: str, uid: str) -> Message | None:
    """Delete and return the newest message; None when the conversation is empty."""
    records = await run_fresh(conn, _POP_LAST_MESSAGE, cid, uid)
    return None if records[0][0] is None else Message.from_record(cid, records[0])


async def count(conn: Conn, cid: str, uid: str) -> int:
    return await owned_count(conn, _COUNT_MESSAGES, cid, uid)
