"""Outlier exposure from void pixels: a second flow for the ``ood`` map, on validation.

A study, not a library feature (docs/benchmarks.md, "What was tried for the street
world's OOD cells"). Both embedded worlds' training scenes hold void objects of no known
class. Besides the default FED-C, a second FED-C flow is fitted on the same data to tell
void from known pixels (known pixels relabelled with the segmenter's own upsampled
prediction, void counted as "miss"), and its standardised log-odds ``n`` is blended into
the ``ood`` map's raw score next to the default's terms (``m``: the miss log-odds, ``E``:
the free energy, each standardised on a fit batch): ``a n + m + 1.5 E`` (the default plus
``a n``), ``a n + 1.5 E`` (``n`` instead of ``m``) and ``a n + m + 0.5 E``, for ``a`` in
0.5, 1, 2, with the default's post-processing. Scored on the clean and the shifted
validation splits with every baseline.

    python -m benchmarks.void_exposure --world street --train-scenes 100 --val-scenes 100
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from torch import Tensor

from benchmarks.common import fit_fed_c, load_fit, study_config
from flowenedet import FlowEneDet
from flowenedet.config import DEFAULT_STEPS
from flowenedet.detector import Stats
from flowenedet.energy import energy_of_inputs, flow_inputs
from flowenedet.evaluation.config import WORLDS, BenchConfig
from flowenedet.evaluation.report import QUALITY_BAR
from flowenedet.evaluation.runner import evaluate_split, make_baselines, score_split
from flowenedet.evaluation.splits import load_split, shifted_split
from flowenedet.flow import align_features
from flowenedet.inference import log_odds
from flowenedet.labels import IGNORE_INDEX
from flowenedet.postprocess import postprocess_maps, resize, upsampled_argmax

WEIGHTS = (0.5, 1.0, 2.0)


def _terms(det: FlowEneDet, logits: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
    """The detector's raw log-odds and free energy ``(B, h, w)`` (its scoring internals)."""
    features = align_features(features, logits, det.config.flow.pooled_channels)
    inputs = flow_inputs(logits, det.stats.mean, det.stats.var, det.config.flow.inputs)
    return log_odds(det.flow, inputs, features), energy_of_inputs(inputs)


def run_world(world: str, steps: int, train_scenes: int, val_scenes: int, seed: int) -> None:
    cfg = study_config(
        world, train_scenes=train_scenes, val_scenes=val_scenes, steps=steps, seed=seed
    )
    segmenter, fit = load_fit(cfg)
    main = fit_fed_c(segmenter, fit, cfg)
    size = fit.labels.shape[-2:]
    pred = torch.cat(
        [upsampled_argmax(fit.logits[i : i + 16], size) for i in range(0, len(fit.labels), 16)]
    )
    void_labels = torch.where(fit.labels == IGNORE_INDEX, fit.labels, pred.to(fit.labels.dtype))
    relabelled = dataclasses.replace(fit, labels=void_labels)
    novelty = fit_fed_c(segmenter, relabelled, cfg, {"void_as_miss": True})
    # the class statistics of the real labels (the relabelled ones make every pixel a hit)
    novelty.stats = Stats(main.stats.mean, main.stats.var, novelty.stats.ood_scale)
    n_fit, _ = _terms(novelty, fit.logits[:64], fit.features[:64])
    n_scale = (n_fit.mean(), n_fit.std())
    scale = main.stats.ood_scale
    methods = make_baselines(segmenter, main, cfg)
    for corruption, severity in ((None, 0), shifted_split(cfg)):
        split = load_split(segmenter, "val", cfg.val_scenes, cfg, corruption, severity)
        score_split(split, {"FED-C": main}, methods, cfg)
        blends: dict[str, list[Tensor]] = {}
        for start in range(0, len(split.labels), 16):
            logits, features = split.logits[start : start + 16], split.features[start : start + 16]
            m, energy = _terms(main, logits, features)
            n, _ = _terms(novelty, logits, features)
            m, energy = (m - scale[0]) / scale[1], (energy - scale[2]) / scale[3]
            n = (n - n_scale[0]) / n_scale[1]
            pred = logits.argmax(1)
            for a in WEIGHTS:
                for name, raw in {
                    f"{a} n + m + 1.5 E": a * n + m + 1.5 * energy,
                    f"{a} n + 1.5 E": a * n + 1.5 * energy,
                    f"{a} n + m + 0.5 E": a * n + m + 0.5 * energy,
                }.items():
                    r = torch.sigmoid(raw)
                    options, stride = main.config.scoring, main.config.fitted.stride
                    _, ood, _ = postprocess_maps(r, r, r, pred=pred, config=options, stride=stride)
                    blends.setdefault(name, []).append(resize(ood, size).clamp_(0, 1))
        split.scores |= {f"FED-C ood, {k}": torch.cat(v) for k, v in blends.items()}
        rows, _ = evaluate_split(split, segmenter.num_classes)
        print(f"\n### {world}, {split.name} ({val_scenes} scenes, {steps} steps, seed {seed})\n")
        print("| score | OOD AP | OOD FPR95 |\n| --- | --: | --: |")
        ood_rows = [k for k in rows if k.startswith("FED-C ood") or not k.startswith("FED-")]
        for name in ood_rows:
            ap, fpr = (100 * rows[name]["ood"][metric] for _, metric, _ in QUALITY_BAR[:2])
            print(f"| {name} | {ap:.2f} | {fpr:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", choices=(*WORLDS, "all"), default="all")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--train-scenes", type=int, default=BenchConfig.train_scenes)
    parser.add_argument("--val-scenes", type=int, default=BenchConfig.val_scenes)
    parser.add_argument("--seed", type=int, default=0, help="of the scenes and the fits")
    args = parser.parse_args()
    for world in WORLDS if args.world == "all" else (args.world,):
        run_world(world, args.steps, args.train_scenes, args.val_scenes, args.seed)


if __name__ == "__main__":
    main()
