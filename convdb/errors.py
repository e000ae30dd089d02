"""convdb's exceptions, and the one place where driver errors become them.

Every error convdb raises is a ``ConvDBError``. Errors that come from asyncpg or the socket are
translated by ``translate()`` alone (called from the store's connection seam), with the original
kept as ``__cause__`` for debugging.
"""

from __future__ import annotations

import asyncio
import re
from typing import Final

import asyncpg


class ConvDBError(Exception):
    """Base class of every error raised by convdb.

    ``sqlstate``: the server's SQLSTATE code when the error came from PostgreSQL (for example
    ``"23505"``), else None.
    """

    sqlstate: str | None = None


class ConversationNotFound(ConvDBError, LookupError):
    """No conversation with this id belongs to this user.

    Raised identically for an unknown id and for an id owned by another user, so that a caller
    cannot probe which ids exist.
    """

    def __init__(self) -> None:
        super().__init__("conversation not found")


class InvalidInput(ConvDBError, ValueError):
    """An argument was refused before anything was sent to the database.

    ``field`` names the argument; ``index`` is the position of the message in a batch.
    """

    def __init__(self, field: str, problem: str, *, index: int | None = None) -> None:
        where = f"messages[{index}].{field}" if index is not None else field
        super().__init__(f"{where}: {problem}")
        self.field = field
        self.problem = problem
        self.index = index


class IdempotencyConflict(ConvDBError):
    """An idempotency key was reused for a message whose role or content differs from the stored one."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"idempotency key {key!r} is already stored with a different role or content; "
            "use a new key for a new message"
        )
        self.key = key


class ConcurrentUpdate(ConvDBError):
    """A guarded write (``expected_last_seq=``) found another newest message: nothing was written.

    ``last_seq`` is the seq of the conversation's newest stored message when the write was refused
    (0: none). Re-read the history, decide again, and retry with ``expected_last_seq=last_seq``.
    """

    def __init__(self, expected_last_seq: int, last_seq: int) -> None:
        super().__init__(
            f"the conversation's newest message is seq {last_seq}, not the expected {expected_last_seq}: "
            "another writer got there first; nothing was written"
        )
        self.expected_last_seq = expected_last_seq
        self.last_seq = last_seq


class ConversationExists(ConvDBError):
    """``import_conversation`` found a conversation of this user under the id (use ``replace=True``)."""

    def __init__(self, conversation_id: str) -> None:
        super().__init__(
            f"conversation {conversation_id!r} already exists; pass replace=True to overwrite it "
            "or conversation_id= to import under another id"
        )
        self.conversation_id = conversation_id


class MessageNotFound(ConvDBError, LookupError):
    """The conversation is the caller's, but holds no message with this seq (never, or no longer:
    popped, cleared). Raised only once ownership is established: for another user's conversation
    the caller gets ``ConversationNotFound``."""

    def __init__(self, seq: int) -> None:
        super().__init__(f"no message with seq {seq} in this conversation")
        self.seq = seq


class SchemaMismatch(ConvDBError):
    """The database schema is not the one this package was built for."""


class UnsupportedIsolation(SchemaMismatch):
    """The database's default transaction isolation is not READ COMMITTED.

    convdb opens every transaction of its own at READ COMMITTED, but its single-statement calls
    run in the server's default isolation, and under REPEATABLE READ or SERIALIZABLE concurrent
    writes to one conversation fail. ``verify_schema`` (run by ``connect``) raises this, naming
    the setting to change.
    """


class DatabaseUnavailable(ConvDBError):
    """The connection to PostgreSQL failed or was lost.

    A write interrupted this way may or may not have committed; retry it only with an
    idempotency key.
    """


class PoolTimeout(ConvDBError, TimeoutError):
    """No pooled connection became free within the acquire timeout."""


class QueryTimeout(ConvDBError, TimeoutError):
    """A statement ran past its time limit: statement_timeout, lock_timeout or the client-side timeout."""


class TransientError(ConvDBError):
    """The server aborted the call because it conflicted with a concurrent transaction.

    A deadlock (SQLSTATE 40P01) or a serialization failure (40001). The server rolled the
    statement or transaction back before reporting it, so nothing of the call was committed and
    calling again is safe, with or without an idempotency key. convdb does not retry these itself:
    they mean contention the caller may want to see (back off, then retry).
    """


class WrongEventLoop(ConvDBError, RuntimeError):
    """The store was called from an event loop that does not own its pool, and cannot serve it.

    asyncpg connections belong to the loop that opened them. A call from another loop is served
    through the owning loop while that loop runs in another thread; this is raised, before the
    pool is touched, when the owning loop is stopped or closed, when it does not take the call
    within ``acquire_timeout`` (it is blocked), or when it stops during the call.
    """


class DecryptionError(ConvDBError):
    """A stored value could not be decrypted: wrong key, a value moved from another row or
    column, a tampered or truncated ciphertext, or a plaintext value where encryption expects
    ciphertext. ``key_id`` names the key the value says it was encrypted under (None when the
    value carries none). convdb never returns undecryptable text and never falls back to plaintext.
    """

    def __init__(self, message: str, key_id: str | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id


class KeyNotFound(DecryptionError, LookupError):
    """The key a value (or a wrapped data key) names is not available: a master key the key
    provider does not hold, or a user's data key that was destroyed (``shred_user``)."""

    def __init__(self, key_id: str, what: str = "key") -> None:
        super().__init__(f"{what} {key_id!r} is not available", key_id)


