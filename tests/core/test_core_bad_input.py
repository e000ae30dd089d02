"""Bad input through the real store: a typed error, raised before any I/O, and nothing written."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from convdb import ConversationStore, InvalidInput

Call = Callable[[ConversationStore, str], Awaitable[Any]]

BAD_CALLS: dict[str, tuple[Call, str]] = {
    "role": (lambda s, c: s.save_message(c, "alice", "wizard", "x"), "role"),
    "content_type": (lambda s, c: s.save_message(c, "alice", "user", 42), "content"),  # type: ignore[arg-type]
    "content_nul": (lambda s, c: s.save_message(c, "alice", "user", "a\x00b"), "content"),
    "content_surrogate": (lambda s, c: s.save_message(c, "alice", "user", "a\udc00"), "content"),
    "content_too_big": (lambda s, c: s.save_message(c, "alice", "user", "x" * (2**20 + 1)), "content"),
    "empty_conversation_id": (lambda s, c: s.save_message("", "alice", "user", "x"), "conversation_id"),
    "long_conversation_id": (lambda s, c: s.get_history("c" * 256, "alice"), "conversation_id"),
    "empty_user_id": (lambda s, c: s.save_message(c, "", "user", "x"), "user_id"),
    "tool_without_call_id": (lambda s, c: s.save_message(c, "alice", "tool", "r"), "tool_call_id"),
    "metadata_nan": (
        lambda s, c: s.save_message(c, "alice", "user", "x", metadata={"v": float("nan")}),
        "metadata",
    ),
    "metadata_not_json": (
        lambda s, c: s.save_message(c, "alice", "user", "x", metadata={"v": {1}}),
        "metadata",
    ),
    "tool_calls_inf": (
        lambda s, c: s.save_message(c, "alice", "assistant", None, tool_calls=[float("inf")]),
        "tool_calls",
    ),
    "limit_zero": (lambda s, c: s.get_history(c, "alice", limit=0), "limit"),
    "limit_huge": (lambda s, c: s.get_history(c, "alice", limit=10_001), "limit"),
    "title_nul": (lambda s, c: s.get_or_create_conversation(None, "alice", title="t\x00"), "title"),
    "conv_metadata": (
        lambda s, c: s.get_or_create_conversation(None, "alice", metadata={"x": float("inf")}),
        "metadata",
    ),
    "batch_bad_last": (
        lambda s, c: s.save_messages(
            c, "alice", [{"role": "user", "content": "ok"}] * 5 + [{"role": "tool", "content": "r"}]
        ),
        "tool_call_id",
    ),
    "batch_empty": (lambda s, c: s.save_messages(c, "alice", []), "messages"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
@pytest.mark.guarantee(7)
async def test_bad_input_is_refused_and_nothing_written(
    store: ConversationStore, db: asyncpg.Connection, case: str
) -> None:
    conv = await store.get_or_create_conversation("c1", "alice")
    before = await db.fetchrow("SELECT next_seq, updated_at FROM conversations WHERE id = 'c1'")
    call, field = BAD_CALLS[case]
    with pytest.raises(InvalidInput) as info:
        await call(store, conv.id)
    assert info.value.field == field
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert await db.fetchval("SELECT count(*) FROM conversations") == 1
    after = await db.fetchrow("SELECT next_seq, updated_at FROM conversations WHERE id = 'c1'")
    assert after is not None and before is not None
    assert tuple(after) == tuple(before)


async def test_batch_error_reports_index(store: ConversationStore) -> None:
    conv = await store.get_or_create_conversation(None, "alice")
    messages: list[dict[str, Any]] = [{"role": "user", "content": "ok"} for _ in range(10)]
    messages[7] = {"role": "user", "content": "bad\x00"}
    with pytest.raises(InvalidInput) as info:
        await store.save_messages(conv.id, "alice", messages)
    assert info.value.index == 7
    assert "messages[7].content" in str(info.value)


async def test_content_cap_is_configurable(dsn: str) -> None:
    async with await ConversationStore.connect(dsn, max_content_bytes=10) as small:
        conv = await small.get_or_create_conversation(None, "alice")
        await small.save_message(conv.id, "alice", "user", "0123456789")
        with pytest.raises(InvalidInput, match="10-byte limit"):
            await small.save_message(conv.id, "alice", "user", "0123456789a")
