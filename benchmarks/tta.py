"""Test-time scales with the defaults, on validation.

The ablation (docs/benchmarks.md) shows the reference's test-time augmentation (scales
1, 0.5, 0.25, maps and softmax averaged) as the paper preset's largest gain on the street
world's OOD columns. This scores FED-C with the library defaults, fitted once on a
world's benchmark fit data, at one scale, at those scales on every map (``tta=True``) and
at those scales on the ``ood`` map alone (``tta_maps="ood"``), on the clean and the
shifted validation splits, next to every baseline but MC dropout. The scales cost the
segmenter ``1 + 0.25 + 0.0625`` of its single-scale work.

    python -m benchmarks.tta --world street --train-scenes 100 --val-scenes 100 --seed 1

``--why`` adds, per split, the ``ood`` map at other scale sets and the one-scale map
averaged with its own 2x and 4x downsampled copies (smoothing alone, no second look by
the segmenter), and the segmenter's mIoU at each single scale.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.common import (
    fit_fed_c,
    load_fit,
    print_table,
    rescored,
    score_with_images,
    study_config,
)
from flowenedet import FlowEneDet
from flowenedet.config import TTA_SCALES
from flowenedet.evaluation.config import WORLDS, BenchConfig
from flowenedet.evaluation.metrics import PixelEvaluator
from flowenedet.evaluation.runner import evaluate_split, make_baselines, score_split
from flowenedet.evaluation.splits import SplitData, load_split, shifted_split

SCALE_SETS = ((1.0, 0.5), (1.0, 0.25), (0.5,), (0.25,))


def _downsampled_mean(maps: torch.Tensor, factors=(1, 2, 4)) -> torch.Tensor:
    """``maps`` ``(N, H, W)`` averaged with copies downsampled by ``factors`` and back."""
    size, maps = maps.shape[-2:], maps[:, None]
    copies = [
        F.interpolate(
            F.interpolate(maps, scale_factor=1 / f, mode="bilinear", antialias=True),
            size=size,
            mode="bilinear",
        )
        for f in factors
    ]
    return torch.stack(copies).mean(0)[:, 0]


def _miou(split: SplitData, pred: torch.Tensor, num_classes: int) -> float:
    evaluator = PixelEvaluator(num_classes)
    evaluator.update(torch.zeros(pred.shape), split.labels, pred)  # scores unused by miou
    return evaluator.miou()


def _why(split: SplitData, det: FlowEneDet, cfg: BenchConfig) -> list[str]:
    """Adds the ``--why`` rows to ``split.scores`` (one-scale ``idm`` and ``concurrent``
    maps, so only the OOD columns differ) and prints the segmenter's mIoU per scale."""
    one_scale = {kind: split.scores[f"defaults {kind}"] for kind in ("idm", "concurrent")}
    smoothed = "defaults, ood averaged with its 2x, 4x downsampled copies"
    split.scores[f"{smoothed} ood"] = _downsampled_mean(split.scores["defaults ood"])
    preds = {1.0: split.pred}
    ood_only = rescored(det, {"tta_maps": "ood"})
    names = [smoothed]
    for scales in SCALE_SETS:
        names.append(f"defaults, scales {scales} on ood")
        pred = score_with_images(split, ood_only, names[-1], cfg, scales)
        if len(scales) == 1:  # that scale's prediction
            preds[scales[0]] = pred
    for name in names:
        split.scores |= {f"{name} {kind}": m for kind, m in one_scale.items()}
    for scale, pred in preds.items():
        miou = _miou(split, pred, det.config.fitted.num_classes)
        print(f"  {split.name}: segmenter mIoU at scale {scale}: {100 * miou:.2f}")
    return names


def run_world(world: str, train_scenes: int, val_scenes: int, seed: int, why: bool) -> None:
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
        names = list(detectors) + (_why(split, det, cfg) if why else [])
        rows, _ = evaluate_split(split, segmenter.num_classes)
        title = f"{world}, {split.name} ({val_scenes} scenes, {cfg.steps} steps, seed {seed})"
        print_table(title, names, methods, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", choices=(*WORLDS, "all"), default="all")
    parser.add_argument("--train-scenes", type=int, default=BenchConfig.train_scenes)
    parser.add_argument("--val-scenes", type=int, default=BenchConfig.val_scenes)
    parser.add_argument("--seed", type=int, default=0, help="of the scenes and the fit")
    parser.add_argument("--why", action="store_true", help="other scale sets, smoothing alone")
    args = parser.parse_args()
    for world in WORLDS if args.world == "all" else (args.world,):
        run_world(world, args.train_scenes, args.val_scenes, args.seed, args.why)


if __name__ == "__main__":
    main()
