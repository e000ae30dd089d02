"""convdb's exceptions, and the one place where driver errors become them.

Every error convdb raises is a ``ConvDBError``. Errors that come from asyncpg or the socket are
translated by ``translate()`` alone (called from the store's connection seam), with the original
kept as ``__cause__`` for debugging.
"""

from __future__ import annotations

import asyncio

import asyncpg


class ConvDBError(Exception):
    """Base class of every error raised by convdb."""


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


class DatabaseUnavailable(ConvDBError):
    """The connection to PostgreSQL failed or was lost.

    A write interrupted this way may or may not have committed; retry it only with an
    idempotency key.
    """


class PoolTimeout(ConvDBError, TimeoutError):
    """No pooled connection became free within the acquire timeout."""


class QueryTimeout(ConvDBError, TimeoutError):
    """A statement ran past its time limit (statement_timeout or the client-side timeout)."""


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


def translate(exc: BaseException) -> BaseException:
    """Map a driver or socket error to a ``ConvDBError``; leave anything else unchanged.

    The caller raises the result ``from exc``. ``ConvDBError``s, cancellation and programming
    errors pass through untouched.
    """
    if isinstance(exc, ConvDBError | asyncio.CancelledError):
        return exc
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
    if isinstance(exc, asyncpg.exceptions.UndefinedTableError | asyncpg.exceptions.UndefinedColumnError):
        return SchemaMismatch(
            f"{exc}; apply schema.sql with: psql -v ON_ERROR_STOP=1 -d <database> -f schema.sql"
        )
    if isinstance(exc, asyncpg.exceptions.IntegrityConstraintViolationError):
        constraint = getattr(exc, "constraint_name", None)
        return ConstraintViolation(f"the database refused the write ({constraint}): {exc}", constraint)
    if isinstance(exc, asyncpg.exceptions.PostgresError | asyncpg.exceptions.InterfaceError):
        return ConvDBError(f"database error: {exc}")
    return exc
