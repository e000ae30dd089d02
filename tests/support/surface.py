"""Shared by the security, PgBouncer and property tests: the public surface, found by introspection,
one call of every public method, and the row-level-security setup a DBA would do."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from convdb import ConversationNotFound, ConversationStore, InvalidInput
from convdb.testing import apply_schema

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_RLS = ROOT / "schema_rls.sql"
APP_ROLE = "convdb_test_app"  # a login role, member of convdb_app (schema_rls.sql)

# Not operations on one user's data: they take no user id (rotate re-wraps every user's data key;
# tests/security/test_security_encryption.py covers it; purge_expired deletes every user's expired
# conversations, a maintenance call: tests/agent/test_retention.py covers it).
LIFECYCLE = frozenset({"connect", "close", "verify_schema", "rotate", "purge_expired"})
# Methods that take no conversation id: they act on "everything of this user".
USER_WIDE = frozenset({"list_conversations", "delete_user_data", "shred_user"})
# Methods for which an unknown id is not an error: it names the conversation to create.
CREATING = frozenset({"get_or_create_conversation", "import_conversation"})


def public_methods() -> list[str]:
    """Every public operation of ConversationStore, found by introspection (new ones included)."""
    names = []
    for name, member in inspect.getmembers(ConversationStore):
        if name.startswith("_") or name in LIFECYCLE or not callable(member) or isinstance(member, property):
            continue
        names.append(name)
    return sorted(names)


def takes_conversation_id(name: str) -> bool:
    return "conversation_id" in inspect.signature(getattr(ConversationStore, name)).parameters


async def outcome(result: Any) -> Any:
    """Await a coroutine or drain an async iterator (the export methods stream)."""
    if inspect.isawaitable(result):
        return await result
    if isinstance(result, AsyncIterator):
        return [item async for item in result]
    return result


async def export_records(store: ConversationStore, cid: str, uid: str) -> list[dict[str, Any]]:
    return [record async for record in store.export_conversation(cid, uid)]


def arguments_for(
    name: str, cid: str, uid: str, records: list[dict[str, Any]]
) -> tuple[list[Any], dict[str, Any]]:
    """Positional and keyword arguments for one call of ``name`` on conversation ``cid`` as ``uid``.

    Built from the parameter names, so a new method is called without editing this file; a new
    required parameter this does not know fails the test with its name.
    """
    known: dict[str, Any] = {
        "conversation_id": cid,
        "user_id": uid,
        "role": "user",
        "content": "probe",
        "messages": [{"role": "user", "content": "probe"}],
        "message": {"role": "user", "content": "probe"},
        "records": records,
        "at_seq": 0,
        "seq": 1,
        "rating": 1,
        "query": "probe",
        "through_seq": 1,
        "usage": {"input_tokens": 1},
        "since": datetime(2020, 1, 1, tzinfo=UTC),
        "until": datetime(2030, 1, 1, tzinfo=UTC),
    }
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for param in list(inspect.signature(getattr(ConversationStore, name)).parameters.values())[1:]:
        if param.name in known and (
            param.default is inspect.Parameter.empty or param.name == "conversation_id"
        ):
            if param.kind is inspect.Parameter.KEYWORD_ONLY:
                kwargs[param.name] = known[param.name]
            else:
                args.append(known[param.name])
        elif param.default is inspect.Parameter.empty and param.kind not in (
            inspect.Parameter.VAR_KEYWORD,
            inspect.Parameter.VAR_POSITIONAL,
        ):
            pytest.fail(
                f"tests/support/surface.py arguments_for: no value for {name}({param.name}=...); "
                "add one so the isolation matrix covers the new method"
            )
    if name == "update_conversation":
        kwargs["title"] = "probe"
    return args, kwargs


async def call(store: ConversationStore, name: str, cid: str, uid: str, records: list[dict[str, Any]]) -> Any:
    args, kwargs = arguments_for(name, cid, uid, records)
    return await outcome(getattr(store, name)(*args, **kwargs))


async def not_found(make: Callable[[], Any]) -> ConversationNotFound:
    with pytest.raises(ConversationNotFound) as caught:
        await outcome(make())
    assert type(caught.value) is ConversationNotFound
    return caught.value


# -- every public method, as the owner -----------------------------------------------------------
async def exercise_every_method(store: ConversationStore, uid: str, prefix: str) -> set[str]:
    """Call every public method as the owner and check what it returns; returns the names called."""
    called: set[str] = set()
    cid = f"{prefix}-main"
    conv = await store.get_or_create_conversation(cid, uid, title="t", metadata={"k": [1, "ü"]})
    called.add("get_or_create_conversation")
    assert (conv.id, conv.user_id, conv.title, conv.metadata) == (cid, uid, "t", {"k": [1, "ü"]})
    assert (await store.get_conversation(cid, uid)).id == cid
    called.add("get_conversation")
    m1 = await store.save_message(cid, uid, "user", "hello", idempotency_key="k1")
    assert (await store.save_message(cid, uid, "user", "hello", idempotency_key="k1")).seq == m1.seq == 1
    called.add("save_message")
    batch = await store.save_messages(
        cid,
        uid,
        [
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "name": "f"}]},
            {"role": "tool", "content": "42", "tool_call_id": "c1", "tool_name": "f"},
            {"role": "assistant", "content": "done", "idempotency_key": "k2"},
        ],
    )
    assert [m.seq for m in batch] == [2, 3, 4]
    called.add("save_messages")
    saved, window = await store.save_and_get_history(cid, uid, {"role": "user", "content": "more"}, limit=3)
    assert saved.seq == 5 and [m.seq for m in window][-1] == 5
    called.add("save_and_get_history")
    history = await store.get_history(cid, uid, limit=50)
    assert [m.content for m in history] == ["hello", None, "42", "done", "more"]
    called.add("get_history")
    assert await store.count_messages(cid, uid) == 5
    called.add("count_messages")
    page = await store.list_conversations(uid, limit=10)
    assert cid in [c.id for c in page.items]
    called.add("list_conversations")
    updated = await store.update_conversation(cid, uid, title="renamed", metadata={"x": 1})
    assert (updated.title, updated.metadata) == ("renamed", {"x": 1})
    called.add("update_conversation")
    summary = await store.save_summary(cid, uid, "summary", through_seq=2)
    assert summary.through_seq == 2
    called.add("save_summary")
    assert [s.content for s in await store.list_summaries(cid, uid)] == ["summary"]
    called.add("list_summaries")
    summarized = await store.get_history(cid, uid, summarized=True)
    assert [(m.seq, m.summary_through) for m in summarized] == [(2, 2), (4, None), (5, None)]
    guarded = await store.save_message(
        cid, uid, "assistant", "g", expected_last_seq=5, usage={"model": "m", "input_tokens": 3}
    )
    assert guarded.usage is not None and guarded.usage.input_tokens == 3
    report = await store.usage_report(
        uid,
        conversation_id=cid,
        since=datetime(2020, 1, 1, tzinfo=UTC),
        until=datetime(2100, 1, 1, tzinfo=UTC),
    )
    assert report.total.input_tokens == 3
    called.add("usage_report")
    assert await store.record_usage(cid, uid, 5, {"input_tokens": 2}) is True
    assert await store.record_usage(cid, uid, 5, {"input_tokens": 9}) is False  # never overwritten
    called.add("record_usage")
    assert (await store.pop_last_message(cid, uid)) == guarded
    popped = await store.pop_last_message(cid, uid)
    assert popped is not None and popped.content == "more"
    called.add("pop_last_message")
    records = await export_records(store, cid, uid)
    assert len(records) == 1 + 4
    called.add("export_conversation")
    assert [m.seq for m in [m async for m in store.export_messages(cid, uid)]] == [1, 2, 3, 4]
    called.add("export_messages")
    copy = await store.import_conversation(uid, records, conversation_id=f"{prefix}-copy")
    assert [m.content for m in await store.get_history(copy.id, uid)] == ["hello", None, "42", "done"]
    called.add("import_conversation")
    if store.encrypted:  # refused: the values are bound to their conversation (docs/data-protection.md)
        with pytest.raises(InvalidInput, match="encryption: fork_conversation"):
            await store.fork_conversation(cid, uid, at_seq=2, title="branch")
        fork = None
    else:
        fork = await store.fork_conversation(cid, uid, at_seq=2, title="branch")
        assert (
            fork.parent_id,
            fork.forked_at_seq,
            [m.seq for m in await store.get_history(fork.id, uid)],
        ) == (
            cid,
            2,
            [1, 2],
        )
    called.add("fork_conversation")
    rated = await store.set_feedback(cid, uid, 4, rating=1, comment="ok", tags=["t"])
    assert (rated.seq, rated.rating, rated.tags) == (4, 1, ("t",))
    called.add("set_feedback")
    assert [f.seq for f in await store.get_feedback(cid, uid)] == [4]
    called.add("get_feedback")
    assert (await store.feedback_summary(uid)).positive == 1
    assert (await store.feedback_summary(uid, conversation_id=cid)).count == 1
    called.add("feedback_summary")
    assert await store.clear_feedback(cid, uid, 4) is True
    called.add("clear_feedback")
    if fork is None:
        with pytest.raises(InvalidInput, match="encryption: search_messages"):
            await store.search_messages(uid, "done", conversation_id=cid)
    else:
        hits = await store.search_messages(uid, "done", conversation_id=cid)
        assert [(h.conversation_id, h.seq) for h in hits.items] == [(cid, 4)]
        assert {h.conversation_id for h in (await store.search_messages(uid, "hello")).items} >= {
            cid,
            fork.id,
        }
    called.add("search_messages")
    if fork is not None:
        assert await store.delete_conversation(fork.id, uid) == 2
    assert await store.clear_conversation(cid, uid) == 4
    assert await store.get_history(cid, uid) == []
    called.add("clear_conversation")
    assert await store.delete_conversation(copy.id, uid) == 4
    called.add("delete_conversation")
    erased = await store.delete_user_data(uid)
    assert erased.conversations >= 1
    called.add("delete_user_data")
    await store.get_or_create_conversation(cid, uid, title="again")
    shredded = await store.shred_user(uid)
    assert (shredded.conversations, shredded.messages) == (1, 0)
    called.add("shred_user")
    with pytest.raises(ConversationNotFound):
        await store.get_conversation(cid, uid)
    return called


# -- row-level security, as a DBA sets it up -----------------------------------------------------
def with_user(dsn: str, user: str) -> str:
    parts = urlsplit(dsn)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def enable_rls(dsn: str) -> str:
    """Apply schema_rls.sql to the database of ``dsn`` (as its superuser) and return the DSN of the
    login role APP_ROLE (member of convdb_app, no other rights)."""
    apply_schema(dsn, SCHEMA_RLS)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"""
            DO $$ BEGIN
                IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                    CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS;
                END IF;
            END $$;
            GRANT convdb_app TO {APP_ROLE};
        """)
    finally:
        await conn.close()
    return with_user(dsn, APP_ROLE)
