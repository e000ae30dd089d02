"""The chart: throughput per system and op (one panel per concurrency), and history latency vs length."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(doc: dict[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    results = doc["results"]
    systems = list(dict.fromkeys(r["system"] for r in results))
    ops = list(dict.fromkeys(r["op"] for r in results))
    levels = sorted({r["concurrency"] for r in results})
    colours = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(systems)}
    found = {(r["system"], r["op"], r["concurrency"]): r["ops_per_s"] for r in results}

    fig, axes = plt.subplots(1, len(levels) + 1, figsize=(6 * (len(levels) + 1), 6), squeeze=False)
    width = 0.8 / max(1, len(systems))
    for ax, c in zip(axes[0], levels, strict=False):
        for i, system in enumerate(systems):
            xs = [j + i * width for j, op in enumerate(ops) if found.get((system, op, c))]
            ys = [found[(system, op, c)] for op in ops if found.get((system, op, c))]
            ax.bar(xs, ys, width, label=system, color=colours[system])
        ax.set_yscale("log")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(ops))], ops, rotation=30, ha="right")
        ax.set_ylabel("operations per second (log)")
        ax.set_title(f"throughput, concurrency {c}")
        ax.grid(axis="y", which="both", alpha=0.3)
    # One legend for the figure, below the panels, so it hides no bar.
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(systems), fontsize="small", frameon=False)

    ax = axes[0][-1]
    scaling = [p for p in doc["scaling"] if p["p50_ms"] is not None]
    smallest_total: dict[str, int] = {}
    for p in scaling:  # the plain sweep: the smallest table each system was measured at
        smallest_total[p["system"]] = min(
            smallest_total.get(p["system"], p["total_messages"]), p["total_messages"]
        )
    for system in dict.fromkeys(p["system"] for p in scaling):
        points = sorted(
            (p["messages_in_conversation"], p["p50_ms"])
            for p in scaling
            if p["system"] == system and p["total_messages"] == smallest_total[system]
        )
        ax.plot(
            [x for x, _ in points],
            [y for _, y in points],
            marker="o",
            label=system,
            color=colours.get(system),
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("messages in the conversation (log)")
    ax.set_ylabel("history_50 p50 latency, ms (log)")
    ax.set_title("last 50 messages vs conversation length (c=1)")
    ax.grid(which="both", alpha=0.3)

    meta = doc["meta"]
    fig.suptitle(
        f"convdb benchmark ({meta.get('mode')}) — {meta.get('cores')} cores, "
        f"{meta.get('machine', {}).get('cpu', '')}, PostgreSQL {meta.get('postgres')}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
