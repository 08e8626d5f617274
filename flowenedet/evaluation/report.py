"""Markdown reports of benchmark results: per-split tables and the quality bar."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..thresholds import TASKS

__all__ = [
    "BAR_SPLITS",
    "COMPONENT_COLUMNS",
    "QUALITY_BAR",
    "append_columns",
    "bar_cells",
    "best_baseline",
    "corruption_wins",
    "format_table",
    "quality_bar",
    "report",
    "seed_summary",
    "tables",
    "variant_gap",
]


def tables(results: dict[str, Any]) -> str:
    """One Markdown table per split; with the OOD component columns (sIoU, PPV, mean F1)
    where the rows have them."""
    extras = ("miou", "open_miou", "open_miou_oracle")
    parts = []
    for split, rows in results["splits"].items():
        table = format_table(rows, extras=extras)
        if any("components" in row for row in rows.values()):
            titles = [f"OOD {title}" for title, _ in COMPONENT_COLUMNS]
            keys = [key for _, key in COMPONENT_COLUMNS]
            table = append_columns(
                table, titles, [r.get("components") for r in rows.values()], keys
            )
        parts.append(f"### {split}\n\n{table}\n")
    return "\n".join(parts)


QUALITY_BAR = (
    ("ood", "ap", "ood"),
    ("ood", "fpr95", "ood"),
    ("idm", "ap", "idm"),
    ("cdd", "ap", "concurrent"),
)
"""The quality bar as ``(task, metric, FlowEneDet map)``: each task is scored with
the map made for it."""


def best_baseline(rows: dict[str, dict[str, Any]], task: str, metric: str) -> str:
    """Name of the baseline (every row not named ``FED-...``) with the best ``metric`` on
    ``task``; FPR95 is better when lower, the other metrics when higher."""
    sign = -1 if metric == "fpr95" else 1
    names = [name for name in rows if not name.startswith("FED-")]
    return max(names, key=lambda name: sign * rows[name][task][metric])


BAR_SPLITS = ("test", "test/shifted")
"""The splits the quality bar is judged on: clean and shifted test scenes."""


def bar_cells(
    rows: dict[str, dict[str, Any]], detector: str = "FED-C"
) -> list[tuple[float, float, str, bool]]:
    """``(ours, best baseline's value, its name, won)`` for each :data:`QUALITY_BAR` column
    of one split's ``rows`` (FPR95: lower is better)."""
    cells = []
    for task, metric, fed_map in QUALITY_BAR:
        sign = -1 if metric == "fpr95" else 1
        ours = rows[f"{detector} {fed_map}"][task][metric]
        best = best_baseline(rows, task, metric)
        theirs = rows[best][task][metric]
        cells.append((ours, theirs, best, sign * ours > sign * theirs))
    return cells


def _bar_titles(detector: str) -> list[str]:
    return [f"{t.upper()} {m.upper()} ({detector} {fed_map})" for t, m, fed_map in QUALITY_BAR]


def _markdown(lines: list[list[str]]) -> str:
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in lines)


def quality_bar(
    results: dict[str, Any], splits: Sequence[str] | None = None, detector: str = "FED-C"
) -> str:
    """Markdown table: on each of ``splits`` (default: the :data:`BAR_SPLITS` in
    ``results``), ``detector`` against the best baseline on each metric of
    :data:`QUALITY_BAR`, and whether it beats them all (FPR95: lower is better)."""
    header = ["Split", *_bar_titles(detector), "Beats every baseline"]
    lines = [header, ["---"] + ["--:"] * (len(header) - 2) + [":-:"]]
    met = 0
    if splits is None:
        splits = [name for name in BAR_SPLITS if name in results["splits"]]
    for split in splits:
        cells = bar_cells(results["splits"][split], detector)
        missed = [
            f"{task.upper()} {metric.upper()}"
            for (task, metric, _), (*_, won) in zip(QUALITY_BAR, cells, strict=True)
            if not won
        ]
        met += not missed
        lines.append(
            [split]
            + [f"{100 * ours:.2f} vs {100 * theirs:.2f} {best}" for ours, theirs, best, _ in cells]
            + ["no: " + ", ".join(missed) if missed else "yes"]
        )
    summary = f"{detector} beats every baseline on {met} of {len(splits)} splits."
    return f"{_markdown(lines)}\n\n{summary}"


def seed_summary(runs: Sequence[dict[str, Any]], detector: str = "FED-C") -> str:
    """Markdown table of the quality bar over several runs (seeds) of one world: per bar
    split and column, the mean and spread (min-max) of ours and of the best baseline
    (per run), and in how many runs the cell is won; a cell counts only if won in all."""
    header = ["Split", *_bar_titles(detector)]
    lines = [header, ["---"] + ["--:"] * (len(header) - 1)]
    splits = [name for name in BAR_SPLITS if all(name in run["splits"] for run in runs)]
    held = 0
    for split in splits:
        per_run = [bar_cells(run["splits"][split], detector) for run in runs]
        row = [split]
        for column in zip(*per_run, strict=True):
            won = sum(cell[3] for cell in column)
            held += won == len(runs)
            ours, theirs = (_spread([100 * cell[i] for cell in column]) for i in (0, 1))
            row.append(f"{ours} vs {theirs}; won {won}/{len(runs)}")
        lines.append(row)
    cells = len(splits) * len(QUALITY_BAR)
    return (
        f"{_markdown(lines)}\n\n{detector} wins {held} of {cells} cells in every one of "
        f"{len(runs)} runs (seeds {', '.join(str(run['config']['seed']) for run in runs)})."
    )


