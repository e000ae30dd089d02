"""convdb on a Citus cluster: one shard per conversation-scoped statement, user-wide statements
correct across shards, and schema_citus.sql's distribution (issue 16).

Engine-specific: these run only in the Citus mode of the suite (CONVDB_TEST_CITUS=1 or
CONVDB_TEST_CITUS_DSN; .ci/run runs it), where they are the twins of the single-node plan tests.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from convdb import ConvDBError, ConversationNotFound, ConversationStore, TransientError
from convdb.listing import build_listing
from convdb.sql import QUERIES
from convdb.testing import apply_schema, apply_sql, catalog_snapshot
from tests.support.delegated import send_statements
from tests.support.fix_server import ROOT, SCHEMA_CITUS, Server

citus_only = pytest.mark.engine_specific("citus", "EXPLAIN shapes and catalogs of a Citus cluster")

_NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
# The seven usage parameters of a message without usage (model, input/output/cached/reasoning
# tokens, cost, latency_ms), after the ten message columns.
_NO_USAGE = (None,) * 7

# Statements that concern one conversation, with arguments naming conversation "c1" of user "u1".
# ROUTER: the whole statement is one task on one shard (Citus router / fast-path execution).
ROUTER: dict[str, tuple[Any, ...]] = {
    "get_conversation": ("c1", "u1"),
    "reserve_seq_range": ("c1", "u1", 3),
    "lock_conversation_with_keys": ("c1", "u1", ["k1", "k2"]),
    "insert_message_at": ("c1", 1, "user", "hi", None, None, None, None, 1, None, *_NO_USAGE),
    "get_message_by_key": ("c1", "u1", "k1"),
    "get_history": ("c1", "u1", 50),
    "get_history_window": ("c1", "u1", 100, 50, None),
    "count_messages": ("c1", "u1"),
    "update_conversation": ("c1", "u1", True, "t", False, None, True, None, timedelta(hours=1), True),
    "delete_conversation": ("c1", "u1"),
    "clear_conversation": ("c1", "u1"),
    "pop_last_message": ("c1", "u1"),
    "export_header": ("c1", "u1"),
    "export_messages": ("c1", "u1", 0, 100, 50),
    "import_conversation_row": ("c1", "u1", "t", None, 1, _NOW, _NOW, True, timedelta(days=1), True, None),
    "import_owner_check": ("c1", "u1"),
    "import_clear_messages": ("c1", "u1"),
    "import_message": ("c1", 1, "user", "hi", None, None, None, None, 1, None, *_NO_USAGE, _NOW, "u1"),
    "import_finish": ("c1", "u1", 5),
    "lock_conversation": ("c1", "u1"),
    "get_or_create_conversation_locked": ("c1", "u1", None, None, None, None, False, False, None),
    # Schema version 3 (summaries and usage).
    "reserve_seq_range_guarded": ("c1", "u1", 3, 0),
    "get_history_summarized": ("c1", "u1", 100, 50, None),
    "list_summaries": ("c1", "u1"),
    "usage_report_conversation": ("u1", _NOW, _NOW, "UTC", None, "c1"),
    "record_usage": ("c1", "u1", 1, "m", 1, 2, None, None, None, None),
    # Schema version 5 (feedback).
    "clear_feedback": ("c1", "u1", 1),
    "get_feedback": ("c1", "u1"),
    "feedback_summary_conversation": ("c1", "u1", None, None),
    "export_feedback": ("c1", "u1", 100),
    "import_feedback": ("c1", 1, 1, None, [], False, _NOW, _NOW, "u1"),
    # convdb_user_keys is distributed by user_id: one user's key is one shard's row.
    "get_user_key": ("u1",),
    "create_user_key": ("u1", "0123456789abcdef", "k1", b"wrapped"),
    "shred_user_key": ("u1",),
    "rewrap_user_key": ("u1", "0123456789abcdef", "k1", "k2", b"wrapped"),
    # Schema version 7 (retention). The purge's claim-and-delete names its conversation on every
    # relation: one router task (a multi-shard FOR UPDATE SKIP LOCKED is not possible on Citus).
    "cap_messages": ("c1", "u1", 5),
    "purge_expired_conversation": ("c1", 100),
}
BY_USER_KEY = {"get_user_key", "create_user_key", "shred_user_key", "rewrap_user_key"}
# ONE_SHARD_STEPS: an INSERT inside a CTE (or INSERT ... SELECT from one). Citus 13.2's router
# planner refuses INSERT common table expressions ("Router planner doesn't support INSERT common
# table expressions", multi_router_planner.c), so the statement runs as several steps from the
# coordinator (subplans, or INSERT ... SELECT "pull to coordinator"); each step is one task on
# the conversation's shard. Value: the most steps seen, so a rewrite that adds hops fails here.
ONE_SHARD_STEPS: dict[str, tuple[tuple[Any, ...], int]] = {
    "get_or_create_conversation": (("c1", "u1", None, None, None, None, False, False, None), 3),
    # Retention (schema 7): the message cap's DELETE CTE is one more step of every append (3, 5 and
    # 10 steps, measured on Citus 13.2, each one task on the conversation's shard; docs/retention.md).
    "save_message": (("c1", "u1", "user", "hi", None, None, None, None, 1, None, *_NO_USAGE), 3),
    # Measured on Citus 13.2 (3-node local cluster): the guard's snapshot read and the summary's
    # CTE are subplans of their own, each still one task on the conversation's shard.
    "save_message_guarded": (("c1", "u1", "user", "hi", None, None, None, None, 1, None, *_NO_USAGE, 0), 5),
    "save_and_get_history": (
        ("c1", "u1", "user", "hi", None, None, None, None, 1, None, *_NO_USAGE, 50, None, True, 0),
        10,
    ),
    "save_summary": (("c1", "u1", 1, "system", "summary", None, 1), 4),
    # The answer is the saved row UNION ALL the conversation's NULL row (an outer join of
    # conversations with the saved step is refused under row-level security on PG 15/16): one
    # more step, still on the one shard.
    "set_feedback": (("c1", "u1", 1, 1, None, []), 3),
}
# DELEGATED: a call of a schema_citus.sql function (convdb.ops.forms), the other text of an
# ONE_SHARD_STEPS statement: Citus sends the whole call to the conversation's worker, one task
# whose remote plan is the function scan (the body runs there, on the local shards).
DELEGATED: dict[str, tuple[Any, ...]] = {
    "save_message_delegated": ONE_SHARD_STEPS["save_message"][0],
    "save_message_guarded_delegated": ONE_SHARD_STEPS["save_message_guarded"][0],
    "get_or_create_conversation_delegated": ONE_SHARD_STEPS["get_or_create_conversation"][0],
    "save_and_get_history_delegated": ONE_SHARD_STEPS["save_and_get_history"][0],
    # The batch (otherwise a transaction of a reservation and one insert per message, each a
    # router task): the rows as one array per column.
    "save_messages_delegated": (
        "c1",
        "u1",
        None,
        ["user", "assistant"],
        ["hi", "yo"],
        [None] * 2,
        [None] * 2,
        [None] * 2,
        [None] * 2,
        [1, 1],
        ["k1", None],
        *([[None] * 2] * 7),
    ),
}
# By user_id (not the distribution column): they fan out, and must still be correct (see below).
USER_WIDE = {
    "erase_list_conversations",
    "erase_messages_chunk",
    "erase_lock_conversations",
    "erase_conversations",
    "usage_report_user",
    "feedback_summary_user",
    # rotate(): every user's data key (convdb_user_keys, by user_id), a batch at a time.
    "rotation_batch",
    "keys_per_master_key",
    # purge_expired's listing: every user's expired conversations (through each shard's partial
    # index conversations_expires); the claims that follow are router statements.
    "purge_expired_list",
}
# Two conversations: a fork reads its source's shard and writes the new conversation's, which is
# in general another shard (and worker). Multi-shard, and correct across shards (see below); rare
# next to the hot path, which on the fork is single-shard again (the copy lives with the fork).
TWO_CONVERSATIONS = {"fork_conversation", "fork_create", "fork_copy"}
# Not about conversations' rows: the catalog report, the reference-table version, a setting.
NOT_DISTRIBUTED = {"schema_catalog", "schema_version_row", "default_isolation"}


def test_every_statement_is_classified() -> None:
    """A new statement in queries.sql must be added to one of the sets above (and so be checked)."""
    classified = (
        set(ROUTER) | set(ONE_SHARD_STEPS) | set(DELEGATED) | USER_WIDE | TWO_CONVERSATIONS | NOT_DISTRIBUTED
    )
    assert set(QUERIES) == classified, set(QUERIES) ^ classified


def _literal(value: Any, type_name: str) -> str:
    if value is None:
        text = "NULL"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, list):
        text = "ARRAY[" + ",".join(_literal(v, "text") for v in value) + "]"
    elif isinstance(value, datetime):
        text = f"'{value.isoformat()}'"
    elif isinstance(value, bytes):
        text = "'\\x" + value.hex() + "'"
    else:
        text = "'" + str(value).replace("'", "''") + "'"
    sql_type = {"_text": "text[]"}.get(type_name, type_name)
    return f"({text})::{sql_type}"


async def _citus_plan(
    db: asyncpg.Connection, sql: str, args: tuple[Any, ...], *, in_transaction: bool = True
) -> Any:
    """EXPLAIN (FORMAT JSON) of ``sql`` with ``args`` spelled as typed literals.

    Literals, not parameters: Citus cannot EXPLAIN a parametrised INSERT ... SELECT ("could not
    create distributed plan ... parameters"), and with literals every statement is explained the
    same way, as the custom plan that plan_cache_mode=auto gives it at run time.
    """
    types = [t.name for t in (await db.prepare(sql)).get_parameters()]
    assert len(types) == len(args), (len(types), args)
    text = sql
    for i in range(len(args), 0, -1):
        text = re.sub(rf"\${i}(?![0-9])", _literal(args[i - 1], types[i - 1]).replace("\\", "\\\\"), text)
    if in_transaction:
        async with db.transaction():
            raw = await db.fetchval("EXPLAIN (FORMAT JSON) " + text)
    else:  # Citus delegates a function call only outside a transaction block
        raw = await db.fetchval("EXPLAIN (FORMAT JSON) " + text)
    return json.loads(raw) if isinstance(raw, str) else raw


def _jobs(plan: Any) -> list[dict[str, Any]]:
    """Every distributed job in a Citus plan (subplans included), depth first."""
    found: list[dict[str, Any]] = []
    if isinstance(plan, dict):
        if "Job" in plan:
            found.append(plan["Job"])
        for value in plan.values():
            found += _jobs(value)
    elif isinstance(plan, list):
        for value in plan:
            found += _jobs(value)
    return found


async def _worker_nodes(db: asyncpg.Connection, jobs: list[dict[str, Any]]) -> set[str]:
    """The workers the jobs' tasks run on; a step the coordinator runs itself (reading the
    intermediate results of earlier steps) is not a shard access."""
    port = await db.fetchval("SELECT nodeport FROM pg_dist_node WHERE groupid = 0")
    nodes = {task["Node"] for job in jobs for task in job.get("Tasks", []) if "Node" in task}
    return {n for n in nodes if not re.search(rf"\bport={port}\b", n)}


async def _shard_node(db: asyncpg.Connection, conversation_id: str, table: str = "conversations") -> str:
    row = await db.fetchrow(
        "SELECT nodename, nodeport FROM citus_shards "
        "WHERE table_name = $2::regclass "
        "AND shardid = get_shard_id_for_distribution_column($2::regclass, $1::text)",
        conversation_id,
        table,
    )
    assert row is not None
    return f"host={row[0]} port={row[1]} "


@citus_only
@pytest.mark.parametrize("name", sorted(ROUTER))
async def test_conversation_statement_is_one_router_task(db: asyncpg.Connection, name: str) -> None:
    jobs = _jobs(await _citus_plan(db, QUERIES[name], ROUTER[name]))
    assert [job["Task Count"] for job in jobs] == [1], f"{name}: {jobs}"
    nodes = await _worker_nodes(db, jobs)
    # The user-key statements route by user id (convdb_user_keys is distributed by user_id).
    table, value = ("convdb_user_keys", "u1") if name in BY_USER_KEY else ("conversations", "c1")
    assert len(nodes) == 1 and next(iter(nodes)).startswith(await _shard_node(db, value, table)), nodes


@citus_only
@pytest.mark.parametrize("name", sorted(ONE_SHARD_STEPS))
async def test_insert_statement_runs_each_step_on_the_one_shard(db: asyncpg.Connection, name: str) -> None:
    args, most_steps = ONE_SHARD_STEPS[name]
    jobs = _jobs(await _citus_plan(db, QUERIES[name], args))
    assert 1 <= len(jobs) <= most_steps, f"{name}: {len(jobs)} steps"
    assert all(job["Task Count"] == 1 for job in jobs), f"{name}: {[j['Task Count'] for j in jobs]}"
    nodes = await _worker_nodes(db, jobs)
    # The user-key statements route by user id (convdb_user_keys is distributed by user_id).
    table, value = ("convdb_user_keys", "u1") if name in BY_USER_KEY else ("conversations", "c1")
    assert len(nodes) == 1 and next(iter(nodes)).startswith(await _shard_node(db, value, table)), nodes


@citus_only
@pytest.mark.parametrize("name", sorted(DELEGATED))
async def test_delegated_call_is_one_task_on_the_conversations_worker(
    db: asyncpg.Connection, name: str
) -> None:
    """The twin that matters for the hot paths: where the statement is several steps through the
    coordinator, its delegated text is one task, the function scan, on the worker holding c1."""
    jobs = _jobs(await _citus_plan(db, QUERIES[name], DELEGATED[name], in_transaction=False))
    assert [job["Task Count"] for job in jobs] == [1], f"{name}: {jobs}"
    remote = json.dumps(jobs[0]["Tasks"][0]["Remote Plan"])
    assert '"Node Type": "Function Scan"' in remote and "convdb_" in remote, remote
    nodes = await _worker_nodes(db, jobs)
    assert len(nodes) == 1 and next(iter(nodes)).startswith(await _shard_node(db, "c1")), nodes


@citus_only
async def test_connect_finds_the_delegated_functions_and_citus_pushes_the_calls_down(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    """schema_citus.sql distributed the five functions by their conversation id, co-located with
    conversations, and Citus says it pushes a call down (its DEBUG1 message), as it does for the
    store's own calls (``store.delegated``)."""
    assert store.delegated
    rows = await db.fetch(
        "SELECT objid::regprocedure::text, distribution_argument_index, colocationid FROM pg_dist_object "
        "WHERE objid::regprocedure::text LIKE ANY ($1)",
        [
            "convdb_save_message(%",
            "convdb_save_message_guarded(%",
            "convdb_get_or_create_conversation(%",
            "convdb_save_and_get_history(%",
            "convdb_save_messages(%",
        ],
    )
    colocation = await db.fetchval(
        "SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = 'conversations'::regclass"
    )
    assert len(rows) == 5 and {(r[1], r[2]) for r in rows} == {(0, colocation)}, rows
    messages: list[str] = []
    db.add_log_listener(lambda _conn, message: messages.append(message.message))
    await db.execute("SET client_min_messages TO debug1")
    try:
        conv = await store.get_or_create_conversation(None, "alice")
        created = await db.fetch(
            QUERIES["get_or_create_conversation_delegated"],
            "c-debug",
            "alice",
            *([None] * 4),
            False,
            False,
            None,
        )
        saved = await db.fetch(
            QUERIES["save_message_delegated"], conv.id, "alice", "user", "hi", *([None] * 4), 1, *([None] * 8)
        )
        guarded = await db.fetch(
            QUERIES["save_message_guarded_delegated"],
            conv.id,
            "alice",
            "user",
            "hi",
            *([None] * 4),
            1,
            *([None] * 8),
            1,
        )
    finally:
        await db.execute("RESET client_min_messages")
    assert len(created) == 1 and [r["seq"] for r in saved] == [1] and [r["seq"] for r in guarded] == [2]
    assert messages.count("pushing down the function call") == 3, messages


