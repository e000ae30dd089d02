"""Issue 10 item 5: get_or_create_conversation racing a delete of the same id loads or creates,
and never tells the owner "not found"; another user's id still reads as not found."""

from __future__ import annotations

import asyncio
import time

import pytest

from convdb import Conversation, ConversationNotFound, ConversationStore

U = "alice"
ROUNDS = 400
TIME_BOUND = 60.0  # seconds; the test stops racing then (a slow machine races fewer rounds)


async def test_get_or_create_racing_delete_never_reports_not_found(dsn: str) -> None:
    async with await ConversationStore.connect(dsn, min_size=4, max_size=4) as store:
        not_found = created_by_race = rounds = 0
        deadline = time.monotonic() + TIME_BOUND
        while rounds < ROUNDS and time.monotonic() < deadline:
            rounds += 1
            cid = f"c{rounds % 3}"
            results = await asyncio.gather(
                store.delete_conversation(cid, U),
                *(store.get_or_create_conversation(cid, U, title="t") for _ in range(3)),
                return_exceptions=True,
            )
            for result in results[1:]:
                if isinstance(result, ConversationNotFound):
                    not_found += 1
                elif isinstance(result, BaseException):
                    raise result
                else:
                    assert isinstance(result, Conversation)
                    assert (result.id, result.user_id, result.title) == (cid, U, "t")
            if not isinstance(results[0], BaseException) and results[0] == 0:
                created_by_race += 1
        assert rounds >= 50, f"only {rounds} rounds ran in {TIME_BOUND} s"
        assert not_found == 0, f"{not_found} of {3 * rounds} loads told the owner 'not found'"
        assert created_by_race > 0  # the deletes really interleaved with the creations
        for i in range(3):
            assert (await store.get_or_create_conversation(f"c{i}", U)).user_id == U


async def test_racing_creators_of_other_users_still_get_not_found(store: ConversationStore) -> None:
    for round_ in range(30):
        cid = f"r{round_}"
        results = await asyncio.gather(
            *(store.get_or_create_conversation(cid, f"u{i}") for i in range(4)), return_exceptions=True
        )
        winners = [r for r in results if not isinstance(r, BaseException)]
        assert len(winners) == 1, results
        assert all(type(r) is ConversationNotFound for r in results if isinstance(r, BaseException))
        for other in {f"u{i}" for i in range(4)} - {winners[0].user_id}:
            with pytest.raises(ConversationNotFound):
                await store.get_or_create_conversation(cid, other)
