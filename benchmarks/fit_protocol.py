"""How the detector is fitted: as a user fits it (a DataLoader of the segmenter's clean
training scenes; ``user`` with the fit's own shifted copies, ``user-no-shift`` without)
against the embedded benchmark's earlier protocol (``shifted-copies``: the training
scenes plus a copy of each under one of ten imagecorruptions types that no test split
uses), each with the detector's defaults, on the validation splits (never test).

    python -m benchmarks.fit_protocol --world digits --seeds 0 1 2

Prints, per protocol and split, the quality bar's columns for FED-C's maps and the best
baseline, and the FED-C maps scored with other energy weights (no refit).
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import print_table, study_config
from flowenedet import FlowEneDet
from flowenedet.evaluation.config import FEATURE_LAYER
from flowenedet.evaluation.runner import evaluate_split, make_baselines, score_split
from flowenedet.evaluation.splits import load_fit_split, load_split, shifted_split
from flowenedet.evaluation.worlds import WORLDS, world_module
from flowenedet.zoo import load_reference_segmenter

VARIANTS = {
    "weights 0 / 0": {"ood_energy_weight": 0.0, "concurrent_energy_weight": 0.0},
    "weights 1.5 / 0": {"concurrent_energy_weight": 0.0},
}


def fit(segmenter, cfg, protocol: str) -> FlowEneDet:
    det = FlowEneDet(segmenter, variant="C", feature_layer=FEATURE_LAYER, seed=cfg.seed)
    started = time.perf_counter()
    if protocol.startswith("user"):
        scenes = world_module(cfg.world).make_scenes("train", cfg.train_scenes, seed=cfg.seed)
        loader = torch.utils.data.DataLoader(scenes, batch_size=cfg.batch_size)
        copies = {"shifted_copies": 0} if protocol == "user-no-shift" else {}
        det.fit(loader, steps=cfg.steps, progress=False, **copies)
    else:
        data = load_fit_split(segmenter, cfg)
        det.fit_logits(
            data.logits,
            data.labels,
            data.features,
            batch_size=cfg.batch_size,
            stats_items=cfg.train_scenes,
            steps=cfg.steps,
            progress=False,
        )
    print(f"  {protocol} fit: {time.perf_counter() - started:.0f} s", flush=True)
    return det


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", choices=WORLDS, default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--train-scenes", type=int, default=None)
    parser.add_argument("--val-scenes", type=int, default=None)
    parser.add_argument(
        "--protocols", nargs="+", default=["user", "user-no-shift", "shifted-copies"]
    )
    args = parser.parse_args()
    for seed in args.seeds:
        sizes = {"seed": seed}
        if args.train_scenes:
            sizes["train_scenes"] = args.train_scenes
        if args.val_scenes:
            sizes["val_scenes"] = args.val_scenes
        cfg = study_config(args.world, **sizes)
        torch.manual_seed(seed)
        segmenter = load_reference_segmenter(world=cfg.world)
        detectors = {}
        for protocol in args.protocols:
            det = fit(segmenter, cfg, protocol)
            detectors[f"{protocol}"] = det
            for name, change in VARIANTS.items():
                detectors[f"{protocol}, {name}"] = det.with_options(**change)
        methods = make_baselines(segmenter, detectors[args.protocols[0]], cfg)
        methods.pop("MC dropout")
        for corruption, severity in ((None, 0), shifted_split(cfg)):
            split = load_split(segmenter, "val", cfg.val_scenes, cfg, corruption, severity)
            score_split(split, detectors, methods, cfg)
            rows, _ = evaluate_split(split, segmenter.num_classes)
            title = f"{args.world}, {split.name}, seed {seed} ({cfg.train_scenes} train scenes)"
            print_table(title, detectors, methods, rows)


if __name__ == "__main__":
    main()
