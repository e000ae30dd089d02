"""Client-side encryption of the values that hold user text (opt-in: ``encryption=`` at connect()).

What is encrypted: message ``content``, ``tool_calls`` and ``metadata``; conversation ``title``
and ``metadata``. Each with AES-256-GCM under the owning user's data key (``convdb.keys``), a
random 96-bit nonce per value, and associated data that binds the value to its place: the
conversation id, the message seq and the column (conversation id and column for a conversation's
fields). A value copied to another row, seq, column or conversation fails authentication.

What is stored, in the existing columns (no new columns, so every statement stays as it is):

- ``content``, ``title`` (text): ``cdb1:<data key id>:<base64 of nonce, ciphertext and tag>``
- ``tool_calls`` (jsonb array): ``["cdb1:..."]``, the JSON text of the list, encrypted
- ``metadata`` (jsonb object): ``{"enc": "cdb1:..."}``, the JSON text of the object, encrypted

NULL content, tool_calls and title stay NULL (so a DBA sees which are absent); roles, seqs, token
counts, tool names, tool call ids, idempotency keys and times stay plaintext (windows, budgets,
listing and idempotency work in SQL). Lengths are visible: a ciphertext is the UTF-8 length plus
a fixed overhead, times 4/3.

Reading is strict: a value that is not a token (plaintext, or a wrong shape), names a data key
other than the user's, or fails authentication raises ``DecryptionError`` / ``KeyNotFound``;
never garbage, never the stored text as is.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Final

from .errors import DecryptionError, KeyNotFound
from .records import Conversation, Message, Summary
from .validation import MessageRow

PREFIX: Final = "cdb1:"
"""Every encrypted value starts with this (format version 1)."""
ENC_FIELD: Final = "enc"
"""The one key of an encrypted metadata object."""
_NONCE_BYTES: Final = 12
_PREFIX_LEN: Final = len(PREFIX)
_DATA_KEY_ID_BYTES: Final = 8

_new = object.__new__


def aesgcm(secret: bytes) -> Any:
    """``cryptography``'s AES-GCM for ``secret``: imported here, so convdb runs without the
    ``encryption`` extra as long as encryption stays off."""
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise ImportError(
            "encryption needs the cryptography package: pip install 'convdb[encryption]'"
        ) from exc
    return AESGCM(secret)


def _invalid_tag() -> type[Exception]:
    from cryptography.exceptions import InvalidTag

    return InvalidTag


def new_data_key_id() -> str:
    """A random data key id (16 hex digits): stored in every value the key encrypts."""
    return os.urandom(_DATA_KEY_ID_BYTES).hex()


def new_data_key() -> bytes:
    return os.urandom(32)  # AES-256


def wrap_context(user_id: str, data_key_id: str) -> bytes:
    """What a wrapped data key is bound to: a wrapped key copied to another user does not unwrap."""
    return json.dumps(["convdb-data-key-v1", user_id, data_key_id]).encode()


# Associated data: a kind tag, the conversation id prefixed by its length (so no id can run into
# the fields after it, whatever characters it holds), the seq, the column. Built per value on
# every read, so kept to one f-string (JSON here cost a third of a message's decryption).
def message_aad(cid: str, seq: int, column: str) -> bytes:
    return f"m{len(cid)}:{cid}:{seq}:{column}".encode()


def conversation_aad(cid: str, column: str) -> bytes:
    return f"c{len(cid)}:{cid}::{column}".encode()


def summary_aad(cid: str, through_seq: int, column: str) -> bytes:
    # Its own tag: a summary's content moved into the message at the same seq (or back) fails.
    return f"s{len(cid)}:{cid}:{through_seq}:{column}".encode()


class DataKey:
    """One user's data key, unwrapped, with its id. Encrypts and decrypts single values."""

    __slots__ = ("_aead", "key_id")

    def __init__(self, key_id: str, secret: bytes) -> None:
        self.key_id = key_id
        self._aead = aesgcm(secret)

    def seal(self, plaintext: str, aad: bytes) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), aad)
        return f"{PREFIX}{self.key_id}:{base64.b64encode(nonce + sealed).decode()}"


