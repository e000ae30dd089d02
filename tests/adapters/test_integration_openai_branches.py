"""ConvDBBranchingSession: AdvancedSQLiteSession's branch operations (create from a turn, switch,
list, delete) on convdb forks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import pytest

from convdb import ConversationStore
from convdb.integrations.openai_agents import ConvDBBranchingSession


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, object]:
    return {"role": "assistant", "content": text}


def contents(items: Sequence[object]) -> list[object]:
    """The ``content`` of each item (every item here is a message)."""
    return [cast(Mapping[str, object], item)["content"] for item in items]


async def test_branch_from_a_turn_switch_list_delete(store: ConversationStore) -> None:
    session = ConvDBBranchingSession(store, "chat", "alice")
    await session.add_items([user("q1"), assistant("a1"), user("q2"), assistant("a2")])  # type: ignore[list-item]
    branch = await session.create_branch_from_turn(2, "chat-edit")
    assert branch == "chat-edit" == session.current_branch_id
    assert contents(await session.get_items()) == ["q1", "a1"]
    await session.add_items([user("q2 edited"), assistant("a2'")])  # type: ignore[list-item]
    assert contents(await session.get_items()) == ["q1", "a1", "q2 edited", "a2'"]
    listed = await session.list_branches()
    assert [(b["branch_id"], b["message_count"], b["is_current"]) for b in listed] == [
        ("main", 4, False),
        ("chat-edit", 4, True),
    ]
    assert listed[1]["parent_id"] == "chat" and listed[1]["forked_at_seq"] == 2
    await session.switch_to_branch("main")
    assert contents(await session.get_items()) == ["q1", "a1", "q2", "a2"]
    with pytest.raises(ValueError, match="already exists"):
        await session.create_branch_from_turn(1, "chat-edit")
    with pytest.raises(ValueError, match="Turn 3"):
        await session.create_branch_from_turn(3)
    with pytest.raises(ValueError, match="main"):
        await session.delete_branch("main")
    await session.switch_to_branch("chat-edit")
    with pytest.raises(ValueError, match="force=True"):
        await session.delete_branch("chat-edit")
    await session.delete_branch("chat-edit", force=True)
    assert session.current_branch_id == "main"
    assert [b["branch_id"] for b in await session.list_branches()] == ["main"]


async def test_other_users_conversations_are_not_branches(store: ConversationStore) -> None:
    await store.get_or_create_conversation("bobs", "bob")
    session = ConvDBBranchingSession(store, "chat", "alice")
    await session.add_items([user("q1")])  # type: ignore[list-item]
    for name in ("bobs", "nope"):
        with pytest.raises(ValueError, match="does not exist"):
            await session.switch_to_branch(name)
        with pytest.raises(ValueError, match="does not exist"):
            await session.delete_branch(name)
    # Another conversation of alice that is not a fork of this session is not a branch either.
    await store.get_or_create_conversation("other", "alice")
    with pytest.raises(ValueError, match="does not exist"):
        await session.switch_to_branch("other")
    assert await store.count_messages("other", "alice") == 0
