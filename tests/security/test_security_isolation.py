"""Security: per-user isolation on every public method, an injection corpus stored verbatim, and the
optional least-privilege role with row-level security (schema_rls.sql)."""

from __future__ import annotations

import functools
import os
from typing import Any

import asyncpg
import pytest

from convdb import ConversationNotFound, ConversationStore, InvalidInput, StaticKeys
from convdb.runner import set_rls_user
from tests.support.surface import (
    CREATING,
    USER_WIDE,
    call,
    enable_rls,
    exercise_every_method,
    export_records,
    not_found,
    public_methods,
    takes_conversation_id,
)


async def dump(db: asyncpg.Connection) -> list[str]:
    rows = await db.fetch(
        "SELECT 'c' || row_to_json(c)::text FROM conversations c UNION ALL "
        "SELECT 'm' || row_to_json(m)::text FROM messages m ORDER BY 1"
    )
    return [r[0] for r in rows]


async def seed_victim(store: ConversationStore) -> None:
    await store.get_or_create_conversation("victim-conv", "victim", title="secret", metadata={"s": 1})
    await store.save_messages(
        "victim-conv",
        "victim",
        [
            {"role": "user", "content": "my secret", "idempotency_key": "vk"},
            {"role": "assistant", "content": "noted"},
        ],
    )


def test_introspection_finds_the_public_surface() -> None:
    names = public_methods()
    assert {"get_or_create_conversation", "save_message", "save_messages", "get_history"} <= set(names)
    for name in names:
        assert takes_conversation_id(name) or name in USER_WIDE, (
            f"{name} takes no conversation_id: add it to USER_WIDE and check what it exposes"
        )


# Conversation-scoped methods an encrypting store refuses (docs/data-protection.md).
REFUSED_WHEN_ENCRYPTED = {"fork_conversation", "search_messages"}


@pytest.mark.parametrize(
    "mode",
    [
        "plain",
        "encrypted",  # encryption at rest on: the same refusals, the same single message
        "row_level_security",  # on Citus too: schema_rls.sql's Citus rule (docs/citus.md)
        "row_level_security_encrypted",
    ],
)
@pytest.mark.guarantee(1, 9)
async def test_every_method_treats_foreign_and_unknown_ids_identically(
    dsn: str, db: asyncpg.Connection, mode: str
) -> None:
    rls = mode.startswith("row_level_security")
    app_dsn = await enable_rls(dsn) if rls else dsn
    provider = StaticKeys({"k1": os.urandom(32)}, "k1") if mode.endswith("encrypted") else None
    async with await ConversationStore.connect(
        app_dsn, min_size=1, max_size=4, row_level_security=rls, encryption=provider
    ) as store:
        await seed_victim(store)
        await store.get_or_create_conversation("attacker-own", "attacker")
        await store.save_message("attacker-own", "attacker", "user", "mine")
        records = await export_records(store, "attacker-own", "attacker")
        before = await dump(db)
        assert any("my secret" in r for r in before) == (provider is None)

        messages: dict[str, str] = {}
        checked: set[str] = set()
        for name in public_methods():
            if name in USER_WIDE:
                continue
            if provider is not None and name in REFUSED_WHEN_ENCRYPTED:
                # Refused for every id alike, before any I/O: says nothing about who owns what.
                for owner in ("attacker", "no-such-user"):
                    with pytest.raises(InvalidInput, match=f"encryption: {name} is not available"):
                        await call(store, name, "victim-conv", owner, records)
                checked.add(name)
                continue
            foreign = await not_found(
                functools.partial(call, store, name, "victim-conv", "attacker", records)
            )
            nobody = await not_found(
                functools.partial(call, store, name, "victim-conv", "no-such-user", records)
            )
            messages[f"{name} foreign"] = str(foreign)
            messages[f"{name} unknown user"] = str(nobody)
            if name not in CREATING:
                unknown = await not_found(
                    functools.partial(call, store, name, "no-such-conv", "attacker", records)
                )
                messages[f"{name} unknown"] = str(unknown)
                assert unknown.args == foreign.args
            checked.add(name)
        assert checked | USER_WIDE == set(public_methods())
        assert set(messages.values()) == {str(ConversationNotFound())}, messages
        assert await dump(db) == before, "a refused call changed stored data"

        # The user-wide methods see and touch only the caller's own rows.
        listed = await store.list_conversations("attacker", limit=100)
        assert [c.id for c in listed.items] == ["attacker-own"]
        assert (await store.list_conversations("no-such-user")).items == []
        erased = await (store.shred_user if provider else store.delete_user_data)("attacker")
        assert (erased.conversations, erased.messages) == (1, 1)
        assert [r for r in await dump(db) if "victim" in r] == [r for r in before if "victim" in r]
        assert [m.content for m in await store.get_history("victim-conv", "victim")] == ["my secret", "noted"]
    print(
        f"\nisolation matrix ({mode}): {len(checked)} methods x foreign/unknown ids, "
        f"{len(messages)} refusals, one message; user-wide methods: {sorted(USER_WIDE)}"
    )


