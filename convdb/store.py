"""ConversationStore: the facade agent servers call, one method per use case.

Each method validates its input before any I/O (``convdb.validation``), names the retry policy of
what it does, and hands one data-access operation (``convdb.ops``) to the runner
(``convdb.runner``), which acquires a connection, applies row-level security, retries and
translates driver errors. Ownership is checked by the statements themselves, in SQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from . import schema_check
from .crypto import Codec, DataKey, KeyCache, new_data_key, new_data_key_id, wrap_context
from .errors import ConvDBError, DecryptionError, InvalidInput, translate
from .export_format import (
    MessageParser,
    aiter_records,
    feedback_record,
    header_record,
    message_record,
    numbered,
    parse_header,
)
from .ids import new_conversation_id as make_conversation_id
from .keys import KeyProvider
from .listing import build_listing
from .ops import Conn
from .ops import branches as branch_ops
from .ops import conversations as conversation_ops
from .ops import erasure as erasure_ops
from .ops import feedback as feedback_ops
from .ops import forms as forms_ops
from .ops import keys as key_ops
from .ops import messages as message_ops
from .ops import retention as retention_ops
from .ops import search as search_ops
from .ops import settings as settings_ops
from .ops import summaries as summary_ops
from .ops import transfer as transfer_ops
from .ops import usage as usage_ops
from .pool import create_pool
from .records import (
    Conversation,
    ErasureCounts,
    Feedback,
    FeedbackSummary,
    JSONValue,
    Message,
    Page,
    RotationReport,
    SearchHit,
    Summary,
    Usage,
    UsageReport,
)
from .runner import Policy, Runner
from .search import build_search
from .validation import (
    DEFAULT_MAX_CONTENT_BYTES,
    DEFAULT_MAX_METADATA_BYTES,
    DEFAULT_MAX_TITLE_BYTES,
    DEFAULT_MAX_TOOL_CALLS_BYTES,
    MAX_SEQ,
    UNSET,
    SizeLimits,
    TokenCounter,
    Unset,
    check_aware_datetime,
    check_comment,
    check_conversation_key,
    check_expected_last_seq,
    check_flag,
    check_id,
    check_limit,
    check_max_messages,
    check_optional_id,
    check_rating,
    check_seconds,
    check_seq,
    check_tags,
    check_time_range,
    check_time_zone,
    check_title,
    check_token_budget,
    check_ttl,
    check_usage,
    encode_json,
    estimate_tokens,
    prepare_batch,
    prepare_message,
    prepare_message_dict,
    prepare_summary,
)


def _runner_option(name: str) -> Any:
    """A store attribute that is the runner's option of the same name (read and set through)."""

    def get(store: ConversationStore) -> Any:
        return getattr(store._runner, name)

    def set_(store: ConversationStore, value: Any) -> None:
        setattr(store._runner, name, value)

    return property(get, set_, doc=f"The runner's ``{name}`` (see ``ConversationStore``).")


def _retention_policy(
    default_ttl: object, sliding: object, temporary_ttl: object, max_messages: object
) -> tuple[timedelta | None, bool, timedelta, int | None]:
    """The store-wide retention policy of ``connect()`` / ``ConversationStore()``, checked (no I/O)."""
    ttl = None if default_ttl is None else check_ttl(default_ttl, "default_ttl")
    slide = check_flag(sliding, "sliding")
    if slide and ttl is None:
        raise InvalidInput("sliding", "needs default_ttl= (a sliding expiry moves by its ttl)")
    return ttl, slide, check_ttl(temporary_ttl, "temporary_ttl"), check_max_messages(max_messages)


