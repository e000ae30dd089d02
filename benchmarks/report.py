"""Turning rows into the JSON document, the ratios and the text tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .peers import PEERS
from .runner import Row, ScalingPoint


def row_json(row: Row) -> dict[str, Any]:
    cell = row.cell
    return {
        "system": row.system,
        "op": row.op,
        "concurrency": row.concurrency,
        "ops_per_s": _rate(cell.ops_per_s),
        "p50_ms": _round(cell.p50_ms, 3),
        "p99_ms": _round(cell.p99_ms, 3),
        "error": cell.error,
        "note": row.note,
        "calls": cell.calls,
        "failed_calls": cell.failed_calls,
        "client_cpu_us": _round(cell.client_cpu_us),
        "repeats": [
            {
                "ops_per_s": _rate(c.ops_per_s),
                "p50_ms": _round(c.p50_ms, 3),
                "p99_ms": _round(c.p99_ms, 3),
                "error": c.error,
            }
            for c in row.repeats
        ],
    }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _rate(value: float | None) -> float | None:
    """ops/s to 0.1, or to three significant digits below 10: a google-adk batch of 100 on a
    loaded machine runs at a few hundredths of a call per second, which must not print as 0."""
    if value is None or value >= 10:
        return _round(value)
    return float(f"{value:.3g}")


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def ratios(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """convdb ÷ pgbench, ÷ asyncpg-raw and ÷ the best peer, by throughput, per (op, concurrency)."""
    by_key = {(r.system, r.op, r.concurrency): r.cell for r in rows}
    out = []
    for op, c in dict.fromkeys((r.op, r.concurrency) for r in rows if r.system == "convdb"):
        mine = by_key[("convdb", op, c)].ops_per_s
        peers = [(name, by_key[(name, op, c)].ops_per_s) for name in PEERS if (name, op, c) in by_key]
        measured = [(name, v) for name, v in peers if v is not None]
        best = max(measured, key=lambda p: p[1]) if measured else (None, None)
        entry: dict[str, Any] = {
            "op": op,
            "concurrency": c,
            "convdb_over_pgbench": _ratio(mine, by_key.get(("pgbench", op, c), _none()).ops_per_s),
            "convdb_over_asyncpg_raw": _ratio(mine, by_key.get(("asyncpg-raw", op, c), _none()).ops_per_s),
            "best_peer": best[0],
            "convdb_over_best_peer": _ratio(mine, best[1]),
        }
        if op == "turn":
            entry["turn_over_turn_two_calls"] = _ratio(
                mine, by_key.get(("convdb", "turn_two_calls", c), _none()).ops_per_s
            )
        out.append(entry)
    return out


# The performance goals (issue 14), each a within-run ratio: (measure, ops, concurrencies, target).
# "best peer" is the fastest peer measured for that op; an op no peer runs has no such goal.
GOALS: tuple[tuple[str, tuple[str, ...], tuple[int, ...], float], ...] = (
    (
        "convdb_over_best_peer",
        ("append", "append_batch_10", "append_batch_100", "history_50", "get_or_create", "turn"),
        (1, 8),
        1.2,
    ),
    ("convdb_over_pgbench", ("append", "append_batch_10", "append_batch_100"), (1, 8), 0.85),
    ("convdb_over_pgbench", ("history_50", "get_or_create", "turn"), (1,), 0.6),
    ("convdb_over_pgbench", ("history_50", "get_or_create", "turn"), (8,), 0.5),
)


def goals(ratio_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each goal this run can judge: the measured ratio, the target and whether it was met."""
    found = {(r["op"], r["concurrency"]): r for r in ratio_rows}
    out = []
    for measure, ops, concurrencies, target in GOALS:
        for op in ops:
            for c in concurrencies:
                entry = found.get((op, c))
                value = None if entry is None else entry.get(measure)
                if value is None:
                    continue
                out.append(
                    {
                        "op": op,
                        "concurrency": c,
                        "measure": measure,
                        "target": target,
                        "measured": value,
                        "met": value >= target,
                        "best_peer": entry.get("best_peer") if entry is not None else None,
                    }
                )
    return out


class _NoCell:
    ops_per_s = None


def _none() -> Any:
    return _NoCell()


