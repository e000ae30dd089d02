"""The tiktoken-backed counter feeds stored token counts and the SQL token budget."""

from __future__ import annotations

import tiktoken

from convdb import ConversationStore
from convdb.tokens import tiktoken_counter


def _byte_level_encoding() -> tiktoken.Encoding:
    # A real tiktoken Encoding that needs no download: one token per UTF-8 byte.
    return tiktoken.Encoding(
        name="bytes",
        pat_str=r"[\s\S]",
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={"<|endoftext|>": 256},
    )


def test_counter_counts_with_the_encoding() -> None:
    count = tiktoken_counter(_byte_level_encoding())
    assert count("hello") == 5
    assert count("é") == 2
    assert count("<|endoftext|>") == len("<|endoftext|>")  # special-token text is plain text here


async def test_store_counts_with_tiktoken_and_budgets_in_sql(dsn: str) -> None:
    async with await ConversationStore.connect(
        dsn, count_tokens=tiktoken_counter(_byte_level_encoding())
    ) as s:
        cid = (await s.get_or_create_conversation(None, "u")).id
        await s.save_message(cid, "u", "user", "abcd")  # 4
        await s.save_message(cid, "u", "assistant", "héllo")  # 6
        history = await s.get_history(cid, "u")
        assert [m.token_count for m in history] == [4, 6]
        assert [m.seq for m in await s.get_history(cid, "u", max_tokens=9)] == [2]
        assert [m.seq for m in await s.get_history(cid, "u", max_tokens=10)] == [1, 2]
