"""Validation AP against the fit's length: the curve behind ``config.DEFAULT_STEPS``.

For each length, one detector fitted as a user fits it (a loader of a world's clean
training scenes, the library defaults except ``steps``), scored on the clean and the
shifted validation splits (never on test). Prints one row per length: OOD AP, OOD FPR95,
IDM AP, CDD AP on each split (each task read from the map the quality bar reads), and the
fit time.

    python -m benchmarks.fit_length --world street --steps 250 500 1000 2000
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import training_loader
from flowenedet import FlowEneDet
from flowenedet.evaluation.config import WORLDS, BenchConfig
from flowenedet.evaluation.report import QUALITY_BAR
from flowenedet.evaluation.runner import evaluate_split, score_split
from flowenedet.evaluation.splits import load_split, shifted_split
from flowenedet.zoo import load_reference_segmenter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", choices=WORLDS, default="digits")
    parser.add_argument("--steps", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--variant", choices=("U", "C"), default="U")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg = BenchConfig(world=args.world, seed=args.seed, progress=False)
    torch.manual_seed(cfg.seed)
    segmenter = load_reference_segmenter(world=args.world)
    loader = training_loader(cfg)
    splits = [
        load_split(segmenter, "val", cfg.val_scenes, cfg, *corruption)
        for corruption in ((None, 0), shifted_split(cfg))
    ]
    titles = [f"{t.upper()} {m.upper()}" for t, m, _ in QUALITY_BAR]
    print(f"| steps | {' | '.join(s.name + ' ' + t for s in splits for t in titles)} | fit |")
    for steps in args.steps:
        started = time.perf_counter()
        det = FlowEneDet(segmenter, variant=args.variant, seed=cfg.seed)
        det.fit(loader, steps=steps, progress=False)
        seconds = time.perf_counter() - started
        cells = []
        for split in splits:
            score_split(split, {"FED": det}, {}, cfg)
            rows, _ = evaluate_split(split, segmenter.num_classes)
            cells += [rows[f"FED {m}"][t][metric] for t, metric, m in QUALITY_BAR]
        print(
            f"| {steps} | " + " | ".join(f"{100 * c:.2f}" for c in cells) + f" | {seconds:.0f} s |"
        )


if __name__ == "__main__":
    main()