# The within-run ratios compared with the previous published run's: a ratio survives a change of
# machine load far better than an absolute ops/s does, so these are what shows a regression.
COMPARED_RATIOS = ("convdb_over_pgbench", "convdb_over_asyncpg_raw", "convdb_over_best_peer")


def read_previous(path: str | Path) -> dict[str, Any] | None:
    """The published run to compare with, or None when there is none (a fresh checkout has one)."""
    try:
        doc: dict[str, Any] = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or "results" not in doc or "ratios" not in doc:
        return None
    return doc


def compare_with_previous(doc: dict[str, Any], previous: dict[str, Any], source: str) -> dict[str, Any]:
    """``doc`` with ``vs_previous`` (this run ÷ the previous one) on every row and ratio both share."""
    meta = previous.get("meta", {})
    before_rows = {(r["system"], r["op"], r["concurrency"]): r for r in previous["results"]}
    before_ratios = {(r["op"], r["concurrency"]): r for r in previous["ratios"]}
    results = []
    for row in doc["results"]:
        old = before_rows.get((row["system"], row["op"], row["concurrency"]))
        results.append({**row, "vs_previous": _ratio(row["ops_per_s"], old and old["ops_per_s"])})
    compared = []
    for entry in doc["ratios"]:
        old = before_ratios.get((entry["op"], entry["concurrency"]))
        compared.append(
            {
                **entry,
                "previous": None if old is None else {k: old.get(k) for k in (*COMPARED_RATIOS, "best_peer")},
                "vs_previous": {k: _ratio(entry[k], old and old.get(k)) for k in COMPARED_RATIOS},
            }
        )
    return {
        **doc,
        "meta": {
            **doc["meta"],
            "previous_run": {
                "source": source,
                "commit": meta.get("commit"),
                "mode": meta.get("mode"),
                "started": meta.get("started"),
            },
        },
        "results": results,
        "ratios": compared,
    }


def document(
    meta: dict[str, Any],
    rows: Sequence[Row],
    scaling: Sequence[ScalingPoint],
    previous: dict[str, Any] | None = None,
    previous_source: str = "",
) -> dict[str, Any]:
    ratio_rows = ratios(rows)
    doc: dict[str, Any] = {
        "meta": meta,
        "results": [row_json(r) for r in rows],
        "ratios": ratio_rows,
        "goals": goals(ratio_rows),
        "scaling": [{**asdict(p), "p50_ms": _round(p.p50_ms, 3)} for p in scaling],
    }
    return doc if previous is None else compare_with_previous(doc, previous, previous_source)


