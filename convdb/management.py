"""The multi-statement steps behind ConversationStore's agent and management methods.

Each function runs on one connection the store acquired; the store validates before calling.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, Final, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .errors import ConversationExists, ConversationNotFound, InvalidInput
from .export import ImportHeader, MessageParser
from .records import Message
from .sql import QUERIES
from .validation import MessageRow
from .windows import history_from_records

Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

MAX_SEQ: Final = 2**63 - 1
IMPORT_CHUNK: Final = 1000

_GET_HISTORY_WINDOW: Final = QUERIES["get_history_window"]
_LOCK_CONVERSATION: Final = QUERIES["lock_conversation"]
_ERASE_LIST: Final = QUERIES["erase_list_conversations"]
_ERASE_MESSAGES: Final = QUERIES["erase_messages_chunk"]
_ERASE_LOCK: Final = QUERIES["erase_lock_conversations"]
_ERASE_CONVERSATIONS: Final = QUERIES["erase_conversations"]
_IMPORT_ROW: Final = QUERIES["import_conversation_row"]
_IMPORT_OWNER: Final = QUERIES["import_owner_check"]
_IMPORT_CLEAR: Final = QUERIES["import_clear_messages"]
_IMPORT_MESSAGE: Final = QUERIES["import_message"]
_IMPORT_FINISH: Final = QUERIES["import_finish"]


class Unset(enum.Enum):
    """The type of ``UNSET``: "argument not given", as opposed to None ("set to null")."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.UNSET


def check_budget(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput("max_tokens", f"must be an int or None, got {type(value).__name__}")
    if not 0 <= value <= MAX_SEQ:
        raise InvalidInput("max_tokens", f"must be between 0 and {MAX_SEQ}, got {value}")
    return value


def check_flag(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(field, f"must be a bool, got {type(value).__name__}")
    return value


async def window_until(
    conn: Conn, cid: str, uid: str, seq: int, limit: int, budget: int | None
) -> list[Message]:
    """The trimmed window of at most ``limit`` messages ending at ``seq``, within ``budget`` tokens.

    One round trip (get_history_window); ``seq=MAX_SEQ`` is "up to the newest".
    """
    window = history_from_records(cid, await conn.fetch(_GET_HISTORY_WINDOW, cid, uid, seq, limit, budget))
    if window is None:
        raise ConversationNotFound()
    return window


async def run_fresh(conn: Conn, statement: str, cid: str, uid: str) -> list[asyncpg.Record]:
    """Run a "fresh view" statement (queries.sql explains them): one round trip when nothing races.

    When another writer committed between the statement's snapshot and its lock, the statement
    changes nothing and says so (``fresh`` false); it then runs again inside a transaction that
    holds the conversation row's lock first, so its snapshot is the newest state.
    """
    records = await conn.fetch(statement, cid, uid)
    if not records:
        raise ConversationNotFound()
    if records[0]["fresh"]:
        return records
    async with conn.transaction():
        if await conn.fetchrow(_LOCK_CONVERSATION, cid, uid) is None:
            raise ConversationNotFound()
        records = await conn.fetch(statement, cid, uid)
    if not records:
        raise ConversationNotFound()
    assert records[0]["fresh"], "the conversation row is locked: nothing can change it meanwhile"
    return records


async def next_conversations(conn: Conn, uid: str, after: str, count: int) -> list[str]:
    return [r[0] for r in await conn.fetch(_ERASE_LIST, uid, after, count)]


@dataclasses.dataclass(slots=True)
class ErasureProgress:
    """What one ``delete_user_data`` call has deleted so far, counted as each step commits.

    Kept across the retry of a step whose connection was lost, so the counts include what the
    interrupted attempt had already committed (a retry used to start them again from zero).
    """

    conversations: int = 0
    messages: int = 0


async def erase_conversations(
    conn: Conn, uid: str, ids: Sequence[str], chunk: int, progress: ErasureProgress
) -> None:
    """Delete these conversations of ``uid``: messages ``chunk`` at a time, then the rows.

    Every message chunk commits on its own, so no transaction outlives one chunk; re-running after
    an interruption continues where it stopped. The rows are deleted in a short transaction that
    locks them first, so the messages a concurrent writer added since are counted too. What is
    deleted is added to ``progress`` as it commits (inside a caller's transaction, as under
    row-level security, only once the function is done).
    """
    counted = ErasureProgress() if conn.is_in_transaction() else progress
    targets = list(ids)
    while True:
        deleted: int = await conn.fetchval(_ERASE_MESSAGES, uid, targets, chunk)
        counted.messages += deleted
        if deleted < chunk:
            break
    async with conn.transaction():
        await conn.execute(_ERASE_LOCK, uid, targets)
        row = await conn.fetchrow(_ERASE_CONVERSATIONS, uid, targets)
    assert row is not None  # an aggregate: always one row
    counted.conversations += row["conversations"]
    counted.messages += row["messages"]
    if counted is not progress:
        progress.conversations += counted.conversations
        progress.messages += counted.messages


async def import_in_transaction(
    conn: Conn,
    cid: str,
    uid: str,
    header: ImportHeader,
    parser: MessageParser,
    first: list[tuple[int, MessageRow, datetime]],
    rest: AsyncIterator[tuple[int, Any]],
    replace: bool,
    chunk_timeout: float,
) -> None:
    """Restore one conversation; the caller holds the transaction. ``first`` is pre-validated."""
    row = await conn.fetchrow(
        _IMPORT_ROW, cid, uid, header.title, header.metadata_json, header.next_seq or 1,
        header.created_at, header.updated_at, replace,
    )
    if row is None:
        if await conn.fetchval(_IMPORT_OWNER, cid, uid):
            raise ConversationExists(cid)
        raise ConversationNotFound()
    if not row["created"]:
        await conn.execute(_IMPORT_CLEAR, cid, uid)

    def args(seq: int, record: MessageRow, created_at: datetime) -> tuple[Any, ...]:
        return (cid, seq, *record, created_at, uid)

    chunk = [args(*item) for item in first]
    async for index, record in rest:
        chunk.append(args(*parser.parse(record, index)))
        if len(chunk) >= IMPORT_CHUNK:
            await conn.executemany(_IMPORT_MESSAGE, chunk, timeout=chunk_timeout)
            chunk = []
    if chunk:
        await conn.executemany(_IMPORT_MESSAGE, chunk, timeout=chunk_timeout)
    if header.next_seq is None and parser.last_seq > 0:
        await conn.execute(_IMPORT_FINISH, cid, uid, parser.last_seq + 1)
