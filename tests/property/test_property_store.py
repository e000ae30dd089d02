"""Property-based tests (hypothesis) against real PostgreSQL.

- Arbitrary Unicode text (everything but NUL and unpaired surrogates) and arbitrary JSON values
  round-trip exactly through every text and JSON field.
- Every invalid input raises InvalidInput and writes nothing.
- A RuleBasedStateMachine drives random sequences of public operations against an in-memory model
  and the database and finds no difference.

The store lives on an event loop this module owns (asyncio.Runner), not on pytest-asyncio's
per-test loop, so each hypothesis example reuses one pool. Example counts come from the settings
profiles below (CONVDB_HYPOTHESIS_PROFILE=convdb-thorough for a long run); each test prints how many ran.
"""

from __future__ import annotations

import asyncio
import math
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from convdb import (
    ConcurrentUpdate,
    ConversationNotFound,
    ConversationStore,
    IdempotencyConflict,
    InvalidInput,
    StaticKeys,
)
from convdb.errors import MessageNotFound
from tests.support import delegated
from tests.support.fix_server import TEMPLATE, Server

T = TypeVar("T")

settings.register_profile(
    "convdb-ci",
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
settings.register_profile(
    "convdb-thorough", parent=settings.get_profile("convdb-ci"), max_examples=2000, stateful_step_count=60
)
PROFILE_NAME = os.environ.get("CONVDB_HYPOTHESIS_PROFILE", "convdb-ci")
PROFILE = settings.get_profile(PROFILE_NAME)
MACHINE_EXAMPLES = max(20, PROFILE.max_examples // 4)
MAX_CONTENT_BYTES = 8192

EXAMPLES: dict[str, int] = {}


@dataclass
class Env:
    runner: asyncio.Runner
    store: ConversationStore
    dsn: str

    def run(self, coro: Awaitable[T]) -> T:
        return self.runner.run(coro)  # type: ignore[arg-type]


# Every property test runs three times: with the statements of queries.sql, with encryption at rest
# on (issue 13), where every text and JSON value goes through AES-GCM and back, and with the
# delegated calls of schema_citus.sql (issue 16; on a single node the functions are created
# without their distribution), where a batch's values travel as arrays.
@pytest.fixture(scope="module", params=["plain", "encrypted", "delegated"])
def env(request: pytest.FixtureRequest, pg_server: Server, template_db: str) -> Iterator[Env]:
    provider = StaticKeys({"k1": os.urandom(32)}, "k1") if request.param == "encrypted" else None
    name = f"p_{uuid.uuid4().hex[:16]}"
    runner = asyncio.Runner()

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_server.admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    if pg_server.citus is not None:  # --- Citus mode: the database cloned on every node ---
        runner.run(pg_server.citus.clone_database(name, TEMPLATE))
    else:
        runner.run(admin(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"'))
    dsn = pg_server.dsn(name)
    if request.param == "delegated":
        runner.run(_install_delegated(dsn))
    store = runner.run(
        ConversationStore.connect(
            dsn, min_size=1, max_size=4, max_content_bytes=MAX_CONTENT_BYTES, encryption=provider
        )
    )
    if request.param == "plain":
        delegated.send_statements(store)
    if request.param != "encrypted":  # (encrypted: delegated on Citus, where only the creation is)
        assert store.delegated == (request.param == "delegated")
    try:
        yield Env(runner, store, dsn)
    finally:
        runner.run(store.close())
        if pg_server.citus is not None:  # --- Citus mode: dropped on every node, coordinator first ---
            runner.run(pg_server.citus.drop_database(name))
        else:
            runner.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        runner.close()


async def _install_delegated(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await delegated.install(conn)
    finally:
        await conn.close()


def count(name: str) -> None:
    EXAMPLES[name] = EXAMPLES.get(name, 0) + 1


# -- strategies ----------------------------------------------------------------------------------
STORABLE = st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")
texts = st.text(STORABLE, max_size=300)
ids = st.text(STORABLE, min_size=1, max_size=40)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(texts, json_values, max_size=5)
json_lists = st.lists(json_values, max_size=5)


def same_json(a: Any, b: Any) -> bool:
    """Equal values of equal JSON types (bool is not int, int is not float). The one loss allowed:
    the sign of a float zero (numeric has no -0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# -- round trips ---------------------------------------------------------------------------------
@settings(PROFILE)
@given(
    title=texts,
    metadata=json_objects,
    content=texts,
    tool_calls=json_lists,
    message_meta=json_objects,
    user=ids,
    key=ids,
    tool_name=ids,
    batch=st.lists(st.tuples(texts, json_objects), min_size=1, max_size=4),
)
@pytest.mark.guarantee(7)
def test_text_and_json_round_trip_exactly(
    env: Env,
    title: str,
    metadata: dict[str, Any],
    content: str,
    tool_calls: list[Any],
    message_meta: dict[str, Any],
    user: str,
    key: str,
    tool_name: str,
    batch: list[tuple[str, dict[str, Any]]],
) -> None:
    count("round trip")
    store = env.store
    cid = fresh(user[:20])

    async def body() -> None:
        conv = await store.get_or_create_conversation(cid, user, title=title, metadata=metadata)
        assert conv.title == title and same_json(conv.metadata, metadata)
        again = await store.get_conversation(cid, user)
        assert again.title == title and same_json(again.metadata, metadata)
        saved = await store.save_message(
            cid,
            user,
            "assistant",
            content,
            tool_calls=tool_calls,
            metadata=message_meta,
            tool_name=tool_name,
            idempotency_key=key,
        )
        stored = await store.save_messages(
            cid, user, [{"role": "user", "content": c, "metadata": m} for c, m in batch]
        )
        history = await store.get_history(cid, user, limit=100)
        first = history[0]
        assert (first.content, first.tool_name, first.idempotency_key) == (content, tool_name, key)
        assert same_json(first.tool_calls, tool_calls) and same_json(first.metadata, message_meta)
        # What save_message returned is what a later read returns.
        assert same_json(saved.tool_calls, first.tool_calls) and saved.content == first.content
        for message, (text, meta), returned in zip(history[1:], batch, stored, strict=True):
            assert message.content == text == returned.content
            assert same_json(message.metadata, meta) and same_json(returned.metadata, meta)

    env.run(body())


# -- invalid input -------------------------------------------------------------------------------
class Weird:
    pass


bad_text = st.one_of(
    st.tuples(texts, st.sampled_from(["\x00", "\ud800", "\udfff", "\udc80x\ud83d"]), texts).map(
        lambda t: "".join(t)
    ),
    st.sampled_from([b"bytes", 1, 2.5, ["list"], {"a": 1}, Weird()]),
)
bad_id = bad_text | st.sampled_from(["", "x" * 256]) | st.text(STORABLE, min_size=256, max_size=300)
bad_json_leaf = st.sampled_from(
    [float("nan"), float("inf"), -float("inf"), {1, 2}, b"x", Weird(), 1j, (1, 2), 10**5000]
) | bad_text.filter(lambda v: isinstance(v, str))


def nest(leaf: Any, path: list[str]) -> Any:
    for step in reversed(path):
        leaf = {step: leaf} if step != "[]" else [leaf]
    return leaf


bad_object = st.one_of(
    st.sampled_from([[], "text", 1, True, ["a"], Weird()]),
    st.tuples(bad_json_leaf, st.lists(st.sampled_from(["k", "[]"]), max_size=3)).map(
        lambda t: nest(t[0], ["k", *t[1]])
    ),
    st.sampled_from([{1: "int key"}, {("t",): 1}, {None: 1}, {"\x00": 1}, {"ok": {"\ud800": 1}}]),
    st.just(nest(1, ["k"] * 205)),
)
bad_list = st.one_of(
    st.sampled_from([{}, "text", 1, {"a": 1}]),
    st.tuples(bad_json_leaf, st.lists(st.sampled_from(["k", "[]"]), max_size=3)).map(
        lambda t: [nest(t[0], t[1])]
    ),
)
bad_role = st.sampled_from(["", "User", "admin", "system ", None, 1, b"user"]) | texts.filter(
    lambda r: r not in ("system", "user", "assistant", "tool")
)
bad_token_count = st.sampled_from([-1, 2**31, True, 1.5, "3", 10**20])
bad_limit = st.sampled_from([0, -1, 10_001, True, 1.5, "5", None])
bad_content = bad_text | st.just("é" * (MAX_CONTENT_BYTES // 2 + 1))

GOOD = {"role": "user", "content": "fine"}


@st.composite
def invalid_calls(draw: st.DrawFn) -> tuple[str, list[Any], dict[str, Any]]:
    """(method, args, kwargs) with exactly one invalid argument; conversation "c"/user "u" exist."""
    slot = draw(
        st.sampled_from(
            [
                "cid",
                "uid",
                "role",
                "content",
                "tool_name",
                "tool_call_id",
                "tool_calls",
                "metadata",
                "token_count",
                "key",
                "tool_without_call_id",
                "batch_shape",
                "title",
                "conv_metadata",
                "limit",
                "update_title",
                "update_metadata",
                "turn_message",
                "retention",
            ]
        )
    )
    msg: dict[str, Any] = dict(GOOD)
    if slot in ("cid", "uid"):
        value = draw(bad_id)
        method = draw(
            st.sampled_from(
                [
                    "save_message",
                    "save_messages",
                    "get_history",
                    "get_conversation",
                    "count_messages",
                    "clear_conversation",
                    "delete_conversation",
                    "pop_last_message",
                    "get_or_create_conversation",
                ]
            )
        )
        cid, uid = (value, "u") if slot == "cid" else ("c", value)
        if method == "save_message":
            return method, [cid, uid, "user", "x"], {}
        if method == "save_messages":
            return method, [cid, uid, [GOOD]], {}
        return method, [cid, uid], {}
    if slot in ("title", "conv_metadata"):
        kwargs = {"title": draw(bad_text)} if slot == "title" else {"metadata": draw(bad_object)}
        return "get_or_create_conversation", [draw(st.sampled_from(["c", None])), "u"], kwargs
    if slot in ("update_title", "update_metadata"):
        kwargs = {"title": draw(bad_text)} if slot == "update_title" else {"metadata": draw(bad_object)}
        return "update_conversation", ["c", "u"], kwargs
    if slot == "retention":
        bad_ttl = st.sampled_from([timedelta(0), timedelta(seconds=-1), 3600, "1h", timedelta(days=10**6)])
        kwargs = draw(
            st.sampled_from(
                [
                    {"expires_at": datetime(2030, 1, 1)},  # naive
                    {"expires_at": "2030-01-01"},
                    {"ttl": draw(bad_ttl)},
                    {"ttl": timedelta(hours=1), "expires_at": datetime(2030, 1, 1, tzinfo=UTC)},
                    {"sliding": True},
                    {"max_messages": draw(st.sampled_from([0, -1, True, 1.5, 2**31]))},
                    {"temporary": draw(st.sampled_from([1, "yes", None]))},
                ]
            )
        )
        if draw(st.booleans()) and "max_messages" not in kwargs and "temporary" not in kwargs:
            return "update_conversation", ["c", "u"], kwargs
        return "get_or_create_conversation", [draw(st.sampled_from(["c", None])), "u"], kwargs
    if slot == "limit":
        return "get_history", ["c", "u"], {"limit": draw(bad_limit)}
    if slot == "role":
        msg["role"] = draw(bad_role)
    elif slot == "content":
        msg["content"] = draw(bad_content)
    elif slot in ("tool_name", "tool_call_id", "key"):
        msg[{"key": "idempotency_key"}.get(slot, slot)] = draw(bad_id.filter(lambda v: v is not None))
    elif slot == "tool_calls":
        msg["tool_calls"] = draw(bad_list)
    elif slot == "metadata":
        msg["metadata"] = draw(bad_object)
    elif slot == "token_count":
        msg["token_count"] = draw(bad_token_count)
    elif slot == "tool_without_call_id":
        msg = {"role": "tool", "content": "result"}
    elif slot == "batch_shape":
        shape = draw(
            st.sampled_from(
                [
                    "empty",
                    "str",
                    "dict",
                    "unknown_field",
                    "duplicate_keys",
                    "not_a_dict",
                    "no_role",
                    "too_many",
                ]
            )
        )
        batch: Any = {
            "empty": [],
            "str": "messages",
            "dict": {"role": "user"},
            "unknown_field": [GOOD, {"role": "user", "content": "x", "colour": "red"}],
            "duplicate_keys": [{**GOOD, "idempotency_key": "d"}, {**GOOD, "idempotency_key": "d"}],
            "not_a_dict": [GOOD, "message"],
            "no_role": [GOOD, {"content": "x"}],
            "too_many": [GOOD] * 10_001,
        }[shape]
        return "save_messages", ["c", "u", batch], {}
    if slot == "turn_message":
        return "save_and_get_history", ["c", "u", {"role": draw(bad_role)}], {}
    if draw(st.booleans()):
        # The bad message at a random index of an otherwise valid batch.
        before = draw(st.integers(0, 5))
        after = draw(st.integers(0, 5))
        return "save_messages", ["c", "u", [GOOD] * before + [msg] + [GOOD] * after], {}
    role = msg.pop("role")
    content = msg.pop("content", None)
    return "save_message", ["c", "u", role, content], msg


async def snapshot(dsn: str) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(
            await conn.fetch(
                "SELECT (SELECT count(*) FROM messages), (SELECT coalesce(sum(next_seq), 0) FROM conversations), "
                "(SELECT count(*) FROM conversations), (SELECT max(updated_at) FROM conversations)"
            )
        )
    finally:
        await conn.close()


@settings(PROFILE, max_examples=PROFILE.max_examples * 2)
@given(call=invalid_calls())
@pytest.mark.guarantee(7)
def test_every_invalid_input_raises_invalid_input_and_writes_nothing(
    env: Env, call: tuple[str, list[Any], dict[str, Any]]
) -> None:
    count("invalid input")
    method, args, kwargs = call
    try:
        note(f"{method}({args!r:.200}, {kwargs!r:.200})")
    except ValueError:  # repr of an integer too long for decimal text, one of the bad inputs
        note(f"{method}(<args with a huge int>)")
    store = env.store

    async def body() -> None:
        await store.get_or_create_conversation("c", "u")
        before = await snapshot(env.dsn)
        with pytest.raises(InvalidInput):
            await getattr(store, method)(*args, **kwargs)
        assert await snapshot(env.dsn) == before

    env.run(body())


# -- stateful: random sequences of public operations vs an in-memory model -----------------------
@dataclass
class ModelMessage:
    seq: int
    role: str
    content: str
    key: str | None
    tokens: int | None = None  # usage.input_tokens, when saved with usage


@dataclass
class ModelConversation:
    user: str
    title: str | None
    messages: list[ModelMessage] = field(default_factory=list)
    next_seq: int = 1
    feedback: dict[int, int] = field(default_factory=dict)  # seq -> rating
    summaries: dict[int, str] = field(default_factory=dict)  # through_seq -> content
    expired: bool = False  # unknown to everyone until purge_expired deletes it

    def last_seq(self) -> int:
        return self.messages[-1].seq if self.messages else 0

    def by_key(self, key: str | None) -> ModelMessage | None:
        return next((m for m in self.messages if key is not None and m.key == key), None)


small_text = st.text(STORABLE, max_size=12)
keys = st.none() | st.sampled_from(["k0", "k1", "k2", "k3"])
roles = st.sampled_from(["user", "assistant"])


class StoreMachine(RuleBasedStateMachine):
    env: Env  # set by the test before running

    conversations = Bundle("conversations")

    @initialize()
    def setup(self) -> None:
        count("state machine")
        self.prefix = uuid.uuid4().hex[:10]
        self.users = [f"{self.prefix}-u{i}" for i in range(3)]
        self.model: dict[str, ModelConversation] = {}
        self.steps = 0

    def run(self, coro: Awaitable[T]) -> T:
        self.steps += 1
        EXAMPLES["state machine steps"] = EXAMPLES.get("state machine steps", 0) + 1
        return self.env.run(coro)

    def outcome(self, make: Callable[[], Awaitable[T]]) -> tuple[str, Any]:
        async def attempt() -> tuple[str, Any]:
            try:
                return "ok", await make()
            except ConversationNotFound:
                return "not found", None
            except IdempotencyConflict:
                return "conflict", None
            except ConcurrentUpdate as exc:
                return "concurrent", exc.last_seq
            except InvalidInput as exc:
                return "refused", exc.field

        return self.run(attempt())

    @property
    def store(self) -> ConversationStore:
        return self.env.store

    @rule(target=conversations, user=st.integers(0, 2), title=st.none() | small_text)
    def create(self, user: int, title: str | None) -> str:
        uid = self.users[user]
        conv = self.run(self.store.get_or_create_conversation(None, uid, title=title))
        self.model[conv.id] = ModelConversation(uid, title)
        assert (conv.user_id, conv.title) == (uid, title)
        return conv.id

    @rule(cid=conversations, user=st.integers(0, 2), title=st.none() | small_text)
    def get_or_create_existing(self, cid: str, user: int, title: str | None) -> None:
        uid = self.users[user]
        status, conv = self.outcome(lambda: self.store.get_or_create_conversation(cid, uid, title=title))
        model = self.model.get(cid)
        if model is None:  # deleted: the id is free again and names a new conversation
            assert status == "ok"
            self.model[cid] = ModelConversation(uid, title)
        elif model.user != uid or model.expired:  # an expired id is not revived before the purge
            assert status == "not found"
        else:
            assert status == "ok" and conv.title == model.title

    def expect_not_found(self, cid: str, uid: str, status: str) -> bool:
        model = self.model.get(cid)
        if model is None or model.user != uid or model.expired:
            assert status == "not found", status
            return True
        return False

    @rule(
        cid=conversations,
        owner=st.booleans(),
        role=roles,
        content=small_text,
        key=keys,
        tokens=st.none() | st.integers(0, 9),
    )
    def save(
        self, cid: str, owner: bool, role: str, content: str, key: str | None, tokens: int | None
    ) -> None:
        uid = self.owner_or_other(cid, owner)
        usage = None if tokens is None else {"input_tokens": tokens}
        status, message = self.outcome(
            lambda: self.store.save_message(cid, uid, role, content, idempotency_key=key, usage=usage)
        )
        if self.expect_not_found(cid, uid, status):
            return
        model = self.model[cid]
        stored = model.by_key(key)
        if stored is not None:
            if (stored.role, stored.content) != (role, content):
                assert status == "conflict"
            else:
                assert status == "ok" and message.seq == stored.seq
            return
        assert status == "ok" and message.seq == model.next_seq
        model.messages.append(ModelMessage(model.next_seq, role, content, key, tokens))
        model.next_seq += 1

    @rule(cid=conversations, owner=st.booleans(), content=small_text, off_by=st.sampled_from([0, 0, 1, -1]))
    def guarded_save(self, cid: str, owner: bool, content: str, off_by: int) -> None:
        uid = self.owner_or_other(cid, owner)
        model = self.model.get(cid)
        expected = max(0, (model.last_seq() if model else 0) + off_by)
        status, got = self.outcome(
            lambda: self.store.save_message(cid, uid, "user", content, expected_last_seq=expected)
        )
        if self.expect_not_found(cid, uid, status):
            return
        assert model is not None
        if expected != model.last_seq():
            assert (status, got) == ("concurrent", model.last_seq())
            return
        assert status == "ok" and got.seq == model.next_seq
        model.messages.append(ModelMessage(model.next_seq, "user", content, None))
        model.next_seq += 1

    @rule(cid=conversations, owner=st.booleans(), content=small_text.filter(bool), through=st.integers(1, 12))
    def summarize(self, cid: str, owner: bool, content: str, through: int) -> None:
        uid = self.owner_or_other(cid, owner)
        status, got = self.outcome(lambda: self.store.save_summary(cid, uid, content, through_seq=through))
        if self.expect_not_found(cid, uid, status):
            return
        model = self.model[cid]
        if through > model.last_seq() or (model.summaries and through < max(model.summaries)):
            assert (status, got) == ("refused", "through_seq")
            return
        assert status == "ok" and got.through_seq == through
        model.summaries[through] = content

    @rule(cid=conversations, owner=st.booleans(), limit=st.integers(1, 10))
    def summarized_history(self, cid: str, owner: bool, limit: int) -> None:
        uid = self.owner_or_other(cid, owner)
        status, got = self.outcome(lambda: self.store.get_history(cid, uid, limit=limit, summarized=True))
        if self.expect_not_found(cid, uid, status):
            return
        model = self.model[cid]
        through = max(model.summaries, default=0)
        candidates = ([(through, model.summaries[through], through)] if through else []) + [
            (m.seq, m.content, None) for m in model.messages if m.seq > through
        ]
        assert [(m.seq, m.content, m.summary_through) for m in got] == candidates[-limit:]

    @rule(
        cid=conversations,
        owner=st.booleans(),
        batch=st.lists(
            st.tuples(roles, small_text, keys),
            min_size=1,
            max_size=5,
            unique_by=lambda m: m[2] if m[2] is not None else object(),
        ),
    )
    def save_batch(self, cid: str, owner: bool, batch: list[tuple[str, str, str | None]]) -> None:
        uid = self.owner_or_other(cid, owner)
        status, stored = self.outcome(
            lambda: self.store.save_messages(
                cid, uid, [{"role": r, "content": c, "idempotency_key": k} for r, c, k in batch]
            )
        )
        if self.expect_not_found(cid, uid, status):
            return
        model = self.model[cid]
        conflict = any(
            (old := model.by_key(k)) is not None and (old.role, old.content) != (r, c) for r, c, k in batch
        )
        if conflict:
            assert status == "conflict"
            return
        assert status == "ok"
        for (role, content, key), message in zip(batch, stored, strict=True):
            old = model.by_key(key)
            if old is not None:
                assert message.seq == old.seq
            else:
                assert message.seq == model.next_seq
                model.messages.append(ModelMessage(model.next_seq, role, content, key))
                model.next_seq += 1

    @rule(cid=conversations, role=roles, content=small_text, limit=st.integers(1, 8))
    def turn(self, cid: str, role: str, content: str, limit: int) -> None:
        model = self.model.get(cid)
        uid = model.user if model else self.users[0]
        status, result = self.outcome(
            lambda: self.store.save_and_get_history(cid, uid, {"role": role, "content": content}, limit=limit)
        )
        if self.expect_not_found(cid, uid, status):
            return
        assert model is not None
        model.messages.append(ModelMessage(model.next_seq, role, content, None))
        model.next_seq += 1
        saved, window = result
        assert saved.seq == model.messages[-1].seq
        self.compare(window, model.messages[-limit:])

    def owner_or_other(self, cid: str, owner: bool) -> str:
        model = self.model.get(cid)
        if model is None:
            return self.users[0]
        return model.user if owner else next(u for u in self.users if u != model.user)

    def compare(self, got: list[Any], expected: list[ModelMessage]) -> None:
        assert [
            (m.seq, m.role, m.content, m.idempotency_key, m.usage and m.usage.input_tokens) for m in got
        ] == [(m.seq, m.role, m.content, m.key, m.tokens) for m in expected]

    @rule(cid=conversations, owner=st.booleans(), limit=st.integers(1, 10), trim=st.booleans())
    def history(self, cid: str, owner: bool, limit: int, trim: bool) -> None:
        uid = self.owner_or_other(cid, owner)
        status, got = self.outcome(lambda: self.store.get_history(cid, uid, limit=limit, trim=trim))
        if not self.expect_not_found(cid, uid, status):
            self.compare(got, self.model[cid].messages[-limit:])

    @rule(cid=conversations, owner=st.booleans())
    def pop(self, cid: str, owner: bool) -> None:
        uid = self.owner_or_other(cid, owner)
        status, got = self.outcome(lambda: self.store.pop_last_message(cid, uid))
        if self.expect_not_found(cid, uid, status):
            return
        model = self.model[cid]
        if not model.messages:
            assert got is None
        else:
            last = model.messages.pop()
            model.feedback.pop(last.seq, None)
            assert (got.seq, got.content, got.idempotency_key) == (last.seq, last.content, last.key)
            model.summaries = {t: c for t, c in model.summaries.items() if t < last.seq}

    @rule(cid=conversations, owner=st.booleans())
    def clear(self, cid: str, owner: bool) -> None:
        uid = self.owner_or_other(cid, owner)
        status, got = self.outcome(lambda: self.store.clear_conversation(cid, uid))
        if not self.expect_not_found(cid, uid, status):
            assert got == len(self.model[cid].messages)
            self.model[cid].messages.clear()
            self.model[cid].feedback.clear()
            self.model[cid].summaries.clear()

    @rule(cid=conversations, owner=st.booleans())
    def count_messages(self, cid: str, owner: bool) -> None:
        uid = self.owner_or_other(cid, owner)
        status, got = self.outcome(lambda: self.store.count_messages(cid, uid))
        if not self.expect_not_found(cid, uid, status):
            assert got == len(self.model[cid].messages)

    @rule(cid=conversations, owner=st.booleans(), title=st.none() | small_text)
    def update(self, cid: str, owner: bool, title: str | None) -> None:
        uid = self.owner_or_other(cid, owner)
        status, got = self.outcome(lambda: self.store.update_conversation(cid, uid, title=title))
        if not self.expect_not_found(cid, uid, status):
            self.model[cid].title = title
            assert got.title == title

    @rule(cid=conversations, owner=st.booleans())
    def get(self, cid: str, owner: bool) -> None:
        uid = self.owner_or_other(cid, owner)
        status, got = self.outcome(lambda: self.store.get_conversation(cid, uid))
        if not self.expect_not_found(cid, uid, status):
            assert (got.user_id, got.title) == (uid, self.model[cid].title)

    @rule(cid=conversations, owner=st.booleans())
    def delete(self, cid: str, owner: bool) -> None:
        uid = self.owner_or_other(cid, owner)
        status, got = self.outcome(lambda: self.store.delete_conversation(cid, uid))
        if not self.expect_not_found(cid, uid, status):
            assert got == len(self.model[cid].messages)
            del self.model[cid]

    @rule(target=conversations, cid=conversations, owner=st.booleans(), back=st.integers(0, 3))
    def fork(self, cid: str, owner: bool, back: int) -> str:
        uid = self.owner_or_other(cid, owner)
        model = self.model.get(cid)
        at_seq = max(0, (model.next_seq - 1 if model else 0) - back)
        status, got = self.outcome(lambda: self.store.fork_conversation(cid, uid, at_seq=at_seq))
        if self.store.encrypted:  # refused before any I/O, whoever asks (docs/data-protection.md)
            assert (status, got) == ("refused", "encryption")
            return f"{self.prefix}-nofork-{uuid.uuid4().hex[:8]}"
        if self.expect_not_found(cid, uid, status):
            return f"{self.prefix}-nofork-{uuid.uuid4().hex[:8]}"  # unknown to everyone, like a foreign id
        assert model is not None and (got.parent_id, got.forked_at_seq) == (cid, at_seq)
        # The copied prefix keeps every column (usage too), its summaries and its feedback.
        kept = [
            ModelMessage(m.seq, m.role, m.content, m.key, m.tokens) for m in model.messages if m.seq <= at_seq
        ]
        self.model[got.id] = ModelConversation(
            uid,
            model.title,
            kept,
            at_seq + 1,
            {k: v for k, v in model.feedback.items() if k <= at_seq},
            {k: v for k, v in model.summaries.items() if k <= at_seq},
        )
        return str(got.id)

    @rule(
        cid=conversations,
        owner=st.booleans(),
        pick=st.integers(0, 5),
        rating=st.sampled_from([-1, 0, 1]),
        clear=st.booleans(),
    )
    def feedback(self, cid: str, owner: bool, pick: int, rating: int, clear: bool) -> None:
        uid = self.owner_or_other(cid, owner)
        model = self.model.get(cid)
        seq = model.messages[pick % len(model.messages)].seq if model and model.messages else 1

        async def act() -> Any:
            try:
                if clear:
                    return await self.store.clear_feedback(cid, uid, seq)
                return await self.store.set_feedback(cid, uid, seq, rating=rating)
            except MessageNotFound:
                return "missing"

        status, got = self.outcome(act)
        if self.expect_not_found(cid, uid, status):
            return
        assert model is not None
        if not model.messages:
            assert got == ("missing" if not clear else False)
        elif clear:
            assert got == (seq in model.feedback)
            model.feedback.pop(seq, None)
        else:
            assert got.rating == rating
            model.feedback[seq] = rating
        stored = self.run(self.store.get_feedback(cid, uid))
        assert {f.seq: f.rating for f in stored} == model.feedback

    @rule(user=st.integers(0, 2))
    def listing(self, user: int) -> None:
        uid = self.users[user]
        page = self.run(self.store.list_conversations(uid, limit=100))
        assert sorted(c.id for c in page.items) == sorted(
            c for c, m in self.model.items() if m.user == uid and not m.expired
        )

    # -- retention (docs/retention.md) ---------------------------------------------------------
    @rule(cid=conversations, owner=st.booleans(), past=st.booleans())
    def set_expiry(self, cid: str, owner: bool, past: bool) -> None:
        uid = self.owner_or_other(cid, owner)
        at = datetime(2001, 1, 1, tzinfo=UTC) if past else datetime(2999, 1, 1, tzinfo=UTC)
        status, got = self.outcome(lambda: self.store.update_conversation(cid, uid, expires_at=at))
        if not self.expect_not_found(cid, uid, status):
            assert got.expires_at == at
            self.model[cid].expired = past

    @rule()
    def purge(self) -> None:
        doomed = {c: m for c, m in self.model.items() if m.expired}
        counts = self.run(self.store.purge_expired(batch_size=2))
        assert (counts.conversations, counts.messages) == (
            len(doomed),
            sum(len(m.messages) for m in doomed.values()),
        )
        for cid in doomed:  # the ids are free again
            del self.model[cid]

    def teardown(self) -> None:
        # purge_expired is store-wide: leave no expired row to the next example's counts.
        if hasattr(self, "model"):
            self.run(self.store.purge_expired())

    @invariant()
    def nothing_foreign_is_visible(self) -> None:
        # Checked cheaply every step: an id that is not in the model is unknown to every user.
        if hasattr(self, "model") and self.steps % 5 == 0:
            status, _ = self.outcome(lambda: self.store.get_history(f"{self.prefix}-never", self.users[0]))
            assert status == "not found"


@pytest.mark.guarantee(1, 2, 5, 7)
def test_random_operation_sequences_match_the_model(env: Env) -> None:
    StoreMachine.env = env
    run_state_machine_as_test(StoreMachine, settings=settings(PROFILE, max_examples=MACHINE_EXAMPLES))
    assert EXAMPLES["state machine"] >= MACHINE_EXAMPLES // 2


def test_report_examples_run() -> None:
    """Runs last in this module: the figures for the report (pytest -s shows them)."""
    print(f"\nhypothesis examples run (profile {PROFILE_NAME}): {EXAMPLES}")
    assert EXAMPLES.get("round trip", 0) > 0 and EXAMPLES.get("invalid input", 0) > 0
