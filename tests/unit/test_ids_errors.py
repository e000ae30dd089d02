"""Time-ordered ids and the single error-translation seam."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from convdb.errors import (
    ConstraintViolation,
    ConvDBError,
    ConversationNotFound,
    DatabaseUnavailable,
    InvalidInput,
    QueryTimeout,
    SchemaMismatch,
    translate,
)
from convdb.ids import new_conversation_id, uuid7


def test_uuid7_version_variant_and_order() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert ids == sorted(ids), "ids made in a burst keep creation order"
    assert len(set(ids)) == len(ids)


def test_new_conversation_id_is_uuid_text() -> None:
    cid = new_conversation_id()
    assert str(uuid.UUID(cid)) == cid


def test_not_found_reveals_nothing_and_is_lookup_error() -> None:
    err = ConversationNotFound()
    assert isinstance(err, LookupError) and isinstance(err, ConvDBError)
    assert str(err) == "conversation not found"


def test_invalid_input_is_value_error() -> None:
    err = InvalidInput("content", "too long", index=3)
    assert isinstance(err, ValueError) and isinstance(err, ConvDBError)
    assert (err.field, err.index) == ("content", 3)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"), QueryTimeout),
        (TimeoutError(), QueryTimeout),
        (asyncpg.exceptions.ConnectionDoesNotExistError("gone"), DatabaseUnavailable),
        (asyncpg.exceptions.AdminShutdownError("terminating connection"), DatabaseUnavailable),
        (ConnectionResetError(), DatabaseUnavailable),
        (asyncpg.exceptions.UndefinedTableError('relation "messages" does not exist'), SchemaMismatch),
        (asyncpg.exceptions.CheckViolationError("check"), ConstraintViolation),
        (asyncpg.exceptions.DataError("bad"), ConvDBError),
    ],
)
def test_translate_maps_driver_errors(exc: BaseException, expected: type[ConvDBError]) -> None:
    out = translate(exc)
    assert type(out) is expected


@pytest.mark.parametrize("exc", [ConversationNotFound(), asyncio.CancelledError(), KeyError("x")])
def test_translate_passes_other_errors_through(exc: BaseException) -> None:
    assert translate(exc) is exc