INJECTION_CORPUS = [
    "'; DROP TABLE messages; --",
    "'); DELETE FROM conversations; --",
    '" OR "1"="1',
    "' OR '1'='1",
    "' OR 1=1 --",
    "1; SELECT pg_sleep(10)",
    "$1",
    "$$; DROP TABLE conversations; $$",
    "$tag$ quoted $tag$",
    "E'\\x00'",
    "\\",
    "\\\\'",
    "\\'; DROP TABLE messages; --",
    "%",
    "_%_",
    "*/ SELECT 1 /*",
    "-- comment",
    "/* unterminated",
    "COPY messages TO PROGRAM 'rm -rf /'",
    "'; COMMIT; BEGIN; --",
    "\u2019; DROP TABLE messages; --",  # right single quotation mark
    "\uff07 OR 1=1",  # fullwidth apostrophe
    "\u02bc OR 1=1",  # modifier letter apostrophe
    "ʼ; DROP TABLE messages;--",
    "\u202eevil\u202c",  # right-to-left override
    "a\u200bb\u200dc\ufeff",  # zero-width characters, BOM
    "e\u0301 vs \u00e9",  # combining vs precomposed
    "\U0001f4a9\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\ufffe\uffff",  # noncharacters
    "\r\n\t\x0b\x0c\x1b[31m",  # control characters, ANSI escape
    "<script>alert(1)</script>",
    '{"$gt": ""}',
    "${jndi:ldap://x}",
    "../../etc/passwd",
    "null",
    "NULL",
    " ",
    "x" * 255,
]


@pytest.mark.guarantee(1)
async def test_injection_corpus_is_stored_verbatim(store: ConversationStore, db: asyncpg.Connection) -> None:
    stored = 0
    for i, text in enumerate(INJECTION_CORPUS):
        ident = text[:255]
        conv = await store.get_or_create_conversation(
            f"{ident}{i}"[-255:], ident, title=text, metadata={text: text, "list": [text]}
        )
        assert (conv.id, conv.user_id, conv.title) == (f"{ident}{i}"[-255:], ident, text)
        assert conv.metadata == {text: text, "list": [text]}
        one = await store.save_message(
            conv.id,
            ident,
            "assistant",
            text,
            tool_name=ident,
            tool_call_id=ident,
            tool_calls=[{"arguments": text}],
            metadata={text: [text]},
            idempotency_key=ident,
        )
        batch = await store.save_messages(
            conv.id,
            ident,
            [
                {"role": "tool", "content": text, "tool_call_id": ident, "metadata": {"k": text}},
                {
                    "role": "user",
                    "content": text + text,
                    "idempotency_key": ident + "2" if len(ident) < 255 else "k",
                },
            ],
        )
        history = await store.get_history(conv.id, ident)
        assert [m.content for m in history] == [text, text, text + text]
        assert history[0].tool_name == history[0].tool_call_id == ident == history[0].idempotency_key
        assert history[0].tool_calls == [{"arguments": text}] and history[0].metadata == {text: [text]}
        assert history[1].metadata == {"k": text}
        assert (one.seq, [m.seq for m in batch]) == (1, [2, 3])
        # The id is data, never code: another user's id with the same text sees nothing.
        with pytest.raises(ConversationNotFound):
            await store.get_history(conv.id, ident[:254] + "'")
        stored += 3
        found = await db.fetchval(
            "SELECT count(*) FROM messages WHERE content = $1 AND conversation_id = $2", text, conv.id
        )
        assert found == 2
    assert await db.fetchval("SELECT count(*) FROM messages") == stored
    assert await db.fetchval("SELECT count(*) FROM conversations") == len(INJECTION_CORPUS)
    print(
        f"\ninjection corpus: {len(INJECTION_CORPUS)} strings in every text field, {stored} messages, verbatim"
    )


