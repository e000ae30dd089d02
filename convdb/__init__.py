"""convdb: agent conversations in PostgreSQL, with handwritten SQL on an asyncpg pool."""

from ._version import __version__
from .agent import build_message_array, message_to_dict, to_chat_message
from .errors import (
    ConcurrentUpdate,
    ConstraintViolation,
    ConvDBError,
    ConversationExists,
    ConversationNotFound,
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidInput,
    PoolTimeout,
    QueryTimeout,
    SchemaMismatch,
    TransientError,
    UnsupportedIsolation,
    WrongEventLoop,
)
from .pool import init_connection
from .records import (
    Conversation,
    ErasureCounts,
    Message,
    Page,
    Role,
    Summary,
    Usage,
    UsageReport,
    UsageTotals,
)
from .schema_check import SCHEMA_VERSION
from .store import ConversationStore
from .validation import (
    DEFAULT_MAX_CONTENT_BYTES,
    DEFAULT_MAX_METADATA_BYTES,
    DEFAULT_MAX_TITLE_BYTES,
    DEFAULT_MAX_TOOL_CALLS_BYTES,
    MAX_HISTORY_LIMIT,
    UNSET,
    estimate_tokens,
)

__all__ = [
    "DEFAULT_MAX_CONTENT_BYTES",
    "DEFAULT_MAX_METADATA_BYTES",
    "DEFAULT_MAX_TITLE_BYTES",
    "DEFAULT_MAX_TOOL_CALLS_BYTES",
    "MAX_HISTORY_LIMIT",
    "SCHEMA_VERSION",
    "UNSET",
    "ConcurrentUpdate",
    "ConstraintViolation",
    "ConvDBError",
    "Conversation",
    "ConversationExists",
    "ConversationNotFound",
    "ConversationStore",
    "DatabaseUnavailable",
    "ErasureCounts",
    "IdempotencyConflict",
    "InvalidInput",
    "Message",
    "Page",
    "PoolTimeout",
    "QueryTimeout",
    "Role",
    "SchemaMismatch",
    "Summary",
    "TransientError",
    "UnsupportedIsolation",
    "Usage",
    "UsageReport",
    "UsageTotals",
    "WrongEventLoop",
    "__version__",
    "build_message_array",
    "estimate_tokens",
    "init_connection",
    "message_to_dict",
    "to_chat_message",
]