@citus_only
@pytest.mark.parametrize(
    ("name", "args"),
    [("get_history", ("big", "alice", 50)), ("get_history_window", ("big", "alice", 2**63 - 1, 50, 100))],
)
async def test_history_walks_the_shards_primary_key_backwards(
    store: ConversationStore, db: asyncpg.Connection, name: str, args: tuple[Any, ...]
) -> None:
    """Twin of the single-node EXPLAIN tests (test_core_plans_and_round_trips.py,
    test_agent_windows.py): one task, and on its shard get_history / get_history_window is a
    backward scan of messages_pkey that stops after ``limit`` rows (the window's running sum a
    WindowAgg over it), reading few buffers on the shard."""
    conv = await store.get_or_create_conversation("big", "alice")
    for _ in range(3):
        await store.save_messages(
            conv.id, "alice", [{"role": "user", "content": f"m{i}"} for i in range(1000)]
        )
    await db.execute("ANALYZE conversations; ANALYZE messages")
    types = [t.name for t in (await db.prepare(QUERIES[name])).get_parameters()]
    text = QUERIES[name]
    for i in range(len(args), 0, -1):
        text = re.sub(rf"\${i}(?![0-9])", _literal(args[i - 1], types[i - 1]).replace("\\", "\\\\"), text)
    raw = await db.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + text)
    jobs = _jobs(json.loads(raw) if isinstance(raw, str) else raw)
    assert [job["Task Count"] for job in jobs] == [1]
    remote = json.dumps(jobs[0]["Tasks"][0]["Remote Plan"])
    shard_plan = jobs[0]["Tasks"][0]["Remote Plan"]
    while isinstance(shard_plan, list):
        shard_plan = shard_plan[0]
    top = shard_plan["Plan"]
    touched = top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0)
    assert touched < 50, f"{touched} buffers on the shard for 50 rows: not reading only the newest rows"
    scans = re.findall(r'\{[^{}]*"Relation Name": "messages_[0-9]+"[^{}]*\}', remote)
    assert len(scans) == 1, remote
    scan = json.loads(scans[0])
    assert scan["Node Type"] in {"Index Scan", "Index Only Scan"}
    assert re.fullmatch(r"messages_pkey_[0-9]+", scan["Index Name"]), scan
    assert scan["Scan Direction"] == "Backward"
    # The window's LIMIT sits above its WindowAgg, which reads one row ahead.
    assert scan["Actual Rows"] <= (51 if name == "get_history_window" else 50)
    if name == "get_history_window":
        assert '"Node Type": "WindowAgg"' in remote