def variant_gap(
    runs: Sequence[dict[str, Any]], minus: str = "FED-U", detector: str = "FED-C"
) -> str:
    """Markdown table: ``detector`` minus ``minus`` on each quality-bar column of each bar
    and validation split, mean (min-max) over ``runs``, in points (FPR95: negative is
    better)."""
    names = [n for n in runs[0]["splits"] if n in BAR_SPLITS or n.startswith("val")]
    header = ["Split", *[f"{t.upper()} {m.upper()}" for t, m, _ in QUALITY_BAR]]
    lines = [header, ["---"] + ["--:"] * (len(header) - 1)]
    for split in names:
        row = [split]
        for task, metric, fed_map in QUALITY_BAR:
            gaps = [
                100
                * (
                    rows[f"{detector} {fed_map}"][task][metric]
                    - rows[f"{minus} {fed_map}"][task][metric]
                )
                for rows in (run["splits"][split] for run in runs)
            ]
            row.append(_spread(gaps))
        lines.append(row)
    return _markdown(lines)


def corruption_wins(runs: Sequence[dict[str, Any]], detector: str = "FED-C") -> str:
    """One line per run: on how many single-corruption test splits ``detector`` beats
    every baseline on all quality-bar columns, and on each column alone."""
    lines = []
    for run in runs:
        names = [n for n in run["splits"] if n.startswith("test/") and n not in BAR_SPLITS]
        if not names:
            continue
        cells = [bar_cells(run["splits"][name], detector) for name in names]
        every = sum(all(cell[3] for cell in split) for split in cells)
        per_column = [
            f"{t.upper()} {m.upper()} {sum(split[i][3] for split in cells)}"
            for i, (t, m, _) in enumerate(QUALITY_BAR)
        ]
        lines.append(
            f"- seed {run['config']['seed']}: all four columns on {every} of {len(names)} "
            f"single-corruption splits; per column: {', '.join(per_column)}"
        )
    return "\n".join(lines)


def _spread(values: Sequence[float]) -> str:
    """``"mean (min-max)"`` of ``values``."""
    return f"{sum(values) / len(values):.2f} ({min(values):.2f}-{max(values):.2f})"


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


_TASK_TITLES = {"ood": "OOD", "idm": "IDM", "cdd": "CDD"}
_METRIC_TITLES = {"auroc": "AUROC", "ap": "AP", "fpr95": "FPR95"}
_EXTRA_TITLES = {"miou": "mIoU", "open_miou": "Open-mIoU", "open_miou_oracle": "Open-mIoU (oracle)"}


def _percent(value: Any, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100.0 * float(value):.{decimals}f}"


def format_table(
    rows: Mapping[str, Mapping[str, Any]],
    *,
    tasks: Sequence[str] | None = None,
    metrics: Sequence[str] = ("auroc", "ap", "fpr95"),
    extras: Sequence[str] = (),
    decimals: int = 2,
    method_header: str = "Method",
) -> str:
    """Markdown table, one row per method, values as percentages.

    Args:
        rows: ``{method: compute() output}``, optionally with extra top-level keys
            holding fractions (e.g. ``"miou"``, ``"open_miou"``).
        tasks: task columns to show; default every task of :data:`TASKS` that has
            numbers in at least one row.
        metrics: metric keys per task (FPR95: lower is better; the others higher).
        extras: extra top-level keys to append as columns.
        decimals: digits after the decimal point.

    Missing or ``None`` values are shown as ``-``.
    """
    if tasks is None:
        tasks = [t for t in TASKS if any(isinstance(r.get(t), Mapping) for r in rows.values())]
    titles = [
        f"{_TASK_TITLES.get(t, t)} {_METRIC_TITLES.get(m, m)}" for t in tasks for m in metrics
    ]
    header = [method_header, *titles, *(_EXTRA_TITLES.get(e, e) for e in extras)]
    table = [header, ["---"] + ["--:"] * (len(header) - 1)]
    for method, row in rows.items():
        cells = [str(method).replace("|", "\\|")]
        for t in tasks:
            res = row.get(t) if isinstance(row.get(t), Mapping) else {}
            cells += [_percent(res.get(m), decimals) for m in metrics]
        table.append(cells + [_percent(row.get(e), decimals) for e in extras])
    return "\n".join("| " + " | ".join(cells) + " |" for cells in table)


def append_columns(
    table: str, titles: Sequence[str], rows: Sequence[Mapping[str, Any] | None], keys: Sequence[str]
) -> str:
    """``table`` (Markdown from :func:`format_table`, one line
    per row) with columns ``titles`` appended: ``rows[i][keys[j]]`` as a percentage, ``-``
    where a row or value is missing."""
    lines = table.split("\n")
    if len(lines) != len(rows) + 2:
        raise ValueError(f"the table has {len(lines) - 2} row(s) but {len(rows)} were given")
    out = [lines[0][:-1] + "".join(f"| {t} " for t in titles) + "|"]
    out.append(lines[1][:-1] + "| --: " * len(titles) + "|")
    for line, row in zip(lines[2:], rows, strict=True):
        cells = [_percent(None if row is None else row.get(key), 2) for key in keys]
        out.append(line[:-1] + "".join(f"| {c} " for c in cells) + "|")
    return "\n".join(out)


COMPONENT_COLUMNS = (("sIoU", "siou"), ("PPV", "ppv"), ("mean F1", "f1_mean"))
"""The SegmentMeIfYouCan leaderboard's component columns: ``(title, key)``."""