# -- the least-privilege role with row-level security --------------------------------------------
@pytest.mark.guarantee(9)
async def test_package_works_under_the_app_role_with_rls(dsn: str) -> None:
    app_dsn = await enable_rls(dsn)
    async with await ConversationStore.connect(
        app_dsn, min_size=1, max_size=4, row_level_security=True
    ) as store:
        async with store.pool.acquire() as conn:
            role = await conn.fetchrow(
                "SELECT current_user, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
            )
            assert role is not None and not role["rolsuper"] and not role["rolbypassrls"]
        called = await exercise_every_method(store, "alice", "rls")
    assert called == set(public_methods())


@pytest.mark.guarantee(9)
async def test_rls_off_in_the_store_sees_nothing_under_the_policies(dsn: str) -> None:
    """Forgetting row_level_security=True fails closed: every id looks unknown."""
    app_dsn = await enable_rls(dsn)
    async with await ConversationStore.connect(dsn) as owner:
        await seed_victim(owner)
    async with await ConversationStore.connect(app_dsn, row_level_security=False) as store:
        with pytest.raises(ConversationNotFound):
            await store.get_history("victim-conv", "victim")


async def _expect_denied(conn: asyncpg.Connection, sql: str, *args: Any) -> None:
    async def attempt() -> None:
        async with conn.transaction():
            await conn.execute(set_rls_user("mallory"))
            await conn.execute(sql, *args)

    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await attempt()


@pytest.mark.guarantee(9)
async def test_raw_sql_under_the_app_role_cannot_cross_users(dsn: str, db: asyncpg.Connection) -> None:
    app_dsn = await enable_rls(dsn)
    async with await ConversationStore.connect(dsn) as owner:
        await seed_victim(owner)
        await owner.get_or_create_conversation("mallory-own", "mallory")
    before = await dump(db)
    conn = await asyncpg.connect(app_dsn)
    try:
        # Without the setting: nothing at all.
        assert await conn.fetchval("SELECT count(*) FROM conversations") == 0
        assert await conn.fetchval("SELECT count(*) FROM messages") == 0
        async with conn.transaction():
            await conn.execute(set_rls_user("mallory"))
            assert await conn.fetchval("SELECT array_agg(id) FROM conversations") == ["mallory-own"]
            assert await conn.fetchval("SELECT count(*) FROM messages") == 0
            assert (
                await conn.fetchval("SELECT count(*) FROM messages WHERE conversation_id = 'victim-conv'")
                == 0
            )
            assert (
                await conn.execute("UPDATE conversations SET title = 'pwned' WHERE id = 'victim-conv'")
                == "UPDATE 0"
            )
            assert await conn.execute("UPDATE messages SET content = 'pwned'") == "UPDATE 0"
            assert (
                await conn.execute("DELETE FROM messages WHERE conversation_id = 'victim-conv'") == "DELETE 0"
            )
            assert await conn.execute("DELETE FROM conversations WHERE user_id = 'victim'") == "DELETE 0"
        # The setting ended with the transaction.
        assert await conn.fetchval("SELECT count(*) FROM conversations") == 0
        # Writes into another user's space are refused by the policies' WITH CHECK.
        await _expect_denied(
            conn,
            "INSERT INTO messages (conversation_id, seq, role, content) "
            "VALUES ('victim-conv', 99, 'user', 'forged')",
        )
        await _expect_denied(conn, "INSERT INTO conversations (id, user_id) VALUES ('forged', 'victim')")
        await _expect_denied(conn, "UPDATE conversations SET user_id = 'victim' WHERE id = 'mallory-own'")
        # No DDL, no TRUNCATE, no switching the policies off.
        for statement in (
            "CREATE TABLE stolen (x text)",
            "DROP TABLE messages",
            "TRUNCATE messages",
            "ALTER TABLE messages DISABLE ROW LEVEL SECURITY",
            "DROP POLICY convdb_messages_owner ON messages",
            "CREATE INDEX ON messages (content)",
            "ALTER TABLE conversations ADD COLUMN x int",
            "DELETE FROM convdb_schema_version",
        ):
            await _expect_denied(conn, statement)
        await conn.execute("SET row_security = off")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM conversations")
    finally:
        await conn.close()
    assert await dump(db) == before