def token_key_id(token: object) -> str | None:
    """The data key id a stored value names; None when it is not an encrypted value."""
    if not isinstance(token, str) or not token.startswith(PREFIX):
        return None
    key_id, sep, _ = token[len(PREFIX) :].partition(":")
    return key_id if sep else None


def open_token(key: DataKey | None, token: object, aad: bytes, what: str) -> str:
    if type(token) is not str or not token.startswith(PREFIX):
        raise DecryptionError(f"{what} is not an encrypted value (encryption is on: no plaintext fallback)")
    key_id, sep, body = token[_PREFIX_LEN:].partition(":")
    if not sep:
        raise DecryptionError(f"{what} is not an encrypted value (encryption is on: no plaintext fallback)")
    if key is None or key.key_id != key_id:
        raise KeyNotFound(key_id, "data key")
    try:
        raw = binascii.a2b_base64(body, strict_mode=True)
        plain: bytes = key._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], aad)
        return plain.decode()
    except (_invalid_tag(), binascii.Error, ValueError):
        raise DecryptionError(
            f"{what} does not decrypt under data key {key_id!r}: altered, or moved from another "
            "row, column or conversation",
            key_id,
        ) from None


def _seal_json_array(key: DataKey, text: str | None, aad: bytes) -> str | None:
    return None if text is None else json.dumps([key.seal(text, aad)])


def _seal_json_object(key: DataKey, text: str | None, aad: bytes) -> str:
    return json.dumps({ENC_FIELD: key.seal("{}" if text is None else text, aad)})


def _open_array(key: DataKey | None, value: Any, aad: bytes, what: str) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        value = json.loads(value)
    token = value[0] if isinstance(value, list) and len(value) == 1 else None
    return json.loads(open_token(key, token, aad, what))


def _open_object(key: DataKey | None, value: Any, aad: bytes, what: str) -> Any:
    if isinstance(value, str):
        value = json.loads(value)
    token = value.get(ENC_FIELD) if isinstance(value, dict) and len(value) == 1 else None
    return json.loads(open_token(key, token, aad, what))


