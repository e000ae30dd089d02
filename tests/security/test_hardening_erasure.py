"""``delete_user_data`` commits chunk by chunk in both modes, row-level security included.

The erasure is made to wait on a row lock at its last step (locking the emptied conversation rows,
then deleting them); while it waits, an observer counts what is already gone. One long transaction (what
row-level security used to get) would show nothing deleted, and a failure at that point would
roll every chunk back.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from convdb import ConversationStore, ErasureCounts
from tests.support.fix_server import ENGINE
from tests.support.surface import enable_rls

HANG = 60.0
MESSAGES = 300


# Where a backend waiting on a row lock shows, with the text of its statement. On one node: the
# statement's own backend in pg_stat_activity. On Citus the coordinator's backend waits on its
# workers (ClientRead); the lock wait is on the worker holding the shard, in citus_stat_activity
# (every node's backends), with the statement as the coordinator deparsed it for the shard.
_LOCK_WAIT = {
    "postgresql": (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND ltrim(query) LIKE $1",
        "UPDATE conversations SET next_seq = next_seq WHERE id = ANY%",
    ),
    "citus": (
        "SELECT count(*) FROM citus_stat_activity WHERE datname = current_database() "
        "AND is_worker_query AND wait_event_type = 'Lock' AND ltrim(query) LIKE $1",
        r"UPDATE public.conversations\_% conversations SET next_seq = next_seq WHERE ((id OPERATOR(pg_catalog.=) ANY%",
    ),
}


async def _wait_for_lock_wait(admin: asyncpg.Connection) -> None:
    """Until a backend waits on a lock in erase_lock_conversations (bounded by count and time,
    whatever the machine's speed)."""
    sql, pattern = _LOCK_WAIT[ENGINE]
    for _ in range(3000):
        if await admin.fetchval(sql, pattern):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no backend came to wait on the lock in {pattern!r} ({ENGINE})")


@pytest.mark.guarantee(9)
@pytest.mark.parametrize(
    "mode",
    [
        "plain",
        "row_level_security",
    ],
)
async def test_erasure_chunks_are_committed_while_it_waits(dsn: str, mode: str) -> None:
    rls = mode == "row_level_security"
    app_dsn = await enable_rls(dsn) if rls else dsn
    admin = await asyncpg.connect(dsn)  # superuser: sees every row, whatever the policies
    locker = await asyncpg.connect(dsn)
    async with await ConversationStore.connect(
        app_dsn, min_size=1, max_size=2, row_level_security=rls
    ) as store:
        for i in range(3):
            await store.get_or_create_conversation(f"erase-{i}", "leaving")
            await store.save_messages(
                f"erase-{i}", "leaving", [{"role": "user", "content": f"m{j}"} for j in range(MESSAGES)]
            )
        await store.get_or_create_conversation("kept", "staying")
        await store.save_message("kept", "staying", "user", "mine")
        try:
            await locker.execute("BEGIN")
            await locker.execute("SELECT 1 FROM conversations WHERE id = 'erase-1' FOR UPDATE")
            erasure = asyncio.ensure_future(
                store.delete_user_data("leaving", messages_per_batch=100, conversations_per_batch=100)
            )
            # erase_lock_conversations, the step that locks the rows before deleting them
            await _wait_for_lock_wait(admin)
            left = await admin.fetchval(
                "SELECT count(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                "WHERE c.user_id = 'leaving'"
            )
            # Every message chunk committed on its own before the erasure reached the lock.
            assert left == 0, f"{left} of {3 * MESSAGES} messages still there: the chunks were not committed"
            await locker.execute("ROLLBACK")
            counts = await asyncio.wait_for(erasure, HANG)
        finally:
            await locker.close()
        assert counts == ErasureCounts(conversations=3, messages=3 * MESSAGES)
        assert [m.content for m in await store.get_history("kept", "staying")] == ["mine"]
    remaining: Any = await admin.fetch("SELECT id FROM conversations ORDER BY id")
    await admin.close()
    assert [r["id"] for r in remaining] == ["kept"]
