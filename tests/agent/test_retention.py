"""Retention on a real server (docs/retention.md): expiry fails closed on every method, sliding and
fixed expiry, temporary conversations, message caps, purge_expired (counts, limit, resume,
concurrent writers, two processes at once), and bad input for every new parameter."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from convdb import ConversationStore, InvalidInput, StaticKeys
from tests.support.fix_server import VIA_CITUS
from tests.support.surface import CREATING, USER_WIDE, call, export_records, not_found, public_methods

ROOT = Path(__file__).resolve().parents[2]
PAST = datetime(2001, 1, 1, tzinfo=UTC)
REFUSED_WHEN_ENCRYPTED = {"fork_conversation", "search_messages"}


async def expire(db: asyncpg.Connection, *ids: str) -> None:
    """Expire conversations now, as the clock would: their expires_at moves into the past."""
    await db.execute(
        "UPDATE conversations SET expires_at = now() - interval '1 second' WHERE id = ANY($1)", ids
    )


async def dump(db: asyncpg.Connection) -> list[str]:
    rows = await db.fetch(
        "SELECT 'c' || row_to_json(c)::text FROM conversations c UNION ALL "
        "SELECT 'm' || row_to_json(m)::text FROM messages m UNION ALL "
        "SELECT 's' || row_to_json(s)::text FROM conversation_summaries s UNION ALL "
        "SELECT 'f' || row_to_json(f)::text FROM message_feedback f ORDER BY 1"
    )
    return [r[0] for r in rows]


async def seed(store: ConversationStore, cid: str, uid: str, n: int = 3) -> None:
    await store.get_or_create_conversation(cid, uid, title=f"title {cid}")
    for i in range(n):
        await store.save_message(
            cid, uid, "user", f"needle {cid} {i}", idempotency_key=f"{cid}-{i}", usage={"input_tokens": 1}
        )


# -- the expiry matrix ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["plain", "encrypted"])
@pytest.mark.guarantee(14)
async def test_every_method_treats_an_expired_conversation_as_unknown(
    dsn: str, db: asyncpg.Connection, mode: str
) -> None:
    provider = StaticKeys({"k1": os.urandom(32)}, "k1") if mode == "encrypted" else None
    async with await ConversationStore.connect(dsn, min_size=1, max_size=4, encryption=provider) as store:
        await seed(store, "doomed", "owner")
        await store.save_summary("doomed", "owner", "a summary", through_seq=1)
        await store.set_feedback("doomed", "owner", 2, rating=1, tags=["t"])
        await seed(store, "alive", "owner")
        records = await export_records(store, "alive", "owner")
        await expire(db, "doomed")
        before = await dump(db)

        checked: set[str] = set()
        for name in public_methods():
            if name in USER_WIDE:
                continue
            if provider is not None and name in REFUSED_WHEN_ENCRYPTED:
                with pytest.raises(InvalidInput, match=f"encryption: {name} is not available"):
                    await call(store, name, "doomed", "owner", records)
                checked.add(name)
                continue
            # Creating methods included: an expired id is not revived (nor replaced) before the
            # purge, it behaves as another user's id; every other method, as an unknown id too.
            expired = await not_found(functools.partial(call, store, name, "doomed", "owner", records))
            foreign = await not_found(functools.partial(call, store, name, "alive", "intruder", records))
            assert expired.args == foreign.args, name
            if name not in CREATING:
                unknown = await not_found(
                    functools.partial(call, store, name, "no-such-conv", "owner", records)
                )
                assert expired.args == unknown.args, name
            checked.add(name)
        assert checked | USER_WIDE == set(public_methods())
        assert await dump(db) == before, "a call on an expired conversation changed stored data"

        # The user-wide methods do not see it either.
        listed = await store.list_conversations("owner", limit=100)
        assert [c.id for c in listed.items] == ["alive"]
        report = await store.usage_report(
            "owner", since=datetime(2020, 1, 1, tzinfo=UTC), until=datetime(2100, 1, 1, tzinfo=UTC)
        )
        assert report.total.input_tokens == 3  # alive's three messages, none of doomed's
        assert (await store.feedback_summary("owner")).count == 0
        if provider is None:
            hits = await store.search_messages("owner", "needle")
            assert {h.conversation_id for h in hits.items} == {"alive"}
            title_hits = await store.search_messages("owner", "title")
            assert {h.conversation_id for h in title_hits.items} == {"alive"}
        # Erasure still sees it (an erasure request covers expired-but-unpurged rows too).
        assert (await store.delete_user_data("owner")).conversations == 2
    print(f"\nexpiry matrix ({mode}): {len(checked)} methods, expired == unknown on every one")


async def test_purge_frees_an_expired_id_and_get_or_create_starts_afresh(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    await seed(store, "c1", "u1", n=4)
    await expire(db, "c1")
    await not_found(lambda: store.get_or_create_conversation("c1", "u1", title="new"))
    counts = await store.purge_expired()
    assert (counts.conversations, counts.messages) == (1, 4)
    fresh = await store.get_or_create_conversation("c1", "u1", title="new")
    assert fresh.title == "new" and await store.get_history("c1", "u1") == []


# -- setting an expiry ---------------------------------------------------------------------------
async def db_expiry(db: asyncpg.Connection, cid: str) -> tuple[datetime | None, timedelta | None]:
    row = await db.fetchrow("SELECT expires_at, ttl FROM conversations WHERE id = $1", cid)
    assert row is not None
    return row["expires_at"], row["ttl"]


async def test_fixed_and_sliding_expiry(store: ConversationStore, db: asyncpg.Connection) -> None:
    now = await db.fetchval("SELECT now()")
    fixed = await store.get_or_create_conversation("fixed", "u", ttl=timedelta(hours=1))
    assert fixed.expires_at is not None and fixed.ttl is None and not fixed.sliding
    assert timedelta(minutes=59) < fixed.expires_at - now < timedelta(minutes=61)
    await store.save_message("fixed", "u", "user", "x")
    await store.save_messages("fixed", "u", [{"role": "user", "content": "y"}])
    assert (await db_expiry(db, "fixed")) == (fixed.expires_at, None), "a fixed expiry never moves"

    sliding = await store.get_or_create_conversation("slide", "u", ttl=timedelta(hours=1), sliding=True)
    assert sliding.ttl == timedelta(hours=1) and sliding.sliding
    # Move it back, as time passing would; every kind of append pushes it to now() + ttl again.
    appends: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.save_message("slide", "u", "user", "a"),
        lambda: store.save_message("slide", "u", "user", "b", expected_last_seq=1),
        lambda: store.save_messages("slide", "u", [{"role": "user", "content": "c"}]),
        lambda: store.save_and_get_history("slide", "u", {"role": "user", "content": "d"}),
    ]
    for append in appends:
        await db.execute(
            "UPDATE conversations SET expires_at = now() + interval '1 minute' WHERE id = 'slide'"
        )
        await append()
        at, ttl = await db_expiry(db, "slide")
        assert ttl == timedelta(hours=1) and at is not None
        assert at - await db.fetchval("SELECT now()") > timedelta(minutes=59)

    at_past = await store.get_or_create_conversation("past", "u", expires_at=PAST)
    assert at_past.expires_at == PAST
    await not_found(lambda: store.get_conversation("past", "u"))

    exact = datetime(2999, 5, 4, 3, 2, 1, tzinfo=UTC)
    updated = await store.update_conversation("fixed", "u", expires_at=exact)
    assert (updated.expires_at, updated.ttl) == (exact, None)
    updated = await store.update_conversation("fixed", "u", ttl=timedelta(days=2), sliding=True)
    assert updated.ttl == timedelta(days=2) and updated.expires_at is not None
    cleared = await store.update_conversation("fixed", "u", expires_at=None)
    assert (cleared.expires_at, cleared.ttl) == (None, None)
    await store.update_conversation("fixed", "u", expires_at=PAST)
    await not_found(lambda: store.update_conversation("fixed", "u", expires_at=None))  # never revived

    # Retention arguments apply on creation only, as title and metadata do.
    again = await store.get_or_create_conversation("slide", "u", expires_at=PAST)
    assert again.ttl == timedelta(hours=1) and await store.get_conversation("slide", "u") is not None


async def test_store_policy_and_temporary_conversations(dsn: str, db: asyncpg.Connection) -> None:
    async with await ConversationStore.connect(
        dsn,
        min_size=1,
        max_size=2,
        default_ttl=timedelta(days=30),
        sliding=True,
        temporary_ttl=timedelta(minutes=5),
    ) as store:
        now = await db.fetchval("SELECT now()")
        idle = await store.get_or_create_conversation("idle", "u")
        assert idle.ttl == timedelta(days=30) and idle.expires_at is not None
        fixed = await store.get_or_create_conversation("own", "u", ttl=timedelta(days=1))
        assert fixed.ttl is None and fixed.expires_at is not None
        assert timedelta(hours=23) < fixed.expires_at - now < timedelta(hours=25)

        temp = await store.get_or_create_conversation("temp", "u", temporary=True)
        assert temp.temporary and temp.ttl is None and temp.expires_at is not None
        assert timedelta(minutes=4) < temp.expires_at - now < timedelta(minutes=6)
        longer = await store.get_or_create_conversation("temp2", "u", temporary=True, ttl=timedelta(hours=2))
        assert (
            longer.temporary
            and longer.expires_at is not None
            and longer.expires_at - now > timedelta(hours=1)
        )
        await store.save_message("temp", "u", "user", "usable like any other")
        assert [m.content for m in await store.get_history("temp", "u")] == ["usable like any other"]
        assert {c.id for c in (await store.list_conversations("u")).items} == {"idle", "own"}

        fork = await store.fork_conversation("temp", "u", at_seq=1)
        assert fork.temporary and fork.expires_at == temp.expires_at  # a branch has its source's retention
        assert fork.id not in {c.id for c in (await store.list_conversations("u")).items}

        await db.execute("UPDATE conversations SET expires_at = now() - interval '1 second' WHERE temporary")
        counts = await store.purge_expired()
        assert (counts.conversations, counts.messages) == (3, 2)
        assert await db.fetchval("SELECT count(*) FROM conversations") == 2


async def test_a_temporary_conversation_is_left_out_of_user_wide_search_but_counted_in_usage(
    store: ConversationStore,
) -> None:
    # Decision (docs/retention.md): "never listed" covers the user-wide search, which lists
    # conversations by their content; by id (which the caller holds) it is searchable as any
    # other. Usage reports list no conversation and are accounting: its spent tokens count.
    await seed(store, "kept", "u")
    await store.get_or_create_conversation("temp", "u", title="title temp needle", temporary=True)
    await store.save_message("temp", "u", "user", "needle temp 0", usage={"input_tokens": 5})

    hits = (await store.search_messages("u", "needle")).items
    assert hits and {h.conversation_id for h in hits} == {"kept"}
    inside = (await store.search_messages("u", "needle", conversation_id="temp")).items
    assert {(h.conversation_id, h.seq) for h in inside} == {("temp", 1), ("temp", None)}

    since, until = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    report = await store.usage_report("u", since=since, until=until)
    assert (report.total.messages, report.total.input_tokens) == (4, 3 + 5)
    only = await store.usage_report("u", since=since, until=until, conversation_id="temp")
    assert (only.total.messages, only.total.input_tokens) == (1, 5)


async def test_an_import_that_creates_a_conversation_applies_the_store_policy(
    dsn: str, db: asyncpg.Connection
) -> None:
    async with await ConversationStore.connect(dsn, min_size=1, max_size=2) as plain:
        await seed(plain, "src", "u", n=3)
        records = await export_records(plain, "src", "u")
    async with await ConversationStore.connect(
        dsn, min_size=1, max_size=2, default_ttl=timedelta(days=30), sliding=True, max_messages=3
    ) as store:
        now = await db.fetchval("SELECT now()")
        copy = await store.import_conversation("u", records, conversation_id="copy")
        stored = await db.fetchrow(
            "SELECT expires_at, ttl, temporary, max_messages FROM conversations WHERE id = 'copy'"
        )
        assert stored is not None
        assert stored["ttl"] == timedelta(days=30) and stored["max_messages"] == 3 and not stored["temporary"]
        assert timedelta(days=29) < stored["expires_at"] - now < timedelta(days=31)
        assert (copy.expires_at, copy.ttl, copy.sliding, copy.temporary, copy.max_messages) == (
            stored["expires_at"],
            timedelta(days=30),
            True,
            False,
            3,
        )
        # Every message is restored; the cap acts from the next append on.
        assert await seqs(db, "copy") == [1, 2, 3]
        await store.save_message("copy", "u", "user", "fourth")
        assert await seqs(db, "copy") == [2, 3, 4]

        # A replace keeps the replaced conversation's own retention (here: none).
        replaced = await store.import_conversation("u", records, replace=True)
        assert (replaced.expires_at, replaced.ttl, replaced.max_messages) == (None, None, None)
        assert await db.fetchval("SELECT expires_at FROM conversations WHERE id = 'src'") is None


# -- message caps ----------------------------------------------------------------------------------
async def seqs(db: asyncpg.Connection, cid: str) -> list[int]:
    return [
        r[0] for r in await db.fetch("SELECT seq FROM messages WHERE conversation_id = $1 ORDER BY seq", cid)
    ]


async def test_message_cap_deletes_the_oldest_in_the_same_write(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    await store.get_or_create_conversation("cap", "u", max_messages=3)
    for i in range(5):
        await store.save_message("cap", "u", "user", f"m{i}")
    assert await seqs(db, "cap") == [3, 4, 5]
    await store.set_feedback("cap", "u", 3, rating=1)
    await store.save_summary("cap", "u", "what 1..3 said", through_seq=3)
    await store.save_messages("cap", "u", [{"role": "user", "content": f"b{i}"} for i in range(2)])
    assert await seqs(db, "cap") == [5, 6, 7]
    assert await db.fetchval("SELECT count(*) FROM message_feedback WHERE conversation_id = 'cap'") == 0
    # The summary stays: it is what still stands for the deleted messages.
    assert [s.through_seq for s in await store.list_summaries("cap", "u")] == [3]
    saved, window = await store.save_and_get_history("cap", "u", {"role": "user", "content": "t"}, limit=10)
    assert saved.seq == 8 and [m.seq for m in window] == [6, 7, 8]
    await store.save_message("cap", "u", "user", "g", expected_last_seq=8)
    assert await seqs(db, "cap") == [7, 8, 9]
    assert await store.count_messages("cap", "u") == 3
    summarized = await store.get_history("cap", "u", summarized=True)
    assert [(m.seq, m.is_summary) for m in summarized] == [(3, True), (7, False), (8, False), (9, False)]

    # A store-wide cap applies to new conversations; a tool result left without its call is
    # trimmed from windows (convdb.windows), as for any window that starts after the call.
    await store.get_or_create_conversation("tools", "u", max_messages=2)
    await store.save_messages(
        "tools",
        "u",
        [
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "name": "f"}]},
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
            {"role": "assistant", "content": "done"},
        ],
    )
    assert await seqs(db, "tools") == [2, 3]
    assert [m.content for m in await store.get_history("tools", "u")] == ["done"]


async def test_store_wide_cap(dsn: str, db: asyncpg.Connection) -> None:
    async with await ConversationStore.connect(dsn, min_size=1, max_size=2, max_messages=2) as store:
        conv = await store.get_or_create_conversation("c", "u")
        assert conv.max_messages == 2
        for i in range(4):
            await store.save_message("c", "u", "user", f"m{i}")
        assert await seqs(db, "c") == [3, 4]
        own = await store.get_or_create_conversation("d", "u", max_messages=5)
        assert own.max_messages == 5


# -- purge_expired ---------------------------------------------------------------------------------
async def populate(db: asyncpg.Connection, expired: int, live: int, per: int) -> None:
    """``expired`` expired and ``live`` live conversations of ``per`` messages each, in SQL."""
    await db.execute(
        "INSERT INTO conversations (id, user_id, next_seq, expires_at) "
        "SELECT 'x' || g, 'u' || (g % 7), $2::bigint + 1, now() - interval '1 hour' FROM generate_series(1, $1) g",
        expired,
        per,
    )
    await db.execute(
        "INSERT INTO conversations (id, user_id, next_seq, expires_at) "
        "SELECT 'l' || g, 'u' || (g % 7), $2::bigint + 1, now() + interval '1 day' FROM generate_series(1, $1) g",
        live,
        per,
    )
    await db.execute(
        "INSERT INTO messages (conversation_id, seq, role, content) "
        "SELECT c.id, s, 'user', 'm' FROM conversations c, generate_series(1, $1) s",
        per,
    )


@pytest.mark.guarantee(14)
async def test_purge_counts_limit_and_resume(store: ConversationStore, db: asyncpg.Connection) -> None:
    await populate(db, expired=9, live=3, per=4)
    await store.get_or_create_conversation("big", "u", expires_at=datetime.now(UTC) + timedelta(days=1))
    await store.save_messages("big", "u", [{"role": "user", "content": str(i)} for i in range(11)])
    await store.set_feedback("big", "u", 5, rating=-1)
    await store.save_summary("big", "u", "s", through_seq=4)
    await expire(db, "big")

    first = await store.purge_expired(batch_size=2, limit=4, messages_per_batch=3)
    assert first.conversations == 4
    assert await db.fetchval("SELECT count(*) FROM conversations WHERE expires_at <= now()") == 10 - 4
    rest = await store.purge_expired(batch_size=2, messages_per_batch=3)  # resumed: finishes the job
    assert first.conversations + rest.conversations == 10
    assert first.messages + rest.messages == 9 * 4 + 11
    assert await db.fetchval("SELECT count(*) FROM conversations") == 3
    assert await db.fetchval("SELECT count(*) FROM messages") == 3 * 4
    assert await db.fetchval("SELECT count(*) FROM conversation_summaries") == 0
    assert await db.fetchval("SELECT count(*) FROM message_feedback") == 0
    assert await store.purge_expired() == type(first)(0, 0)


@pytest.mark.guarantee(14)
async def test_purge_interrupted_by_cancellation_then_resumed(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    """The purge is cancelled while it is held on a lock, whatever the machine's speed: the
    conversation it lists last (the latest expiry) has a message row locked by another
    transaction, so the purge's last batch waits there after the first ones committed."""
    await populate(db, expired=60, live=2, per=3)
    await db.execute("UPDATE conversations SET expires_at = now() - interval '1 minute' WHERE id = 'x30'")
    async with store.pool.acquire() as locker, locker.transaction():
        await locker.execute("SELECT 1 FROM messages WHERE conversation_id = 'x30' AND seq = 1 FOR UPDATE")
        task = asyncio.ensure_future(store.purge_expired(batch_size=5))
        deadline = time.monotonic() + 60
        # On Citus the wait is on the worker that holds the shard: citus_stat_activity sees every node.
        activity = "citus_stat_activity" if VIA_CITUS else "pg_stat_activity"
        while not await db.fetchval(
            f"SELECT count(*) FROM {activity} WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ):
            assert time.monotonic() < deadline, "the purge never reached the locked conversation"
            assert not task.done(), "the purge ended without meeting the lock"
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    left = await db.fetchval("SELECT count(*) FROM conversations WHERE id LIKE 'x%'")
    left_messages = await db.fetchval("SELECT count(*) FROM messages WHERE conversation_id LIKE 'x%'")
    # The batches before the locked one committed; the locked one (its 5 conversations, one
    # implicit transaction) was rolled back by the cancellation.
    assert 0 < left < 60
    assert await db.fetchval("SELECT count(*) FROM conversations WHERE id = 'x30'") == 1
    resumed = await store.purge_expired(batch_size=5)
    assert (resumed.conversations, resumed.messages) == (left, left_messages)
    assert await db.fetchval("SELECT count(*) FROM conversations") == 2


@pytest.mark.guarantee(14)
async def test_purge_under_concurrent_writers(store: ConversationStore, db: asyncpg.Connection) -> None:
    await populate(db, expired=80, live=4, per=2)
    stop = asyncio.Event()
    written: dict[str, int] = {f"l{i}": 0 for i in range(1, 5)}

    async def writer(cid: str) -> None:
        while not stop.is_set():
            await store.save_message(cid, f"u{int(cid[1:]) % 7}", "user", "w")
            written[cid] += 1

    writers = [asyncio.ensure_future(writer(cid)) for cid in written]
    try:
        counts = await store.purge_expired(batch_size=7, messages_per_batch=1)
    finally:
        stop.set()
        await asyncio.gather(*writers)
    assert (counts.conversations, counts.messages) == (80, 160)
    assert sum(written.values()) > 0
    for cid, n in written.items():  # no append lost
        assert await db.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", cid) == 2 + n


PURGER = """
import asyncio, json, sys
from convdb import ConversationStore

async def main() -> None:
    async with await ConversationStore.connect(
        sys.argv[1], min_size=1, max_size=2, server_settings={"lock_timeout": "200ms", "application_name": "purger"}
    ) as store:
        sys.stdout.write("ready\\n")
        sys.stdout.flush()
        sys.stdin.readline()
        counts = await store.purge_expired(batch_size=int(sys.argv[2]), messages_per_batch=2)
        print(json.dumps([counts.conversations, counts.messages]))

asyncio.run(main())
"""


@pytest.mark.guarantee(14)
async def test_two_processes_purge_at_once_without_double_counting_or_lock_waits(
    dsn: str, db: asyncpg.Connection
) -> None:
    await populate(db, expired=300, live=5, per=3)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PURGER,
            dsn,
            "25",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        for _ in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = await asyncio.wait_for(p.stdout.readline(), 60)
            assert line.strip() == b"ready", line
        for p in procs:  # both start together
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            await p.stdin.drain()
        lock_waits = 0
        while any(p.returncode is None for p in procs):
            lock_waits += await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'purger' AND wait_event_type = 'Lock'"
            )
            await asyncio.sleep(0.01)
        results = []
        for p in procs:
            out, err = await asyncio.wait_for(p.communicate(), 120)
            assert p.returncode == 0, err.decode()
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    assert lock_waits == 0, "a purger waited for a lock"
    assert sum(r[0] for r in results) == 300 and sum(r[1] for r in results) == 900
    assert all(r[0] > 0 for r in results), f"one process did all the work: {results}"
    assert await db.fetchval("SELECT count(*) FROM conversations") == 5
    assert await db.fetchval("SELECT count(*) FROM messages") == 15