def write_json(path: str | Path, doc: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


# -- text ---------------------------------------------------------------------------------------
def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=False)]

    def line(cells: Sequence[str]) -> str:
        # First column left-aligned (labels), figures right-aligned.
        return "  ".join(
            str(c).rjust(w) if i else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=False))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in body)])


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def text(doc: dict[str, Any]) -> str:
    results = doc["results"]
    systems = list(dict.fromkeys(r["system"] for r in results))
    ops = list(dict.fromkeys(r["op"] for r in results))
    found = {(r["system"], r["op"], r["concurrency"]): r for r in results}
    parts = []
    for c in sorted({r["concurrency"] for r in results}):
        body = []
        for op in ops:
            cells = []
            for s in systems:
                r = found.get((s, op, c))
                if r is None:
                    cells.append("")
                elif r["ops_per_s"] is None:
                    cells.append("error" if not (r["error"] or "").startswith("unsupported") else "n/a")
                else:
                    cells.append(f"{_fmt(r['ops_per_s'])} ({_fmt(r['p50_ms'], 2)}/{_fmt(r['p99_ms'], 1)})")
            body.append([op, *cells])
        parts.append(f"concurrency {c}: ops/s (p50/p99 ms)\n" + _table(["op", *systems], body))
    ratio_rows = [
        [
            r["op"],
            str(r["concurrency"]),
            _fmt(r["convdb_over_pgbench"], 2),
            _fmt(r["convdb_over_asyncpg_raw"], 2),
            f"{_fmt(r['convdb_over_best_peer'], 1)} ({r['best_peer'] or '-'})",
        ]
        for r in doc["ratios"]
    ]
    cpu_rows = []
    for op in ops:
        cpu = [found.get((s, op, 1), {}).get("client_cpu_us") for s in systems]
        if any(v is not None for v in cpu):
            cpu_rows.append([op, *[_fmt(v) for v in cpu]])
    if cpu_rows:
        parts.append(
            "client CPU µs per call (this process, concurrency 1: steadier than wall time on a busy host)\n"
            + _table(["op", *systems], cpu_rows)
        )
    parts.append(
        "ratios of throughput\n"
        + _table(["op", "c", "convdb/pgbench", "convdb/asyncpg-raw", "convdb/best peer"], ratio_rows)
    )
    goal_rows = [
        [
            g["op"],
            str(g["concurrency"]),
            _GOAL_LABELS[g["measure"]]
            + (f" ({g['best_peer']})" if g["measure"] == "convdb_over_best_peer" else ""),
            f">= {g['target']}",
            _fmt(g["measured"], 2),
            "met" if g["met"] else "MISSED",
        ]
        for g in doc.get("goals", [])
    ]
    if goal_rows:
        parts.append(
            "the goals (issue 14): within-run ratios against their targets\n"
            + _table(["op", "c", "ratio", "target", "measured", ""], goal_rows)
        )
    previous_run = doc["meta"].get("previous_run")
    if previous_run:
        parts.append(_previous_table(doc, previous_run, found))
    scaling = doc["scaling"]
    if scaling:
        lengths = sorted({p["messages_in_conversation"] for p in scaling})
        point = {
            (p["system"], p["messages_in_conversation"], p["total_messages"]): p["p50_ms"] for p in scaling
        }
        body = []
        for s in dict.fromkeys(p["system"] for p in scaling):
            for total in sorted({p["total_messages"] for p in scaling if p["system"] == s}):
                body.append([s, f"{total:,}", *[_fmt(point.get((s, n, total)), 2) for n in lengths]])
        parts.append(
            "history_50 p50 ms by conversation length (c=1)\n"
            + _table(["system", "table msgs", *[f"{n:,}" for n in lengths]], body)
        )
    problems = [
        f"- {r['system']} {r['op']} c={r['concurrency']}: {r['error']}" for r in results if r["error"]
    ]
    notes = sorted({f"- {r['system']} {r['op']}: {r['note']}" for r in results if r["note"]})
    if notes:
        parts.append("how each system does each op\n" + "\n".join(notes))
    if problems:
        parts.append("errors and unsupported ops\n" + "\n".join(problems))
    return "\n\n".join(parts) + "\n"


_GOAL_LABELS = {"convdb_over_best_peer": "convdb/best peer", "convdb_over_pgbench": "convdb/pgbench"}


def _change(now: float | None, ratio: float | None, digits: int = 2) -> str:
    """``now (×ratio)``: the figure and this run ÷ the previous one; a lone figure when new."""
    if now is None:
        return "-"
    return f"{_fmt(now, digits)} ({_fmt(ratio, 2)}×)" if ratio is not None else _fmt(now, digits)


def _previous_table(doc: dict[str, Any], previous_run: dict[str, Any], found: dict[Any, Any]) -> str:
    body = []
    for r in doc["ratios"]:
        vs = r.get("vs_previous") or {}
        mine = found.get(("convdb", r["op"], r["concurrency"]), {})
        body.append(
            [
                r["op"],
                str(r["concurrency"]),
                _change(mine.get("ops_per_s"), mine.get("vs_previous"), 0),
                _change(r["convdb_over_pgbench"], vs.get("convdb_over_pgbench")),
                _change(r["convdb_over_asyncpg_raw"], vs.get("convdb_over_asyncpg_raw")),
                _change(r["convdb_over_best_peer"], vs.get("convdb_over_best_peer"), 1),
            ]
        )
    commit = (previous_run.get("commit") or "unknown")[:10]
    return (
        f"against the previous published run ({previous_run.get('mode')} run at {commit}, "
        f"{previous_run.get('source')}): this run (this ÷ previous; ops/s move with the machine's "
        "load, the ratios much less)\n"
        + _table(
            ["op", "c", "convdb ops/s", "convdb/pgbench", "convdb/asyncpg-raw", "convdb/best peer"], body
        )
    )
