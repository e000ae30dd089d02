"""Issue 10 item 8: inputs that used to fail after I/O (or not at all) are refused before any I/O.

"Before any I/O" is proved with a store on a closed pool: any attempt to reach the server would
raise something other than ``InvalidInput``. "Nothing written" is proved on the real server.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from convdb import ConversationStore, InvalidInput
from convdb.export import MAX_IMPORT_SEQ, import_from_file
from convdb.pool import create_pool
from convdb.validation import (
    DEFAULT_MAX_METADATA_BYTES,
    DEFAULT_MAX_TITLE_BYTES,
    DEFAULT_MAX_TOOL_CALLS_BYTES,
)

pytestmark = pytest.mark.guarantee(7)

U = "alice"
PLUS5 = timezone(timedelta(hours=5))
MINUS5 = timezone(timedelta(hours=-5))
YEAR_1_EAST = datetime(1, 1, 1, tzinfo=PLUS5)  # its UTC instant is before year 1
YEAR_9999_WEST = datetime(9999, 12, 31, 23, tzinfo=MINUS5)  # its UTC instant is after 9999


def _header(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "conversation",
        "id": "imp",
        "title": None,
        "metadata": {},
        "created_at": "2026-01-01T00:00:00+00:00",
        "updated_at": "2026-01-01T00:00:00+00:00",
    }
    return base | fields


def _message(seq: int, **fields: Any) -> dict[str, Any]:
    return {
        "type": "message",
        "seq": seq,
        "role": "user",
        "content": f"m{seq}",
        "created_at": "2026-01-01T00:00:00+00:00",
    } | fields


Call = Callable[[ConversationStore], Awaitable[Any]]
BIG_TEXT = "x" * (DEFAULT_MAX_METADATA_BYTES + 1)
# Many small strings: no single one is over the cap, the encoded document is.
MANY_STRINGS = {f"k{i}": "é" * 1000 for i in range(DEFAULT_MAX_METADATA_BYTES // 2000 + 1)}

CASES: dict[str, tuple[Call, str]] = {
    "listing_after_year_1_east": (
        lambda s: s.list_conversations(U, updated_after=YEAR_1_EAST),
        "updated_after",
    ),
    "listing_before_year_9999_west": (
        lambda s: s.list_conversations(U, updated_before=YEAR_9999_WEST),
        "updated_before",
    ),
    "import_header_time": (
        lambda s: s.import_conversation(U, [_header(created_at=YEAR_1_EAST.isoformat())]),
        "created_at",
    ),
    "import_message_time": (
        lambda s: s.import_conversation(U, [_header(), _message(1, created_at=YEAR_9999_WEST)]),
        "created_at",
    ),
    "import_next_seq_max_bigint": (
        lambda s: s.import_conversation(U, [_header(next_seq=2**63 - 1)]),
        "next_seq",
    ),
    "import_next_seq_above_cap": (
        lambda s: s.import_conversation(U, [_header(next_seq=MAX_IMPORT_SEQ + 1)]),
        "next_seq",
    ),
    "import_seq_above_cap": (
        lambda s: s.import_conversation(U, [_header(), _message(MAX_IMPORT_SEQ + 1)]),
        "seq",
    ),
    "metadata_one_huge_string": (
        lambda s: s.save_message("c", U, "user", "x", metadata={"a": BIG_TEXT}),
        "metadata",
    ),
    "metadata_huge_key": (lambda s: s.save_message("c", U, "user", "x", metadata={BIG_TEXT: 1}), "metadata"),
    "metadata_many_strings": (
        lambda s: s.save_message("c", U, "user", "x", metadata=MANY_STRINGS),
        "metadata",
    ),
    "tool_calls_huge": (
        lambda s: s.save_message(
            "c", U, "assistant", None, tool_calls=[{"a": "y" * DEFAULT_MAX_TOOL_CALLS_BYTES}]
        ),
        "tool_calls",
    ),
    "batch_metadata_huge": (
        lambda s: s.save_messages(
            "c", U, [{"role": "user", "content": "ok"}, {"role": "user", "metadata": MANY_STRINGS}]
        ),
        "metadata",
    ),
    "turn_tool_calls_huge": (
        lambda s: s.save_and_get_history(
            "c", U, {"role": "assistant", "tool_calls": ["z" * (DEFAULT_MAX_TOOL_CALLS_BYTES + 1)]}
        ),
        "tool_calls",
    ),
    "create_title_huge": (
        lambda s: s.get_or_create_conversation(None, U, title="é" * (DEFAULT_MAX_TITLE_BYTES // 2 + 1)),
        "title",
    ),
    "create_metadata_huge": (
        lambda s: s.get_or_create_conversation(None, U, metadata={"a": BIG_TEXT}),
        "metadata",
    ),
    "update_title_huge": (
        lambda s: s.update_conversation("c", U, title="t" * (DEFAULT_MAX_TITLE_BYTES + 1)),
        "title",
    ),
    "update_metadata_huge": (lambda s: s.update_conversation("c", U, metadata=MANY_STRINGS), "metadata"),
    "import_title_huge": (
        lambda s: s.import_conversation(U, [_header(title="t" * (DEFAULT_MAX_TITLE_BYTES + 1))]),
        "title",
    ),
    "import_metadata_huge": (
        lambda s: s.import_conversation(U, [_header(metadata={"a": BIG_TEXT})]),
        "metadata",
    ),
    "import_message_metadata_huge": (
        lambda s: s.import_conversation(U, [_header(), _message(1, metadata=MANY_STRINGS)]),
        "metadata",
    ),
}


def _import_with_time_limit(bad: object) -> Call:
    return lambda s: s.import_conversation(U, [_header()], time_limit=bad)  # type: ignore[arg-type]


for _bad in ("5", None, -1, 0, math.nan, math.inf, -math.inf, True, [1]):
    CASES[f"time_limit_{_bad!r}"] = (_import_with_time_limit(_bad), "time_limit")


@pytest.fixture
async def closed_store(dsn: str) -> ConversationStore:
    pool = await create_pool(dsn, min_size=0, max_size=1, statement_cache_size=100)
    await pool.close()
    return ConversationStore(pool)


@pytest.mark.parametrize("case", sorted(CASES))
async def test_refused_before_any_io(closed_store: ConversationStore, case: str) -> None:
    call, field = CASES[case]
    with pytest.raises(InvalidInput) as caught:
        await call(closed_store)
    assert caught.value.field == field, caught.value


@pytest.mark.parametrize("case", sorted(CASES))
async def test_refused_and_nothing_written(
    store: ConversationStore, db: asyncpg.Connection, case: str
) -> None:
    await store.get_or_create_conversation("c", U, title="before")
    before = await db.fetch("SELECT * FROM conversations ORDER BY id")
    call, field = CASES[case]
    with pytest.raises(InvalidInput) as caught:
        await call(store)
    assert caught.value.field == field
    assert await db.fetch("SELECT * FROM conversations ORDER BY id") == before
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_size_caps_count_encoded_bytes_and_are_store_options(dsn: str) -> None:
    # {"a":"ééé"} is 11 characters and 14 bytes of UTF-8.
    async with await ConversationStore.connect(
        dsn, max_metadata_bytes=14, max_tool_calls_bytes=11, max_title_bytes=6
    ) as small:
        conv = await small.get_or_create_conversation("c", U, title="ééé", metadata={"a": "ééé"})
        assert (conv.title, conv.metadata) == ("ééé", {"a": "ééé"})
        with pytest.raises(InvalidInput, match="14-byte limit"):
            await small.update_conversation("c", U, metadata={"a": "éééx"})
        with pytest.raises(InvalidInput, match="6-byte limit"):
            await small.update_conversation("c", U, title="éééx")
        stored = await small.save_message("c", U, "assistant", None, tool_calls=[{"a": 1}, 2])  # 11 bytes
        assert stored.tool_calls == [{"a": 1}, 2]
        with pytest.raises(InvalidInput, match="max_tool_calls_bytes"):
            await small.save_message("c", U, "assistant", None, tool_calls=[{"a": 10}, 2])
        assert [m.seq for m in await small.get_history("c", U)] == [1]


@pytest.mark.parametrize("option", ["max_title_bytes", "max_metadata_bytes", "max_tool_calls_bytes"])
@pytest.mark.parametrize("bad", [0, -1, "5", True, 1.5])
async def test_size_options_are_validated(closed_store: ConversationStore, option: str, bad: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        ConversationStore(closed_store.pool, **{option: bad})  # type: ignore[arg-type]
    assert caught.value.field == option


async def test_import_at_the_seq_cap_stays_writable(store: ConversationStore) -> None:
    imported = await store.import_conversation(
        U, [_header(next_seq=MAX_IMPORT_SEQ), _message(MAX_IMPORT_SEQ - 1)]
    )
    saved = await store.save_messages(imported.id, U, [{"role": "user", "content": "next"}] * 3)
    assert [m.seq for m in saved] == [MAX_IMPORT_SEQ, MAX_IMPORT_SEQ + 1, MAX_IMPORT_SEQ + 2]
    assert (await store.save_message(imported.id, U, "user", "more")).seq == MAX_IMPORT_SEQ + 3


async def test_listing_bounds_at_the_calendar_edges_that_fit_still_work(store: ConversationStore) -> None:
    await store.get_or_create_conversation("c", U)
    low, high = datetime(1, 1, 1, 5, tzinfo=PLUS5), datetime(9999, 12, 31, 18, tzinfo=MINUS5)
    page = await store.list_conversations(U, updated_after=low, updated_before=high)
    assert [c.id for c in page.items] == ["c"]
    assert (await store.list_conversations(U, updated_after=datetime.max.replace(tzinfo=UTC))).items == []


def _write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _jsonl(records: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(r).encode() for r in records]


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("bad_line", "problem"), [(DEEP, "nested too deeply"), (b'{"type": "m\xff"}', "not UTF-8")]
)
async def test_import_file_with_a_bad_line_in_the_first_chunk(
    closed_store: ConversationStore, tmp_path: Path, bad_line: bytes, problem: str
) -> None:
    path = _write_lines(tmp_path / "bad.jsonl", [*_jsonl([_header(), _message(1)]), bad_line])
    with pytest.raises(InvalidInput, match=f"line 3 of .* {problem}"):
        await import_from_file(closed_store, U, path)


@pytest.mark.parametrize(
    ("bad_line", "problem"), [(DEEP, "nested too deeply"), (b'{"type": "m\xff"}', "not UTF-8")]
)
async def test_import_file_with_a_bad_line_after_the_first_chunk_stores_nothing(
    store: ConversationStore, db: asyncpg.Connection, tmp_path: Path, bad_line: bytes, problem: str
) -> None:
    good = _jsonl([_header(), *(_message(i) for i in range(1, 2500))])
    path = _write_lines(tmp_path / "bad.jsonl", [*good, bad_line])
    with pytest.raises(InvalidInput, match=f"line 2501 of .* {problem}"):
        await import_from_file(store, U, path)
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
