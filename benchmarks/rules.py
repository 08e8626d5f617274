"""Validation quality of other scoring rules for detectors a run already fitted (no refit).

Reads the detectors that ``flowenedet demo`` / ``bench`` saved (``DIR/<world>/seed-K/
fed-u.safetensors``, ``fed-c.safetensors``, with the run's sizes in ``results.json``),
regenerates that run's validation splits (clean and shifted; never test), and scores
each detector with its own rules and with each ``--ood`` / ``--idm`` / ``--concurrent``
rule in place of the map's (:meth:`FlowEneDet.with_options`), next to the best
baseline of each column. A map's rule changes nothing in the fit, so these rows are what
a refit with that rule as the default would score.

    flowenedet demo --world street --seeds 3 --out runs/street
    python -m benchmarks.rules runs/street --ood "flow + 1.5 energy" "flow + 1.5 sml" sml

Prints one table per seed and split: OOD AP, OOD FPR95, IDM AP, CDD AP.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.common import print_validation_tables
from flowenedet import FlowEneDet
from flowenedet.evaluation.config import BenchConfig
from flowenedet.evaluation.runner import make_baselines
from flowenedet.zoo import load_reference_segmenter

MAP_OPTIONS = {"ood": "ood_rule", "idm": "idm_rule", "concurrent": "concurrent_rule"}


def run_folders(path: Path) -> list[Path]:
    """The seed folders of a run (``seed-K/``), or the folder itself for a one-seed run."""
    seeds = sorted(path.glob("seed-*"), key=lambda p: int(p.name.split("-")[1]))
    return seeds or [path]


def run_config(folder: Path) -> BenchConfig:
    """The run's sizes, read from its ``results.json``."""
    saved = json.loads((folder / "results.json").read_text())["config"]
    fields = BenchConfig.__dataclass_fields__
    return BenchConfig(**{k: v for k, v in saved.items() if k in fields} | {"progress": False})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a world's folder of a demo / bench run")
    for name in MAP_OPTIONS:
        parser.add_argument(f"--{name}", nargs="*", default=[], metavar="RULE")
    args = parser.parse_args()
    for folder in run_folders(args.run):
        cfg = run_config(folder)
        torch.manual_seed(cfg.seed)
        segmenter = load_reference_segmenter(world=cfg.world)
        detectors = {}
        for variant in "UC":
            det = FlowEneDet.load(folder / f"fed-{variant.lower()}.safetensors", segmenter)
            own = {k: getattr(det.config.scoring, k) for k in MAP_OPTIONS.values()}
            detectors[f"FED-{variant}"] = det
            print(f"{folder}: FED-{variant} rules {own}", flush=True)
            for map_name, option in MAP_OPTIONS.items():
                for rule in getattr(args, map_name):
                    name = f"FED-{variant}, {map_name} {rule}"
                    detectors[name] = det.with_options(**{option: rule})
        methods = make_baselines(segmenter, detectors["FED-C"], cfg)
        methods.pop("MC dropout")  # left out for time, as in the other studies
        print_validation_tables(segmenter, detectors, methods, cfg, f"seed {cfg.seed}")


if __name__ == "__main__":
    main()
