"""Opaque keyset cursors, shared by listing and search: base64url of a small JSON array that ends
with a digest over its content and the query's context (user, filters), so a cursor altered or
replayed against another query is refused instead of silently paging something else."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from typing import Any, Final

from .errors import InvalidInput

VERSION: Final = 1
# A cursor is a few dozen bytes; anything much longer was not made here and is not decoded.
_MAX_CURSOR_CHARS: Final = 2048


def digest(*parts: str) -> str:
    """A short SHA-256 over ``parts`` (separated, so ("ab", "c") and ("a", "bc") differ)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return h.hexdigest()[:16]


def seal(fields: list[Any], context: str) -> str:
    """The cursor for ``fields`` (JSON values) under ``context``."""
    body = [VERSION, *fields]
    raw = json.dumps([*body, digest(json.dumps(body), context)], separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def unseal(
    cursor: object, context: str, *, shape: Callable[[list[Any]], bool], made_by: str, altered: str
) -> list[Any]:
    """The fields of a cursor ``seal`` made under ``context``; ``InvalidInput`` otherwise.

    ``shape`` checks the fields' count and types; ``made_by`` names the method whose cursors
    these are, ``altered`` what a cursor with a wrong digest belongs to instead.
    """
    if not isinstance(cursor, str):
        raise InvalidInput("cursor", f"must be a str returned as next_cursor, got {type(cursor).__name__}")
    refused = InvalidInput("cursor", f"is not a cursor returned by {made_by}")
    if len(cursor) > _MAX_CURSOR_CHARS:
        raise refused
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise refused from exc
    if (
        not isinstance(value, list)
        or len(value) < 2
        or value[0] != VERSION
        or not isinstance(value[-1], str)
        or not shape(value[1:-1])
    ):
        raise refused
    if value[-1] != digest(json.dumps(value[:-1]), context):
        raise InvalidInput("cursor", f"was altered, or belongs to {altered}")
    return value[1:-1]
