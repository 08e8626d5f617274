"""The embedded, offline benchmark: FlowEneDet against every baseline on the same pixels.

Pipeline: generate scenes (:mod:`flowenedet.data.embedded`), run the shipped reference
segmenter (:mod:`flowenedet.zoo`) once per split and keep its logits and decoder
features, fit FED-U and FED-C on the train split's outputs (``fit_logits``), score every
method on validation and test splits (clean and corrupted), and evaluate with
:class:`flowenedet.metrics.PixelEvaluator`. Thresholds for the honest open-mIoU are
calibrated on the validation split; the oracle one is tuned on the split itself.

``run_demo`` is the quick tour behind ``flowenedet demo``; ``run_bench`` the full run
behind ``flowenedet bench``. Needs the ``bench`` extra.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import baselines, io
from .detector import MAPS, FlowEneDet
from .hooks import SegmenterTap
from .metrics import PixelEvaluator, format_table

__all__ = [
    "BAR_SPLITS",
    "FULL_BENCH",
    "BenchConfig",
    "SplitData",
    "quality_bar",
    "report",
    "run_bench",
    "run_demo",
    "shifted_split",
]

logger = logging.getLogger(__name__)

# Chosen on the validation splits (docs/benchmarks.md). The reference segmenter's logits
# are 24x24: the reference release's sizes (boundary width 4, dilation 6, made for
# 256x512 maps) wipe out whole objects, and even width 1 or plain 3x3 smoothing lowers
# FlowEneDet's AP there. So no boundary suppression, idm and concurrent unsmoothed, and
# the ood map smoothed (5x5, sigma 1.5) with its peaks kept: small objects keep their
# score, and their weak pixels borrow from strong neighbours.
SMALL_MAP_POSTPROCESS = {
    "boundary_width": 0,
    "boundary_iterations": 1,
    "ood_dilation": 1,
    "smooth_kernel": 1,
    "ood_smooth_kernel": 5,
    "ood_smooth_sigma": 1.5,
    "ood_keep_peaks": True,
}
# SML's own post-processing, the smallest that still does something on 24x24 maps.
SML_POSTPROCESS = {"boundary_width": 1, "boundary_iterations": 1, "dilation": 1}
FEATURE_LAYER = "classifier:input"
CORRUPTIONS = (
    "snow",
    "fog",
    "frost",
    "motion_blur",
    "gaussian_noise",
    "brightness",
    "contrast",
    "jpeg_compression",
)
# Shifts the detectors are also fitted on (a corrupted copy of every training scene, each
# type at severities 1-4 in turn): imagecorruptions types that no test split uses, so the
# test shifts stay unseen. Chosen on validation (docs/benchmarks.md); glass_blur is left
# out only for its run time.
FIT_CORRUPTIONS = (
    "shot_noise",
    "impulse_noise",
    "speckle_noise",
    "defocus_blur",
    "zoom_blur",
    "gaussian_blur",
    "spatter",
    "saturate",
    "elastic_transform",
    "pixelate",
)


@dataclass
class BenchConfig:
    """Sizes of one benchmark run.

    ``shift``: the corruption types of the shifted validation and test splits
    (``val/shifted``, ``test/shifted``), Cityscapes-C style: each scene gets one type at
    one severity 1-4, every pair once in each run of ``4 * len(shift)`` scenes (empty: no
    shifted splits). ``corruptions``: further test splits of one ``(type, severity)`` each, the
    per-corruption breakdown. ``fit_corruptions``: the shifts of the detectors' extra
    training copies, which no test split may use.
    """

    train_scenes: int = 300
    val_scenes: int = 80
    test_scenes: int = 120
    steps: int = 400
    batch_size: int = 16
    pixels_per_image: int = 256
    seed: int = 0
    mc_samples: int = 4
    shift: Sequence[str] = CORRUPTIONS
    corruptions: Sequence[tuple[str, int]] = ()
    fit_corruptions: Sequence[str] = FIT_CORRUPTIONS
    progress: bool = True

    def __post_init__(self) -> None:
        tested = {name for name, _ in self.corruptions} | set(self.shift)
        tested &= set(self.fit_corruptions)
        if tested:
            raise ValueError(
                f"fit_corruptions {sorted(tested)} are also test corruptions: the detectors "
                "would be fitted on the very shift they are tested on"
            )


FULL_BENCH = BenchConfig(
    train_scenes=1000,
    val_scenes=200,
    test_scenes=300,
    steps=800,
    corruptions=tuple((c, s) for c in CORRUPTIONS for s in (1, 2, 3, 4)),
)
"""What :func:`run_bench` (``flowenedet bench``) runs: the shifted splits, and every
corruption at severities 1-4 as a split of its own."""


@dataclass
class SplitData:
    """One split with the segmenter's outputs.

    ``images`` uint8 ``(N, 3, S, S)``, ``labels`` ``(N, S, S)``, ``logits`` ``(N, K, h, w)``,
    ``features`` ``(N, F, h, w)`` (the classifier's input).
    """

    name: str
    images: Tensor
    labels: Tensor
    logits: Tensor
    features: Tensor
    scores: dict[str, Tensor] = field(default_factory=dict)
    pred: Tensor | None = None


def load_split(
    segmenter: nn.Module, split: str, num: int, cfg: BenchConfig, corruption=None, severity=0
) -> SplitData:
    """Generate a split and run the segmenter over it once, in batches.

    ``corruption`` and ``severity`` as for :func:`flowenedet.data.embedded.make_scenes`.
    """
    from .data.embedded import make_scenes

    scenes = make_scenes(split, num, seed=cfg.seed, corruption=corruption, severity=severity)
    if corruption is None:
        name = split
    elif isinstance(corruption, str) and isinstance(severity, int):
        name = f"{split}/{corruption}-{severity}"
    else:
        name = f"{split}/shifted"
    tap = SegmenterTap(segmenter, FEATURE_LAYER)
    logits, features = [], []
    for start in tqdm(
        range(0, num, cfg.batch_size), desc=f"segmenting {name}", disable=not cfg.progress
    ):
        batch = scenes.images[start : start + cfg.batch_size].float() / 255
        out, feats = tap(batch)
        logits.append(out)
        features.append(feats)
    return SplitData(name, scenes.images, scenes.labels, torch.cat(logits), torch.cat(features))


def load_fit_split(segmenter: nn.Module, cfg: BenchConfig) -> SplitData:
    """The training scenes, followed by a copy shifted by ``cfg.fit_corruptions`` (if any)."""
    from .data.embedded import MAX_SEVERITY

    train = load_split(segmenter, "train", cfg.train_scenes, cfg)
    if not cfg.fit_corruptions:
        return train
    levels = tuple(range(1, MAX_SEVERITY + 1))
    shifted = load_split(segmenter, "train", cfg.train_scenes, cfg, cfg.fit_corruptions, levels)
    parts = ("images", "labels", "logits", "features")
    return SplitData(
        "train+shifted", *(torch.cat([getattr(train, p), getattr(shifted, p)]) for p in parts)
    )


def fit_detectors(
    segmenter: nn.Module, train: SplitData, cfg: BenchConfig
) -> dict[str, FlowEneDet]:
    """FED-U and FED-C fitted on ``train``'s logits (and features), from
    :func:`load_fit_split`: class statistics from its first ``cfg.train_scenes`` (clean)
    scenes, which the SML baselines share; the flows train on all of it."""
    detectors = {}
    for variant in "UC":
        logger.info("fitting FED-%s", variant)
        detectors[f"FED-{variant}"] = FlowEneDet(
            segmenter,
            variant=variant,
            feature_layer=FEATURE_LAYER,
            seed=cfg.seed,
            **SMALL_MAP_POSTPROCESS,
        ).fit_logits(
            train.logits,
            train.labels,
            train.features if variant == "C" else None,
            batch_size=cfg.batch_size,
            stats_items=cfg.train_scenes,
            steps=cfg.steps,
            pixels_per_image=cfg.pixels_per_image,
            progress=cfg.progress,
        )
    return detectors


def make_baselines(segmenter: nn.Module, detector: FlowEneDet, cfg: BenchConfig) -> dict:
    """Every baseline, SML with the detector's class statistics."""
    stats = {"mean": detector.stats.mean, "var": detector.stats.var}
    return {
        "MSP": baselines.MSP(segmenter),
        "MaxLogit": baselines.MaxLogit(segmenter),
        "Energy": baselines.Energy(segmenter),
        "Entropy": baselines.Entropy(segmenter),
        "SML": baselines.SML(segmenter, **stats, postprocess=False),
        "SML+post": baselines.SML(segmenter, **stats, postprocess=True, **SML_POSTPROCESS),
        "MC dropout": baselines.MCDropout(segmenter, samples=cfg.mc_samples),
    }


@torch.no_grad()
def score_split(
    split: SplitData, detectors: dict[str, FlowEneDet], methods: dict, cfg: BenchConfig
) -> None:
    """Fill ``split.scores`` (each ``(N, S, S)``) and ``split.pred``."""
    size = tuple(split.labels.shape[-2:])
    out: dict[str, list[Tensor]] = {}
    preds = []
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)  # MC dropout masks
    for start in tqdm(
        range(0, len(split.labels), cfg.batch_size),
        desc=f"scoring {split.name}",
        disable=not cfg.progress,
    ):
        chunk = slice(start, start + cfg.batch_size)
        logits, features = split.logits[chunk], split.features[chunk]
        for name, det in detectors.items():
            maps = det.score_logits(logits, features, size=size)
            for kind in MAPS:
                out.setdefault(f"{name} {kind}", []).append(getattr(maps, kind))
        preds.append(maps.pred)
        for name, method in methods.items():
            if isinstance(method, baselines.MCDropout):
                value = method.score(split.images[chunk].float() / 255)
            else:
                value = method.score_logits(logits, size=size)
            out.setdefault(name, []).append(value)
    torch.random.set_rng_state(generator_state)
    split.scores = {name: torch.cat(parts) for name, parts in out.items()}
    split.pred = torch.cat(preds)


