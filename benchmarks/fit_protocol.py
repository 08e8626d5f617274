"""What the fit's shifted copies and its choice of rules do: FED-C fitted as a user fits it
(a DataLoader of the segmenter's clean training scenes) with the library's defaults
(``user``: a shifted copy of each batch, rules chosen on held-out images) or without the
shifted copies (``user-no-shift``), each also scored with the fixed rules of earlier
releases (no refit), on the validation splits (never test).

    python -m benchmarks.fit_protocol --world digits --seeds 0 1 2

Prints, per protocol and split, the quality bar's columns for FED-C's maps and the best
baseline, and the FED-C maps scored with other energy weights (no refit).
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import print_validation_tables, study_config, training_loader
from flowenedet import FlowEneDet
from flowenedet.evaluation.runner import make_baselines
from flowenedet.evaluation.worlds import WORLDS
from flowenedet.zoo import load_reference_segmenter

VARIANTS = {
    "fixed rules": {
        "idm_rule": "posterior",
        "ood_rule": "flow + 1.5 energy",
        "concurrent_rule": "flow + 0.5 energy",
    },
}
"""Other scoring rules of the same fitted flow (no refit): the rules before the fit chose
them on held-out images."""


PROTOCOLS = ("user", "user-no-shift")
"""The library's fit, and the same without its shifted copies."""


def fit(segmenter, cfg, protocol: str) -> FlowEneDet:
    det = FlowEneDet(segmenter, variant="C", seed=cfg.seed)
    started = time.perf_counter()
    copies = {"shifted_copies": 0} if protocol == "user-no-shift" else {}
    det.fit(training_loader(cfg), steps=cfg.steps, progress=False, **copies)
    print(f"  {protocol} fit: {time.perf_counter() - started:.0f} s", flush=True)
    return det


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", choices=WORLDS, default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--train-scenes", type=int, default=None)
    parser.add_argument("--val-scenes", type=int, default=None)
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
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
            rules = {k: v for k, v in vars(det.config.scoring).items() if k.endswith("_rule")}
            print(f"  {protocol} rules: {rules}", flush=True)
            for name, change in VARIANTS.items():
                detectors[f"{protocol}, {name}"] = det.with_options(**change)
        methods = make_baselines(segmenter, detectors[args.protocols[0]], cfg)
        methods.pop("MC dropout")
        label = f"seed {seed} ({cfg.train_scenes} train scenes)"
        print_validation_tables(segmenter, detectors, methods, cfg, label)


if __name__ == "__main__":
    main()
