"""Test-time scales with the defaults, on validation.

The ablation (docs/benchmarks.md) shows the reference's test-time augmentation (scales
1, 0.5, 0.25, maps and softmax averaged) as the paper preset's largest gain on the street
world's OOD columns. This scores FED-C with the library defaults, fitted once on a
world's benchmark fit data, with and without those scales (``score(images, scales=...)``)
on the clean and the shifted validation splits, next to every baseline but MC dropout.
The scales cost the segmenter ``1 + 0.25 + 0.0625`` of its single-scale work.

    python -m benchmarks.tta --world street --train-scenes 100 --val-scenes 100 --seed 1
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.ablation import _print_table, _score_with_images
from flowenedet import FlowEneDet
from flowenedet.config import DEFAULT_STEPS, TTA_SCALES
from flowenedet.evaluation.config import FEATURE_LAYER, WORLDS, BenchConfig
from flowenedet.evaluation.runner import evaluate_split, make_baselines, score_split
from flowenedet.evaluation.splits import load_fit_split, load_split, shifted_split
from flowenedet.zoo import load_reference_segmenter


def run_world(world: str, train_scenes: int, val_scenes: int, seed: int) -> None:
    extra = {"batch_size": 4} if world == "street" else {}
    cfg = BenchConfig(
        world=world,
        train_scenes=train_scenes,
        val_scenes=val_scenes,
        seed=seed,
        progress=False,
        **extra,
    )
    torch.manual_seed(cfg.seed)
    segmenter = load_reference_segmenter(world=world)
    data = load_fit_split(segmenter, cfg)
    det = FlowEneDet(segmenter, variant="C", feature_layer=FEATURE_LAYER, seed=cfg.seed)
    det.fit_logits(
        data.logits,
        data.labels,
        data.features,
        batch_size=cfg.batch_size,
        stats_items=cfg.train_scenes,
        progress=False,
    )
    tta = FlowEneDet(segmenter)  # the same fitted detector, scored at the reference's scales
    tta.config = type(det.config)(**{**vars(det.config), "tta": True})
    tta.flow, tta.stats, tta._tap = det.flow, det.stats, det._tap
    detectors = {"defaults": det, f"defaults, scales {TTA_SCALES}": tta}
    methods = make_baselines(segmenter, det, cfg)
    methods.pop("MC dropout")  # needs the images again for every sample; not the point here
    for corruption, severity in ((None, 0), shifted_split(cfg)):
        split = load_split(segmenter, "val", cfg.val_scenes, cfg, corruption, severity)
        score_split(split, {"defaults": det}, methods, cfg)
        _score_with_images(split, tta, f"defaults, scales {TTA_SCALES}", cfg)
        rows, _ = evaluate_split(split, segmenter.num_classes)
        _print_table(world, split.name, val_scenes, DEFAULT_STEPS, detectors, methods, rows)


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
