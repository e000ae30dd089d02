"""Master keys for encryption at rest: the ``KeyProvider`` interface and two providers.

convdb encrypts with envelope encryption (``convdb.crypto``): every user has a random 256-bit
*data key* that encrypts their values, and the data key is stored only *wrapped* (encrypted) by a
*master key*, in the ``convdb_user_keys`` table. A ``KeyProvider`` holds the master keys: it wraps
new data keys under its active key and unwraps stored ones under whichever key wrapped them, so
several master keys are readable at once and one is active for writing. ``rotate`` re-wraps the
data keys under the active key; an old master key can be retired once nothing is left under it.

A KMS is plugged in by implementing ``KeyProvider`` with the KMS's encrypt/decrypt calls (the
master key then never leaves the KMS; see docs/data-protection.md). ``StaticKeys`` holds the keys
in memory (tests, or keys your own secret store hands the process); ``StaticKeys.from_env`` reads
them from environment variables.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from typing import Any, Final, Protocol, runtime_checkable

from .crypto import aesgcm
from .errors import DecryptionError, InvalidInput, KeyNotFound

KEY_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""What a master key id may be: it is stored next to every wrapped data key and printed in errors."""

KEY_BYTES: Final = 32  # AES-256
_NONCE_BYTES: Final = 12


def check_key_id(key_id: object, field: str = "key_id") -> str:
    if not isinstance(key_id, str) or KEY_ID.fullmatch(key_id) is None:
        raise InvalidInput(field, f"must be 1 to 64 characters of A-Z a-z 0-9 . _ -, got {key_id!r}")
    return key_id


@runtime_checkable
class KeyProvider(Protocol):
    """Wraps and unwraps data keys under master keys. Implement it to plug in a KMS.

    ``context`` is associated data the wrapping must be bound to (the user and data key id): a
    wrapped key copied to another user's row then fails to unwrap. A KMS adapter passes it as the
    KMS's encryption context / additional authenticated data.
    """

    @property
    def active_key_id(self) -> str:
        """The master key new data keys are wrapped under (and ``rotate`` re-wraps to)."""
        ...

    async def wrap(self, data_key: bytes, context: bytes) -> tuple[str, bytes]:
        """Wrap ``data_key`` under the active master key: ``(master key id, wrapped bytes)``."""
        ...

    async def unwrap(self, key_id: str, wrapped: bytes, context: bytes) -> bytes:
        """The data key wrapped under master key ``key_id``. Raises ``KeyNotFound`` when the
        provider does not hold ``key_id`` and ``DecryptionError`` when the bytes do not unwrap."""
        ...


class StaticKeys:
    """Master keys held in memory: ``{key id: 32 bytes}``, one of them ``active``.

    Wraps with AES-256-GCM (a random 96-bit nonce per wrap, ``context`` as associated data).
    """

    __slots__ = ("_active", "_keys")

    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        if not isinstance(keys, Mapping) or not keys:
            raise InvalidInput("keys", "must be a non-empty mapping of key id to 32 bytes")
        parsed: dict[str, Any] = {}
        for key_id, secret in keys.items():
            check_key_id(key_id)
            if not isinstance(secret, bytes) or len(secret) != KEY_BYTES:
                raise InvalidInput("keys", f"key {key_id!r} must be {KEY_BYTES} bytes (AES-256)")
            parsed[key_id] = aesgcm(secret)
        if active not in parsed:
            raise InvalidInput("active", f"{active!r} is not one of the keys")
        self._keys = parsed
        self._active = active

    @classmethod
    def from_env(cls, prefix: str = "CONVDB_", environ: Mapping[str, str] | None = None) -> StaticKeys:
        """Keys from ``{prefix}MASTER_KEYS`` ("id:base64,id:base64", each key 32 bytes) and
        ``{prefix}ACTIVE_KEY`` (an id among them). Raises ``InvalidInput`` naming the variable."""
        env = os.environ if environ is None else environ
        spec = env.get(f"{prefix}MASTER_KEYS")
        active = env.get(f"{prefix}ACTIVE_KEY")
        if not spec:
            raise InvalidInput(f"{prefix}MASTER_KEYS", "is not set (expected 'id:base64,id:base64')")
        if not active:
            raise InvalidInput(f"{prefix}ACTIVE_KEY", "is not set (expected one of the key ids)")
        keys: dict[str, bytes] = {}
        for item in spec.split(","):
            key_id, sep, encoded = item.strip().partition(":")
            try:
                secret = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                secret = b""
            if not sep or not secret:
                raise InvalidInput(f"{prefix}MASTER_KEYS", f"entry for {key_id!r} is not 'id:base64'")
            keys[key_id] = secret
        return cls(keys, active)

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    @property
    def active_key_id(self) -> str:
        return self._active

    async def wrap(self, data_key: bytes, context: bytes) -> tuple[str, bytes]:
        nonce = os.urandom(_NONCE_BYTES)
        return self._active, nonce + self._keys[self._active].encrypt(nonce, data_key, context)

    async def unwrap(self, key_id: str, wrapped: bytes, context: bytes) -> bytes:
        aead = self._keys.get(key_id)
        if aead is None:
            raise KeyNotFound(key_id, "master key")
        try:
            secret: bytes = aead.decrypt(wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:], context)
            return secret
        except Exception as exc:
            from cryptography.exceptions import InvalidTag

            if not isinstance(exc, InvalidTag):
                raise
            raise DecryptionError(
                f"a data key wrapped under master key {key_id!r} does not unwrap with it "
                "(wrong key material, or the wrapped key was altered or moved)",
                key_id,
            ) from None


__all__ = ["KEY_BYTES", "KeyProvider", "StaticKeys", "check_key_id"]
