"""The user row-level security admits is sent as ``SET LOCAL convdb.user_id = E'...'`` (a SET, so
that Citus carries it to the workers; SET takes no parameter, so the id is a literal in the text):
hostile ids arrive exactly as given, whatever standard_conforming_strings says, and a store under
RLS serves a user whose id is full of quotes and backslashes, on both engines."""

from __future__ import annotations

import asyncpg
import pytest

from convdb import ConversationNotFound, ConversationStore
from convdb.runner import set_rls_user
from tests.support.surface import enable_rls

HOSTILE = [
    "o'brien",
    "'",
    "\\",
    "\\'",
    "a\\'; DROP TABLE conversations; --",
    "'; RESET convdb.user_id; SELECT '",
    "$$; DROP TABLE messages; $$",
    "E'\\x41'",
    "é中\U0001f600",
    "x" * 255,
    "' " * 127,
]


@pytest.mark.parametrize("conforming", ["on", "off"])
async def test_hostile_ids_arrive_exactly(db: asyncpg.Connection, conforming: str) -> None:
    await db.execute(f"SET standard_conforming_strings = {conforming}")
    for user_id in HOSTILE:
        async with db.transaction():
            await db.execute(set_rls_user(user_id))
            assert await db.fetchval("SELECT current_setting('convdb.user_id')") == user_id
        # transaction-local: gone after COMMIT
        assert await db.fetchval("SELECT current_setting('convdb.user_id', true)") in (None, "")
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0


@pytest.mark.guarantee(9)
async def test_a_store_under_rls_serves_hostile_user_ids(dsn: str) -> None:
    app_dsn = await enable_rls(dsn)
    async with await ConversationStore.connect(app_dsn, row_level_security=True) as store:
        for i, user_id in enumerate(HOSTILE):
            cid = f"c{i}"
            await store.get_or_create_conversation(cid, user_id)
            await store.save_message(cid, user_id, "user", user_id)
            assert [m.content for m in await store.get_history(cid, user_id)] == [user_id]
        with pytest.raises(ConversationNotFound):  # another user's, under the same policies
            await store.get_history("c0", HOSTILE[1])
        page = await store.list_conversations(HOSTILE[4])
        assert [c.id for c in page.items] == ["c4"]
