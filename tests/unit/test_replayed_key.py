"""The one predicate for "this unique violation is a replayed idempotency key".

PostgreSQL names the index in ``constraint_name``; Citus relays a shard's error with the index
name suffixed by the shard id, and not always in ``constraint_name`` (measured on Citus 13.2), so
the predicate also reads the server's message and the detail's key columns, never the detail's
values (caller text).
"""

from __future__ import annotations

import asyncpg
import pytest

from convdb.ops.messages import is_replayed_key

DETAIL = "Key (conversation_id, idempotency_key)=(c1, k1) already exists."


def violation(
    *, constraint: str | None, message: str, detail: str | None = None
) -> asyncpg.UniqueViolationError:
    fields = {"S": "ERROR", "C": "23505", "M": message}
    if constraint is not None:
        fields["n"] = constraint
    if detail is not None:
        fields["D"] = detail
    error = asyncpg.UniqueViolationError.new(fields)
    assert isinstance(error, asyncpg.UniqueViolationError)
    return error


def _says(name: str) -> str:
    return f'duplicate key value violates unique constraint "{name}"'


@pytest.mark.parametrize(
    "error",
    [
        violation(
            constraint="messages_idempotency_key", message=_says("messages_idempotency_key"), detail=DETAIL
        ),
        violation(
            constraint="messages_idempotency_key_102041", message=_says("messages_idempotency_key_102041")
        ),
        violation(constraint=None, message=_says("messages_idempotency_key_102041")),
        violation(constraint=None, message="duplicate key value violates a unique constraint", detail=DETAIL),
    ],
    ids=["postgres", "citus-shard-name", "no-constraint-name", "detail-columns-only"],
)
def test_replayed_key_is_recognised(error: asyncpg.UniqueViolationError) -> None:
    assert is_replayed_key(error)


@pytest.mark.parametrize(
    "error",
    [
        violation(
            constraint="messages_pkey",
            message=_says("messages_pkey"),
            detail="Key (conversation_id, seq)=(c1, 3) already exists.",
        ),
        violation(
            constraint=None,
            message=_says("messages_pkey_102041"),
            detail="Key (conversation_id, seq)=(messages_idempotency_key, 3) already exists.",
        ),
        violation(
            constraint="messages_idempotency_key_length", message=_says("messages_idempotency_key_length")
        ),
        violation(constraint="conversations_pkey", message=_says("conversations_pkey")),
    ],
    ids=["pkey", "pkey-with-lookalike-value", "lookalike-name", "other-table"],
)
def test_other_unique_violations_are_not_replays(error: asyncpg.UniqueViolationError) -> None:
    assert not is_replayed_key(error)
