"""Per-user isolation: a foreign id and an unknown id are indistinguishable, on every core method."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from convdb import ConversationNotFound, ConversationStore

Call = Callable[[ConversationStore, str, str], Awaitable[Any]]

CORE_CALLS: dict[str, Call] = {
    "get_conversation": lambda s, c, u: s.get_conversation(c, u),
    "get_or_create_conversation": lambda s, c, u: s.get_or_create_conversation(c, u),
    "save_message": lambda s, c, u: s.save_message(c, u, "user", "intruder"),
    "save_message_keyed": lambda s, c, u: s.save_message(c, u, "user", "intruder", idempotency_key="k"),
    "save_messages": lambda s, c, u: s.save_messages(c, u, [{"role": "user", "content": "intruder"}]),
    "save_messages_keyed": lambda s, c, u: s.save_messages(
        c, u, [{"role": "user", "content": "intruder", "idempotency_key": "k"}]
    ),
    "get_history": lambda s, c, u: s.get_history(c, u),
}


@pytest.fixture
async def owned(store: ConversationStore) -> str:
    conv = await store.get_or_create_conversation("secret-conv", "alice", title="alice's")
    await store.save_message(conv.id, "alice", "user", "private", idempotency_key="k")
    return conv.id


@pytest.mark.parametrize("method", sorted(CORE_CALLS))
@pytest.mark.guarantee(1)
async def test_foreign_and_unknown_ids_raise_the_same_error(
    store: ConversationStore, db: asyncpg.Connection, owned: str, method: str
) -> None:
    messages: list[str] = []
    for conversation_id in (owned, "no-such-conversation"):
        if method == "get_or_create_conversation" and conversation_id != owned:
            continue  # an unknown id is created for its caller: that is the method's contract
        with pytest.raises(ConversationNotFound) as info:
            await CORE_CALLS[method](store, conversation_id, "mallory")
        messages.append(str(info.value))
        assert "alice" not in str(info.value) and "secret" not in str(info.value)
    assert len(set(messages)) == 1
    # Nothing was written, nothing of alice's changed.
    assert await db.fetchval("SELECT count(*) FROM messages") == 1
    assert await db.fetchval("SELECT count(*) FROM conversations WHERE user_id = 'mallory'") == 0
    row = await db.fetchrow("SELECT user_id, title, next_seq FROM conversations WHERE id = $1", owned)
    assert row is not None
    assert tuple(row) == ("alice", "alice's", 2)


async def test_same_id_for_two_users_is_one_owner(store: ConversationStore) -> None:
    await store.get_or_create_conversation("shared-name", "alice")
    with pytest.raises(ConversationNotFound):
        await store.get_or_create_conversation("shared-name", "bob")
    assert (await store.get_conversation("shared-name", "alice")).user_id == "alice"


async def test_user_ids_are_compared_exactly(store: ConversationStore) -> None:
    conv = await store.get_or_create_conversation(None, "Alice")
    for other in ("alice", "Alice ", "ALICE", "Alice\u200b"):
        with pytest.raises(ConversationNotFound):
            await store.get_history(conv.id, other)
