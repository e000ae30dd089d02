"""What the package expects of the database schema, and the check that compares the two.

The window rule: a package built for schema ``SCHEMA_VERSION`` (P) runs on a database at version V
with compatibility floor F when V >= P (every migration it needs is applied) and F <= P (the
database still supports it). Inside the window the columns, constraints and indexes the SQL relies
on must be present exactly as expected (extra ones, added by later additive migrations, are fine).

The expectations below are compared, in a test, with the catalog of a database built from
schema.sql, in both directions: what schema.sql creates and the package does not expect fails too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from . import migrations as _migrations
from .errors import SchemaMismatch
from .sql import QUERIES

#: The schema version this package is built for: the last migration it ships.
SCHEMA_VERSION: Final = 9


@dataclass(frozen=True, slots=True)
class Column:
    #: As ``format_type`` prints it.
    type: str
    not_null: bool
    #: As ``pg_get_expr`` prints it; ``None`` when the column has no default.
    default: str | None = None


_TS: Final = "timestamp with time zone"
EXPECTED_COLUMNS: Final[dict[str, Column]] = {
    "convdb_schema_version.singleton": Column("boolean", True, "true"),
    "convdb_schema_version.version": Column("integer", True),
    "convdb_schema_version.applied_at": Column(_TS, True, "now()"),
    "convdb_schema_version.compatible_from": Column("integer", True, "1"),
    "conversations.id": Column("text", True),
    "conversations.user_id": Column("text", True),
    "conversations.title": Column("text", False),
    "conversations.metadata": Column("jsonb", True, "'{}'::jsonb"),
    # Inserts leave next_seq, created_at and updated_at to their defaults.
    "conversations.next_seq": Column("bigint", True, "1"),
    "conversations.created_at": Column(_TS, True, "now()"),
    "conversations.updated_at": Column(_TS, True, "now()"),
    "messages.conversation_id": Column("text", True),
    "messages.seq": Column("bigint", True),
    "messages.role": Column("text", True),
    "messages.content": Column("text", False),
    "messages.tool_name": Column("text", False),
    "messages.tool_call_id": Column("text", False),
    "messages.tool_calls": Column("jsonb", False),
    "messages.metadata": Column("jsonb", True, "'{}'::jsonb"),
    "messages.token_count": Column("integer", True, "0"),
    "messages.idempotency_key": Column("text", False),
    "messages.created_at": Column(_TS, True, "now()"),
    "messages.model": Column("text", False),
    "messages.input_tokens": Column("integer", False),
    "messages.output_tokens": Column("integer", False),
    "messages.cached_tokens": Column("integer", False),
    "messages.reasoning_tokens": Column("integer", False),
    "messages.cost": Column("numeric", False),
    "messages.latency_ms": Column("integer", False),
    "conversation_summaries.conversation_id": Column("text", True),
    "conversation_summaries.through_seq": Column("bigint", True),
    "conversation_summaries.role": Column("text", True, "'system'::text"),
    "conversation_summaries.content": Column("text", True),
    "conversation_summaries.metadata": Column("jsonb", True, "'{}'::jsonb"),
    "conversation_summaries.token_count": Column("integer", True, "0"),
    "conversation_summaries.created_at": Column(_TS, True, "now()"),
    # Branches (0004): set by fork_conversation only.
    "conversations.parent_id": Column("text", False),
    "conversations.forked_at_seq": Column("bigint", False),
    "conversations.root_id": Column("text", False),
    # Retention (0007): every statement filters expired rows; purge_expired deletes them.
    "conversations.expires_at": Column(_TS, False),
    "conversations.ttl": Column("interval", False),
    "conversations.temporary": Column("boolean", True, "false"),
    "conversations.max_messages": Column("integer", False),
    # Feedback (0005).
    "message_feedback.conversation_id": Column("text", True),
    "message_feedback.seq": Column("bigint", True),
    "message_feedback.rating": Column("smallint", True),
    "message_feedback.comment": Column("text", False),
    "message_feedback.tags": Column("text[]", True, "'{}'::text[]"),
    "message_feedback.inherited": Column("boolean", True, "false"),
    "message_feedback.created_at": Column(_TS, True, "now()"),
    "message_feedback.updated_at": Column(_TS, True, "now()"),
    "convdb_user_keys.user_id": Column("text", True),
    "convdb_user_keys.key_id": Column("text", True),
    "convdb_user_keys.master_key_id": Column("text", True),
    "convdb_user_keys.wrapped_key": Column("bytea", True),
    "convdb_user_keys.created_at": Column(_TS, True, "now()"),
}

# As pg_get_constraintdef prints them. The primary keys make seq unique per conversation and the
# conversation id unique; the cascade is what delete_conversation and delete_user_data rely on;
# the CHECKs mirror convdb.validation, so that a client writing directly cannot store what convdb
# refuses; the singleton CHECK keeps the version table at one row.
EXPECTED_CONSTRAINTS: Final[dict[str, str]] = {
    "convdb_schema_version.convdb_schema_version_pkey": "PRIMARY KEY (singleton)",
    "convdb_schema_version.convdb_schema_version_singleton_check": "CHECK (singleton)",
    "conversations.conversations_pkey": "PRIMARY KEY (id)",
    # The row rules (schema version 7): one CHECK per table calling a function of schema.sql (its
    # body is checked below, EXPECTED_FUNCTIONS), NOT VALID as migration 0007 adds them.
    "conversations.conversations_valid": (
        "CHECK (convdb_check_conversation(id, user_id, metadata, next_seq, parent_id, forked_at_seq, root_id)) "
        "NOT VALID"
    ),
    "messages.messages_pkey": "PRIMARY KEY (conversation_id, seq)",
    "messages.messages_conversation_fkey": "FOREIGN KEY (conversation_id) REFERENCES conversations(id) ON DELETE CASCADE",
    "messages.messages_valid": (
        "CHECK (convdb_check_message(seq, role, tool_name, tool_call_id, idempotency_key, tool_calls, metadata, "
        "token_count, model, input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost, latency_ms)) "
        "NOT VALID"
    ),
    "conversation_summaries.conversation_summaries_pkey": "PRIMARY KEY (conversation_id, through_seq)",
    "conversation_summaries.conversation_summaries_conversation_fkey": "FOREIGN KEY (conversation_id) REFERENCES conversations(id) ON DELETE CASCADE",
    "conversation_summaries.conversation_summaries_through_seq_positive": "CHECK ((through_seq >= 1))",
    "conversation_summaries.conversation_summaries_role_known": "CHECK ((role = ANY (ARRAY['system'::text, 'user'::text, 'assistant'::text])))",
    "conversation_summaries.conversation_summaries_metadata_object": "CHECK ((jsonb_typeof(metadata) = 'object'::text))",
    "conversation_summaries.conversation_summaries_token_count_nonnegative": "CHECK ((token_count >= 0))",
    "conversations.conversations_ttl_positive": "CHECK (((ttl IS NULL) OR (ttl > '00:00:00'::interval))) NOT VALID",
    "conversations.conversations_max_messages_positive": "CHECK (((max_messages IS NULL) OR (max_messages > 0))) NOT VALID",
    # The cascade is what keeps pop, clear, delete and erasure working on rated messages.
    "message_feedback.message_feedback_pkey": "PRIMARY KEY (conversation_id, seq)",
    "message_feedback.message_feedback_message_fkey": "FOREIGN KEY (conversation_id, seq) REFERENCES messages(conversation_id, seq) ON DELETE CASCADE",
    "message_feedback.message_feedback_rating_range": "CHECK (((rating >= '-1'::integer) AND (rating <= 1)))",
    "message_feedback.message_feedback_comment_length": "CHECK (((comment IS NULL) OR (length(comment) <= 4000)))",
    "message_feedback.message_feedback_tags_count": "CHECK ((cardinality(tags) <= 16))",
    "convdb_user_keys.convdb_user_keys_pkey": "PRIMARY KEY (user_id)",
    "convdb_user_keys.convdb_user_keys_user_id_length": "CHECK (((length(user_id) >= 1) AND (length(user_id) <= 255)))",
    "convdb_user_keys.convdb_user_keys_key_id_length": "CHECK (((length(key_id) >= 1) AND (length(key_id) <= 64)))",
    "convdb_user_keys.convdb_user_keys_master_key_id_length": "CHECK (((length(master_key_id) >= 1) AND (length(master_key_id) <= 64)))",
}

# As pg_get_indexdef prints them, without "CREATE INDEX name ON table"; " (INVALID)" is appended to
# an index a failed CREATE INDEX CONCURRENTLY left behind. messages_idempotency_key must be unique
# and partial exactly so: ON CONFLICT infers it from the columns and the predicate, and without
# uniqueness a retried save stores a second row. conversations_user_id serves list_conversations
# and delete_user_data (without it both read every user's conversations).
EXPECTED_INDEXES: Final[dict[str, str]] = {
    "convdb_schema_version.convdb_schema_version_pkey": "UNIQUE USING btree (singleton)",
    "conversations.conversations_pkey": "UNIQUE USING btree (id)",
    "conversations.conversations_user_id": "USING btree (user_id, id)",
    "messages.messages_pkey": "UNIQUE USING btree (conversation_id, seq)",
    "messages.messages_idempotency_key": "UNIQUE USING btree (conversation_id, idempotency_key) WHERE (idempotency_key IS NOT NULL)",
    "messages.messages_usage": "USING btree (conversation_id, created_at) WHERE (input_tokens IS NOT NULL)",
    "conversation_summaries.conversation_summaries_pkey": "UNIQUE USING btree (conversation_id, through_seq)",
    # list_conversations(parent_id=...) and (root_id=...) read forks through these.
    "conversations.conversations_forks": "USING btree (parent_id, user_id) WHERE (parent_id IS NOT NULL)",
    "conversations.conversations_branches": "USING btree (root_id, user_id) WHERE (root_id IS NOT NULL)",
    "message_feedback.message_feedback_pkey": "UNIQUE USING btree (conversation_id, seq)",
    # purge_expired lists expired conversations through it (without it: a scan of every row).
    "conversations.conversations_expires": "USING btree (expires_at) WHERE (expires_at IS NOT NULL)",
    "convdb_user_keys.convdb_user_keys_pkey": "UNIQUE USING btree (user_id)",
}

# The functions the row rules call, by signature (as regprocedure prints it): volatility and the md5
# of the body. A body changed in place (CREATE OR REPLACE) would change what the CHECKs enforce
# without changing their definitions, so it is refused like a changed constraint.
EXPECTED_FUNCTIONS: Final[dict[str, str]] = {
    "convdb_check_conversation(text,text,jsonb,bigint,text,bigint,text)": "immutable 04ac49127a44a5911f57927254312042",
    "convdb_check_message(bigint,text,text,text,text,jsonb,jsonb,integer,text,integer,integer,integer,integer,"
    "numeric,integer)": "immutable 5506807efc8d66598ab2979538b4034a",
}

# The delegated functions of schema_citus.sql (docs/citus.md, "The hot write path"), by the same
# signature and digest rule. Optional: a database without them (every single-node one) runs the
# statements of queries.sql; the store calls them only when all five are present with exactly
# these bodies, so that a database distributed by an older schema_citus.sql, or a function edited
# by hand, keeps the statements rather than running code this package was not tested with.
# tests/unit/test_schema_files.py recomputes the digests from schema_citus.sql.
DELEGATED_FUNCTIONS: Final[dict[str, str]] = {
    "convdb_save_message(text,text,text,text,text,text,text,text,integer,text,text,integer,integer,integer,"
    "integer,numeric,integer)": "volatile 76400cd480c7d139a88c88dbaefe6a4f",
    "convdb_save_message_guarded(text,text,text,text,text,text,text,text,integer,text,text,integer,integer,"
    "integer,integer,numeric,integer,bigint)": "volatile f3c4b4975bda9a260453b16e948ca51e",
    "convdb_get_or_create_conversation(text,text,text,text,timestamp with time zone,interval,boolean,boolean,"
    "integer)": "volatile c9a061c549c482c16b77939928c2495a",
    "convdb_save_and_get_history(text,text,text,text,text,text,text,text,integer,text,text,integer,integer,"
    "integer,integer,numeric,integer,integer,bigint,boolean,bigint)": "volatile 7ee63d3d7ef26120b7e9881e713419e2",
    "convdb_save_messages(text,text,bigint,text[],text[],text[],text[],text[],text[],text[],text[],text[],text[],"
    "text[],text[],text[],text[],text[])": "volatile 93a328d9d3fc9bb2f2b654b4800a3b0c",
}

# Constraints created NOT VALID (migration 0007 must not scan the tables under its lock; schema.sql
# does the same so that both give one catalog). A DBA may VALIDATE them later: that form is accepted
# too (pg_get_constraintdef appends " NOT VALID" only to the unvalidated one).
MAY_BE_VALIDATED: Final = frozenset(
    {
        "conversations.conversations_valid",
        "messages.messages_valid",
        "conversations.conversations_ttl_positive",
        "conversations.conversations_max_messages_positive",
    }
)

FRESH_INSTALL: Final = (
    "apply the fresh-install schema: python -m convdb schema | psql -v ON_ERROR_STOP=1 -d <database> -f - "
    "(the same SQL as schema.sql in the convdb sources)"
)


@dataclass(frozen=True, slots=True)
class SchemaReport:
    """What ``check`` found: the recorded version and floor, and every problem in words."""

    #: The schema version this package needs (``SCHEMA_VERSION``).
    package_version: int
    #: The database's schema version; ``None`` when none is recorded.
    version: int | None
    #: The database's compatibility floor (1 on a version-1 database, which predates the column).
    compatible_from: int | None
    #: The migration files the database lacks for this package, in the order to apply them.
    missing_migrations: tuple[str, ...]
    #: Every difference that stops this package from running here, as sentences.
    problems: tuple[str, ...]
    #: Whether the database has schema_citus.sql's delegated functions exactly as this package
    #: expects (``DELEGATED_FUNCTIONS``): the store then calls them on its hot paths.
    delegated: bool = False
    #: The delegated functions found with another body (an older schema_citus.sql, or edited):
    #: not used; running this package's schema_citus.sql again replaces them.
    stale_delegated: tuple[str, ...] = ()

    @property
    def compatible(self) -> bool:
        return not self.problems

    def message(self) -> str:
        """The ``SchemaMismatch`` text: the problems and how to fix them."""
        return "convdb schema mismatch: " + "; ".join(self.problems) + "."


def _structure_problems(catalog: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    columns: dict[str, dict[str, Any]] = catalog.get("columns") or {}
    for name, want in EXPECTED_COLUMNS.items():
        got = columns.get(name)
        if got is None:
            problems.append(f"column {name} is missing")
            continue
        if got["type"] != want.type:
            problems.append(f"column {name} is {got['type']}, expected {want.type}")
        if bool(got["not_null"]) != want.not_null:
            problems.append(
                f"column {name} is {'NOT NULL' if got['not_null'] else 'nullable'}, "
                f"expected {'NOT NULL' if want.not_null else 'nullable'}"
            )
        if got["default"] != want.default:
            problems.append(
                f"column {name} has default {got['default'] or '(none)'}, expected {want.default or '(none)'}"
            )
    for kind, key, expected in (
        ("constraint", "constraints", EXPECTED_CONSTRAINTS),
        ("index", "indexes", EXPECTED_INDEXES),
    ):
        found: dict[str, str] = catalog.get(key) or {}
        for name, definition in expected.items():
            table, _, short = name.partition(".")
            if name not in found:
                problems.append(f"{kind} {short} on {table} is missing (expected {definition})")
            elif found[name] != definition and not (
                name in MAY_BE_VALIDATED and found[name] == definition.removesuffix(" NOT VALID")
            ):
                problems.append(f"{kind} {short} on {table} is {found[name]}, expected {definition}")
    functions: dict[str, str] = catalog.get("functions") or {}
    for signature, want_body in EXPECTED_FUNCTIONS.items():
        if signature not in functions:
            problems.append(f"function {signature} is missing")
        elif functions[signature] != want_body:
            problems.append(
                f"function {signature} is not this package's (volatility and body digest {functions[signature]}, "
                f"expected {want_body})"
            )
    return problems


def assess(
    catalog: dict[str, Any],
    version_row: dict[str, Any] | None,
    *,
    package_version: int | None = None,
    migrations: tuple[_migrations.Migration, ...] | None = None,
) -> SchemaReport:
    """Compare what the database holds with what a package built for ``package_version`` needs.

    ``package_version`` and ``migrations`` default to this package's (looked up at call time, so
    that tests can stand in for a later package).
    """
    wanted = SCHEMA_VERSION if package_version is None else package_version
    known = _migrations.MIGRATIONS if migrations is None else migrations
    version = None if version_row is None else version_row.get("version")
    floor = None if version_row is None else version_row.get("compatible_from", 1)
    problems: list[str] = []
    missing: tuple[str, ...] = ()
    if version is None:
        problems.extend(_structure_problems(catalog))
        problems.append("no schema version is recorded (table convdb_schema_version); " + FRESH_INSTALL)
    elif version < wanted:
        missing = tuple(m.filename for m in known if version < m.version <= wanted)
        problems.append(
            f"the database is at schema version {version} and this package needs version {wanted}: "
            f"apply, in order, {', '.join(missing) or '(no migration known for that range)'} with: "
            f"python -m convdb migrations --from {version} | psql -v ON_ERROR_STOP=1 -d <database> -f -"
        )
    elif floor is not None and floor > wanted:
        problems.append(
            f"the database is at schema version {version} and supports packages built for schema "
            f"{floor} or later; this package is built for schema {wanted}: it is too old, upgrade convdb"
        )
    else:
        drift = _structure_problems(catalog)
        if drift:
            drift[-1] += (
                f" (the database records schema version {version} but differs from it; compare "
                "with python -m convdb schema and repair it, or rebuild it)"
            )
        problems.extend(drift)
    functions: dict[str, str] = catalog.get("functions") or {}
    delegated = all(functions.get(s) == want for s, want in DELEGATED_FUNCTIONS.items())
    stale = tuple(s for s, want in DELEGATED_FUNCTIONS.items() if s in functions and functions[s] != want)
    return SchemaReport(wanted, version, floor, missing, tuple(problems), delegated, stale)


async def inspect(
    conn: asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record],
) -> SchemaReport:
    """Read the catalog (and the version row when its table exists) and assess them.

    Two statements: the version row cannot be read in the catalog statement, which must also run on
    a database without the version table (a statement naming a missing table fails to parse, and
    query_to_xml, the one built-in that runs a query from text, needs libxml, which the embedded
    server lacks).
    """
    catalog: dict[str, Any] = json.loads(await conn.fetchval(QUERIES["schema_catalog"]))
    version_row: dict[str, Any] | None = None
    if "convdb_schema_version.version" in (catalog.get("columns") or {}):
        text = await conn.fetchval(QUERIES["schema_version_row"])
        version_row = None if text is None else json.loads(text)
    return assess(catalog, version_row)


async def verify(conn: PoolConnectionProxy[asyncpg.Record]) -> SchemaReport:
    """The report of a database this package runs on; ``SchemaMismatch`` otherwise."""
    report = await inspect(conn)
    if not report.compatible:
        raise SchemaMismatch(report.message())
    return report
