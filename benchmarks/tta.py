"""Test-time scales with the defaults, on validation.

The ablation (docs/benchmarks.md) shows the reference's test-time augmentation (scales
1, 0.5, 0.25, maps and softmax averaged) as the paper preset's largest gain on the street
world's OOD columns. This scores FED-C with the library defaults, fitted once on a
world's benchmark fit data, at one scale, at those scales on every map (``tta=True``) and
at those scales on the ``ood`` map alone (``tta_maps="ood"``), on the clean and the
shifted validation splits, next to every baseline but MC dropout. The scales cost the
segmenter ``1 + 0.25 + 0.0625`` of its single-scale work.

    python -m benchmarks.tta --world street --train-scenes 100 --val-scenes 100 --seed 1
"""

from __future__ import annotations

import argparse

from benchmarks.common import (
    fit_fed_c,
    load_fit,
    print_table,
    rescored,
    score_with_images,
    study_config,
)
from flowenedet.config import TTA_SCALES
from flowenedet.evaluation.config import WORLDS, BenchConfig
from flowenedet.evaluation.runner import evaluate_split, make_baselines, score_split
from flowenedet.evaluation.splits import load_split, shifted_split


def run_world(world: str, train_scenes: int, val_scenes: int, seed: int) -> None:
    cfg = study_config(world, train_scenes=train_scenes, val_scenes=val_scenes, seed=seed)
    segmenter, data = load_fit(cfg)
    det = fit_fed_c(segmenter, data, cfg)
    scales = f"defaults, scales {TTA_SCALES}"
    ood_only = f"defaults, scales {TTA_SCALES} on ood"
    detectors = {
        "defaults": det,
        scales: rescored(det, {"tta": True}),
        ood_only: rescored(det, {"tta": True, "tta_maps": "ood"}),
    }
    methods = make_baselines(segmenter, det, cfg)
    methods.pop("MC dropout")  # needs the images again for every sample; not the point here
    for corruption, severity in ((None, 0), shifted_split(cfg)):
        split = load_split(segmenter, "val", cfg.val_scenes, cfg, corruption, severity)
        score_split(split, {"defaults": det}, methods, cfg)
        for name in (scales, ood_only):
            score_with_images(split, detectors[name], name, cfg)
        rows, _ = evaluate_split(split, segmenter.num_classes)
        title = f"{world}, {split.name} ({val_scenes} scenes, {cfg.steps} steps, seed {seed})"
        print_table(title, detectors, methods, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", choices=(*WORLDS, "all"), default="all")
    parser.add_argument("--train-scenes", type=int, default=BenchConfig.train_scenes)
    parser.add_argument("--val-scenes", type=int, default=BenchConfig.val_scenes)
    parser.add_argument("--seed", type=int, default=0, help="of the scenes and the fit")
    args = parser.parse_args()
    for world in WORLDS if args.world == "all" else (args.world,):
        run_world(world, args.train_scenes, args.val_scenes, args.seed)


if __name__ == "__main__":
    main()
