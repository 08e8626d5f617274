"""What the validation studies in ``benchmarks/`` share: their sizes, FED-C fitted as a
user fits it, scoring from images, and the quality-bar table they print."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from flowenedet import FlowEneDet
from flowenedet.config import DEFAULT_STEPS
from flowenedet.detector import MAPS
from flowenedet.evaluation.config import BenchConfig
from flowenedet.evaluation.report import QUALITY_BAR, best_baseline
from flowenedet.evaluation.runner import evaluate_split, score_split
from flowenedet.evaluation.splits import SplitData, load_split, shifted_split
from flowenedet.evaluation.worlds import world_module
from flowenedet.zoo import load_reference_segmenter

STREET = {"batch_size": 4, "mc_samples": 2}
"""The street world's batch and MC dropout samples in the studies (the street demo
preset's), for memory and time."""


def study_config(world: str, **sizes: Any) -> BenchConfig:
    """A study's :class:`BenchConfig`: ``sizes`` (scenes, ``seed``, ``steps``) on ``world``,
    ``steps`` by default the detector's budget, no progress bars."""
    extra = STREET if world == "street" else {}
    return BenchConfig(world=world, progress=False, **{"steps": DEFAULT_STEPS, **extra, **sizes})


def training_loader(cfg: BenchConfig) -> DataLoader:
    """What a user fits on: a ``DataLoader`` of ``cfg.train_scenes`` clean training scenes
    of ``cfg.world``, batches of ``cfg.batch_size``."""
    scenes = world_module(cfg.world).make_scenes("train", cfg.train_scenes, seed=cfg.seed)
    return DataLoader(scenes, batch_size=cfg.batch_size)


def load_fit(cfg: BenchConfig) -> tuple[nn.Module, DataLoader]:
    """The world's reference segmenter and :func:`training_loader` for ``cfg``."""
    torch.manual_seed(cfg.seed)
    return load_reference_segmenter(world=cfg.world), training_loader(cfg)


def _schedule(steps: int, kind: str) -> dict[str, Any]:
    """``"default"``: the library's; ``"paper"``: the release's shape scaled to ``steps``
    (8 % warm-up, x0.1 every 30 % of the steps, weight decay 0.01)."""
    if kind == "default":
        return {}
    return {
        "warmup_steps": round(0.08 * steps),
        "decay_every": round(0.3 * steps),
        "weight_decay": 0.01,
    }


def fit_fed_c(
    segmenter: nn.Module,
    loader: DataLoader,
    cfg: BenchConfig,
    settings: dict[str, Any] | None = None,
    *,
    schedule: str = "default",
) -> FlowEneDet:
    """FED-C with ``settings`` fitted as a user fits it on ``loader``, for ``cfg.steps``;
    prints the fit time."""
    started = time.perf_counter()
    det = FlowEneDet(segmenter, variant="C", seed=cfg.seed, **(settings or {}))
    det.fit(loader, steps=cfg.steps, progress=False, **_schedule(cfg.steps, schedule))
    print(f"  fitted in {time.perf_counter() - started:.0f} s", flush=True)
    return det


def rescored(det: FlowEneDet, change: dict[str, Any]) -> FlowEneDet:
    """The same fitted detector scored with other score-time settings."""
    return det.with_options(**change)


@torch.no_grad()
def score_with_images(
    split: SplitData,
    det: FlowEneDet,
    name: str,
    cfg: BenchConfig,
    scales: tuple[float, ...] | None = None,
) -> torch.Tensor:
    """``det.score`` on the split's images at ``scales`` (default: the detector's own;
    test-time augmentation needs the images): adds its maps to ``split.scores`` as
    ``"<name> <map>"`` and returns its predictions ``(N, H, W)``."""
    parts: dict[str, list] = {}
    for start in range(0, len(split.labels), cfg.batch_size):
        images = split.images[start : start + cfg.batch_size].float() / 255
        maps = det.score(images, scales=scales)
        for kind in (*MAPS, "pred"):
            parts.setdefault(kind, []).append(getattr(maps, kind))
    split.scores |= {f"{name} {kind}": torch.cat(parts[kind]) for kind in MAPS}
    return torch.cat(parts["pred"])


def print_table(title: str, detectors, baselines, rows) -> None:
    """The quality bar's columns for each of ``detectors`` (row names in ``rows``), then
    the best of ``baselines`` per column."""
    print(f"\n### {title}\n")
    titles = [f"{t.upper()} {metric.upper()} ({m})" for t, metric, m in QUALITY_BAR]
    print("| FED-C | " + " | ".join(titles) + " |")
    print("| --- |" + " --: |" * len(QUALITY_BAR))
    for name in detectors:
        cells = [f"{100 * rows[f'{name} {m}'][t][metric]:.2f}" for t, metric, m in QUALITY_BAR]
        print(f"| {name} | " + " | ".join(cells) + " |")
    best, baseline_rows = [], {name: rows[name] for name in baselines}
    for task, metric, _ in QUALITY_BAR:
        winner = best_baseline(baseline_rows, task, metric)
        best.append(f"{100 * rows[winner][task][metric]:.2f} {winner}")
    print("| best baseline | " + " | ".join(best) + " |", flush=True)


def print_validation_tables(
    segmenter: nn.Module, detectors, methods, cfg: BenchConfig, label: str
) -> None:
    """Score ``detectors`` and the baselines ``methods`` on ``cfg``'s clean and shifted
    validation splits and print each split's table, titled ``"<world>, <split>, <label>"``."""
    for corruption, severity in ((None, 0), shifted_split(cfg)):
        split = load_split(segmenter, "val", cfg.val_scenes, cfg, corruption, severity)
        score_split(split, detectors, methods, cfg)
        rows, _ = evaluate_split(split, segmenter.num_classes)
        print_table(f"{cfg.world}, {split.name}, {label}", detectors, methods, rows)
