"""Pure parts of issue 12: usage validation and conversion, the guard's argument, summary rows,
and the tool-result trim after a summary."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from convdb import InvalidInput, Message, Usage, message_to_dict
from convdb.validation import check_expected_last_seq, check_usage, prepare_summary
from convdb.windows import trim_orphan_tool_results

WHEN = datetime(2026, 1, 1, tzinfo=UTC)


def msg(seq: int, role: str, *, summary: bool = False) -> Message:
    return Message(
        "c",
        seq,
        role,  # type: ignore[arg-type]  # any role string, as the tests need
        "x",
        None,
        "t" if role == "tool" else None,
        None,
        {},
        WHEN,
        summary_through=seq if summary else None,
    )


def test_usage_values_in_column_order_with_defaults_and_conversions() -> None:
    assert check_usage(None) == (None,) * 7
    assert check_usage(Usage()) == (None, 0, 0, 0, 0, None, None)
    assert check_usage({"model": "m", "input_tokens": 3, "cost": 0.1, "latency_ms": 9}) == (
        "m",
        3,
        0,
        0,
        0,
        Decimal("0.1"),
        9,
    )
    assert check_usage({"cost": "1.50"})[5] == Decimal("1.50")
    assert check_usage({"cost": 2})[5] == Decimal(2)
    with pytest.raises(InvalidInput, match=r"usage\.cost: has more than 40 digits"):
        check_usage({"cost": "1" * 41})


@pytest.mark.parametrize(("value", "expected"), [(None, None), (0, 0), (7, 7), (2**63 - 1, 2**63 - 1)])
def test_expected_last_seq_accepts_none_and_seqs_from_zero(value: int | None, expected: int | None) -> None:
    assert check_expected_last_seq(value) == expected


def test_summary_rows_count_tokens_by_default() -> None:
    row = prepare_summary(
        "abcdefgh",
        through_seq=3,
        role="user",
        token_count=None,
        metadata={"a": 1},
        max_content_bytes=100,
        count_tokens=len,
    )
    assert tuple(row) == (3, "user", "abcdefgh", '{"a":1}', 8)
    with pytest.raises(InvalidInput, match="content: is larger"):
        prepare_summary(
            "x" * 101,
            through_seq=1,
            role="system",
            token_count=None,
            metadata=None,
            max_content_bytes=100,
            count_tokens=len,
        )


def test_tool_results_after_a_leading_summary_are_trimmed_like_leading_ones() -> None:
    summary = msg(4, "system", summary=True)
    window = [summary, msg(5, "tool"), msg(6, "tool"), msg(7, "assistant")]
    assert [m.seq for m in trim_orphan_tool_results(window)] == [4, 7]
    assert [m.seq for m in trim_orphan_tool_results([msg(5, "tool"), msg(7, "user")])] == [7]
    untouched = [summary, msg(5, "user")]
    assert trim_orphan_tool_results(untouched) is untouched
    assert trim_orphan_tool_results([summary, msg(5, "tool")]) == [summary]


def test_message_to_dict_carries_usage_exactly_and_marks_summaries() -> None:
    plain = message_to_dict(msg(1, "user"))
    assert plain["usage"] is None and "summary_through" not in plain
    with_usage = Message(
        "c",
        2,
        "assistant",
        "a",
        None,
        None,
        None,
        {},
        WHEN,
        usage=Usage(model="m", input_tokens=1, cost=Decimal("0.0010")),
    )
    assert message_to_dict(with_usage)["usage"] == {
        "model": "m",
        "input_tokens": 1,
        "output_tokens": 0,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cost": "0.0010",
        "latency_ms": None,
    }
    assert message_to_dict(msg(4, "system", summary=True))["summary_through"] == 4
