"""Round trips of the branch, feedback and search methods, counted from the server's statement log
(the same steady-state method as test_agent_round_trips)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from convdb import ConversationStore
from tests.integration.test_agent_round_trips import StatementLog, _count, logged

__all__ = ["logged"]  # the fixture, imported for pytest

U = "alice"


async def test_one_round_trip_each(logged: tuple[ConversationStore, StatementLog]) -> None:
    store, log = logged
    cid = (await store.get_or_create_conversation(None, U, title="needle title")).id
    await store.save_messages(cid, U, [{"role": "user", "content": f"needle {i}"} for i in range(30)])
    await store.set_feedback(cid, U, 3, rating=1)
    single: dict[str, Callable[[], Awaitable[Any]]] = {
        "fork_conversation": lambda: store.fork_conversation(cid, U, at_seq=20),
        "set_feedback": lambda: store.set_feedback(cid, U, 2, rating=-1, tags=["x"]),
        "clear_feedback": lambda: store.clear_feedback(cid, U, 2),
        "get_feedback": lambda: store.get_feedback(cid, U),
        "feedback_summary(user)": lambda: store.feedback_summary(U),
        "feedback_summary(conversation)": lambda: store.feedback_summary(U, conversation_id=cid),
        "search_messages": lambda: store.search_messages(U, "needle", limit=5),
        "search_messages(conversation)": lambda: store.search_messages(U, "needle", conversation_id=cid),
        "list_conversations(parent_id)": lambda: store.list_conversations(U, parent_id=cid),
    }
    counts = {name: len(await _count(log, op)) for name, op in single.items()}
    assert counts == dict.fromkeys(single, 1)
    # A fork's window is the ordinary one-statement window, whatever its lineage.
    fork = await store.fork_conversation(cid, U, at_seq=30)
    deeper = await store.fork_conversation(fork.id, U, at_seq=30)
    assert len(await _count(log, lambda: store.get_history(deeper.id, U, limit=10))) == 1
