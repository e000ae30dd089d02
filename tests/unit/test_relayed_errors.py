"""Errors as Citus relays them from a worker: no constraint_name, the shard's names in the message."""

from __future__ import annotations

import asyncpg
import pytest

from convdb.errors import ConstraintViolation, translate
from convdb.ops.messages import is_replayed_key as _is_replayed_key


def _unique(message: str, constraint: str | None = None) -> asyncpg.UniqueViolationError:
    fields = {"M": message, "C": "23505", "S": "ERROR"}
    if constraint is not None:
        fields["n"] = constraint
    error: asyncpg.UniqueViolationError = asyncpg.UniqueViolationError.new(fields)
    return error


@pytest.mark.parametrize(
    ("error", "replayed"),
    [
        (
            _unique(
                'duplicate key value violates unique constraint "messages_idempotency_key"',
                "messages_idempotency_key",
            ),
            True,
        ),
        (_unique('duplicate key value violates unique constraint "messages_pkey"', "messages_pkey"), False),
        # Citus: no constraint_name, the shard's index in the message.
        (_unique('duplicate key value violates unique constraint "messages_idempotency_key_102042"'), True),
        (_unique('duplicate key value violates unique constraint "messages_pkey_102042"'), False),
        (_unique('duplicate key value violates unique constraint "messages_idempotency_key_x"'), False),
        # A constraint_name given wins over the message.
        (_unique('violates unique constraint "messages_idempotency_key"', "other_index"), False),
    ],
)
def test_replayed_key_is_recognised_with_or_without_constraint_name(
    error: asyncpg.UniqueViolationError, replayed: bool
) -> None:
    assert _is_replayed_key(error) is replayed


@pytest.mark.parametrize(
    ("message", "constraint"),
    [
        ('new row for relation "messages_102066" violates check constraint "no_poison_102066"', "no_poison"),
        (
            'new row for relation "messages_102070" violates check constraint "messages_role_known"',
            "messages_role_known",
        ),
        ('new row for relation "messages_102070" violates check constraint "limit_2"', "limit_2"),
        ('duplicate key value violates unique constraint "messages_pkey_102042"', "messages_pkey_102042"),
    ],
)
def test_translate_reads_the_constraint_from_a_relayed_message(message: str, constraint: str) -> None:
    error = asyncpg.CheckViolationError.new({"M": message, "C": "23514", "S": "ERROR"})
    translated = translate(error)
    assert isinstance(translated, ConstraintViolation)
    assert translated.constraint == constraint
