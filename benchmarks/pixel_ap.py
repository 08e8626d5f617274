"""SegmentMeIfYouCan's pixel AP beside the step-wise AP, on the embedded test splits.

The same OOD maps (FED-C's ``ood`` map and every baseline) measured twice: the pooled,
exact, step-wise AP and FPR95 of :class:`~flowenedet.evaluation.metrics.PixelEvaluator`
(the Fishyscapes convention, the project's tables) and the benchmark's per-frame binned
curve of :class:`~flowenedet.evaluation.smiyc.SmiycPixelCurve`, in its 2021 revision
(trapezoid AP: the published tables) and its 2023 one (step-wise on the binned curve).
Prints one table per world and split, and the mean and largest difference in points.

    python -m benchmarks.pixel_ap --world digits --train-scenes 300 --test-scenes 120 --steps 300
    python -m benchmarks.pixel_ap --world street --train-scenes 48 --test-scenes 32 --steps 200
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import fit_fed_c, load_fit, study_config
from flowenedet.config import DEFAULT_STEPS
from flowenedet.evaluation.config import WORLDS, BenchConfig
from flowenedet.evaluation.metrics import PixelEvaluator
from flowenedet.evaluation.runner import make_baselines, score_split
from flowenedet.evaluation.smiyc import SmiycPixelCurve
from flowenedet.evaluation.splits import load_split, shifted_split


def measure(scores, labels, pred, num_classes: int) -> dict[str, float]:
    """Step-wise exact AP / FPR95 and the SMIYC curve's, in points."""
    exact = PixelEvaluator(num_classes)
    exact.update(scores, labels, pred)
    ood = exact.compute()["ood"]
    out = {"ap": 100 * ood["ap"], "fpr95": 100 * ood["fpr95"]}
    for revision in ("2021", "2023"):
        curve = SmiycPixelCurve(revision=revision)
        curve.update(scores, labels)
        found = curve.compute()
        out[f"ap {revision}"] = 100 * found["ap"]
        out[f"fpr95 {revision}"] = 100 * found["fpr95"]
    return out


def run_world(world: str, steps: int, train_scenes: int, test_scenes: int, seed: int) -> list:
    cfg = study_config(
        world, train_scenes=train_scenes, test_scenes=test_scenes, steps=steps, seed=seed
    )
    segmenter, data = load_fit(cfg)
    print(f"{world}: fitting FED-C ({steps} steps)", flush=True)
    detector = fit_fed_c(segmenter, data, cfg)
    methods = make_baselines(segmenter, detector, cfg)
    gaps = []
    for corruption, severity in ((None, 0), shifted_split(cfg)):
        split = load_split(segmenter, "test", test_scenes, cfg, corruption, severity)
        score_split(split, {"FED-C": detector}, methods, cfg)
        print(f"\n{world}, {split.name} ({test_scenes} scenes, seed {seed})\n")
        print("| Method | AP step-wise | AP SMIYC 2021 | diff | AP SMIYC 2023 | diff | "
              "FPR95 | FPR95 SMIYC 2021 |")  # fmt: skip
        print("| --- " + "| --: " * 7 + "|")
        for name, scores in split.scores.items():
            if name.startswith("FED-") and not name.endswith(" ood"):
                continue
            m = measure(scores, split.labels, split.pred, segmenter.num_classes)
            old, new = m["ap 2021"] - m["ap"], m["ap 2023"] - m["ap"]
            gaps.append((old, new))
            print(
                f"| {name} | {m['ap']:.2f} | {m['ap 2021']:.2f} | {old:+.2f} | "
                f"{m['ap 2023']:.2f} | {new:+.2f} | {m['fpr95']:.2f} | {m['fpr95 2021']:.2f} |"
            )
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", choices=(*WORLDS, "all"), default="all")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--train-scenes", type=int, default=BenchConfig.train_scenes)
    parser.add_argument("--test-scenes", type=int, default=BenchConfig.test_scenes)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    for world in WORLDS if args.world == "all" else (args.world,):
        gaps = np.array(
            run_world(world, args.steps, args.train_scenes, args.test_scenes, args.seed)
        )
        for column, revision in enumerate(("2021", "2023")):
            diff = gaps[:, column]
            print(
                f"\n{world}: SMIYC {revision} AP minus step-wise AP over {len(diff)} rows: mean "
                f"{diff.mean():+.2f}, mean |diff| {np.abs(diff).mean():.2f}, "
                f"largest |diff| {np.abs(diff).max():.2f} points"
            )
    print(f"\nfinished in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
