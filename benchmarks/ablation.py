"""From the paper's detector to flowenedet 0.1's default, one setting at a time, on validation.

FED-C on both embedded worlds (the shipped reference segmenters, the benchmark's fit data:
clean training scenes followed by a shifted copy, statistics from the clean ones),
scored on the clean and the shifted validation splits (never on test), every quality-bar
column. Each row changes one more setting from the ``"paper-deeplabv3plus"`` preset
towards flowenedet 0.1's default (post-processing in logit pixels with the release's
sizes; the current default, chosen from these rows and later sweeps, drops that
post-processing: docs/benchmarks.md, "Choosing the defaults on validation"):

1. the paper preset (the reference release's valid options: energy pair, void as miss,
   natural prevalence, learned prior, convolutional couplings in 4 blocks, post-processing
   in image pixels at image resolution, test-time scales 1, 0.5, 0.25, the posterior as
   the only score; its schedule's shape scaled to ``--steps``: 8 % warm-up, x0.1 every
   30 % of the steps, weight decay 0.01);
2. without test-time augmentation;
3. post-processing sizes in logit pixels at logit resolution;
4. the per-pixel flow with a masked 7x7 context, 8 blocks;
5. equal priors in the posterior;
6. balanced pixel sampling and a class-balanced loss;
7. void pixels left out of the fit;
8. the rich input set;
9. the energy terms of the ``ood`` and ``concurrent`` maps (weights 1.5, 0.5);
10. the library's schedule (5 % warm-up, one decay at 80 %, weight decay 1e-4): the
    default detector.

Rows 1-3 are one fitted detector scored three ways. The best baseline per column is
printed for reference.

    python -m benchmarks.ablation                   # both worlds
    python -m benchmarks.ablation --world digits    # one
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from benchmarks.common import fit_fed_c, load_fit, print_table, rescored, score_with_images
from flowenedet import FlowEneDet
from flowenedet.config import DEFAULT_STEPS, preset
from flowenedet.evaluation.config import WORLDS, BenchConfig
from flowenedet.evaluation.runner import evaluate_split, make_baselines, score_split
from flowenedet.evaluation.splits import load_split, shifted_split

PAPER, _ = preset("paper-deeplabv3plus")
DEFAULT = {  # flowenedet 0.1's default detector
    "inputs": "rich",
    "void_as_miss": False,
    "loss_weighting": "balanced",
    "prior": "equal",
    "coupling": "pixel",
    "num_blocks": 8,
    "postprocess": "logit-pixels",
    "ood_smooth_kernel": None,
    "ood_energy_weight": 1.5,
    "concurrent_energy_weight": 0.5,
    "tta": False,
}
# (row, settings changed from the row before, whether it needs a new fit)
ROWS: list[tuple[str, dict[str, Any], bool]] = [
    ("1. paper preset", {}, True),
    ("2. - test-time augmentation", {"tta": False}, False),
    ("3. post-processing in logit pixels", {"postprocess": "logit-pixels"}, False),
    ("4. per-pixel flow, 8 blocks", {"coupling": "pixel", "num_blocks": 8}, True),
    ("5. equal priors", {"prior": "equal"}, True),
    ("6. balanced sampling and loss", {"loss_weighting": "balanced"}, True),
    ("7. void left out", {"void_as_miss": False}, True),
    ("8. rich inputs", {"inputs": "rich"}, True),
    (
        "9. energy terms in ood / concurrent",
        {k: DEFAULT[k] for k in DEFAULT if "weight" in k},
        True,
    ),
    ("10. library schedule (0.1's default)", {"schedule": "default"}, True),
]


def run_world(world: str, steps: int | None, val_scenes: int | None) -> None:
    cfg = BenchConfig(world=world, progress=False)
    cfg.steps = steps or DEFAULT_STEPS
    if val_scenes:
        cfg.val_scenes = val_scenes
    segmenter, data = load_fit(cfg)
    settings: dict[str, Any] = dict(PAPER)
    detectors: dict[str, FlowEneDet] = {}
    for row, change, refit in ROWS:
        settings |= change
        print(f"{world}: {row}", flush=True)
        if refit:
            fit_settings = {k: v for k, v in settings.items() if k != "schedule"}
            schedule = settings.get("schedule", "paper")
            det = fit_fed_c(segmenter, data, cfg, fit_settings, schedule=schedule)
        else:
            det = rescored(det, change)
        detectors[row] = det
    baselines = make_baselines(segmenter, detectors[ROWS[-1][0]], cfg)
    baselines.pop("MC dropout")  # needs the images again for every sample; not the point here
    for corruption, severity in ((None, 0), shifted_split(cfg)):
        split = load_split(segmenter, "val", cfg.val_scenes, cfg, corruption, severity)
        plain = {name: det for name, det in detectors.items() if not det.config.scoring.tta}
        score_split(split, plain, baselines, cfg)
        for name, det in detectors.items():
            if det.config.scoring.tta:
                score_with_images(split, det, name, cfg)
        rows, _ = evaluate_split(split, segmenter.num_classes)
        title = f"{world}, {split.name} ({cfg.val_scenes} scenes, {cfg.steps} steps)"
        print_table(title, detectors, baselines, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", choices=(*WORLDS, "all"), default="all")
    parser.add_argument("--steps", type=int, help="fit steps (default: the benchmark's)")
    parser.add_argument("--val-scenes", type=int, help="default: the benchmark's")
    args = parser.parse_args()
    started = time.perf_counter()
    for world in WORLDS if args.world == "all" else (args.world,):
        run_world(world, args.steps, args.val_scenes)
    print(f"\nfinished in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
