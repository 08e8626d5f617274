"""What the decoder features know that the logits do not, at logit and at image resolution.

Why FED-C stays within a point of FED-U (docs/benchmarks.md): small MLP probes (two
hidden layers of 64) trained on a world's benchmark fit data to tell misclassified from
correct pixels, from the six rich inputs alone or with the 32 pooled decoder-feature
channels that FED-C sees, then scored on the clean and the shifted validation splits.
Each probe is measured twice: against labels taken to logit resolution (nearest; one
label per logit pixel) and, as the benchmark scores, at image resolution (the probe's
map upsampled, errors of the upsampled argmax). A probe trained on void (ignore) against
known pixels gives the same two views of OOD. MSP, Entropy and SML are the references.

    python -m benchmarks.feature_probe --world street --train-scenes 100 --val-scenes 100
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.common import load_fit, study_config
from flowenedet.energy import ClassStats, flow_inputs
from flowenedet.evaluation import baselines
from flowenedet.evaluation.config import WORLDS, BenchConfig
from flowenedet.evaluation.metrics import average_precision
from flowenedet.evaluation.splits import SplitData, load_split, shifted_split
from flowenedet.flow import pixels, pool_feature_channels
from flowenedet.labels import IGNORE_INDEX, OOD_INDEX
from flowenedet.postprocess import resize, resize_labels, upsampled_argmax
from flowenedet.training import miss_targets

RICH = 6  # flow_inputs(kind="rich") channels
POOLED = 32  # FED-C's pooled feature channels


class Inputs:
    """Per-pixel probe inputs ``(B, 6 + 32, h, w)``: rich inputs and standardised pooled
    features, with statistics from the fit data."""

    def __init__(self, fit: SplitData, stats_items: int) -> None:
        stats = ClassStats(fit.logits.shape[1])
        low = fit.logits.shape[-2:]
        stats.update(fit.logits[:stats_items], resize_labels(fit.labels[:stats_items], low))
        self.mean, self.var = stats.finalize()
        pooled = pool_feature_channels(fit.features, POOLED)
        self.f_mean = pooled.mean((0, 2, 3), keepdim=True)
        self.f_std = pooled.std((0, 2, 3), keepdim=True) + 1e-6

    def __call__(self, split: SplitData) -> Tensor:
        rich = flow_inputs(split.logits, self.mean, self.var, "rich")
        pooled = pool_feature_channels(split.features, POOLED)
        return torch.cat([rich, (pooled - self.f_mean) / self.f_std], 1)


def train_probe(x: Tensor, target: Tensor, columns: int, steps: int = 2000) -> Callable:
    """A balanced binary MLP on pixel rows ``x`` ``(N, D)`` (first ``columns`` used) and
    soft targets ``(N,)`` in [0, 1]; returns ``maps (B, D, h, w) -> logits (B, h, w)``."""
    torch.manual_seed(0)
    x = x[:, :columns]
    mean, std = x.mean(0), x.std(0) + 1e-6
    net = nn.Sequential(
        nn.Linear(columns, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1)
    )
    optimizer = torch.optim.Adam(net.parameters(), 3e-3)
    rate = target.mean()
    for _ in range(steps):
        pick = torch.randint(len(x), (4096,))
        t = target[pick]
        out = net((x[pick] - mean) / std).squeeze(1)
        weight = t / rate + (1 - t) / (1 - rate)
        loss = F.binary_cross_entropy_with_logits(out, t, weight=weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def apply(maps: Tensor) -> Tensor:
        b, _, h, w = maps.shape
        return net((pixels(maps)[:, :columns] - mean) / std).view(b, h, w)

    return apply


def run_world(world: str, train_scenes: int, val_scenes: int, seed: int) -> None:
    cfg = study_config(world, train_scenes=train_scenes, val_scenes=val_scenes, seed=seed)
    segmenter, fit = load_fit(cfg)
    inputs = Inputs(fit, cfg.train_scenes)
    x = pixels(inputs(fit))
    valid, miss = miss_targets(fit.logits, fit.labels, IGNORE_INDEX)  # soft, as the flow's
    low_labels = resize_labels(fit.labels, fit.logits.shape[-2:]).flatten()
    known = valid.flatten()
    probes = {
        "miss, rich inputs": train_probe(x[known], miss.flatten()[known], RICH),
        "miss, rich + features": train_probe(x[known], miss.flatten()[known], RICH + POOLED),
    }
    void = (low_labels == IGNORE_INDEX) | known
    void_target = (low_labels == IGNORE_INDEX).float()[void]
    probes["void, rich + features"] = train_probe(x[void], void_target, RICH + POOLED)
    for corruption, severity in ((None, 0), shifted_split(cfg)):
        split = load_split(segmenter, "val", cfg.val_scenes, cfg, corruption, severity)
        maps = inputs(split)
        scores = {
            "MSP": baselines.msp(split.logits),
            "Entropy": baselines.entropy(split.logits),
            "SML": baselines.sml(split.logits, inputs.mean, inputs.var),
        } | {name: probe(maps) for name, probe in probes.items()}
        print(f"\n### {world}, {split.name} ({val_scenes} scenes, seed {seed})\n")
        columns = [f"{t} AP, {r} res." for t in ("IDM", "OOD") for r in ("logit", "image")]
        print("| score | " + " | ".join(columns) + " |")
        print("| --- | --: | --: | --: | --: |")
        views = [_view(split, image) for image in (False, True)]
        for name, score in scores.items():
            cells = [
                _ap(score, *view, task, segmenter.num_classes)
                for task in ("idm", "ood")
                for view in views
            ]
            print(f"| {name} | " + " | ".join(f"{100 * c:.2f}" for c in cells) + " |", flush=True)


def _view(split: SplitData, image_resolution: bool) -> tuple[Tensor, Tensor]:
    """``(labels, prediction)`` at logit resolution (nearest labels, the logits' argmax)
    or at image resolution (the labels, the upsampled argmax)."""
    if not image_resolution:
        return resize_labels(split.labels, split.logits.shape[-2:]), split.logits.argmax(1)
    size = tuple(split.labels.shape[-2:])
    pred = [upsampled_argmax(split.logits[i : i + 8], size) for i in range(0, len(split.labels), 8)]
    return split.labels, torch.cat(pred)


def _ap(score: Tensor, labels: Tensor, pred: Tensor, task: str, num_classes: int) -> float:
    """AP of ``score`` ``(B, h, w)``, resized to ``labels``' size, for ``task``."""
    score = resize(score, tuple(labels.shape[-2:]))
    known = labels < num_classes
    if task == "idm":
        return average_precision(score[known], (pred != labels)[known])
    counted = known | (labels == OOD_INDEX)
    return average_precision(score[counted], (labels == OOD_INDEX)[counted])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", choices=(*WORLDS, "all"), default="all")
    parser.add_argument("--train-scenes", type=int, default=BenchConfig.train_scenes)
    parser.add_argument("--val-scenes", type=int, default=BenchConfig.val_scenes)
    parser.add_argument("--seed", type=int, default=0, help="of the scenes")
    args = parser.parse_args()
    for world in WORLDS if args.world == "all" else (args.world,):
        run_world(world, args.train_scenes, args.val_scenes, args.seed)


if __name__ == "__main__":
    main()