def evaluate_split(
    split: SplitData, num_classes: int, thresholds: dict[str, float] | None = None
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Metrics of every method on ``split``; returns ``(rows, oracle thresholds)``.

    ``thresholds`` (calibrated on validation) give the honest open-mIoU.
    """
    rows, oracle = {}, {}
    for name, scores in split.scores.items():
        evaluator = PixelEvaluator(num_classes)
        evaluator.update(scores, split.labels, split.pred)
        row: dict[str, Any] = dict(evaluator.compute())
        row["miou"] = evaluator.miou()
        oracle[name] = evaluator.threshold("cdd")
        row["open_miou_oracle"] = evaluator.open_miou(oracle[name])
        if thresholds is not None:
            row["open_miou"] = evaluator.open_miou(thresholds[name])
        rows[name] = row
    return rows, oracle


def _run(cfg: BenchConfig, out_dir: Path, *, figures: bool) -> dict[str, Any]:
    from .zoo import load_reference_segmenter

    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    segmenter = load_reference_segmenter()
    num_classes = segmenter.num_classes
    detectors = fit_detectors(segmenter, load_fit_split(segmenter, cfg), cfg)
    methods = make_baselines(segmenter, detectors["FED-C"], cfg)
    results: dict[str, Any] = {"config": _jsonable(cfg), "splits": {}}
    thresholds = None  # calibrated on the clean validation split, used for every test split
    for split_name, corruption, severity in _splits(cfg):
        num = cfg.val_scenes if split_name == "val" else cfg.test_scenes
        split = load_split(segmenter, split_name, num, cfg, corruption, severity)
        score_split(split, detectors, methods, cfg)
        rows, oracle = evaluate_split(split, num_classes, thresholds)
        if thresholds is None:
            thresholds = oracle
        results["splits"][split.name] = rows
        if figures and split.name == "test":
            from .plots import save_curves, save_panels

            save_panels(split, out_dir / "scenes.png", detector="FED-C")
            save_curves(split, num_classes, out_dir / "curves.png")
    for name, det in detectors.items():
        det.save(out_dir / f"{name.lower()}.safetensors")
    results["seconds"] = time.perf_counter() - started
    return results


def shifted_split(cfg: BenchConfig) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
    """``(corruptions, severities)`` of the shifted splits, as ``make_scenes`` takes them
    (every ``cfg.shift`` type at every severity 1-4); None when ``cfg.shift`` is empty."""
    from .data.embedded import MAX_SEVERITY

    return (tuple(cfg.shift), tuple(range(1, MAX_SEVERITY + 1))) if cfg.shift else None


def _splits(cfg: BenchConfig) -> list[tuple[str, Any, Any]]:
    """``(split, corruption, severity)`` of every evaluated split, clean validation first."""
    shifted = shifted_split(cfg)
    splits: list[tuple[str, Any, Any]] = []
    for split in ("val", "test"):
        splits.append((split, None, 0))
        if shifted:
            splits.append((split, *shifted))
    return splits + [("test", c, s) for c, s in cfg.corruptions]


def tables(results: dict[str, Any]) -> str:
    """One Markdown table per split."""
    extras = ("miou", "open_miou", "open_miou_oracle")
    parts = []
    for split, rows in results["splits"].items():
        parts.append(f"### {split}\n\n{format_table(rows, extras=extras)}\n")
    return "\n".join(parts)


QUALITY_BAR = (
    ("ood", "ap", "ood"),
    ("ood", "fpr95", "ood"),
    ("idm", "ap", "idm"),
    ("cdd", "ap", "concurrent"),
)
"""The issue's quality bar as ``(task, metric, FlowEneDet map)``: each task is scored with
the map made for it."""


def best_baseline(rows: dict[str, dict[str, Any]], task: str, metric: str) -> str:
    """Name of the baseline (every row not named ``FED-...``) with the best ``metric`` on
    ``task``; FPR95 is better when lower, the other metrics when higher."""
    sign = -1 if metric == "fpr95" else 1
    names = [name for name in rows if not name.startswith("FED-")]
    return max(names, key=lambda name: sign * rows[name][task][metric])


BAR_SPLITS = ("test", "test/shifted")
"""The splits the issue's quality bar is judged on: clean and shifted test scenes."""


def quality_bar(
    results: dict[str, Any], splits: Sequence[str] | None = None, detector: str = "FED-C"
) -> str:
    """Markdown table: on each of ``splits`` (default: the :data:`BAR_SPLITS` in
    ``results``), ``detector`` against the best baseline on each metric of
    :data:`QUALITY_BAR`, and whether it beats them all (FPR95: lower is better)."""
    header = ["Split"]
    header += [
        f"{task.upper()} {metric.upper()} ({detector} {fed_map})"
        for task, metric, fed_map in QUALITY_BAR
    ]
    header.append("Beats every baseline")
    lines = [header, ["---"] + ["--:"] * (len(header) - 2) + [":-:"]]
    met = 0
    if splits is None:
        splits = [name for name in BAR_SPLITS if name in results["splits"]]
    for split in splits:
        rows = results["splits"][split]
        cells, wins = [split], []
        for task, metric, fed_map in QUALITY_BAR:
            sign = -1 if metric == "fpr95" else 1
            ours = rows[f"{detector} {fed_map}"][task][metric]
            best = best_baseline(rows, task, metric)
            theirs = rows[best][task][metric]
            wins.append(sign * ours > sign * theirs)
            cells.append(f"{100 * ours:.2f} vs {100 * theirs:.2f} {best}")
        missed = [
            f"{task.upper()} {metric.upper()}"
            for (task, metric, _), won in zip(QUALITY_BAR, wins, strict=True)
            if not won
        ]
        met += not missed
        cells.append("no: " + ", ".join(missed) if missed else "yes")
        lines.append(cells)
    table = "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in lines)
    return f"{table}\n\n{detector} beats every baseline on {met} of {len(splits)} splits."


def report(results: dict[str, Any]) -> str:
    """The quality bar on the bar splits, on the validation splits, and (where the run
    has them) on each single-corruption test split, as Markdown sections."""
    names = list(results["splits"])
    sections = [
        ("Quality bar: clean and shifted test splits", None),
        ("The same on the validation splits", [n for n in names if n.startswith("val")]),
        (
            "Per corruption and severity",
            [n for n in names if n.startswith("test/") and n not in BAR_SPLITS],
        ),
    ]
    return "\n\n".join(
        f"### {title}\n\n{quality_bar(results, splits)}"
        for title, splits in sections
        if splits is None or splits
    )


def run_demo(out_dir: str | Path = "flowenedet-demo", cfg: BenchConfig | None = None) -> dict:
    """The quick tour: fit FED-U/FED-C, score clean and shifted scenes, print the table,
    write ``scenes.png``, ``curves.png``, ``results.json`` and the detectors to ``out_dir``."""
    cfg = cfg or BenchConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = _run(cfg, out_dir, figures=True)
    _write_json(out_dir / "results.json", results)
    return results


def run_bench(out_dir: str | Path = "flowenedet-bench", cfg: BenchConfig | None = None) -> dict:
    """The full benchmark: every corruption at severities 1-4; ``results.json`` and
    ``results.md`` in ``out_dir``."""
    cfg = cfg or FULL_BENCH
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = _run(cfg, out_dir, figures=True)
    _write_json(out_dir / "results.json", results)
    text = (
        "# flowenedet embedded benchmark\n\n## Quality bar\n\n"
        f"{report(results)}\n\n## Every method on every split\n\n{tables(results)}"
    )
    io.atomic_write(out_dir / "results.md", lambda tmp: tmp.write_text(text))
    return results


def _jsonable(cfg: BenchConfig) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()}


def _write_json(path: Path, results: dict[str, Any]) -> None:
    text = json.dumps(results, indent=2, default=float)
    io.atomic_write(path, lambda tmp: tmp.write_text(text))
