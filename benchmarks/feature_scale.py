"""How much FED-C depends on the scale of the decoder features, on validation.

FED-C with the defaults fitted on a world's benchmark fit data with the features as the
segmenter gives them, multiplied by ``--scale`` and shifted by ``--shift`` (the same for
fit and validation), scored on the clean and the shifted validation splits. The flow
reads the pooled features through a 1x1 convolution without normalising them, so an
affine change of the features changes the fit; this measures by how much.

    python -m benchmarks.feature_scale --world digits --scale 1 30 1 --shift 0 0 20
"""

from __future__ import annotations

import argparse
import dataclasses

from benchmarks.common import fit_fed_c, load_fit, study_config
from flowenedet.evaluation.config import WORLDS, BenchConfig
from flowenedet.evaluation.report import QUALITY_BAR
from flowenedet.evaluation.runner import evaluate_split, score_split
from flowenedet.evaluation.splits import SplitData, load_split, shifted_split


def _affine(split: SplitData, scale: float, shift: float) -> SplitData:
    return dataclasses.replace(split, features=split.features * scale + shift, scores={})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", choices=WORLDS, default="digits")
    parser.add_argument("--train-scenes", type=int, default=BenchConfig.train_scenes)
    parser.add_argument("--val-scenes", type=int, default=BenchConfig.val_scenes)
    parser.add_argument("--scale", type=float, nargs="+", default=[1.0, 30.0, 1.0])
    parser.add_argument("--shift", type=float, nargs="+", default=[0.0, 0.0, 20.0])
    args = parser.parse_args()
    if len(args.scale) != len(args.shift):
        parser.error("give one --shift per --scale")
    cfg = study_config(args.world, train_scenes=args.train_scenes, val_scenes=args.val_scenes)
    segmenter, fit = load_fit(cfg)
    splits = [
        load_split(segmenter, "val", cfg.val_scenes, cfg, corruption, severity)
        for corruption, severity in ((None, 0), shifted_split(cfg))
    ]
    print("| features | split | OOD AP | OOD FPR95 | IDM AP | CDD AP |")
    print("| --- | --- | --: | --: | --: | --: |")
    for scale, shift in zip(args.scale, args.shift, strict=True):
        det = fit_fed_c(segmenter, _affine(fit, scale, shift), cfg)
        for split in splits:
            split = _affine(split, scale, shift)
            score_split(split, {"FED-C": det}, {}, cfg)
            rows, _ = evaluate_split(split, segmenter.num_classes)
            cells = [100 * rows[f"FED-C {m}"][t][metric] for t, metric, m in QUALITY_BAR]
            line = " | ".join(f"{c:.2f}" for c in cells)
            print(f"| x{scale:g} + {shift:g} | {split.name} | {line} |", flush=True)


if __name__ == "__main__":
    main()
