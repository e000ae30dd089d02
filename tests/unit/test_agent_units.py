"""No database: window trimming, listing SQL and cursors, export record validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from convdb.errors import InvalidInput
from convdb.export import FORMAT, MessageParser, parse_header
from convdb.listing import build_listing, decode_cursor, encode_cursor, escape_like
from convdb.validation import estimate_tokens
from convdb.windows import trim_orphan_tool_results
from tests.support.factories import make_message

T = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


# -- windows ------------------------------------------------------------------------------------
def test_trim_drops_only_leading_tool_results() -> None:
    call = [{"id": "a"}]
    window = [
        make_message(3, "tool", tool_call_id="a"),
        make_message(4, "tool", tool_call_id="b"),
        make_message(5, "assistant"),
        make_message(6, "assistant", tool_calls=call),
        make_message(7, "tool", tool_call_id="a"),
    ]
    assert [m.seq for m in trim_orphan_tool_results(window)] == [5, 6, 7]
    assert trim_orphan_tool_results([make_message(1, "tool", tool_call_id="a")]) == []
    assert trim_orphan_tool_results([]) == []
    whole = [make_message(1, "assistant", tool_calls=call), make_message(2, "tool", tool_call_id="a")]
    assert trim_orphan_tool_results(whole) == whole


# -- listing --------------------------------------------------------------------------------------
def test_listing_sql_uses_only_parameters() -> None:
    q = build_listing(
        "u'; DROP TABLE x; --",
        limit=5,
        title_contains="50%_off'",
        metadata_contains={"k": "v'"},
        updated_after=T,
        updated_before=T + timedelta(days=1),
    )
    assert "DROP" not in q.sql
    assert "50" not in q.sql
    assert "'v" not in q.sql
    assert "2026" not in q.sql
    assert q.sql.count("$") == len(q.args) == 6
    assert q.args[0] == "u'; DROP TABLE x; --"
    assert q.args[1] == "50\\%\\_[oO][fF][fF]\\'"  # title_contains as a case-folding regex (fold_pattern)
    assert q.args[3] is T
    assert q.args[-1] == 6
    assert 'ORDER BY "updated_at" DESC,"id" DESC' in q.sql
    assert "OFFSET" not in q.sql.upper()


def test_each_filter_combination_is_its_own_statement() -> None:
    texts = {
        build_listing("u", title_contains=t, metadata_contains=m).sql
        for t in (None, "a")
        for m in (None, {"a": 1})
    }
    assert len(texts) == 4
    assert build_listing("u", title_contains="a").sql == build_listing("v", title_contains="b").sql


def test_escape_like() -> None:
    assert escape_like("a%b_c\\d") == "a\\%b\\_c\\\\d"


def test_cursor_round_trip_and_binding() -> None:
    ctx = build_listing("u").context
    cursor = encode_cursor(T, "conv-1", ctx)
    assert decode_cursor(cursor, ctx) == (T, "conv-1")
    other_tz = T.astimezone(timezone(timedelta(hours=-7)))
    assert decode_cursor(encode_cursor(other_tz, "conv-1", ctx), ctx) == (T, "conv-1")
    with pytest.raises(InvalidInput, match="another listing"):
        decode_cursor(cursor, build_listing("u", title_contains="x").context)
    with pytest.raises(InvalidInput, match="another listing"):
        decode_cursor(cursor, build_listing("v").context)
    for bad in ("", "!!!", cursor[:-4], "W1swXQ", "x" * 3000):
        with pytest.raises(InvalidInput) as err:
            decode_cursor(bad, ctx)
        assert err.value.field == "cursor"


def test_listing_validation() -> None:
    with pytest.raises(InvalidInput, match="timezone"):
        build_listing("u", updated_after=datetime(2026, 1, 1))
    with pytest.raises(InvalidInput) as err:
        build_listing("u", limit=0)
    assert err.value.field == "limit"


# -- export records -------------------------------------------------------------------------------
HEADER = {
    "type": "conversation",
    "format": FORMAT,
    "id": "c1",
    "title": None,
    "metadata": {"a": 1},
    "created_at": "2026-01-01T00:00:00+00:00",
    "updated_at": "2026-01-01T00:00:01+00:00",
    "next_seq": 5,
}


def test_header_parsing() -> None:
    h = parse_header(HEADER)
    assert (h.id, h.next_seq, h.metadata_json) == ("c1", 5, '{"a":1}')
    assert h.updated_at == datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)
    for bad, field in (
        ({**HEADER, "type": "message"}, "type"),
        ({**HEADER, "format": "v9"}, "format"),
        ({**HEADER, "extra": 1}, "extra"),
        ({**HEADER, "next_seq": 0}, "next_seq"),
        ({**HEADER, "created_at": "yesterday"}, "created_at"),
        ({**HEADER, "metadata": []}, "metadata"),
    ):
        with pytest.raises(InvalidInput) as err:
            parse_header(bad)
        assert err.value.field == field


def test_message_parsing_keeps_or_computes_token_counts() -> None:
    parser = MessageParser(parse_header(HEADER), max_content_bytes=100, count_tokens=estimate_tokens)
    rec = {
        "type": "message",
        "seq": 2,
        "role": "user",
        "content": "hello world",
        "created_at": "2026-01-01T00:00:00.5+00:00",
    }
    parsed = parser.parse(rec, 0)
    assert parsed is not None  # a message record (None is a feedback record)
    seq, row, created = parsed
    assert (seq, row.token_count, created.microsecond) == (2, estimate_tokens("hello world"), 500000)
    parsed = parser.parse({**rec, "seq": 3, "token_count": 0}, 1)
    assert parsed is not None and parsed[1].token_count == 0
    with pytest.raises(InvalidInput, match="increase"):
        parser.parse({**rec, "seq": 3}, 2)
    with pytest.raises(InvalidInput, match="next_seq"):
        parser.parse({**rec, "seq": 5}, 2)
    with pytest.raises(InvalidInput) as err:
        parser.parse({**rec, "seq": 4, "content": "x" * 101}, 7)
    assert (err.value.field, err.value.index) == ("content", 7)
