"""The quality bar of the defaults, read from runs of ``flowenedet demo`` / ``bench``.

For each world folder (``DIR/<world>/`` of a ``--seeds N`` run, or one seed's folder), each
FED variant and each split, the four bar columns (OOD AP and OOD FPR95 of the ``ood``
map, IDM AP of ``idm``, CDD AP of ``concurrent``), as mean (min-max) over the seeds,
next to:

* the best baseline of the column (MSP, MaxLogit, Energy, Entropy, SML, SML+post, MC
  dropout), chosen per seed: IDM AP and CDD AP must beat it in every seed;
* the best of the detector's own inputs (MSP, MaxLogit, Energy, Entropy), per seed: no
  column may be below it in any seed;
* SML, for OOD AP: at least its mean over the seeds, and at least it in all but one
  seed (2 of 3).

    flowenedet demo --world all --seeds 3 --steps 1000 --out runs/
    python -m benchmarks.bar runs/digits runs/street runs/aerial

Prints one table per world and variant, the verdict per criterion, and each run's wall
time; ``--summary``: one compact table per world (FED-U / FED-C vs the best baseline, and
in how many seeds each is ahead of every baseline). Which variant the bar reads is chosen
on the validation splits (``--splits val val/shifted``), never on test.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

COLUMNS = (
    ("ood", "ap", "ood"),
    ("ood", "fpr95", "ood"),
    ("idm", "ap", "idm"),
    ("cdd", "ap", "concurrent"),
)
"""``(task, metric, FED map)`` of each bar column."""
INPUTS = ("MSP", "MaxLogit", "Energy", "Entropy")
"""The confidence measures the flow reads, as baselines."""
MUST_WIN = {("idm", "ap"), ("cdd", "ap")}


def seed_results(world: Path) -> list[dict]:
    """``results.json`` of each finished seed of a world's run folder, in seed order."""
    folders = sorted(world.glob("seed-*"), key=lambda p: int(p.name.split("-")[1])) or [world]
    files = [f / "results.json" for f in folders]
    return [json.loads(f.read_text()) for f in files if f.exists()]


def _better(metric: str, a: float, b: float) -> bool:
    """``a`` at least as good as ``b`` (FPR95: lower is better)."""
    return a <= b if metric == "fpr95" else a >= b


def _best(rows: dict, names, task: str, metric: str) -> tuple[str, float]:
    sign = -1 if metric == "fpr95" else 1
    name = max((n for n in names if n in rows), key=lambda n: sign * rows[n][task][metric])
    return name, rows[name][task][metric]


def _spread(values: list[float]) -> str:
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def world_table(runs: list[dict], variant: str, splits: tuple[str, ...]) -> tuple[str, list[str]]:
    """The Markdown table of one variant on one world's seeds, and the failed criteria."""
    failed, lines = [], []
    header = [f"{t.upper()} {m.upper()}" for t, m, _ in COLUMNS]
    lines.append("| split | " + " | ".join(header) + " |")
    lines.append("| --- |" + " --- |" * len(COLUMNS))
    for split in splits:
        cells = []
        for task, metric, fed_map in COLUMNS:
            ours, best, inputs, sml, notes = [], [], [], [], []
            for seed, run in enumerate(runs):
                rows = run["splits"][split]
                baselines = [n for n in rows if not n.startswith("FED-")]
                value = rows[f"{variant} {fed_map}"][task][metric]
                name, top = _best(rows, baselines, task, metric)
                input_name, input_top = _best(rows, INPUTS, task, metric)
                ours.append(value), best.append(top), inputs.append(input_top)
                won = _better(metric, value, top) and value != top
                if (task, metric) in MUST_WIN and not won:
                    notes.append(f"seed {seed}: loses to {name}")
                if not _better(metric, value, input_top):
                    notes.append(f"seed {seed}: below {input_name}")
                if (task, metric) == ("ood", "ap"):
                    sml.append(rows["SML"]["ood"]["ap"])
            if sml:
                wins = sum(o >= s for o, s in zip(ours, sml, strict=True))
                mean_ok = statistics.mean(ours) >= statistics.mean(sml)
                if not mean_ok or wins < len(runs) - 1:
                    notes.append(f"SML {_spread(sml)}, at least it in {wins} of {len(runs)}")
            cell = f"{_spread(ours)} vs {_spread(best)} best, {_spread(inputs)} inputs"
            if notes:
                failed += [f"{split} {task.upper()} {metric.upper()}: {n}" for n in notes]
                cell += " **(" + "; ".join(notes) + ")**"
            cells.append(cell)
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines), failed


def summary_table(runs: list[dict], splits: tuple[str, ...]) -> str:
    """One Markdown row per split: each column's FED-U and FED-C mean (min-max), the best
    baseline's, and in how many seeds each variant is ahead of every baseline."""
    header = [f"{t.upper()} {m.upper()}" for t, m, _ in COLUMNS]
    lines = ["| split | " + " | ".join(header) + " |", "| --- |" + " --- |" * len(COLUMNS)]
    for split in splits:
        cells = []
        for task, metric, fed_map in COLUMNS:
            values: dict[str, list[float]] = {"FED-U": [], "FED-C": [], "best": []}
            for run in runs:
                rows = run["splits"][split]
                baselines = [n for n in rows if not n.startswith("FED-")]
                values["best"].append(_best(rows, baselines, task, metric)[1])
                for variant in ("FED-U", "FED-C"):
                    values[variant].append(rows[f"{variant} {fed_map}"][task][metric])
            best = values["best"]
            won = [
                sum(_better(metric, v, b) and v != b for v, b in zip(values[k], best, strict=True))
                for k in ("FED-U", "FED-C")
            ]
            cells.append(
                f"{_spread(values['FED-U'])} / {_spread(values['FED-C'])} vs "
                f"{_spread(values['best'])}; {won[0]}/{len(runs)}, {won[1]}/{len(runs)}"
            )
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("worlds", type=Path, nargs="+", help="world folders of demo / bench runs")
    parser.add_argument("--splits", nargs="+", default=["test", "test/shifted"])
    parser.add_argument("--variants", nargs="+", default=["FED-U", "FED-C"])
    parser.add_argument("--summary", action="store_true", help="one compact table per world")
    args = parser.parse_args()
    for world in args.worlds:
        runs = seed_results(world)
        seconds = ", ".join(f"{run['seconds']:.0f} s" for run in runs)
        print(f"\n## {runs[0]['world']} ({len(runs)} seeds; wall time per seed: {seconds})")
        if args.summary:
            print(f"\n{summary_table(runs, tuple(args.splits))}")
            continue
        for variant in args.variants:
            table, failed = world_table(runs, variant, tuple(args.splits))
            verdict = "holds" if not failed else f"fails {len(failed)} criteria"
            print(f"\n### {variant}: the bar {verdict}\n\n{table}")


if __name__ == "__main__":
    main()
