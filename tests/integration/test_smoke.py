from convdb import ConversationStore


async def test_roundtrip(store: ConversationStore) -> None:
    conv = await store.get_or_create_conversation(None, "alice", title="t", metadata={"a": 1})
    m = await store.save_message(conv.id, "alice", "user", "hello", metadata={"x": [1, 2]})
    assert m.seq == 1
    ms = await store.save_messages(conv.id, "alice", [{"role": "assistant", "content": "hi"},
                                                      {"role": "tool", "content": "r", "tool_call_id": "c1"}])
    assert [x.seq for x in ms] == [2, 3]
    hist = await store.get_history(conv.id, "alice", limit=2)
    assert [h.seq for h in hist] == [2, 3]
    assert hist[0].metadata == {}