class ConstraintViolation(ConvDBError):
    """The database refused a write that convdb's validation let through."""

    def __init__(self, message: str, constraint: str | None) -> None:
        super().__init__(message)
        self.constraint = constraint


_CONNECTION_ERRORS = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    ConnectionError,
    OSError,
)


# Citus relays a worker's error without constraint_name; the message still names the constraint,
# and the shard's relation: 'new row for relation "messages_102066" violates check constraint
# "no_poison_102066"' (a constraint added after distribution carries the shard id; one defined
# before, like messages_role_known, does not). The suffix is removed only when it is the
# relation's, so a constraint named like "foo_2" keeps its name.
_CONSTRAINT_IN_MESSAGE: Final = re.compile(r'(?:relation "[^"]*?(_[0-9]+)")?[^"]*constraint "([^"]+)"')


def _constraint_in_message(message: str) -> str | None:
    """The constraint a relayed (Citus) error names, without the shard suffix."""
    found = _CONSTRAINT_IN_MESSAGE.search(message)
    if found is None:
        return None
    shard_suffix, name = found.group(1), found.group(2)
    if shard_suffix and name.endswith(shard_suffix):
        name = name[: -len(shard_suffix)]
    return name


def translate(exc: BaseException) -> BaseException:
    """Map a driver or socket error to a ``ConvDBError``; leave anything else unchanged.

    The caller raises the result ``from exc``. ``ConvDBError``s, cancellation and programming
    errors pass through untouched. A ``ConvDBError`` made from a server error carries its
    ``sqlstate``.
    """
    if isinstance(exc, ConvDBError | asyncio.CancelledError):
        return exc
    translated = _translate(exc)
    if isinstance(translated, ConvDBError):
        translated.sqlstate = getattr(exc, "sqlstate", None)
    return translated


_RLS_CONFLICT: Final = "violates row-level security policy (USING expression)"


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, asyncpg.exceptions.InsufficientPrivilegeError) and _RLS_CONFLICT in str(exc):
        # Row-level security's check of the row an upsert would update (ON CONFLICT DO UPDATE: the
        # policy's USING on the existing row). convdb's upserts of a conversation
        # (get_or_create_conversation_locked, import_conversation_row) filter another user's row
        # out in their WHERE; PostgreSQL 16 evaluates that WHERE first and returns no row, while
        # 15 (15.20, and so Citus 13.2 on it) checks the policy first and raises this. Either way
        # the id is another user's: the same answer as for an unknown id.
        return ConversationNotFound()
    if isinstance(exc, asyncpg.exceptions.LockNotAvailableError):
        # 55P03: lock_timeout ran out (convdb never uses NOWAIT, the other source of this code).
        return QueryTimeout(f"gave up waiting for a lock (lock_timeout): {exc}")
    if isinstance(exc, asyncpg.exceptions.DeadlockDetectedError | asyncpg.exceptions.SerializationError):
        return TransientError(
            f"aborted by a conflict with a concurrent transaction; nothing of this "
            f"call was committed, it can be retried: {exc}"
        )
    if isinstance(exc, asyncpg.exceptions.QueryCanceledError):
        return QueryTimeout(f"statement cancelled by the server: {exc}")
    if isinstance(exc, TimeoutError):
        return QueryTimeout("statement did not complete within its timeout")
    if isinstance(exc, _CONNECTION_ERRORS):
        return DatabaseUnavailable(f"lost or could not open a connection to PostgreSQL: {exc}")
    if isinstance(exc, asyncpg.exceptions.InterfaceError) and "connection" in str(exc).lower():
        return DatabaseUnavailable(f"connection unusable: {exc}")
    if isinstance(exc, asyncpg.exceptions.InternalClientError) and "another operation" in str(exc):
        # A pooled connection whose server went away while it sat idle (a restart's shutdown
        # message arrives as an error outside any query) is left in a state asyncpg refuses to use.
        # Nothing was sent; the pool replaces the connection on release.
        return DatabaseUnavailable(f"connection unusable after the server closed it: {exc}")
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        # Any other protocol state asyncpg did not expect (e.g. a connection closed under a
        # running statement): the connection is unusable, and the call's outcome unknown.
        return DatabaseUnavailable(f"connection in an unexpected protocol state: {exc}")
    if isinstance(exc, asyncpg.exceptions.UndefinedTableError | asyncpg.exceptions.UndefinedColumnError):
        return SchemaMismatch(
            f"{exc}; apply schema.sql with: psql -v ON_ERROR_STOP=1 -d <database> -f schema.sql"
        )
    if isinstance(exc, asyncpg.exceptions.IntegrityConstraintViolationError):
        constraint = getattr(exc, "constraint_name", None) or _constraint_in_message(str(exc))
        return ConstraintViolation(f"the database refused the write ({constraint}): {exc}", constraint)
    if isinstance(exc, asyncpg.exceptions.PostgresError | asyncpg.exceptions.InterfaceError):
        return ConvDBError(f"database error: {exc}")
    return exc