async def test_purge_refuses_row_level_security(dsn: str) -> None:
    async with await ConversationStore.connect(dsn, min_size=1, max_size=1, verify_schema=False) as store:
        store.row_level_security = True
        with pytest.raises(InvalidInput, match="row_level_security"):
            await store.purge_expired()


# -- bad input ---------------------------------------------------------------------------------------
NAIVE = datetime(2030, 1, 1)
BAD_CALLS: dict[str, tuple[Callable[[ConversationStore], Awaitable[Any]], str]] = {
    "naive_expires_at": (lambda s: s.get_or_create_conversation("n", "u", expires_at=NAIVE), "expires_at"),
    "expires_at_type": (lambda s: s.get_or_create_conversation("n", "u", expires_at="2030"), "expires_at"),  # type: ignore[arg-type]
    "ttl_zero": (lambda s: s.get_or_create_conversation("n", "u", ttl=timedelta(0)), "ttl"),
    "ttl_negative": (lambda s: s.get_or_create_conversation("n", "u", ttl=timedelta(seconds=-1)), "ttl"),
    "ttl_seconds_int": (lambda s: s.get_or_create_conversation("n", "u", ttl=60), "ttl"),  # type: ignore[arg-type]
    "ttl_huge": (lambda s: s.get_or_create_conversation("n", "u", ttl=timedelta(days=10**6)), "ttl"),
    "both": (
        lambda s: s.get_or_create_conversation("n", "u", ttl=timedelta(1), expires_at=datetime.now(UTC)),
        "ttl",
    ),
    "sliding_without_ttl": (lambda s: s.get_or_create_conversation("n", "u", sliding=True), "sliding"),
    "sliding_with_expires_at": (
        lambda s: s.get_or_create_conversation("n", "u", sliding=True, expires_at=datetime.now(UTC)),
        "sliding",
    ),
    "sliding_type": (
        lambda s: s.get_or_create_conversation("n", "u", ttl=timedelta(1), sliding=1),  # type: ignore[arg-type]
        "sliding",
    ),
    "temporary_type": (lambda s: s.get_or_create_conversation("n", "u", temporary="yes"), "temporary"),  # type: ignore[arg-type]
    "max_messages_zero": (lambda s: s.get_or_create_conversation("n", "u", max_messages=0), "max_messages"),
    "max_messages_bool": (
        lambda s: s.get_or_create_conversation("n", "u", max_messages=True),
        "max_messages",
    ),
    "max_messages_huge": (
        lambda s: s.get_or_create_conversation("n", "u", max_messages=2**31),
        "max_messages",
    ),
    "update_naive": (lambda s: s.update_conversation("c", "u", expires_at=NAIVE), "expires_at"),
    "update_both": (lambda s: s.update_conversation("c", "u", expires_at=None, ttl=timedelta(1)), "ttl"),
    "update_ttl_zero": (lambda s: s.update_conversation("c", "u", ttl=timedelta(0)), "ttl"),
    "update_sliding_alone": (lambda s: s.update_conversation("c", "u", sliding=True), "sliding"),
    "update_sliding_fixed": (
        lambda s: s.update_conversation("c", "u", sliding=True, expires_at=datetime.now(UTC)),
        "sliding",
    ),
    "update_nothing": (lambda s: s.update_conversation("c", "u"), "title"),
    "purge_batch_zero": (lambda s: s.purge_expired(batch_size=0), "batch_size"),
    "purge_batch_type": (lambda s: s.purge_expired(batch_size="10"), "batch_size"),  # type: ignore[arg-type]
    "purge_limit_zero": (lambda s: s.purge_expired(limit=0), "limit"),
    "purge_limit_negative": (lambda s: s.purge_expired(limit=-5), "limit"),
    "purge_messages_per_batch": (lambda s: s.purge_expired(messages_per_batch=0), "messages_per_batch"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
async def test_bad_retention_input_is_refused_before_any_io(dsn: str, case: str) -> None:
    make, field = BAD_CALLS[case]
    # A closed pool: any I/O would raise something else than InvalidInput.
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    await pool.close()
    store = ConversationStore(pool)
    with pytest.raises(InvalidInput) as caught:
        await make(store)
    assert caught.value.field == field, caught.value


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"default_ttl": timedelta(0)}, "default_ttl"),
        ({"default_ttl": 3600}, "default_ttl"),
        ({"sliding": True}, "sliding"),
        ({"sliding": "yes", "default_ttl": timedelta(1)}, "sliding"),
        ({"temporary_ttl": timedelta(seconds=-1)}, "temporary_ttl"),
        ({"temporary_ttl": None}, "temporary_ttl"),
        ({"max_messages": 0}, "max_messages"),
        ({"max_messages": 1.5}, "max_messages"),
    ],
)
async def test_bad_store_policy_is_refused_before_connecting(options: dict[str, Any], field: str) -> None:
    # Port 1 answers nothing: reaching the network would raise DatabaseUnavailable instead.
    with pytest.raises(InvalidInput) as caught:
        await ConversationStore.connect("postgresql://nobody@127.0.0.1:1/none", **options)
    assert caught.value.field == field