@dataclass(frozen=True, slots=True)
class Codec:
    """Seals values for one conversation of one user, and opens what comes back.

    ``key`` is None when the user has no data key (never wrote, or shredded): opening any value
    then raises ``KeyNotFound`` naming the key id the value carries. Handed to the operations
    that need seqs before they encrypt (a batch reserves its seq range first).
    """

    cid: str
    key: DataKey | None

    def _key(self) -> DataKey:
        assert self.key is not None, "writes fetch (or create) the user's data key first"
        return self.key

    def seal_row(self, seq: int, row: MessageRow) -> MessageRow:
        key, cid = self._key(), self.cid
        return row._replace(
            content=None if row.content is None else key.seal(row.content, message_aad(cid, seq, "content")),
            tool_calls_json=_seal_json_array(key, row.tool_calls_json, message_aad(cid, seq, "tool_calls")),
            metadata_json=_seal_json_object(key, row.metadata_json, message_aad(cid, seq, "metadata")),
        )

    def seal_title(self, title: str | None) -> str | None:
        return None if title is None else self._key().seal(title, conversation_aad(self.cid, "title"))

    def seal_metadata(self, metadata_json: str | None) -> str:
        return _seal_json_object(self._key(), metadata_json, conversation_aad(self.cid, "metadata"))

    def seal_summary(self, through_seq: int, content: str, metadata_json: str | None) -> tuple[str, str]:
        key, cid = self._key(), self.cid
        return (
            key.seal(content, summary_aad(cid, through_seq, "content")),
            _seal_json_object(key, metadata_json, summary_aad(cid, through_seq, "metadata")),
        )

    def open_summary(self, summary: Summary) -> Summary:
        cid, through, key = summary.conversation_id, summary.through_seq, self.key
        where = f"summary through {through} of conversation {cid!r}"
        return dataclasses.replace(
            summary,
            content=open_token(
                key, summary.content, summary_aad(cid, through, "content"), f"{where}: content"
            ),
            metadata=_open_object(
                key, summary.metadata, summary_aad(cid, through, "metadata"), f"{where}: metadata"
            ),
        )

    def open_message(self, message: Message) -> Message:
        cid, seq, key = message.conversation_id, message.seq, self.key
        if message.summary_through is not None:  # a summarized window's summary (schema 3)
            return self._open_summary_message(message)
        where = f"message {seq} of conversation {cid!r}"
        opened: Message = _new(Message)
        for name in Message.__slots__:
            object.__setattr__(opened, name, getattr(message, name))
        content = message.content
        if content is not None:
            content = open_token(key, content, message_aad(cid, seq, "content"), f"{where}: content")
        object.__setattr__(opened, "content", content)
        object.__setattr__(
            opened,
            "tool_calls",
            _open_array(key, message.tool_calls, message_aad(cid, seq, "tool_calls"), f"{where}: tool_calls"),
        )
        object.__setattr__(
            opened,
            "metadata",
            _open_object(key, message.metadata, message_aad(cid, seq, "metadata"), f"{where}: metadata"),
        )
        return opened

    def _open_summary_message(self, message: Message) -> Message:
        cid, key = message.conversation_id, self.key
        through = message.summary_through
        assert through is not None
        where = f"summary through {through} of conversation {cid!r}"
        content = message.content
        if content is not None:
            content = open_token(key, content, summary_aad(cid, through, "content"), f"{where}: content")
        metadata = _open_object(
            key, message.metadata, summary_aad(cid, through, "metadata"), f"{where}: metadata"
        )
        return dataclasses.replace(message, content=content, metadata=metadata)

    def open_title(self, cid: str, title: str | None) -> str | None:
        if title is None:
            return None
        return open_token(self.key, title, conversation_aad(cid, "title"), f"title of conversation {cid!r}")

    def open_metadata(self, cid: str, metadata: Any) -> Any:
        where = f"metadata of conversation {cid!r}"
        return _open_object(self.key, metadata, conversation_aad(cid, "metadata"), where)

    def open_conversation(self, conversation: Conversation) -> Conversation:
        # replace(): fields other features add to Conversation are carried over as they are.
        cid = conversation.id
        return dataclasses.replace(
            conversation,
            title=self.open_title(cid, conversation.title),
            metadata=self.open_metadata(cid, conversation.metadata),
        )


class KeyCache:
    """Unwrapped data keys by user, each kept ``seconds`` (a bounded LRU of ``size`` users).

    The cache is what makes encryption cost no round trip in the steady state; its time bound is
    how long another process can still use a key after ``shred_user`` destroyed it (the rows are
    purged right after, so what it could read is what is left of them meanwhile).
    """

    __slots__ = ("_entries", "seconds", "size")

    def __init__(self, seconds: float, size: int) -> None:
        self.seconds = seconds
        self.size = size
        self._entries: dict[str, tuple[DataKey, float]] = {}

    def get(self, user_id: str, now: float) -> DataKey | None:
        entry = self._entries.get(user_id)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._entries[user_id]
            return None
        return entry[0]

    def put(self, user_id: str, key: DataKey, now: float) -> None:
        self._entries.pop(user_id, None)
        self._entries[user_id] = (key, now + self.seconds)
        while len(self._entries) > self.size:
            del self._entries[next(iter(self._entries))]

    def drop(self, user_id: str) -> None:
        self._entries.pop(user_id, None)

    def clear(self) -> None:
        self._entries.clear()


__all__ = [
    "PREFIX",
    "Codec",
    "DataKey",
    "KeyCache",
    "conversation_aad",
    "message_aad",
    "new_data_key",
    "new_data_key_id",
    "open_token",
    "summary_aad",
    "token_key_id",
    "wrap_context",
]
