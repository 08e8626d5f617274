"""Markdown reports of benchmark results: per-split tables and the quality bar."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .metrics import format_table

__all__ = ["BAR_SPLITS", "QUALITY_BAR", "best_baseline", "quality_bar", "report", "tables"]


def tables(results: dict[str, Any]) -> str:
    """One Markdown table per split."""
    extras = ("miou", "open_miou", "open_miou_oracle")
    parts = []
    for split, rows in results["splits"].items():
        parts.append(f"### {split}\n\n{format_table(rows, extras=extras)}\n")
    return "\n".join(parts)


QUALITY_BAR = (
    ("ood", "ap", "ood"),
    ("ood", "fpr95", "ood"),
    ("idm", "ap", "idm"),
    ("cdd", "ap", "concurrent"),
)
"""The issue's quality bar as ``(task, metric, FlowEneDet map)``: each task is scored with
the map made for it."""


def best_baseline(rows: dict[str, dict[str, Any]], task: str, metric: str) -> str:
    """Name of the baseline (every row not named ``FED-...``) with the best ``metric`` on
    ``task``; FPR95 is better when lower, the other metrics when higher."""
    sign = -1 if metric == "fpr95" else 1
    names = [name for name in rows if not name.startswith("FED-")]
    return max(names, key=lambda name: sign * rows[name][task][metric])


BAR_SPLITS = ("test", "test/shifted")
"""The splits the issue's quality bar is judged on: clean and shifted test scenes."""


def quality_bar(
    results: dict[str, Any], splits: Sequence[str] | None = None, detector: str = "FED-C"
) -> str:
    """Markdown table: on each of ``splits`` (default: the :data:`BAR_SPLITS` in
    ``results``), ``detector`` against the best baseline on each metric of
    :data:`QUALITY_BAR`, and whether it beats them all (FPR95: lower is better)."""
    header = ["Split"]
    header += [
        f"{task.upper()} {metric.upper()} ({detector} {fed_map})"
        for task, metric, fed_map in QUALITY_BAR
    ]
    header.append("Beats every baseline")
    lines = [header, ["---"] + ["--:"] * (len(header) - 2) + [":-:"]]
    met = 0
    if splits is None:
        splits = [name for name in BAR_SPLITS if name in results["splits"]]
    for split in splits:
        rows = results["splits"][split]
        cells, wins = [split], []
        for task, metric, fed_map in QUALITY_BAR:
            sign = -1 if metric == "fpr95" else 1
            ours = rows[f"{detector} {fed_map}"][task][metric]
            best = best_baseline(rows, task, metric)
            theirs = rows[best][task][metric]
            wins.append(sign * ours > sign * theirs)
            cells.append(f"{100 * ours:.2f} vs {100 * theirs:.2f} {best}")
        missed = [
            f"{task.upper()} {metric.upper()}"
            for (task, metric, _), won in zip(QUALITY_BAR, wins, strict=True)
            if not won
        ]
        met += not missed
        cells.append("no: " + ", ".join(missed) if missed else "yes")
        lines.append(cells)
    table = "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in lines)
    return f"{table}\n\n{detector} beats every baseline on {met} of {len(splits)} splits."


def report(results: dict[str, Any]) -> str:
    """The quality bar on the bar splits, on the validation splits, and (where the run
    has them) on each single-corruption test split, as Markdown sections."""
    names = list(results["splits"])
    sections = [
        ("Quality bar: clean and shifted test splits", None),
        ("The same on the validation splits", [n for n in names if n.startswith("val")]),
        (
            "Per corruption and severity",
            [n for n in names if n.startswith("test/") and n not in BAR_SPLITS],
        ),
    ]
    return "\n\n".join(
        f"### {title}\n\n{quality_bar(results, splits)}"
        for title, splits in sections
        if splits is None or splits
    )
