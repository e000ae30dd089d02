"""The OpenAI Agents SDK adapter on summaries, usage and guarded writes: run_compaction records a
summary (every item stays stored), get_items reads the summarized window, a pluggable summariser
(scripted here), a run's usage recorded like AdvancedSQLiteSession.store_run_usage, and
guard_writes refusing a second server's interleaved turn."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from agents import Agent, ModelResponse, RunConfig, Runner
from agents import Usage as SDKUsage
from agents.items import TResponseInputItem
from agents.memory import OpenAIResponsesCompactionAwareSession
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from convdb import ConcurrentUpdate, ConversationStore, InvalidInput
from convdb.integrations.openai_agents_compaction import COMPACTION_KEY, ConvDBCompactionSession
from tests.adapters.test_integration_openai_agents import ScriptedModel, text_reply

U = "alice"


class ScriptedSummarizer:
    """Returns canned summaries and records what it was asked to fold."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, list[TResponseInputItem]]] = []

    async def __call__(self, previous: str | None, items: list[TResponseInputItem]) -> str:
        self.calls.append((previous, items))
        return f"summary #{len(self.calls)} of {len(items)} items"


def user(text: str) -> TResponseInputItem:
    return {"role": "user", "content": text}


def session(
    store: ConversationStore, sid: str, summarizer: ScriptedSummarizer, **kw: Any
) -> ConvDBCompactionSession:
    return ConvDBCompactionSession(store, sid, U, summarizer=summarizer, **kw)


async def test_is_compaction_aware_and_compaction_deletes_nothing(store: ConversationStore) -> None:
    summarizer = ScriptedSummarizer()
    s = session(store, "s1", summarizer, compact_after=5, keep_recent=2)
    assert isinstance(s, OpenAIResponsesCompactionAwareSession)
    await s.add_items([user(f"u{i}") for i in range(4)])
    await s.run_compaction({"response_id": "resp_1"})  # 4 < compact_after: nothing to do
    assert summarizer.calls == []
    await s.add_items([user("u4"), user("u5")])
    await s.run_compaction({"response_id": "resp_2"})
    assert [(prev, [i["content"] for i in items]) for prev, items in summarizer.calls] == [  # type: ignore[typeddict-item]
        (None, ["u0", "u1", "u2", "u3"])
    ]
    items = await s.get_items()
    assert items == [{"role": "system", "content": "summary #1 of 4 items"}, user("u4"), user("u5")]
    assert await store.count_messages("s1", U) == 6  # every original stays
    [summary] = await store.list_summaries("s1", U)
    assert (summary.through_seq, summary.metadata) == (4, {COMPACTION_KEY: {"response_id": "resp_2"}})
    # A forced compaction folds what followed into the next summary, given the previous one.
    await s.add_items([user("u6"), user("u7"), user("u8")])
    await s.run_compaction({"force": True})
    assert summarizer.calls[-1][0] == "summary #1 of 4 items"
    assert [i["content"] for i in summarizer.calls[-1][1]] == ["u4", "u5", "u6"]  # type: ignore[typeddict-item]
    assert await s.get_items() == [
        {"role": "system", "content": "summary #2 of 3 items"},
        user("u7"),
        user("u8"),
    ]
    assert await s.get_items(limit=2) == [user("u7"), user("u8")]


async def test_compaction_never_splits_a_tool_call_from_its_output(store: ConversationStore) -> None:
    summarizer = ScriptedSummarizer()
    s = session(store, "s2", summarizer, compact_after=1, keep_recent=2)
    await s.add_items(
        [
            user("q"),
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "r"},
            {"role": "assistant", "content": "done"},
        ]
    )
    await s.run_compaction()
    # keep_recent=2 would cut between the call and its output: the output goes into the summary.
    assert (await store.list_summaries("s2", U))[0].through_seq == 3
    assert await s.get_items() == [
        {"role": "system", "content": "summary #1 of 3 items"},
        {"role": "assistant", "content": "done"},
    ]


