"""The paper preset's row beside the defaults, on the test splits.

FED-C with the ``"paper-deeplabv3plus"`` preset (the reference release's valid options,
test-time augmentation included; its schedule's shape scaled to ``--steps`` as in
:mod:`benchmarks.common`) and FED-C with the library defaults, both fitted for the
same number of steps as a user fits them (a loader of the clean training scenes), scored
on the clean and the shifted
**test** splits next to the best baseline of each quality-bar column. Nothing here is
chosen: the defaults were fixed on validation (docs/benchmarks.md); this only reports
where the paper's configuration stands on test.

    python -m benchmarks.paper_row --world digits --train-scenes 300 --test-scenes 120
    python -m benchmarks.paper_row --world street --train-scenes 100 --test-scenes 32
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import fit_fed_c, load_fit, print_table, score_with_images, study_config
from flowenedet.config import DEFAULT_STEPS
from flowenedet.evaluation.config import WORLDS, BenchConfig
from flowenedet.evaluation.runner import evaluate_split, make_baselines, score_split
from flowenedet.evaluation.splits import load_split, shifted_split

PAPER = {"preset": "paper-deeplabv3plus"}
"""FED-C as the reference release configures it (its fit options come with the preset)."""


def run_world(world: str, steps: int, train_scenes: int, test_scenes: int, seed: int) -> None:
    cfg = study_config(
        world, train_scenes=train_scenes, test_scenes=test_scenes, steps=steps, seed=seed
    )
    segmenter, data = load_fit(cfg)
    print(f"{world}: fitting the paper preset and the defaults ({steps} steps each)", flush=True)
    detectors = {
        "paper preset": fit_fed_c(segmenter, data, cfg, PAPER, schedule="paper"),
        "defaults": fit_fed_c(segmenter, data, cfg),
    }
    methods = make_baselines(segmenter, detectors["defaults"], cfg)
    for corruption, severity in ((None, 0), shifted_split(cfg)):
        split = load_split(segmenter, "test", test_scenes, cfg, corruption, severity)
        score_split(split, {"defaults": detectors["defaults"]}, methods, cfg)
        score_with_images(split, detectors["paper preset"], "paper preset", cfg)
        rows, _ = evaluate_split(split, segmenter.num_classes)
        title = f"{world}, {split.name} ({test_scenes} scenes, {steps} steps, seed {seed})"
        print_table(title, detectors, methods, rows)


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
        run_world(world, args.steps, args.train_scenes, args.test_scenes, args.seed)
    print(f"\nfinished in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