class ConversationStore:
    """Conversations and their messages in PostgreSQL, with per-user isolation.

    ``ConversationStore(pool)`` borrows an asyncpg pool (create it with
    ``init=convdb.pool.init_connection`` so jsonb decodes to Python values); ``connect()`` creates and
    owns one. Options:

    - ``max_content_bytes``: the largest message content accepted, in UTF-8 bytes (default 1 MiB).
    - ``max_title_bytes`` (default 64 KiB), ``max_metadata_bytes`` and ``max_tool_calls_bytes``
      (default 4 MiB each): the largest title (UTF-8) and metadata / tool_calls (their JSON text)
      accepted; larger ones raise ``InvalidInput`` before any I/O.
    - ``count_tokens``: maps text to a token count, stored per message when the caller gives none.
    - ``acquire_timeout``: seconds to wait for a pooled connection before ``PoolTimeout``.
    - ``batch_timeout`` + ``batch_timeout_per_mib``: the bound on a ``save_messages`` call, scaled
      to its payload. The bound is what keeps a stalled batch from waiting forever.
    - ``retry_reads``: retry a read once when its connection was lost (safe: reads change nothing).
    - ``retry_keyed_writes``: retry a write once when its connection was lost, if every message
      carries an idempotency key (the key makes the retry exactly-once); also the delete steps of
      ``delete_user_data``, which are idempotent deletes.
    - ``row_level_security``: for databases with ``schema_rls.sql`` applied. Every operation runs
      in a transaction that first sets ``convdb.user_id`` transaction-locally (``SET LOCAL``, which
      also reaches Citus's workers), which the policies key on: three more round trips per
      single-statement operation (BEGIN, the setting, COMMIT), one more per batch. Off by
      default, and then it costs nothing.
    - ``encryption``: a ``convdb.keys.KeyProvider`` (``StaticKeys``, or your KMS adapter) turns on
      client-side encryption of message content, tool_calls and metadata and of conversation
      titles and metadata (AES-256-GCM under per-user data keys; docs/data-protection.md). Needs
      schema version 4 (``convdb_user_keys``). Single appends then take the batch path (the seq is
      reserved before the value is sealed, as it is part of the associated data), and listing by
      ``title_contains`` / ``metadata_contains`` is refused. ``key_cache_seconds`` (default 300)
      and ``key_cache_size`` (default 10,000 users) bound the cache of unwrapped data keys.
    - Retention (docs/retention.md), the policy of conversations created without one of their own:
      ``default_ttl`` (a ``timedelta``; None, the default: no expiry) and ``sliding`` (each append
      pushes the expiry to now + ``default_ttl``: "expire after N days idle"); ``temporary_ttl``
      (default 24 hours), the lifetime of ``temporary=True`` conversations; ``max_messages``
      (None: no cap), the message cap of new conversations. Checked before any I/O.

    Every error a method raises is a ``ConvDBError``. Input is checked before any I/O: a bad
    argument raises ``InvalidInput`` and nothing is sent. An unknown conversation id and another
    user's id raise the same ``ConversationNotFound``.
    """

    acquire_timeout = _runner_option("acquire_timeout")
    retry_reads = _runner_option("retry_reads")
    retry_keyed_writes = _runner_option("retry_keyed_writes")
    row_level_security = _runner_option("row_level_security")

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
        max_title_bytes: int = DEFAULT_MAX_TITLE_BYTES,
        max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES,
        max_tool_calls_bytes: int = DEFAULT_MAX_TOOL_CALLS_BYTES,
        count_tokens: TokenCounter = estimate_tokens,
        acquire_timeout: float | None = 30.0,
        batch_timeout: float = 30.0,
        batch_timeout_per_mib: float = 2.0,
        max_batch_size: int = 10_000,
        retry_reads: bool = True,
        retry_keyed_writes: bool = True,
        row_level_security: bool = False,
        encryption: KeyProvider | None = None,
        key_cache_seconds: float = 300.0,
        key_cache_size: int = 10_000,
        default_ttl: timedelta | None = None,
        sliding: bool = False,
        temporary_ttl: timedelta = timedelta(hours=24),
        max_messages: int | None = None,
        _owns_pool: bool = False,
    ) -> None:
        if encryption is not None and not isinstance(encryption, KeyProvider):
            raise InvalidInput("encryption", "must be a convdb.keys.KeyProvider (such as StaticKeys)")
        policy = _retention_policy(default_ttl, sliding, temporary_ttl, max_messages)
        key_cache_seconds = check_seconds(key_cache_seconds, "key_cache_seconds")
        key_cache_size = check_limit(key_cache_size, "key_cache_size", maximum=10_000_000)
        self._pool = pool
        self._owns_pool = _owns_pool
        self._runner = Runner(
            pool,
            acquire_timeout=acquire_timeout,
            retry_reads=retry_reads,
            retry_keyed_writes=retry_keyed_writes,
            row_level_security=row_level_security,
        )
        self.max_content_bytes = max_content_bytes
        self.limits = SizeLimits(max_title_bytes, max_metadata_bytes, max_tool_calls_bytes)
        self.count_tokens = count_tokens
        self.batch_timeout = batch_timeout
        self.batch_timeout_per_mib = batch_timeout_per_mib
        self.max_batch_size = max_batch_size
        self._keys = encryption
        self._key_cache = KeyCache(key_cache_seconds, key_cache_size)
        self.default_ttl, self.sliding, self.temporary_ttl, self.max_messages = policy
        # The statements until verify_schema finds schema_citus.sql's delegated functions.
        self._forms = forms_ops.STATEMENTS

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    async def connect(
        cls,
        dsn: str | None = None,
        *,
        min_size: int = 2,
        max_size: int = 10,
        statement_cache_size: int = 100,
        verify_schema: bool = True,
        max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
        max_title_bytes: int = DEFAULT_MAX_TITLE_BYTES,
        max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES,
        max_tool_calls_bytes: int = DEFAULT_MAX_TOOL_CALLS_BYTES,
        count_tokens: TokenCounter = estimate_tokens,
        acquire_timeout: float | None = 30.0,
        batch_timeout: float = 30.0,
        batch_timeout_per_mib: float = 2.0,
        max_batch_size: int = 10_000,
        retry_reads: bool = True,
        retry_keyed_writes: bool = True,
        row_level_security: bool = False,
        encryption: KeyProvider | None = None,
        key_cache_seconds: float = 300.0,
        key_cache_size: int = 10_000,
        default_ttl: timedelta | None = None,
        sliding: bool = False,
        temporary_ttl: timedelta = timedelta(hours=24),
        max_messages: int | None = None,
        **pool_options: Any,
    ) -> ConversationStore:
        """Create a pool (owned by the store) and check the schema unless ``verify_schema=False``.

        Options other than the pool's are ``ConversationStore``'s (``encryption=`` among them).

        Raises ``DatabaseUnavailable`` when the server cannot be reached and ``SchemaMismatch``
        when the schema differs (the pool is then closed again).
        """
        if encryption is not None and not isinstance(encryption, KeyProvider):
            raise InvalidInput("encryption", "must be a convdb.keys.KeyProvider (such as StaticKeys)")
        _retention_policy(default_ttl, sliding, temporary_ttl, max_messages)  # before any I/O
        try:
            pool = await create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                statement_cache_size=statement_cache_size,
                **pool_options,
            )
        except Exception as exc:
            raise translate(exc) from exc
        store = cls(
            pool,
            max_content_bytes=max_content_bytes,
            max_title_bytes=max_title_bytes,
            max_metadata_bytes=max_metadata_bytes,
            max_tool_calls_bytes=max_tool_calls_bytes,
            count_tokens=count_tokens,
            acquire_timeout=acquire_timeout,
            batch_timeout=batch_timeout,
            batch_timeout_per_mib=batch_timeout_per_mib,
            max_batch_size=max_batch_size,
            retry_reads=retry_reads,
            retry_keyed_writes=retry_keyed_writes,
            row_level_security=row_level_security,
            encryption=encryption,
            key_cache_seconds=key_cache_seconds,
            key_cache_size=key_cache_size,
            default_ttl=default_ttl,
            sliding=sliding,
            temporary_ttl=temporary_ttl,
            max_messages=max_messages,
            _owns_pool=True,
        )
        if verify_schema:
            try:
                await store.verify_schema()
            except BaseException:
                await store.close()
                raise
        return store

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop that owns the pool (asyncpg binds a pool to the loop that created it).

        The store may be awaited from any loop: a call from another one is served on this loop
        while it runs in another thread, and raises ``WrongEventLoop`` when it is not running.
        """
        return self._runner.loop

    async def close(self) -> None:
        """Close the pool if the store created it; a borrowed pool stays open (and so does the store).

        Graceful: calls in flight finish on the open pool (each within its own bounds), calls made
        after ``close()`` began raise ``ConvDBError``, then the pool closes. Whatever happens to a
        call in flight, what it raises is a ``ConvDBError``.
        """
        if self._owns_pool:

            async def close_on_home() -> None:
                await self._runner.drain()
                await self._pool.close()

            await self._runner.on_home(close_on_home)

    async def __aenter__(self) -> ConversationStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def verify_schema(self) -> None:
        """Raise ``SchemaMismatch`` naming what differs between the database and this package.

        Also ``UnsupportedIsolation`` (a ``SchemaMismatch``) when the server's default transaction
        isolation is not READ COMMITTED and ``row_level_security`` is off: convdb's single
        statements run at that default (with ``row_level_security`` every call is a READ COMMITTED
        transaction of its own). One connection, one round trip more than the schema check.
        """
        check_isolation = not self.row_level_security

        async def verify(conn: Conn) -> schema_check.SchemaReport:
            report = await schema_check.verify(conn)
            if check_isolation:
                await settings_ops.check_isolation(conn)
            return report

        report = await self._runner.run(verify, Policy.READ)
        # With row_level_security every call is a transaction block, which Citus does not delegate:
        # the functions would run on the coordinator, a router query per statement of their
        # bodies, and their batch's INSERT ... SELECT as a COPY, which row-level security refuses.
        delegate = report.delegated and not self.row_level_security
        self._forms = forms_ops.DELEGATED if delegate else forms_ops.STATEMENTS

    @property
    def delegated(self) -> bool:
        """Whether ``save_message`` (guarded too), creating a conversation,
        ``save_and_get_history`` and ``save_messages`` call schema_citus.sql's delegated
        functions (one call to the conversation's worker on Citus; docs/citus.md) instead of
        their statements (a single statement each; the batch's transaction of statements).
        Decided by ``verify_schema`` (``connect()`` runs it): True when the database has those
        functions with exactly the bodies this package expects and ``row_level_security`` is off
        (its transaction blocks are not delegated); a store built on a borrowed pool sends the
        statements until ``verify_schema()`` is awaited. Same results either way."""
        return self._forms.delegated

    # -- encryption (convdb.crypto; every method below calls these only when encryption is on) --
    @property
    def encrypted(self) -> bool:
        """Whether the store encrypts (``encryption=`` was given)."""
        return self._keys is not None

    async def _data_key(self, uid: str, *, create: bool) -> DataKey | None:
        """The user's unwrapped data key: from the cache, else one round trip (two or three when
        ``create`` makes the user's first key). None when the user has none and ``create`` is off."""
        provider = self._keys
        assert provider is not None
        now = time.monotonic()
        key = self._key_cache.get(uid, now)
        if key is not None:
            return key
        row = await self._runner.run(functools.partial(key_ops.get, uid=uid), Policy.READ, user_id=uid)
        if row is None:
            if not create:
                return None
            key_id, secret = new_data_key_id(), new_data_key()
            master, wrapped = await self._provider_call(
                provider.wrap(secret, wrap_context(uid, key_id)), None
            )
            make = functools.partial(
                key_ops.create, uid=uid, key_id=key_id, master_key_id=master, wrapped=wrapped
            )
            # READ: an insert that does nothing when a key exists, then a read: running it twice
            # equals running it once.
            row = await self._runner.run(make, Policy.READ, user_id=uid)
            if row is None:  # a shred raced the creation: the key is gone, so is the conversation
                raise DecryptionError(f"the data key of user {uid!r} was destroyed during the call")
        key_id, master = row["key_id"], row["master_key_id"]
        unwrap = provider.unwrap(master, bytes(row["wrapped_key"]), wrap_context(uid, key_id))
        key = DataKey(key_id, await self._provider_call(unwrap, master))
        self._key_cache.put(uid, key, now)
        return key

    @staticmethod
    async def _provider_call(call: Any, key_id: str | None) -> Any:
        """A key provider's result; what it raises becomes a ``ConvDBError`` (a KMS adapter may
        raise anything)."""
        try:
            return await call
        except ConvDBError:
            raise
        except Exception as exc:
            raise DecryptionError(f"the key provider failed: {exc!r}", key_id) from exc

    async def _codec(self, cid: str, uid: str, *, create: bool) -> Codec | None:
        """The codec of this conversation when encryption is on, else None (nothing to do)."""
        if self._keys is None:
            return None
        return Codec(cid, await self._data_key(uid, create=create))

    def _refuse_encrypted_filter(self, field: str, value: object) -> None:
        if self._keys is not None and value is not None:
            raise InvalidInput(
                field,
                "cannot filter on an encrypted column: with encryption on, titles and metadata are "
                "stored as ciphertext the database cannot match (filter the decrypted page instead)",
            )

    def _refuse_when_encrypted(self, method: str, why: str) -> None:
        if self._keys is not None:
            raise InvalidInput("encryption", f"{method} is not available with encryption on: {why}")

    # -- conversations -----------------------------------------------------------------------
    async def get_or_create_conversation(
        self,
        conversation_id: str | None,
        user_id: str,
        *,
        title: str | None = None,
        metadata: Mapping[str, JSONValue] | None = None,
        expires_at: datetime | None = None,
        ttl: timedelta | None = None,
        sliding: bool | None = None,
        temporary: bool = False,
        max_messages: int | None = None,
    ) -> Conversation:
        """Load this user's conversation, or create it (with a new time-ordered id when None).

        Retention (docs/retention.md), applied only when the conversation is created, as ``title``
        and ``metadata`` are: ``expires_at`` (timezone-aware; one in the past expires it at once)
        or ``ttl`` (a positive ``timedelta`` from now), not both; ``sliding=True``: each append
        pushes the expiry to now + ttl (None: the store's ``sliding`` when the store's
        ``default_ttl`` applies, else False); ``temporary=True``: never listed, and expiring after
        the store's ``temporary_ttl`` unless ``ttl``/``expires_at`` say otherwise; ``max_messages``:
        the cap (None: the store's). Without any of them the store's policy applies. An id whose
        conversation has expired raises ``ConversationNotFound`` (as another user's id does) until
        ``purge_expired`` deletes it: it is never revived with its old messages.

        An id that belongs to another user raises ``ConversationNotFound``; ``title`` and
        ``metadata`` apply only when the conversation is created. Racing creators of one id get
        one row, and racing a delete never tells the owner "not found". Loading an existing
        conversation is one round trip, a plain read; creating one takes two (the read, then the
        create statement) or one for a new id (None), and one more when a concurrent creator or
        delete changed the row first (the fallback decides under the row lock).
        """
        if conversation_id is None:
            cid = make_conversation_id()
        else:
            cid = check_id(conversation_id, "conversation_id")
        uid = check_id(user_id, "user_id")
        check_title(title, self.limits)
        meta_json = encode_json(metadata, "metadata", kind=dict, max_bytes=self.limits.metadata)
        retention = self._new_retention(expires_at, ttl, sliding, temporary, max_messages)
        codec = await self._codec(cid, uid, create=True)
        if codec is not None:
            title, meta_json = codec.seal_title(title), codec.seal_metadata(meta_json)
        op = functools.partial(
            conversation_ops.get_or_create,
            cid=cid,
            uid=uid,
            title=title,
            metadata_json=meta_json,
            retention=retention,
            forms=self._forms,
            load_first=conversation_id is not None,
        )
        conversation = await self._runner.run(op, Policy.READ, user_id=uid)
        return conversation if codec is None else codec.open_conversation(conversation)

    def _new_retention(
        self, expires_at: object, ttl: object, sliding: object, temporary: object, max_messages: object
    ) -> conversation_ops.Retention:
        """A new conversation's retention: its own arguments, else the store's policy (no I/O)."""
        temp = check_flag(temporary, "temporary")
        slide = None if sliding is None else check_flag(sliding, "sliding")
        at = None if expires_at is None else check_aware_datetime(expires_at, "expires_at")
        span = None if ttl is None else check_ttl(ttl)
        if at is not None and span is not None:
            raise InvalidInput("ttl", "give expires_at= or ttl=, not both")
        if at is not None and slide:
            raise InvalidInput("sliding", "needs ttl= (a sliding expiry moves by its ttl), not expires_at=")
        if at is None and span is None:
            span, store_sliding = (self.temporary_ttl, False) if temp else (self.default_ttl, self.sliding)
            if slide is None:
                slide = store_sliding
        if slide and span is None:
            raise InvalidInput("sliding", "needs a ttl: ttl= or the store's default_ttl")
        cap = self.max_messages if max_messages is None else check_max_messages(max_messages)
        return conversation_ops.Retention(at, span, bool(slide), temp, cap)

    async def get_conversation(self, conversation_id: str, user_id: str) -> Conversation:
        """This user's conversation; ``ConversationNotFound`` for an unknown or foreign id. One round trip."""
        cid, uid = check_conversation_key(conversation_id, user_id)
        op = functools.partial(conversation_ops.get, cid=cid, uid=uid)
        conversation = await self._runner.run(op, Policy.READ, user_id=uid)
        if self._keys is None:
            return conversation
        codec = await self._codec(cid, uid, create=False)
        assert codec is not None
        return codec.open_conversation(conversation)

    # -- messages ----------------------------------------------------------------------------
    async def save_message(
        self,
        conversation_id: str,
        user_id: str,
        role: str,
        content: str | None,
        *,
        tool_name: str | None = None,
        tool_call_id: str | None = None,
        tool_calls: Sequence[JSONValue] | None = None,
        metadata: Mapping[str, JSONValue] | None = None,
        token_count: int | None = None,
        idempotency_key: str | None = None,
        usage: Usage | Mapping[str, Any] | None = None,
        expected_last_seq: int | None = None,
    ) -> Message:
        """Append one message in one statement (one round trip) and return it as stored.

        The message gets the conversation's next seq (gap-free, in commit order) and touches its
        ``updated_at``. With ``idempotency_key``, a retry of a save that was stored returns the
        stored message and writes nothing; a different role or content under the same key raises
        IdempotencyConflict. ``usage`` (a ``Usage``, or a dict of its fields) is stored in typed
        columns and comes back as ``Message.usage``.

        ``expected_last_seq``: write only if the conversation's newest stored message is still that
        seq (0: none stored); otherwise ``ConcurrentUpdate`` (carrying the actual ``last_seq``) and
        nothing is written. Same single statement; five round trips when a writer raced it (BEGIN,
        lock, the statement again, COMMIT). A retried keyed save whose first attempt was stored
        returns the stored message instead of failing the guard.
        """
        cid, uid = check_conversation_key(conversation_id, user_id)
        row = prepare_message(
            role,
            content,
            tool_name=tool_name,
            tool_call_id=tool_call_id,
            tool_calls=tool_calls,
            metadata=metadata,
            token_count=token_count,
            idempotency_key=idempotency_key,
            usage=usage,
            max_content_bytes=self.max_content_bytes,
            count_tokens=self.count_tokens,
            limits=self.limits,
        )
        expected = check_expected_last_seq(expected_last_seq)
        policy = Policy.WRITE if row.idempotency_key is None else Policy.KEYED_WRITE
        if self._keys is not None:
            return (await self._save_sealed(cid, uid, [row], policy, expected=expected))[0]
        if expected is None:
            op = functools.partial(message_ops.save, cid=cid, uid=uid, row=row, forms=self._forms)
        else:
            op = functools.partial(
                message_ops.save_guarded,
                cid=cid,
                uid=uid,
                row=row,
                expected_last_seq=expected,
                forms=self._forms,
            )
        return await self._runner.run(op, policy, user_id=uid)

    async def _save_sealed(
        self,
        cid: str,
        uid: str,
        rows: list[Any],
        policy: Policy,
        seconds: float | None = None,
        *,
        expected: int | None = None,
    ) -> list[Message]:
        """Encryption on: the batch path, which reserves the seqs before the values are sealed
        (each value's associated data holds its seq). Single appends take it too: BEGIN, reserve,
        insert, COMMIT instead of save_message's one statement."""
        codec = await self._codec(cid, uid, create=True)
        budget = self.batch_timeout if seconds is None else seconds
        op = functools.partial(
            message_ops.save_batch,
            cid=cid,
            uid=uid,
            rows=rows,
            time_budget=budget,
            expected_last_seq=expected,
            codec=codec,
        )
        return await self._runner.run_transactions(op, policy, user_id=uid, guard_seconds=budget)

    async def save_messages(
        self,
        conversation_id: str,
        user_id: str,
        messages: Iterable[Mapping[str, Any]],
        *,
        expected_last_seq: int | None = None,
    ) -> list[Message]:
        """Append a batch atomically, in order; return the stored messages.

        One transaction: a statement that checks ownership, locks the conversation row, reserves
        the sequence range and touches updated_at, then ``executemany`` of the inserts. On any
        error or cancellation nothing of the batch is stored. The call is bounded by
        ``batch_timeout`` + ``batch_timeout_per_mib`` per MiB of payload (``QueryTimeout``).
        Messages with idempotency keys already stored come back as stored, not written again.
        Each message may carry ``usage`` (a ``Usage`` or a dict of its fields).

        ``expected_last_seq``: as for ``save_message``, checked by the batch's first statement (the
        one that locks the conversation row and reserves the range): ``ConcurrentUpdate`` and
        nothing written when the newest stored seq differs.
        """
        cid, uid = check_conversation_key(conversation_id, user_id)
        rows = prepare_batch(
            messages,
            max_content_bytes=self.max_content_bytes,
            count_tokens=self.count_tokens,
            max_batch=self.max_batch_size,
            limits=self.limits,
        )
        expected = check_expected_last_seq(expected_last_seq)
        payload = sum(
            len(r.content or "") + len(r.tool_calls_json or "") + len(r.metadata_json or "") for r in rows
        )
        seconds = self.batch_timeout + self.batch_timeout_per_mib * payload / 2**20
        keyed = all(r.idempotency_key is not None for r in rows)
        policy = Policy.KEYED_WRITE if keyed else Policy.WRITE
        if self._keys is not None:
            return await self._save_sealed(cid, uid, rows, policy, seconds, expected=expected)
        if self._forms.save_messages is not None:
            delegated = functools.partial(
                message_ops.save_batch_delegated,
                cid=cid,
                uid=uid,
                rows=rows,
                statement=self._forms.save_messages,
                time_budget=seconds,
                expected_last_seq=expected,
            )
            return await self._runner.run_transactions(delegated, policy, user_id=uid, guard_seconds=seconds)
        op = functools.partial(
            message_ops.save_batch,
            cid=cid,
            uid=uid,
            rows=rows,
            time_budget=seconds,
            expected_last_seq=expected,
        )
        return await self._runner.run_transactions(op, policy, user_id=uid, guard_seconds=seconds)

    async def get_history(
        self,
        conversation_id: str,
        user_id: str,
        *,
        limit: int = 50,
        max_tokens: int | None = None,
        trim: bool = True,
        summarized: bool = False,
    ) -> list[Message]:
        """A model-ready window: the newest ``limit`` messages, oldest first, in one round trip.

        With ``max_tokens``, only the newest messages whose stored token counts sum to at most
        ``max_tokens`` (``limit`` still applies); the sum is computed in SQL, in the same
        ownership-checked statement. Leading ``tool`` results whose assistant ``tool_calls``
        message fell outside the window are trimmed (see ``convdb.windows``), so the window can
        hold fewer than ``limit`` messages; ``trim=False`` keeps them (the newest messages exactly,
        for frameworks that prune a history themselves, such as the OpenAI Agents SDK's Runner).
        Raises ``ConversationNotFound`` for an unknown or foreign id; returns [] for an empty one
        (or when nothing fits the budget).

        ``summarized=True``: the newest summary (``save_summary``) stands in for every message up to
        its ``through_seq``. The window is then the newest suffix, within ``limit`` and
        ``max_tokens``, of [that summary, the messages after it]: the summary (a ``Message`` with
        ``summary_through`` set, positioned at its ``through_seq``) comes first when everything
        after it fits, and no message it covers is returned. Same single statement.
        """
        cid, uid = check_conversation_key(conversation_id, user_id)
        n = check_limit(limit)
        token_budget = check_token_budget(max_tokens)
        trimmed = check_flag(trim, "trim")
        summarize = check_flag(summarized, "summarized")
        op = functools.partial(
            message_ops.history,
            cid=cid,
            uid=uid,
            limit=n,
            token_budget=token_budget,
            trim=trimmed,
            summarized=summarize,
        )
        window = await self._runner.run(op, Policy.READ, user_id=uid)
        return window if self._keys is None else await self._open_messages(cid, uid, window)

    async def _open_messages(self, cid: str, uid: str, messages: list[Message]) -> list[Message]:
        if not messages:
            return messages
        codec = await self._codec(cid, uid, create=False)
        assert codec is not None
        return [codec.open_message(m) for m in messages]

    # -- agent turns -------------------------------------------------------------------------
    async def save_and_get_history(
        self,
        conversation_id: str,
        user_id: str,
        message: Mapping[str, Any],
        *,
        limit: int = 50,
        max_tokens: int | None = None,
        summarized: bool = False,
        expected_last_seq: int | None = None,
    ) -> tuple[Message, list[Message]]:
        """Save ``message`` and return it with the window that ends at it: one statement.

        ``message`` holds ``save_message``'s fields (``role``, ``content``, ``tool_calls``,
        ``idempotency_key``, ...). The save has save_message's semantics (ownership, seq under the
        row lock, updated_at); the window is what ``get_history(limit=, max_tokens=)`` returns
        right after the save, the new message included when it fits. With an idempotency key
        that is already stored, nothing is written and the stored message is returned with the
        window that ends at it. One round trip; two when another writer committed to the
        conversation during the statement (the window is then re-read) or on a keyed replay.

        ``summarized=True``: the window is ``get_history(summarized=True)``'s. ``expected_last_seq``:
        ``save_message``'s guard, in the same statement (``ConcurrentUpdate``, nothing written).
        """
        cid, uid = check_conversation_key(conversation_id, user_id)
        row = prepare_message_dict(
            message,
            max_content_bytes=self.max_content_bytes,
            count_tokens=self.count_tokens,
            limits=self.limits,
        )
        n = check_limit(limit)
        token_budget = check_token_budget(max_tokens)
        summarize = check_flag(summarized, "summarized")
        expected = check_expected_last_seq(expected_last_seq)
        policy = Policy.WRITE if row.idempotency_key is None else Policy.KEYED_WRITE
        if self._keys is not None:
            # The batch path for the save (see _save_sealed), then the window that ends at it.
            saved = (await self._save_sealed(cid, uid, [row], policy, expected=expected))[0]
            window_op = functools.partial(
                message_ops.window_until,
                cid=cid,
                uid=uid,
                seq=saved.seq,
                limit=n,
                token_budget=token_budget,
                summarized=summarize,
            )
            window = await self._runner.run(window_op, Policy.READ, user_id=uid)
            return saved, await self._open_messages(cid, uid, window)
        op = functools.partial(
            message_ops.save_and_get_history,
            cid=cid,
            uid=uid,
            row=row,
            limit=n,
            token_budget=token_budget,
            summarized=summarize,
            expected_last_seq=expected,
            forms=self._forms,
        )
        return await self._runner.run(op, policy, user_id=uid)

    # -- summaries and usage -------------------------------------------------------------------
    async def save_summary(
        self,
        conversation_id: str,
        user_id: str,
        content: str,
        *,
        through_seq: int,
        role: str = "system",
        token_count: int | None = None,
        metadata: Mapping[str, JSONValue] | None = None,
    ) -> Summary:
        """Record that ``content`` stands for every message with ``seq <= through_seq``.

        Nothing is rewritten: the messages stay stored, exported and countable; only
        ``summarized=True`` windows use the summary. ``role`` is how the window presents it
        (system, user or assistant); ``token_count`` defaults to the store's ``count_tokens``.
        A summary through the same seq as the newest one replaces it. Touches ``updated_at``.

        Refused with ``InvalidInput`` and nothing written: bad arguments, before any I/O; and,
        judged by the statement itself against what is stored (so after one round trip), a
        ``through_seq`` beyond the newest stored message or older than the newest summary. One
        round trip (five when a writer races it, as for ``clear_conversation``).
        """
        cid, uid = check_conversation_key(conversation_id, user_id)
        row = prepare_summary(
            content,
            through_seq=through_seq,
            role=role,
            token_count=token_count,
            metadata=metadata,
            max_content_bytes=self.max_content_bytes,
            count_tokens=self.count_tokens,
            limits=self.limits,
        )
        content, metadata_json = row.content, row.metadata_json
        codec = await self._codec(cid, uid, create=True)
        if codec is not None:
            content, metadata_json = codec.seal_summary(row.through_seq, content, metadata_json)
        op = functools.partial(
            summary_ops.save,
            cid=cid,
            uid=uid,
            through_seq=row.through_seq,
            role=row.role,
            content=content,
            metadata_json=metadata_json,
            token_count=row.token_count,
        )
        # An upsert of absolute values: a second run stores the same summary (READ's retry rule).
        summary = await self._runner.run(op, Policy.READ, user_id=uid)
        if codec is None:
            return summary
        # What was sent, decoded again: the caller's plaintext, never the ciphertext.
        return dataclasses.replace(
            summary, content=row.content, metadata=json.loads(row.metadata_json or "{}")
        )

    async def list_summaries(self, conversation_id: str, user_id: str) -> list[Summary]:
        """Every summary of the conversation, oldest first. One round trip."""
        cid, uid = check_conversation_key(conversation_id, user_id)
        op = functools.partial(summary_ops.list_all, cid=cid, uid=uid)
        summaries = await self._runner.run(op, Policy.READ, user_id=uid)
        if self._keys is None or not summaries:
            return summaries
        codec = await self._codec(cid, uid, create=False)
        assert codec is not None
        return [codec.open_summary(s) for s in summaries]

    async def usage_report(
        self,
        user_id: str,
        *,
        since: datetime,
        until: datetime,
        conversation_id: str | None = None,
        model: str | None = None,
        time_zone: str = "UTC",
    ) -> UsageReport:
        """Usage and cost of the messages saved with ``usage=`` in ``[since, until)``, summed in SQL.

        Per (day, model), per day, per model and in total, from one statement (one round trip);
        days are calendar days in ``time_zone`` (an IANA name). The user's conversations, or only
        ``conversation_id`` (``ConversationNotFound`` when it is not theirs); only ``model`` when
        given. Times are the messages' ``created_at`` (the saving transaction's start).
        """
        uid = check_id(user_id, "user_id")
        cid = check_optional_id(conversation_id, "conversation_id")
        start, end = check_time_range(since, until)
        model_name = check_optional_id(model, "model")
        zone = check_time_zone(time_zone)
        op = functools.partial(
            usage_ops.report, uid=uid, cid=cid, since=start, until=end, time_zone=zone, model=model_name
        )
        return await self._runner.run(op, Policy.READ, user_id=uid)

    async def record_usage(
        self, conversation_id: str, user_id: str, seq: int, usage: Usage | Mapping[str, Any]
    ) -> bool:
        """Set the usage of stored message ``seq`` when it has none: for usage known only after the
        save (``usage=`` at save time is the usual way). Never overwrites; returns whether it was
        recorded (False: no such message, or it already has usage). One round trip."""
        cid, uid = check_conversation_key(conversation_id, user_id)
        number = check_seq(seq, "seq")
        if usage is None:
            raise InvalidInput("usage", "is required")
        values = check_usage(usage)
        op = functools.partial(usage_ops.record, cid=cid, uid=uid, seq=number, usage=values)
        # Sets absolute values once (a second run finds usage recorded): READ's retry rule.
        return await self._runner.run(op, Policy.READ, user_id=uid)

    # -- conversation management -------------------------------------------------------------
    async def list_conversations(
        self,
        user_id: str,
        *,
        limit: int = 20,
        cursor: str | None = None,
        title_contains: str | None = None,
        metadata_contains: Mapping[str, JSONValue] | None = None,
        updated_after: datetime | None = None,
        updated_before: datetime | None = None,
        parent_id: str | None = None,
        root_id: str | None = None,
    ) -> Page[Conversation]:
        """This user's conversations, most recently updated first (ties by id), a page at a time.

        Keyset pagination: pass ``next_cursor`` back as ``cursor`` with the same filters; a cursor
        that was altered or made for other filters raises ``InvalidInput``. ``title_contains`` (at
        most 1,000 characters) is a case-insensitive substring match by Unicode lowercase, one
        character at a time, whatever the database's LC_CTYPE (``%`` and ``_`` match themselves);
        ``metadata_contains`` keeps conversations whose metadata contains that JSON object
        (``@>``); ``updated_after``/``updated_before`` are exclusive bounds (timezone-aware).
        ``parent_id`` keeps the forks made from that conversation, ``root_id`` every branch of that
        lineage root (forks of forks included; the root itself is not one of them). One round
        trip per page.
        """
        self._refuse_encrypted_filter("title_contains", title_contains)
        self._refuse_encrypted_filter("metadata_contains", metadata_contains)
        query = build_listing(
            user_id,
            limit=limit,
            cursor=cursor,
            title_contains=title_contains,
            metadata_contains=metadata_contains,
            updated_after=updated_after,
            updated_before=updated_before,
            parent_id=parent_id,
            root_id=root_id,
        )
        uid = check_id(user_id, "user_id")  # validated by build_listing; named for row-level security
        op = functools.partial(conversation_ops.list_page, query=query)
        page = await self._runner.run(op, Policy.READ, user_id=uid)
        if self._keys is None or not page.items:
            return page
        codec = await self._codec("", uid, create=False)
        assert codec is not None
        return dataclasses.replace(page, items=[codec.open_conversation(c) for c in page.items])

    async def update_conversation(
        self,
        conversation_id: str,
        user_id: str,
        *,
        title: str | Unset | None = UNSET,
        metadata: Mapping[str, JSONValue] | Unset | None = UNSET,
        expires_at: datetime | Unset | None = UNSET,
        ttl: timedelta | Unset | None = UNSET,
        sliding: bool = False,
    ) -> Conversation:
        """Set the title and/or replace the metadata and/or set the expiry; returns the updated
        conversation.

        An argument left out is left alone; ``title=None`` clears the title and ``metadata=None``
        (or ``{}``) empties the metadata. Expiry (docs/retention.md): ``expires_at`` (aware; in
        the past: expired at once) or ``ttl`` (from now; with ``sliding=True`` each append pushes
        it forward), not both; ``expires_at=None`` (or ``ttl=None``) removes the expiry. An
        expired conversation is unknown (``ConversationNotFound``): its expiry cannot be lifted.
        Touches ``updated_at``. One round trip.
        """
        cid, uid = check_conversation_key(conversation_id, user_id)
        set_expiry = not (isinstance(expires_at, Unset) and isinstance(ttl, Unset))
        if check_flag(sliding, "sliding") and (isinstance(ttl, Unset) or ttl is None):
            raise InvalidInput("sliding", "needs ttl= (a sliding expiry moves by its ttl)")
        if isinstance(title, Unset) and isinstance(metadata, Unset) and not set_expiry:
            raise InvalidInput("title", "nothing to update: pass title=, metadata= and/or expires_at= / ttl=")
        if not isinstance(expires_at, Unset) and not isinstance(ttl, Unset):
            raise InvalidInput("ttl", "give expires_at= or ttl=, not both")
        at = (
            None
            if isinstance(expires_at, Unset) or expires_at is None
            else check_aware_datetime(expires_at, "expires_at")
        )
        span = None if isinstance(ttl, Unset) or ttl is None else check_ttl(ttl)
        slide = check_flag(sliding, "sliding")
        new_title = None if isinstance(title, Unset) else check_title(title, self.limits)
        meta_json = (
            None
            if isinstance(metadata, Unset)
            else encode_json(metadata, "metadata", kind=dict, max_bytes=self.limits.metadata)
        )
        codec = await self._codec(cid, uid, create=True)
        if codec is not None:
            new_title = codec.seal_title(new_title)
            meta_json = None if isinstance(metadata, Unset) else codec.seal_metadata(meta_json)
        op = functools.partial(
            conversation_ops.update,
            cid=cid,
            uid=uid,
            set_title=not isinstance(title, Unset),
            title=new_title,
            set_metadata=not isinstance(metadata, Unset),
            metadata_json=meta_json,
            set_expiry=set_expiry,
            expires_at=at,
            ttl=span,
            sliding=slide,
        )
        # Absolute values: a second run sets the same ones (READ's retry rule; a ttl is counted
        # from the second run's time).
        conversation = await self._runner.run(op, Policy.READ, user_id=uid)
        return conversation if codec is None else codec.open_conversation(conversation)

    async def delete_conversation(self, conversation_id: str, user_id: str) -> int:
        """Delete the conversation and its messages in one statement; returns the messages deleted.

        The count is exact: it includes messages a concurrent writer committed while the delete
        waited for the conversation's lock. One transaction whatever the size: for a conversation
        of millions of messages, ``delete_user_data`` shows the chunked way. One round trip (five
        when a writer races it, as for ``clear_conversation``).
        """
        cid, uid = check_conversation_key(conversation_id, user_id)
        op = functools.partial(conversation_ops.delete, cid=cid, uid=uid)
        return await self._runner.run(op, Policy.WRITE, user_id=uid)

    async def clear_conversation(self, conversation_id: str, user_id: str) -> int:
        """Delete every message, keep the conversation; returns how many were deleted.

        Sequence numbers are never reused: the next message continues after the highest seq the
        conversation ever had, so a seq seen before the clear never names another message.
        Touches ``updated_at``. One round trip (five when a writer races it: the first attempt
        changes nothing, then BEGIN, lock, the statement, COMMIT).
        """
        cid, uid = check_conversation_key(conversation_id, user_id)
        op = functools.partial(conversation_ops.clear, cid=cid, uid=uid)
        return await self._runner.run(op, Policy.WRITE, user_id=uid)

    async def pop_last_message(self, conversation_id: str, user_id: str) -> Message | None:
        """Delete and return the newest message, or None when the conversation is empty.

        Safe under concurrency: concurrent pops each return a different message, and a pop only
        ever removes the newest message as of the moment it holds the conversation's lock. Its
        seq is not reused. Touches ``updated_at`` when it removes something. One round trip
        (five when a writer races it, as for ``clear_conversation``).
        """
        cid, uid = check_conversation_key(conversation_id, user_id)
        op = functools.partial(message_ops.pop_last, cid=cid, uid=uid)
        popped = await self._runner.run(op, Policy.WRITE, user_id=uid)
        if popped is None or self._keys is None:
            return popped
        return (await self._open_messages(cid, uid, [popped]))[0]

    async def count_messages(self, conversation_id: str, user_id: str) -> int:
        """How many messages the conversation holds (an index-only count); one round trip."""
        cid, uid = check_conversation_key(conversation_id, user_id)
        op = functools.partial(message_ops.count, cid=cid, uid=uid)
        return await self._runner.run(op, Policy.READ, user_id=uid)

    # -- erasure, export, import -------------------------------------------------------------
    async def delete_user_data(
        self, user_id: str, *, conversations_per_batch: int = 100, messages_per_batch: int = 5000
    ) -> ErasureCounts:
        """Erase every conversation and message of a user (an erasure request); returns the counts.

        Works in short transactions: messages ``messages_per_batch`` at a time, then the emptied
        conversations ``conversations_per_batch`` at a time, so a user with millions of messages
        never holds one long transaction or lock. Resumable: if it is interrupted (cancelled,
        connection lost, process killed), what was deleted stays deleted and calling it again
        finishes the job, returning what that call deleted. Each step is an idempotent delete, so
        a step whose connection was lost is retried once when ``retry_keyed_writes`` is on (the
        listing step, a read, when ``retry_reads`` is); the counts include what the interrupted
        attempt had committed. Messages a concurrent writer adds meanwhile are deleted and
        counted too. An unknown user deletes nothing (counts 0).
        """
        uid = check_id(user_id, "user_id")
        per_batch = check_limit(conversations_per_batch, "conversations_per_batch")
        chunk = check_limit(messages_per_batch, "messages_per_batch", maximum=100_000)
        progress = erasure_ops.ErasureProgress()
        after = ""
        while True:
            take = functools.partial(erasure_ops.next_conversations, uid=uid, after=after, count=per_batch)
            ids = await self._runner.run(take, Policy.READ, user_id=uid)
            if not ids:
                if after == "":
                    return ErasureCounts(progress.conversations, progress.messages)
                after = ""  # one more look from the start (see below)
                continue
            erase = functools.partial(
                erasure_ops.erase_conversations, uid=uid, ids=ids, chunk=chunk, progress=progress
            )
            await self._runner.run_transactions(erase, Policy.ERASE, user_id=uid, single_statements=True)
            # After the last batch, one more look from the start: it finds conversations created
            # meanwhile below the cursor, and otherwise ends the loop.
            after = ids[-1] if len(ids) == per_batch else ""

    async def shred_user(
        self, user_id: str, *, conversations_per_batch: int = 100, messages_per_batch: int = 5000
    ) -> ErasureCounts:
        """Crypto-shredding: destroy the user's data key, then erase their rows like ``delete_user_data``.

        The key goes first, in one statement: from its commit on, every copy of the user's
        encrypted values (replicas; backups, once their copy of the key row has expired with them)
        is unreadable, even while the purge is still running or if it is interrupted. Calling it
        again finishes the purge (and the key is already gone). Works whether or not this store
        encrypts (a store without ``encryption=`` still deletes the key row). Another process that
        cached the key can use it for at most its ``key_cache_seconds``. Returns what the purge
        deleted.
        """
        uid = check_id(user_id, "user_id")
        per_batch = check_limit(conversations_per_batch, "conversations_per_batch")
        chunk = check_limit(messages_per_batch, "messages_per_batch", maximum=100_000)
        # ERASE: an idempotent delete (a second run deletes nothing more).
        await self._runner.run(functools.partial(key_ops.shred, uid=uid), Policy.ERASE, user_id=uid)
        self._key_cache.drop(uid)
        return await self.delete_user_data(uid, conversations_per_batch=per_batch, messages_per_batch=chunk)

    async def rotate(self, *, batch_size: int = 100, limit: int | None = None) -> RotationReport:
        """Re-wrap every user's data key under the provider's active master key, in short batches.

        Envelope encryption: a value is encrypted under its user's data key, and only the data
        key is encrypted (wrapped) under a master key; rotating the master key re-wraps the data
        keys (one row per user) and touches no message. Each batch reads ``batch_size`` keys still
        under an old master key, unwraps and re-wraps them client-side, and writes them back with
        a compare-and-set (a key shredded or re-wrapped meanwhile is left alone). Resumable: a
        call killed midway loses nothing (every key is always wrapped under a key the provider
        holds, old or new), and calling again finishes. ``limit`` stops after that many keys.
        The report counts the keys left under each old master key: one that reports 0 (absent
        from ``remaining``) can be removed from the provider.

        Needs ``encryption=`` and sees every user's key, so it refuses ``row_level_security``
        (run it from a maintenance store connected as the tables' owner).
        """
        provider = self._keys
        if provider is None:
            raise InvalidInput("encryption", "rotate() needs a store opened with encryption=")
        if self.row_level_security:
            raise InvalidInput(
                "row_level_security",
                "rotate() re-wraps every user's data key: run it from a store without row_level_security, "
                "connected as the owner of convdb's tables",
            )
        per_batch = check_limit(batch_size, "batch_size", maximum=10_000)
        most = None if limit is None else check_limit(limit, "limit", maximum=2**62)
        active = provider.active_key_id
        done, after = 0, ""
        while most is None or done < most:
            take = per_batch if most is None else min(per_batch, most - done)
            batch = functools.partial(key_ops.rotation_batch, after=after, active=active, count=take)
            rows = await self._runner.run(batch, Policy.READ)
            if not rows:
                break
            updates = []
            for row in rows:
                uid, key_id, old = row["user_id"], row["key_id"], row["master_key_id"]
                context = wrap_context(uid, key_id)
                secret = await self._provider_call(
                    provider.unwrap(old, bytes(row["wrapped_key"]), context), old
                )
                new, wrapped = await self._provider_call(provider.wrap(secret, context), None)
                updates.append((uid, key_id, old, new, wrapped))
            # KEYED_WRITE: compare-and-set updates, so a second run changes nothing more.
            await self._runner.run(functools.partial(key_ops.rewrap, updates=updates), Policy.KEYED_WRITE)
            done += len(rows)
            after = rows[-1]["user_id"]
        counts = await self._runner.run(key_ops.per_master_key, Policy.READ)
        return RotationReport(done, {k: n for k, n in counts.items() if k != active})

    async def purge_expired(
        self, *, batch_size: int = 100, limit: int | None = None, messages_per_batch: int = 5000
    ) -> ErasureCounts:
        """Delete the expired conversations (``expires_at`` passed) with their messages; returns the
        counts. A maintenance call, not scoped to a user: it sees every user's expired rows (run
        it from a store without ``row_level_security``, as the owner of convdb's tables; schedule
        it with cron, pg_cron or an application task: docs/retention.md).

        Lists ``batch_size`` expired conversations at a time through the partial index
        ``conversations_expires`` (a read, no lock), then claims and deletes each one with one
        statement, ``FOR UPDATE SKIP LOCKED``, the batch's statements pipelined in one round trip
        and one short transaction (a conversation of more than ``messages_per_batch`` messages
        then goes in several more statements, each its own short transaction). Safe
        from several processes at once: each conversation is deleted and counted by exactly one
        of them, and none waits for another's locks (a claimed row is skipped). Resumable: what
        was deleted stays deleted, and calling it again (after a cancellation, a lost connection,
        a killed process) finishes the job. ``limit`` stops after that many conversations. Until
        it runs, an expired conversation is already invisible to every other method.
        """
        if self.row_level_security:
            raise InvalidInput(
                "row_level_security",
                "purge_expired() deletes every user's expired conversations: run it from a store "
                "without row_level_security, connected as the owner of convdb's tables",
            )
        per_batch = check_limit(batch_size, "batch_size", maximum=10_000)
        most = None if limit is None else check_limit(limit, "limit", maximum=2**62)
        chunk = check_limit(messages_per_batch, "messages_per_batch", maximum=100_000)
        progress = erasure_ops.ErasureProgress()
        start = (datetime.min.replace(tzinfo=UTC), "")
        after, purged_this_pass = start, 0
        while most is None or progress.conversations < most:
            take = functools.partial(retention_ops.list_expired, after=after, count=per_batch)
            listed = await self._runner.run(take, Policy.READ)
            if not listed:
                # One more pass from the start when this one deleted something: it finds what
                # was skipped (claimed by another purger that may have given it up) or expired
                # meanwhile below the cursor. A pass that deletes nothing ends the call.
                if after == start or purged_this_pass == 0:
                    break
                after, purged_this_pass = start, 0
                continue
            ids = [cid for _, cid in listed]
            if most is not None:
                ids = ids[: most - progress.conversations]
            purge = functools.partial(retention_ops.purge_listed, cids=ids, chunk=chunk, progress=progress)
            # ERASE: an idempotent delete step (a second run deletes only what is left).
            purged_this_pass += await self._runner.run(purge, Policy.ERASE)
            after = listed[-1]
            if len(listed) < per_batch and purged_this_pass == 0:
                break
        return ErasureCounts(progress.conversations, progress.messages)

    def export_conversation(
        self, conversation_id: str, user_id: str, *, chunk_size: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream a conversation as JSON-ready dicts: the conversation record, then each message.

        Messages are read in keyset chunks of ``chunk_size`` (one round trip each, no connection
        or transaction held between chunks), so a huge conversation is never in memory. The
        export covers the messages that existed when it started (seq below the next_seq read
        first). Arguments are checked at the call; ``ConversationNotFound`` comes on the first
        iteration (or later, if the conversation is deleted during the export). The format is
        described in ``convdb.export_format``; ``import_conversation`` restores it exactly.
        """
        cid, uid = check_conversation_key(conversation_id, user_id)
        size = check_limit(chunk_size, "chunk_size")
        return self._export(cid, uid, size)

    def export_messages(
        self, conversation_id: str, user_id: str, *, chunk_size: int = 1000
    ) -> AsyncIterator[Message]:
        """Stream every message of a conversation, oldest first, as ``Message``s, in keyset chunks.

        Like ``export_conversation`` (same chunks, same bound, same errors) without the
        conversation record; for reading a whole long history without holding it all in memory.
        """
        cid, uid = check_conversation_key(conversation_id, user_id)
        size = check_limit(chunk_size, "chunk_size")
        return self._stream_messages(cid, uid, size)

    async def _export(self, cid: str, uid: str, size: int) -> AsyncIterator[dict[str, Any]]:
        # With encryption on, an export is decrypted (it is the user's data, for the user): the
        # records hold plaintext, and an import into an encrypting store seals them again.
        stream = self._export_rows(cid, uid, size)
        head = await anext(stream)
        codec = await self._codec(cid, uid, create=False)
        if codec is None:
            yield header_record(head)
            async for record in stream:
                yield message_record(Message.from_record(cid, record))
        else:
            yield header_record(head, codec.open_conversation(Conversation.from_record(head)))
            async for record in stream:
                yield message_record(codec.open_message(Message.from_record(cid, record)))
        # Feedback last, one round trip: records of the messages exported (seq below the bound).
        # Feedback comments are stored in plaintext even with encryption on (docs/data-protection.md).
        feedback = functools.partial(transfer_ops.export_feedback, cid=cid, uid=uid, bound=head["next_seq"])
        for item in await self._runner.run(feedback, Policy.READ, user_id=uid):
            yield feedback_record(item)

    async def _stream_messages(self, cid: str, uid: str, size: int) -> AsyncIterator[Message]:
        stream = self._export_rows(cid, uid, size)
        await anext(stream)
        codec = await self._codec(cid, uid, create=False)
        async for record in stream:
            message = Message.from_record(cid, record)
            yield message if codec is None else codec.open_message(message)

    async def _export_rows(self, cid: str, uid: str, size: int) -> AsyncIterator[asyncpg.Record]:
        """The conversation row, then its message rows with seq below its next_seq, in chunks."""
        header = functools.partial(transfer_ops.export_header, cid=cid, uid=uid)
        head = await self._runner.run(header, Policy.READ, user_id=uid)
        yield head
        after, bound = 0, head["next_seq"]
        while True:
            chunk = functools.partial(
                transfer_ops.export_chunk, cid=cid, uid=uid, after=after, bound=bound, size=size
            )
            records = await self._runner.run(chunk, Policy.READ, user_id=uid)
            for record in records:
                yield record
            if len(records) < size:
                return
            after = records[-1][0]

    async def import_conversation(
        self,
        user_id: str,
        records: Iterable[Mapping[str, Any]] | AsyncIterable[Mapping[str, Any]],
        *,
        conversation_id: str | None = None,
        replace: bool = False,
        time_limit: float = 300.0,
    ) -> Conversation:
        """Restore an export (``export_conversation``'s records) for ``user_id``, exactly.

        Same id (or ``conversation_id=`` to import a copy under another id), title, metadata,
        created_at, updated_at and next_seq; every message with its seq, role, content, tool
        fields, metadata, token count, idempotency key and created_at. All or nothing: one
        transaction, messages sent in pipelined chunks as the records are read (``records`` may
        be a lazy or async iterable, such as ``convdb.export.read_jsonl``). Records are validated
        before they are sent; the first bad one raises ``InvalidInput`` and nothing is stored.

        An id that already holds a conversation of this user raises ``ConversationExists``
        unless ``replace=True``, which overwrites it (its messages are replaced) atomically. An
        id of another user's conversation raises ``ConversationNotFound`` and is never touched.
        Retention (an export carries none): a conversation the import creates takes the store's
        policy, ``default_ttl`` from the import on (sliding if the store's is) and
        ``max_messages`` (enforced from its next append), and is never temporary; a replaced one
        keeps its own. The returned ``Conversation`` has the stored retention.
        ``time_limit`` (seconds) bounds each pipelined chunk, and the whole import with a few
        seconds' grace; when it runs out (``QueryTimeout``), or the call is cancelled, the
        connection is closed and nothing is stored.
        """
        uid = check_id(user_id, "user_id")
        override = None if conversation_id is None else check_id(conversation_id, "conversation_id")
        overwrite = check_flag(replace, "replace")
        time_limit = check_seconds(time_limit, "time_limit")
        stream = aiter_records(records)
        header = parse_header(await anext(stream, None), self.limits)
        cid = override or header.id
        parser = MessageParser(
            header,
            max_content_bytes=self.max_content_bytes,
            count_tokens=self.count_tokens,
            limits=self.limits,
        )
        rest = numbered(stream)
        first = []  # validated before any I/O; the rest is validated chunk by chunk
        async for index, record in rest:
            parsed = parser.parse(record, index)
            if parsed is not None:
                first.append(parsed)
            if len(first) >= transfer_ops.IMPORT_CHUNK:
                break
        stored_header = header
        codec = await self._codec(cid, uid, create=True)
        if codec is not None:
            # Sealed under the id the conversation is stored as (conversation_id= may differ).
            parser.seal = codec.seal_row
            first = [(seq, codec.seal_row(seq, row), at) for seq, row, at in first]
            stored_header = dataclasses.replace(
                header,
                title=codec.seal_title(header.title),
                metadata_json=codec.seal_metadata(header.metadata_json),
            )
        op = functools.partial(
            transfer_ops.import_conversation,
            cid=cid,
            uid=uid,
            header=stored_header,
            parser=parser,
            first=first,
            rest=rest,
            replace=overwrite,
            chunk_seconds=time_limit,
            policy=(self.default_ttl, self.sliding, self.max_messages),
        )
        row = await self._runner.run_transactions(op, Policy.WRITE, user_id=uid, guard_seconds=time_limit)
        return Conversation(
            id=cid,
            user_id=uid,
            title=header.title,
            metadata=json.loads(header.metadata_json or "{}"),
            created_at=header.created_at,
            updated_at=header.updated_at,
            expires_at=row["expires_at"],
            ttl=row["ttl"],
            temporary=row["temporary"],
            max_messages=row["max_messages"],
        )

    # -- branches, feedback, search ----------------------------------------------------------
    async def fork_conversation(
        self,
        conversation_id: str,
        user_id: str,
        *,
        at_seq: int,
        new_conversation_id: str | None = None,
        title: str | None = None,
        metadata: Mapping[str, JSONValue] | None = None,
    ) -> Conversation:
        """Create a branch: a new conversation of the same user whose history is a copy of this
        one's messages with ``seq <= at_seq``, and whose next message gets ``seq = at_seq + 1``.

        ``at_seq`` is from 0 (an empty branch) to the source's newest seq; past that it raises
        ``InvalidInput`` (known only once the source is read; nothing is written). Editing message
        k is a fork at ``k - 1`` plus a save; regenerating an answer is a fork before it. The copy
        keeps every message column (created_at, token counts, idempotency keys: a replay on the
        fork of a key from the copied prefix returns the copied message) and the source's
        feedback, marked inherited. ``title`` and ``metadata`` default to the source's. The fork
        records ``parent_id``, ``forked_at_seq`` and ``root_id`` (the lineage's first
        conversation), and never changes with its source afterwards. ``new_conversation_id``: the
        fork's id (a new time-ordered one by default); one of this user's ids raises
        ``ConversationExists``, another user's ``ConversationNotFound``. One statement, one round
        trip (two when the new id is taken); the cost grows with the messages copied. Refused
        (``InvalidInput``) with encryption on (docs/data-protection.md).
        """
        cid, uid = check_conversation_key(conversation_id, user_id)
        # The copy is made in SQL, but every encrypted value is bound to its conversation's id
        # (associated data): copied ciphertexts would not open in the fork. Refused, not garbage.
        self._refuse_when_encrypted(
            "fork_conversation",
            "encrypted values are bound to their conversation and cannot be copied in SQL",
        )
        point = check_seq(at_seq, "at_seq", allow_zero=True)
        if point == MAX_SEQ:  # the fork's next seq, at_seq + 1, must still be a bigint
            raise InvalidInput("at_seq", f"must be between 0 and {MAX_SEQ - 1}, got {point}")
        new_cid = (
            make_conversation_id()
            if new_conversation_id is None
            else check_id(new_conversation_id, "new_conversation_id")
        )
        check_title(title, self.limits)
        meta_json = encode_json(metadata, "metadata", kind=dict, max_bytes=self.limits.metadata)
        op = functools.partial(
            branch_ops.fork,
            cid=cid,
            uid=uid,
            new_cid=new_cid,
            at_seq=point,
            title=title,
            metadata_json=meta_json,
        )
        return await self._runner.run(op, Policy.WRITE, user_id=uid)

    async def set_feedback(
        self,
        conversation_id: str,
        user_id: str,
        seq: int,
        *,
        rating: int,
        comment: str | None = None,
        tags: Sequence[str] = (),
    ) -> Feedback:
        """Set (or replace) the feedback on message ``seq``: ``rating`` -1 (bad), 0 (neutral) or +1
        (good), an optional ``comment`` (up to 4000 characters) and up to 16 distinct ``tags`` (1 to
        64 characters each). One statement, one round trip. ``MessageNotFound`` when this
        conversation of the caller's holds no such message. Feedback is not message content:
        windows and turns are unchanged, and ``updated_at`` is not touched.
        """
        cid, uid = check_conversation_key(conversation_id, user_id)
        n = check_seq(seq, "seq")
        value = check_rating(rating)
        text = check_comment(comment)
        labels = check_tags(tags)
        op = functools.partial(
            feedback_ops.set_, cid=cid, uid=uid, seq=n, rating=value, comment=text, tags=labels
        )
        # Absolute values: a second run sets the same ones (READ's retry rule).
        return await self._runner.run(op, Policy.READ, user_id=uid)

    async def clear_feedback(self, conversation_id: str, user_id: str, seq: int) -> bool:
        """Remove the feedback on message ``seq``; True if there was some. One round trip."""
        cid, uid = check_conversation_key(conversation_id, user_id)
        n = check_seq(seq, "seq")
        op = functools.partial(feedback_ops.clear, cid=cid, uid=uid, seq=n)
        return await self._runner.run(op, Policy.READ, user_id=uid)

    async def get_feedback(self, conversation_id: str, user_id: str) -> list[Feedback]:
        """Every feedback of the conversation, in seq order (inherited copies included). One round trip."""
        cid, uid = check_conversation_key(conversation_id, user_id)
        op = functools.partial(feedback_ops.get, cid=cid, uid=uid)
        return await self._runner.run(op, Policy.READ, user_id=uid)

    async def feedback_summary(
        self,
        user_id: str,
        *,
        conversation_id: str | None = None,
        after: datetime | None = None,
        before: datetime | None = None,
    ) -> FeedbackSummary:
        """Aggregated feedback of the user (or of one of their conversations): counts per rating,
        the mean and the tag counts, of the feedback set (``updated_at``) strictly between
        ``after`` and ``before`` (timezone-aware; None: unbounded). Inherited copies in forks are
        not counted again. One round trip.
        """
        uid = check_id(user_id, "user_id")
        cid = None if conversation_id is None else check_id(conversation_id, "conversation_id")
        lower = None if after is None else check_aware_datetime(after, "after")
        upper = None if before is None else check_aware_datetime(before, "before")
        op = functools.partial(feedback_ops.summary, uid=uid, cid=cid, after=lower, before=upper)
        return await self._runner.run(op, Policy.READ, user_id=uid)

    async def search_messages(
        self,
        user_id: str,
        query: str,
        *,
        limit: int = 20,
        cursor: str | None = None,
        conversation_id: str | None = None,
        role: str | None = None,
        after: datetime | None = None,
        before: datetime | None = None,
        config: str = "simple",
    ) -> Page[SearchHit]:
        """Full-text search over the user's own messages and conversation titles, best first.

        ``query`` is web-search syntax (``websearch_to_tsquery``: words, "quoted phrases", ``or``,
        ``-excluded``); any text is accepted and none of it is SQL. ``config`` is the text search
        configuration (``convdb.search.SEARCH_CONFIGS``; ``simple``, the default, matches exact
        words of any script; ``english`` etc. stem). Filters: one conversation (``ConversationNotFound``
        if it is not the caller's), a ``role`` (messages only), and exclusive ``after``/``before``
        bounds on created_at. Each hit has ``conversation_id``, ``seq`` (None for a title), a
        highlighted ``snippet`` and ``rank``. Ranked keyset pagination: pass ``next_cursor`` back
        with the same arguments. One round trip per page. Fast on large histories once the DBA has
        applied ``schema_search.sql`` (a GIN index; it costs appends, see the docs). Refused
        (``InvalidInput``) with encryption on: the database holds only ciphertext.
        """
        self._refuse_when_encrypted(
            "search_messages", "message contents and titles are ciphertext the database cannot search"
        )
        built = build_search(
            user_id,
            query,
            limit=limit,
            cursor=cursor,
            conversation_id=conversation_id,
            role=role,
            after=after,
            before=before,
            config=config,
        )
        uid = check_id(user_id, "user_id")
        op = functools.partial(search_ops.search_page, query=built)
        return await self._runner.run(op, Policy.READ, user_id=uid)


__all__ = ["ConversationStore"]