async def test_guard_writes_refuses_an_interleaved_turn(store: ConversationStore) -> None:
    summarizer = ScriptedSummarizer()
    first = session(store, "s3", summarizer, guard_writes=True)
    second = session(store, "s3", summarizer, guard_writes=True)
    assert await first.get_items() == []
    await first.add_items([user("a")])  # creates the conversation, guarded at 0
    await second.get_items()
    await first.add_items([user("b")])  # first knows seq 1: fine
    with pytest.raises(ConcurrentUpdate) as info:
        await second.add_items([user("c")])  # second read at seq 1, but seq 2 is stored now
    assert info.value.last_seq == 2
    assert [m.content for m in await store.get_history("s3", U)] == ["a", "b"]
    await second.get_items()
    await second.add_items([user("c")])
    assert await store.count_messages("s3", U) == 3


async def test_store_run_usage_records_a_runs_usage(store: ConversationStore) -> None:
    class UsageModel(ScriptedModel):
        async def get_response(self, *args: Any, **kw: Any) -> ModelResponse:
            response = await super().get_response(*args, **kw)
            response.usage = SDKUsage(
                requests=1,
                input_tokens=120,
                output_tokens=30,
                total_tokens=150,
                input_tokens_details=InputTokensDetails.model_construct(cached_tokens=100),
                output_tokens_details=OutputTokensDetails.model_construct(reasoning_tokens=7),
            )
            return response

    agent = Agent(name="a", instructions="x", model=UsageModel([[text_reply("hi", "m1")]]))
    s = session(store, "s4", ScriptedSummarizer())
    result = await Runner.run(agent, "hello", session=s, run_config=RunConfig(tracing_disabled=True))
    assert await s.store_run_usage(result) is True
    newest = (await store.get_history("s4", U))[-1]
    assert newest.role == "assistant" and newest.usage is not None
    assert (
        newest.usage.input_tokens,
        newest.usage.output_tokens,
        newest.usage.cached_tokens,
        newest.usage.reasoning_tokens,
    ) == (120, 30, 100, 7)
    assert await s.store_run_usage(result) is False  # recorded once, never overwritten
    report = await store.usage_report(
        U,
        conversation_id="s4",
        since=datetime.now(UTC) - timedelta(hours=1),
        until=datetime.now(UTC) + timedelta(hours=1),
    )
    assert (report.total.messages, report.total.input_tokens) == (1, 120)


def test_bad_options_are_refused() -> None:
    for kw, field in [
        ({"summarizer": "no"}, "summarizer"),
        ({"compact_after": 0}, "compact_after"),
        ({"keep_recent": -1}, "keep_recent"),
    ]:
        with pytest.raises(InvalidInput) as info:
            ConvDBCompactionSession(None, "s", U, **{"summarizer": ScriptedSummarizer(), **kw})  # type: ignore[arg-type, dict-item]
        assert info.value.field == field


async def test_langchain_reads_the_summarized_window_as_an_option(store: ConversationStore) -> None:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    from convdb.integrations.langchain import ConvDBChatMessageHistory

    plain = ConvDBChatMessageHistory(store, "lc", U)
    await plain.aadd_messages([HumanMessage("q1"), AIMessage("a1"), HumanMessage("q2"), AIMessage("a2")])
    await store.save_summary("lc", U, "asked q1, answered a1", through_seq=2)
    summarized = ConvDBChatMessageHistory(store, "lc", U, summarized=True)
    got = await summarized.aget_messages()
    assert [(type(m), m.content) for m in got] == [
        (SystemMessage, "asked q1, answered a1"),
        (HumanMessage, "q2"),
        (AIMessage, "a2"),
    ]
    assert [m.content for m in await plain.aget_messages()] == ["q1", "a1", "q2", "a2"]  # unchanged
    assert [
        m.content
        for m in await ConvDBChatMessageHistory(store, "lc", U, summarized=True, limit=1).aget_messages()
    ] == ["a2"]
    assert await ConvDBChatMessageHistory(store, "none", U, summarized=True).aget_messages() == []
    with pytest.raises(InvalidInput):
        ConvDBChatMessageHistory(store, "lc", U, summarized="yes")  # type: ignore[arg-type]