@citus_only
async def test_user_wide_listing_and_erasure_are_correct_across_shards(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    """list_conversations and delete_user_data read by user_id, so they fan out to every shard:
    every page is complete and ordered, and erasure removes all of one user's rows, on every
    worker, and nothing of another user's."""
    ids = [f"conv-{n:03d}" for n in range(40)]
    for n, cid in enumerate(ids):
        await store.get_or_create_conversation(cid, "alice", title=f"t{n}")
        await store.save_messages(
            cid, "alice", [{"role": "user", "content": str(i)} for i in range(n % 4 + 1)]
        )
    await store.get_or_create_conversation("bob-1", "bob")
    await store.save_message("bob-1", "bob", "user", "keep me")
    workers = await db.fetchval(
        "SELECT count(DISTINCT (nodename, nodeport)) FROM citus_shards "
        "WHERE table_name = 'conversations'::regclass "
        "AND shardid IN (SELECT get_shard_id_for_distribution_column('conversations', x) "
        "FROM unnest($1::text[]) x)",
        ids,
    )
    assert workers >= 2, "the conversations should live on more than one worker"

    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_conversations("alice", limit=7, cursor=cursor)
        seen += [c.id for c in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    # Newest updated first: conversations were written in id order, one after the other.
    assert seen == list(reversed(ids))

    counts = await store.delete_user_data("alice", conversations_per_batch=9, messages_per_batch=7)
    assert (counts.conversations, counts.messages) == (40, sum(n % 4 + 1 for n in range(40)))
    assert await db.fetchval("SELECT count(*) FROM conversations WHERE user_id = 'alice'") == 0
    assert (
        await db.fetchval("SELECT count(*) FROM messages WHERE conversation_id = ANY($1::text[])", ids) == 0
    )
    assert [m.content for m in await store.get_history("bob-1", "bob")] == ["keep me"]


@citus_only
async def test_fork_copies_a_conversation_onto_another_workers_shard(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    """fork_conversation is the one statement about two conversations (TWO_CONVERSATIONS): with
    the fork's id on another worker than its source's, the prefix's messages, summaries and
    feedback arrive there, and the fork's window is then read from its own shard alone."""
    await store.get_or_create_conversation("src", "alice")
    await store.save_messages("src", "alice", [{"role": "user", "content": f"m{i}"} for i in range(1, 7)])
    await store.save_summary("src", "alice", "up to 3", through_seq=3)
    await store.set_feedback("src", "alice", 2, rating=1, tags=["good"])
    home = await _shard_node(db, "src")
    fork_id = ""
    for n in range(1000):  # 32 shards on two workers: the first few ids already cover both
        if await _shard_node(db, f"fork-{n}") != home:
            fork_id = f"fork-{n}"
            break
    assert fork_id, "no id on the other worker"
    fork = await store.fork_conversation("src", "alice", at_seq=4, new_conversation_id=fork_id)
    assert (fork.parent_id, fork.forked_at_seq, fork.root_id) == ("src", 4, "src")
    assert [m.content for m in await store.get_history(fork_id, "alice")] == ["m1", "m2", "m3", "m4"]
    window = await store.get_history(fork_id, "alice", limit=10, summarized=True)
    assert [(m.seq, m.content) for m in window] == [(3, "up to 3"), (4, "m4")]
    assert [(f.seq, f.rating, f.inherited) for f in await store.get_feedback(fork_id, "alice")] == [
        (2, 1, True)
    ]
    assert (await store.save_message(fork_id, "alice", "user", "edited")).seq == 5
    jobs = _jobs(await _citus_plan(db, QUERIES["get_history"], (fork_id, "alice", 50)))
    assert [job["Task Count"] for job in jobs] == [1]
    nodes = await _worker_nodes(db, jobs)
    assert len(nodes) == 1 and next(iter(nodes)).startswith(await _shard_node(db, fork_id)), nodes
    with pytest.raises(ConversationNotFound):
        await store.fork_conversation("src", "bob", at_seq=1)


async def _distribution(db: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await db.fetch(
        "SELECT table_name::text, citus_table_type, distribution_column, colocation_id, shard_count "
        "FROM citus_tables ORDER BY 1"
    )
    return [tuple(r) for r in rows]


@citus_only
async def test_schema_citus_distributes_colocated_and_is_idempotent(
    pg_server: Server, db: asyncpg.Connection, db_name: str
) -> None:
    before = await _distribution(db)
    by_name = {r[0]: r for r in before}
    assert by_name["conversations"][1:3] == ("distributed", "id")
    assert by_name["messages"][1:3] == ("distributed", "conversation_id")
    assert by_name["conversations"][3] == by_name["messages"][3], "co-located"
    for table in ("conversation_summaries", "message_feedback"):
        assert by_name[table][1:4] == ("distributed", "conversation_id", by_name["messages"][3]), table
    assert by_name["conversations"][4] == 32
    assert by_name["convdb_schema_version"][1] == "reference"
    shards = await db.fetchval("SELECT count(*) FROM pg_dist_shard")
    fkeys = await db.fetchval(
        "SELECT count(*) FROM pg_constraint WHERE conname = 'messages_conversation_fkey'"
    )

    apply_schema(pg_server.dsn(db_name), SCHEMA_CITUS)  # again: changes nothing

    assert await _distribution(db) == before
    assert await db.fetchval("SELECT count(*) FROM pg_dist_shard") == shards
    assert fkeys == 1
    assert (
        await db.fetchval("SELECT count(*) FROM pg_constraint WHERE conname = 'messages_conversation_fkey'")
        == 1
    )


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "convdb", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@citus_only
async def test_schema_citus_command_output_builds_a_database_check_accepts(
    pg_server: Server, db: asyncpg.Connection, db_name: str
) -> None:
    """`python -m convdb schema --citus` applied with psql on a new distributed database (the
    extension on every node, the workers registered, nothing else) gives the tests' template:
    same catalog, same distribution; `check` accepts it and connect() verifies it."""
    assert pg_server.citus is not None
    printed = await asyncio.to_thread(_cli, "schema", "--citus")
    assert printed.returncode == 0 and printed.stderr == "", printed
    assert printed.stdout.endswith(SCHEMA_CITUS.read_text())
    name = f"cli_{uuid.uuid4().hex[:12]}"
    await pg_server.citus.create_database(name)
    try:
        dsn = pg_server.dsn(name)
        apply_sql(dsn, printed.stdout)
        assert await catalog_snapshot(dsn) == await catalog_snapshot(pg_server.dsn(db_name))
        built = await asyncpg.connect(dsn)
        try:
            assert await _distribution(built) == await _distribution(db)
        finally:
            await built.close()
        checked = await asyncio.to_thread(_cli, "check", "--dsn", dsn)
        assert checked.returncode == 0, checked
        assert checked.stdout.endswith("OK: this package can run on this database.\n")
        assert "delegated functions are this package's" in checked.stdout, checked.stdout
        store = await ConversationStore.connect(dsn, min_size=1, max_size=1)
        try:
            await store.verify_schema()
            conv = await store.get_or_create_conversation("cli-1", "alice")
            assert (await store.save_message(conv.id, "alice", "user", "hi")).seq == 1
        finally:
            await store.close()
    finally:
        await pg_server.citus.drop_database(name)


@citus_only
async def test_idempotent_replay_is_recognised_without_constraint_name(store: ConversationStore) -> None:
    """Citus relays the worker's unique violation without constraint_name; a replayed key must
    still return the stored message (one stored), and a batch replay likewise."""
    conv = await store.get_or_create_conversation("keys", "alice")
    first = await store.save_message(conv.id, "alice", "user", "once", idempotency_key="k")
    again = await store.save_message(conv.id, "alice", "user", "once", idempotency_key="k")
    assert again == first
    batch = [{"role": "user", "content": str(i), "idempotency_key": f"b{i}"} for i in range(3)]
    stored = await store.save_messages(conv.id, "alice", batch)
    assert await store.save_messages(conv.id, "alice", batch) == stored
    assert await store.count_messages(conv.id, "alice") == 4


@citus_only
async def test_listing_reads_each_shard_through_the_user_index(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    """Twin of the single-node listing plan test: the listing fans out (user_id is not the
    distribution column), and on every shard it reads only the user's rows through
    conversations_user_id, never a sequential scan."""
    await db.execute("""INSERT INTO conversations (id, user_id, updated_at)
                        SELECT 'c' || g, 'u' || (g % 2000), now() - g * interval '1 second'
                          FROM generate_series(1, 40000) g""")
    await db.execute("ANALYZE conversations")
    await db.execute("SET citus.explain_all_tasks = on")
    cursor = (await store.list_conversations("u7", limit=3)).next_cursor
    searches: list[dict[str, Any]] = [
        {},
        {"cursor": cursor},
        {"title_contains": "x", "metadata_contains": {"a": 1}},
        # test_hardening_title_search.py's patterns (Unicode case folding on the server)
        {"title_contains": "école"},
        {"title_contains": "Été 7"},
    ]
    for kwargs in searches:
        query = build_listing("u7", limit=3, **kwargs)
        raw = await db.fetchval("EXPLAIN (FORMAT JSON) " + query.sql, *query.args)
        jobs = _jobs(json.loads(raw) if isinstance(raw, str) else raw)
        assert [job["Task Count"] for job in jobs] == [32]
        remote = json.dumps([task["Remote Plan"] for task in jobs[0]["Tasks"]])
        assert '"Seq Scan"' not in remote
        indexes = set(re.findall(r'"Index Name": "([^"]+)"', remote))
        assert len(indexes) == 32 and all(re.fullmatch(r"conversations_user_id_[0-9]+", i) for i in indexes)
    page = await store.list_conversations("u7", limit=30)
    assert [c.id for c in page.items] == [f"c{g}" for g in range(7, 40001, 2000)][:20]


async def _worker_of(db: asyncpg.Connection, pg_server: Server, conversation_id: str) -> tuple[int, str]:
    """The index (in ``Server.citus.workers``) of the worker holding ``conversation_id``'s messages
    shard, and that shard's table name on it."""
    assert pg_server.citus is not None
    row = await db.fetchrow(
        "SELECT s.shard_name::text AS shard, s.nodeport FROM citus_shards s "
        "WHERE s.shardid = get_shard_id_for_distribution_column('messages', $1::text)",
        conversation_id,
    )
    assert row is not None
    ports = [w.port for w in pg_server.citus.workers]
    return ports.index(row["nodeport"]), str(row["shard"])


@citus_only
@pytest.mark.guarantee(4)
@pytest.mark.parametrize("delegated", [True, False], ids=["delegated call", "statements"])
async def test_batch_is_all_or_nothing_when_its_worker_backend_is_killed(
    pg_server: Server, db: asyncpg.Connection, db_name: str, delegated: bool
) -> None:
    """The worker's backend running the batch's INSERT on the shard is terminated while it waits
    (a session on that worker holds a SHARE lock on the shard): the call fails with a typed error,
    nothing of the batch is stored, and every pool slot works again afterwards. Both forms of the
    batch: the delegated call (its INSERT runs inside convdb_save_messages on the worker, which
    pg_stat_activity shows as the call) and the statements' transaction (a store whose forms are
    set back to the statements, as on a database without the functions)."""
    assert pg_server.citus is not None
    async with await ConversationStore.connect(pg_server.dsn(db_name), min_size=2, max_size=2) as store:
        assert store.delegated
        if not delegated:
            send_statements(store)
        running = "%convdb_save_messages(%" if delegated else "INSERT INTO %messages%"
        conv = await store.get_or_create_conversation(None, "alice")
        index, shard = await _worker_of(db, pg_server, conv.id)
        worker = await asyncpg.connect(pg_server.citus.worker_dsn(index, db_name))
        locker = await asyncpg.connect(pg_server.citus.worker_dsn(index, db_name))
        try:
            # Shards are hidden from a worker's catalog by default, and refused to manual changes.
            await locker.execute(
                "SET citus.override_table_visibility = off; SET citus.enable_manual_changes_to_shards = on"
            )
            await locker.execute(f"BEGIN; LOCK TABLE {shard} IN SHARE MODE")
            batch = [{"role": "user", "content": f"m{i}"} for i in range(50)]
            task = asyncio.create_task(store.save_messages(conv.id, "alice", batch))
            deadline = time.monotonic() + 60
            pid = None
            while pid is None and time.monotonic() < deadline and not task.done():
                pid = await worker.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND state = 'active' AND wait_event_type = 'Lock' "
                    "AND query LIKE $1",
                    running,
                )
                if pid is None:
                    await asyncio.sleep(0.05)
            assert pid is not None, "the batch's INSERT never waited on the worker"
            assert await worker.fetchval("SELECT pg_terminate_backend($1::integer)", pid)
            with pytest.raises(ConvDBError):
                await asyncio.wait_for(task, 60)
            await locker.execute("ROLLBACK")
        finally:
            await locker.close()
            await worker.close()
        assert await db.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", conv.id) == 0
        assert await db.fetchval("SELECT next_seq FROM conversations WHERE id = $1", conv.id) == 1
        held = [await store.pool.acquire(timeout=30) for _ in range(2)]
        try:
            assert [await c.fetchval("SELECT 1") for c in held] == [1, 1]
        finally:
            for c in held:
                await store.pool.release(c)
        saved = await store.save_messages(conv.id, "alice", batch[:3])
        assert [m.seq for m in saved] == [1, 2, 3]


async def _conversation_shard(
    db: asyncpg.Connection, pg_server: Server, conversation_id: str
) -> tuple[int, str]:
    """The index (in ``Server.citus.workers``) of the worker holding the conversation's row, and
    its conversations shard's name there."""
    assert pg_server.citus is not None
    row = await db.fetchrow(
        "SELECT s.shard_name::text AS shard, s.nodeport FROM citus_shards s "
        "WHERE s.shardid = get_shard_id_for_distribution_column('conversations', $1::text)",
        conversation_id,
    )
    assert row is not None
    return [w.port for w in pg_server.citus.workers].index(row["nodeport"]), str(row["shard"])


@citus_only
async def test_a_queue_on_one_row_is_cancelled_as_a_distributed_deadlock(
    pg_server: Server, db: asyncpg.Connection, db_name: str
) -> None:
    """Why the concurrent pop tests (tests/agent/test_agent_management.py) accept TransientError
    on Citus: Citus 13.2's distributed deadlock detector cancels a plain lock queue.

    A session on the worker holds the conversation row (a local transaction). Then, each seen
    waiting on the worker before the next starts: an append (save_message: several steps, so a
    distributed transaction), a title update (one router statement: on the worker, no
    distributed transaction), a second append. Every wait is on the one row, in queue order: no
    cycle, and PostgreSQL runs them one by one once the holder ends. Citus's wait graph merges the
    worker's backends that are in no distributed transaction (the holder and the update) into one
    node, so "the first append waits for the holder, the update waits for the first append" reads
    as a cycle, and the first append is cancelled (SQLSTATE 40P01) while the holder still holds:
    a TransientError, nothing stored. The others then complete in order. If a Citus release stops
    doing this, this test fails at the first wait_for: docs/citus.md must then be updated."""
    assert pg_server.citus is not None
    async with await ConversationStore.connect(pg_server.dsn(db_name), min_size=3, max_size=3) as store:
        cid = (await store.get_or_create_conversation(None, "alice")).id
        index, shard = await _conversation_shard(db, pg_server, cid)
        holder = await asyncpg.connect(pg_server.citus.worker_dsn(index, db_name))
        watcher = await asyncpg.connect(pg_server.citus.worker_dsn(index, db_name))
        try:
            await holder.execute("SET citus.override_table_visibility = off")
            await holder.execute("BEGIN")
            await holder.execute(f"SELECT 1 FROM {shard} WHERE id = $1 FOR NO KEY UPDATE", cid)

            async def waiting(n: int) -> None:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    count = await watcher.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock'"
                    )
                    if count == n:
                        return
                    await asyncio.sleep(0.02)
                raise AssertionError(f"{n} waiters never seen on the worker")

            first = asyncio.create_task(store.save_message(cid, "alice", "user", "first"))
            await waiting(1)
            update = asyncio.create_task(store.update_conversation(cid, "alice", title="t"))
            await waiting(2)
            second = asyncio.create_task(store.save_message(cid, "alice", "user", "second"))
            await waiting(3)
            with pytest.raises(TransientError, match="distributed deadlock"):
                await asyncio.wait_for(first, 60)
            assert not update.done() and not second.done(), "they still wait for the holder"
            await holder.execute("COMMIT")
            assert (await asyncio.wait_for(update, 60)).title == "t"
            assert (await asyncio.wait_for(second, 60)).seq == 1
        finally:
            await holder.close()
            await watcher.close()
        assert [m.content for m in await store.get_history(cid, "alice")] == ["second"]
