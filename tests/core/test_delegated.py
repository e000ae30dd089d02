"""The delegated texts (schema_citus.sql's functions, convdb.ops.forms) against the statements, on
both engines: the same script of calls through a store that calls the functions and one that
sends the statements gives the same answers, errors and stored rows.

On a single node the functions are created without their distribution (``delegated_db``); on
Citus the template has them from schema_citus.sql, and every other test of the suite runs them
too (the ``store`` fixture's ``connect()`` finds them). tests/core/test_citus.py checks that Citus
delegates each call to the conversation's worker as one task.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from convdb import ConversationStore, Message
from convdb.ops.forms import DELEGATED, STATEMENTS

Outcome = tuple[Any, ...]


@pytest.fixture
async def stores(
    delegated_db: asyncpg.Connection, dsn: str
) -> AsyncIterator[tuple[ConversationStore, ConversationStore]]:
    """(delegated, statements) on one database and one pool: ``connect()`` found the functions;
    a store on the same, borrowed, pool that never ran verify_schema sends the statements."""
    async with await ConversationStore.connect(dsn, min_size=1, max_size=10) as delegated:
        statements = ConversationStore(delegated.pool)
        assert delegated.delegated and not statements.delegated
        yield delegated, statements


def _message(m: Message) -> Outcome:
    fields = dataclasses.asdict(m)
    del fields["created_at"], fields["conversation_id"]
    return tuple(sorted(fields.items(), key=lambda kv: kv[0]))


async def _outcome(call: Awaitable[Any]) -> Outcome:
    try:
        value = await call
    except Exception as exc:  # the error's type and words are part of the answer
        return ("raised", type(exc).__name__, str(exc))
    if isinstance(value, Message):
        return ("message", _message(value))
    if isinstance(value, list):
        return ("messages", tuple(_message(m) for m in value))
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], Message):
        return ("turn", _message(value[0]), tuple(_message(m) for m in value[1]))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.asdict(value)
        for moving in ("id", "conversation_id", "created_at", "updated_at", "expires_at"):
            fields.pop(moving, None)
        return ("record", tuple(sorted(fields.items(), key=lambda kv: kv[0])))
    return ("value", value)


async def _script(store: ConversationStore, tag: str) -> list[Outcome]:
    """Every branch of the delegated paths: create, load, foreign, expired; plain, keyed, replayed,
    conflicting, capped and sliding appends; turns with limits, budgets, summaries and guards;
    batches; guarded appends."""
    c, capped, sliding, gone = (f"{tag}-main", f"{tag}-capped", f"{tag}-sliding", f"{tag}-gone")
    b, capped_batch, g = f"{tag}-batch", f"{tag}-capped-batch", f"{tag}-guarded"

    def row(content: str | None, key: str | None = None, role: str = "user", **more: Any) -> dict[str, Any]:
        return {"role": role, "content": content, "idempotency_key": key, **more}

    past = datetime.now(UTC) - timedelta(minutes=1)
    steps: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.get_or_create_conversation(c, "alice", title="t", metadata={"k": [1, "x"]}),
        lambda: store.get_or_create_conversation(c, "alice", title="ignored"),
        lambda: store.get_or_create_conversation(c, "mallory"),
        lambda: store.get_or_create_conversation(capped, "alice", max_messages=3),
        lambda: store.get_or_create_conversation(sliding, "alice", ttl=timedelta(hours=1), sliding=True),
        lambda: store.get_or_create_conversation(gone, "alice", expires_at=past),
        lambda: store.get_or_create_conversation(gone, "alice"),
        lambda: store.save_message(c, "alice", "system", "be brief", token_count=3),
        lambda: store.save_message(c, "alice", "user", "hi", idempotency_key="k1", metadata={"a": 1}),
        lambda: store.save_message(c, "alice", "user", "hi", idempotency_key="k1"),
        lambda: store.save_message(c, "alice", "user", "other", idempotency_key="k1"),
        lambda: store.save_message(
            c,
            "alice",
            "assistant",
            None,
            tool_calls=[{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            usage={"model": "m", "input_tokens": 10, "output_tokens": 2, "cost": "0.0001", "latency_ms": 5},
        ),
        lambda: store.save_message(c, "alice", "tool", "42", tool_name="f", tool_call_id="call_1"),
        lambda: store.save_message(c, "mallory", "user", "sneak"),
        lambda: store.save_message(gone, "alice", "user", "late"),
        lambda: store.save_message("nobody-has-it", "alice", "user", "x"),
        *[lambda i=i: store.save_message(capped, "alice", "user", f"m{i}") for i in range(5)],
        lambda: store.get_history(capped, "alice"),
        lambda: store.count_messages(capped, "alice"),
        lambda: store.save_message(sliding, "alice", "user", "moves the expiry"),
        lambda: store.save_and_get_history(c, "alice", {"role": "user", "content": "turn 1"}, limit=3),
        lambda: store.save_and_get_history(
            c, "alice", {"role": "assistant", "content": "a" * 40}, max_tokens=12
        ),
        lambda: store.save_and_get_history(
            c, "alice", {"role": "user", "content": "guarded", "idempotency_key": "k2"}, expected_last_seq=6
        ),
        lambda: store.save_and_get_history(
            c, "alice", {"role": "user", "content": "guarded", "idempotency_key": "k2"}, expected_last_seq=6
        ),
        lambda: store.save_and_get_history(
            c, "alice", {"role": "user", "content": "late"}, expected_last_seq=3
        ),
        lambda: store.save_summary(c, "alice", through_seq=5, content="what came before", token_count=4),
        lambda: store.save_and_get_history(c, "alice", {"role": "user", "content": "s"}, summarized=True),
        lambda: store.save_and_get_history(
            c, "alice", {"role": "user", "content": "s2"}, summarized=True, limit=2, max_tokens=50
        ),
        lambda: store.save_and_get_history(capped, "alice", {"role": "user", "content": "capped turn"}),
        lambda: store.save_and_get_history(c, "mallory", {"role": "user", "content": "x"}),
        lambda: store.save_and_get_history(gone, "alice", {"role": "user", "content": "x"}),
        lambda: store.get_history(c, "alice", limit=100),
        # Batches: new, partly and wholly replayed, conflicting, guarded, foreign, expired, capped.
        lambda: store.get_or_create_conversation(b, "alice"),
        lambda: store.get_or_create_conversation(capped_batch, "alice", max_messages=4),
        lambda: store.save_messages(b, "alice", [row("b1"), row("b2", "bk1", "assistant")]),
        lambda: store.save_messages(b, "alice", [row("b2", "bk1", "assistant"), row("b3", "bk2"), row("b4")]),
        lambda: store.save_messages(b, "alice", [row("b2", "bk1", "assistant")]),
        lambda: store.save_messages(
            b, "alice", [row("new"), row("DIFFERENT", "bk2"), row("b2", "bk1", "user")]
        ),
        lambda: store.save_messages(b, "alice", [row("DIFFERENT", "bk2"), row("g")], expected_last_seq=99),
        lambda: store.save_messages(b, "alice", [row("g")], expected_last_seq=99),
        lambda: store.save_messages(b, "alice", [row("g", "bk3"), row("h")], expected_last_seq=4),
        lambda: store.save_messages(b, "alice", [row("b2", "bk1", "assistant")], expected_last_seq=1),
        lambda: store.save_messages(
            b,
            "alice",
            [
                row(
                    None,
                    None,
                    "assistant",
                    tool_calls=[{"id": "t1", "type": "function"}],
                    usage={"model": "m"},
                ),
                row("out", None, "tool", tool_call_id="t1", tool_name="f", metadata={"n": 1}, token_count=7),
            ],
        ),
        lambda: store.save_messages(b, "mallory", [row("x")]),
        lambda: store.save_messages(gone, "alice", [row("x")]),
        lambda: store.save_messages(capped_batch, "alice", [row(f"c{i}") for i in range(6)]),
        lambda: store.save_messages(capped_batch, "alice", [row("c6"), row("c7", "ck")]),
        lambda: store.get_history(capped_batch, "alice"),
        lambda: store.get_history(b, "alice", limit=100),
        # Guarded appends (the last 10 outcomes before the sliding check): first, keyed, replayed,
        # conflicting, stale, capped, foreign, expired.
        lambda: store.get_or_create_conversation(g, "alice", max_messages=2),
        lambda: store.save_message(g, "alice", "user", "first", expected_last_seq=0),
        lambda: store.save_message(g, "alice", "user", "second", expected_last_seq=1, idempotency_key="gk"),
        lambda: store.save_message(g, "alice", "user", "second", expected_last_seq=1, idempotency_key="gk"),
        lambda: store.save_message(g, "alice", "user", "other", expected_last_seq=1, idempotency_key="gk"),
        lambda: store.save_message(g, "alice", "user", "stale", expected_last_seq=1),
        lambda: store.save_message(g, "alice", "user", "third", expected_last_seq=2),
        lambda: store.save_message(g, "mallory", "user", "x", expected_last_seq=3),
        lambda: store.save_message(gone, "alice", "user", "x", expected_last_seq=0),
        lambda: store.get_history(g, "alice"),
    ]
    outcomes = [await _outcome(step()) for step in steps]
    conversation = await store.get_conversation(sliding, "alice")
    assert conversation.expires_at is not None
    outcomes.append(
        ("sliding expiry moved", conversation.expires_at > conversation.created_at + timedelta(hours=1))
    )
    return outcomes


async def test_the_delegated_calls_answer_exactly_as_the_statements(
    stores: tuple[ConversationStore, ConversationStore],
) -> None:
    delegated, statements = stores
    got = await _script(delegated, "d")
    want = await _script(statements, "s")
    assert got == want
    # The script reached the branches it is for (not, say, an error at every step).
    kinds = [o[0] for o in got]
    assert kinds.count("raised") == 18 and kinds.count("turn") == 7, got
    assert sum(k == "messages" and len(o[1]) > 0 for k, o in zip(kinds, got, strict=True)) >= 12, got
    assert ("sliding expiry moved", True) in got
    assert got[21][0] == "messages" and [dict(m)["seq"] for m in got[21][1]] == [3, 4, 5]  # the cap
    assert got[22] == ("value", 3)
    assert got[9] == got[8] and got[10][1] == "IdempotencyConflict"  # replay, then conflict
    guarded = got[-11:-1]
    assert [dict(o[1])["seq"] for o in guarded[1:4]] == [1, 2, 2], guarded  # stored, keyed, replayed
    assert [o[1] for o in guarded[4:6]] == ["IdempotencyConflict", "ConcurrentUpdate"], guarded
    assert dict(guarded[6][1])["seq"] == 3 and guarded[7][1] == guarded[8][1] == "ConversationNotFound"
    assert [dict(m)["seq"] for m in guarded[9][1]] == [2, 3]  # the cap of 2


async def test_concurrent_delegated_appends_and_turns_are_gap_free(
    stores: tuple[ConversationStore, ConversationStore],
) -> None:
    delegated, _ = stores
    conv = await delegated.get_or_create_conversation(None, "alice")
    saves = [delegated.save_message(conv.id, "alice", "user", f"m{i}") for i in range(24)]
    turns = [
        delegated.save_and_get_history(conv.id, "alice", {"role": "user", "content": f"t{i}"}, limit=5)
        for i in range(8)
    ]
    saved_alone, turned = await asyncio.gather(asyncio.gather(*saves), asyncio.gather(*turns))  # all at once
    seqs = sorted([m.seq for m in saved_alone] + [saved.seq for saved, _ in turned])
    assert seqs == list(range(1, 33))
    for saved, window in turned:
        # A turn's window ends at its own message and holds the messages just before it, gap-free.
        assert window[-1].seq == saved.seq
        assert [m.seq for m in window] == list(range(max(1, saved.seq - 4), saved.seq + 1))


async def test_a_changed_function_body_is_not_called(delegated_db: asyncpg.Connection, dsn: str) -> None:
    """A database whose function differs from this package's (an older schema_citus.sql, or an
    edit) keeps the statements: verify_schema names it in the report, and appends still work."""
    await delegated_db.execute(
        "CREATE OR REPLACE FUNCTION convdb_get_or_create_conversation("
        "p_conversation_id text, p_user_id text, p_title text, p_metadata text, p_expires_at timestamptz, "
        "p_ttl interval, p_sliding boolean, p_temporary boolean, p_max_messages integer) "
        "RETURNS TABLE (id text, user_id text, title text, metadata jsonb, created_at timestamptz, "
        "updated_at timestamptz, created boolean, parent_id text, forked_at_seq bigint, root_id text, "
        "expires_at timestamptz, ttl interval, temporary boolean, max_messages integer) "
        "LANGUAGE plpgsql VOLATILE AS $$ BEGIN RAISE EXCEPTION 'the old body ran'; END $$"
    )
    from convdb import schema_check

    report = await schema_check.inspect(delegated_db)
    assert report.compatible and not report.delegated
    assert [s.partition("(")[0] for s in report.stale_delegated] == ["convdb_get_or_create_conversation"]
    from convdb.cli import describe

    words = describe(report, "here")
    assert "convdb_get_or_create_conversation differ from this package's and are not used" in words, words
    assert words.endswith("OK: this package can run on this database.\n")
    async with await ConversationStore.connect(dsn, min_size=1, max_size=2) as store:
        assert not store.delegated
        conv = await store.get_or_create_conversation(None, "alice")
        assert (await store.save_message(conv.id, "alice", "user", "hi")).seq == 1


async def test_without_the_functions_a_store_sends_the_statements(store: ConversationStore, dsn: str) -> None:
    """Every single-node database (the suite's ``store``): nothing to delegate to."""
    conn = await asyncpg.connect(dsn)
    try:
        has_citus = await conn.fetchval("SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL")
    finally:
        await conn.close()
    assert store.delegated == has_citus
    assert (DELEGATED if has_citus else STATEMENTS).delegated == store.delegated
