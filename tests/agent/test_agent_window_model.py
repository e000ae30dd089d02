"""Windows against a reference model: random conversations, random limits and budgets.

The model is the definition in plain Python: take the newest ``limit`` messages, keep the newest
ones whose token counts sum to at most ``max_tokens``, then drop leading tool results.
"""

from __future__ import annotations

import random
from typing import Any

from convdb import ConversationStore

U = "model"


def _reference(stored: list[dict[str, Any]], limit: int, budget: int | None) -> list[int]:
    newest = stored[-limit:]
    kept: list[dict[str, Any]] = []
    total = 0
    for m in reversed(newest):
        total += m["token_count"]
        if budget is not None and total > budget:
            break
        kept.append(m)
    kept.reverse()
    while kept and kept[0]["role"] == "tool":
        kept.pop(0)
    return [m["seq"] for m in kept]


def _random_message(rnd: random.Random, i: int) -> dict[str, Any]:
    role = rnd.choice(["user", "assistant", "assistant", "tool", "tool", "system"])
    message: dict[str, Any] = {"role": role, "content": f"m{i}", "token_count": rnd.choice([0, 1, 3, 10, 40])}
    if role == "tool":
        message["tool_call_id"] = f"c{i}"
    if role == "assistant" and rnd.random() < 0.5:
        message["tool_calls"] = [{"id": f"c{i}", "type": "function"}]
    return message


async def test_get_history_matches_the_model(store: ConversationStore) -> None:
    rnd = random.Random(20260401)
    for case in range(40):
        cid = (await store.get_or_create_conversation(f"case-{case}", U)).id
        messages = [_random_message(rnd, i) for i in range(rnd.randint(0, 30))]
        stored: list[dict[str, Any]] = []
        if messages:
            saved = await store.save_messages(cid, U, messages)
            stored = [{**m, "seq": s.seq} for m, s in zip(messages, saved, strict=True)]
        for _ in range(8):
            limit = rnd.randint(1, 35)
            budget = rnd.choice([None, 0, 5, 20, 60, 200])
            window = await store.get_history(cid, U, limit=limit, max_tokens=budget)
            assert [m.seq for m in window] == _reference(stored, limit, budget), (case, limit, budget)


async def test_save_and_get_history_matches_the_model(store: ConversationStore) -> None:
    rnd = random.Random(7)
    cid = (await store.get_or_create_conversation(None, U)).id
    stored: list[dict[str, Any]] = []
    for i in range(120):
        message = _random_message(rnd, i)
        limit = rnd.randint(1, 25)
        budget = rnd.choice([None, 10, 50, 120])
        saved, window = await store.save_and_get_history(cid, U, message, limit=limit, max_tokens=budget)
        stored.append({**message, "seq": saved.seq})
        assert [m.seq for m in window] == _reference(stored, limit, budget), (i, limit, budget)
        assert window == await store.get_history(cid, U, limit=limit, max_tokens=budget)
        if rnd.random() < 0.1:  # pops and clears leave gaps in seq; windows must not care
            popped = await store.pop_last_message(cid, U)
            assert popped is not None and popped.seq == stored.pop()["seq"]
        if rnd.random() < 0.02:
            await store.clear_conversation(cid, U)
            stored.clear()
