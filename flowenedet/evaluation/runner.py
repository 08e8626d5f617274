"""The embedded, offline benchmark: FlowEneDet against every baseline on the same pixels.

Pipeline: generate scenes of ``cfg.world`` (:mod:`flowenedet.evaluation.worlds`), run the
world's shipped reference segmenter, or ``cfg.segmenter`` (:mod:`flowenedet.zoo`), once per
split and keep its logits and decoder features, fit FED-U and FED-C as a user fits them
(``fit(loader)`` on the clean training scenes, :func:`fit_detectors`), score every method
on validation and test splits (clean and corrupted), and evaluate with
:class:`flowenedet.evaluation.metrics.PixelEvaluator`. Thresholds for the honest open-mIoU are
calibrated on the validation split; the oracle one is tuned on the split itself.

``run_demo`` is the quick tour behind ``flowenedet demo``; ``run_bench`` the full run
behind ``flowenedet bench``. Needs the ``bench`` extra.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .. import io
from ..calibration import calibrate_maps
from ..detector import MAPS, FlowEneDet, Scores
from ..postprocess import upsampled_argmax
from ..progress import progress_bar
from . import baselines
from .components import OBSTACLE_TRACK, ComponentEvaluator
from .config import FULL_BENCH, BenchConfig
from .metrics import PixelEvaluator
from .report import report, tables
from .splits import SplitData, load_split, shifted_split
from .worlds import world_module

__all__ = [
    "COMPONENT_SIZES",
    "calibrate_detectors",
    "evaluate_split",
    "fit_detectors",
    "make_baselines",
    "run_bench",
    "run_demo",
    "score_split",
]

logger = logging.getLogger(__name__)

COMPONENT_SIZES = OBSTACLE_TRACK
"""Size filters of the component columns: SegmentMeIfYouCan's obstacle track (50 / 10 px),
unscaled. The worlds' OOD objects are obstacle-sized (median 165 px in the digits world's
test scenes, 74 px in the street world's); the 10 px filter voids fragments of 1-9 px (17 %
and 20 % of the components), smaller than one logit cell; one set of filters serves both
worlds. The anomaly track's filters scaled to a 96 x 96 scene by area would be 2 / 0 px."""


def fit_detectors(segmenter: nn.Module, cfg: BenchConfig) -> dict[str, FlowEneDet]:
    """FED-U and FED-C fitted as a user fits them: ``FlowEneDet(segmenter, variant=v)
    .fit(loader)`` on a ``DataLoader`` of the world's ``cfg.train_scenes`` clean training
    scenes, the library's defaults throughout (``cfg.steps``, if set, is the only
    change); the SML baselines share FED-C's class statistics."""
    scenes = world_module(cfg.world).make_scenes("train", cfg.train_scenes, seed=cfg.seed)
    loader = DataLoader(scenes, batch_size=cfg.batch_size)
    steps = {} if cfg.steps is None else {"steps": cfg.steps}
    detectors = {}
    for variant in "UC":
        logger.info("fitting FED-%s", variant)
        det = FlowEneDet(segmenter, variant=variant, seed=cfg.seed)
        detectors[f"FED-{variant}"] = det.fit(loader, progress=cfg.progress, **steps)
    return detectors


def make_baselines(segmenter: nn.Module, detector: FlowEneDet, cfg: BenchConfig) -> dict:
    """Every baseline, SML with the detector's class statistics; SML+post with the
    reference's sizes converted to the segmenter's logit stride (:func:`baselines.sml_pair`)."""
    sml = baselines.sml_pair(segmenter, detector.stats.mean, detector.stats.var, _stride(segmenter))
    return {
        "MSP": baselines.MSP(segmenter),
        "MaxLogit": baselines.MaxLogit(segmenter),
        "Energy": baselines.Energy(segmenter),
        "Entropy": baselines.Entropy(segmenter),
        **sml,
        "MC dropout": baselines.MCDropout(segmenter, samples=cfg.mc_samples),
    }


@torch.no_grad()
def score_split(
    split: SplitData, detectors: dict[str, FlowEneDet], methods: dict, cfg: BenchConfig
) -> None:
    """Fill ``split.scores`` (each ``(N, S, S)``) and ``split.pred`` (the segmenter's):
    every map of each detector (``"FED-C ood"``, ...) and each baseline's one map, all
    through the same interface (:meth:`score_logits` on the split's logits, or
    :meth:`score` on its images for a method that ``needs_images``)."""
    size = tuple(split.labels.shape[-2:])
    out: dict[str, list[Tensor]] = {}
    preds = []
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)  # MC dropout masks
    rows = {name: [(f"{name} {kind}", kind) for kind in MAPS] for name in detectors}
    rows |= {name: [(name, "ood")] for name in methods}  # a baseline's map is all three
    for start in progress_bar(
        range(0, len(split.labels), cfg.batch_size),
        desc=f"scoring {split.name}",
        unit="batches",
        progress=cfg.progress,
    ):
        chunk = slice(start, start + cfg.batch_size)
        logits, features = split.logits[chunk], split.features[chunk]
        for name, method in {**detectors, **methods}.items():
            if method.needs_images:
                maps = method.score(split.images[chunk].float() / 255)
            else:
                maps = method.score_logits(logits, features, size=size)
            for row, kind in rows[name]:
                out.setdefault(row, []).append(getattr(maps, kind))
        preds.append(upsampled_argmax(logits, size))
    torch.random.set_rng_state(generator_state)
    split.scores = {name: torch.cat(parts) for name, parts in out.items()}
    split.pred = torch.cat(preds)


def calibrate_detectors(detectors: dict[str, FlowEneDet], split: SplitData) -> None:
    """Store in each detector the F1-optimal reject threshold of each of its maps on
    ``split`` (the clean validation split, never a test split), as
    :meth:`FlowEneDet.calibrate` would from its scores in ``split.scores``."""
    for name, detector in detectors.items():
        maps = (split.scores[f"{name} {kind}"] for kind in MAPS)
        scores = Scores(*maps, pred=split.pred)
        detector.calibration = calibrate_maps(
            [(scores, split.labels)], detector.config.fitted.num_classes
        )


def evaluate_split(
    split: SplitData,
    num_classes: int,
    thresholds: dict[str, float] | None = None,
    evaluators: dict[str, PixelEvaluator] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Metrics of every method on ``split``; returns ``(rows, oracle thresholds)``.

    ``thresholds`` (calibrated on validation) give the honest open-mIoU; ``evaluators``, a
    dict, receives each method's filled :class:`PixelEvaluator` (for the curves). Rows of
    OOD scores (the baselines and the FED ``ood`` maps) get ``"components"``: the
    SegmentMeIfYouCan component metrics (:data:`COMPONENT_SIZES`) at the row's F1-optimal
    OOD threshold.
    """
    rows, oracle = {}, {}
    for name, scores in split.scores.items():
        evaluator = PixelEvaluator(num_classes)
        evaluator.update(scores, split.labels, split.pred)
        if evaluators is not None:
            evaluators[name] = evaluator
        row: dict[str, Any] = dict(evaluator.compute())
        row["miou"] = evaluator.miou()
        oracle[name] = evaluator.threshold("cdd")
        row["open_miou_oracle"] = evaluator.open_miou(oracle[name])
        if thresholds is not None:
            row["open_miou"] = evaluator.open_miou(thresholds[name])
        if name.endswith(" ood") or not name.startswith("FED-"):
            row["components"] = _components(evaluator, scores, split.labels)
        rows[name] = row
    return rows, oracle


def _components(evaluator: PixelEvaluator, scores: Tensor, labels: Tensor) -> dict | None:
    """Component metrics of ``scores`` at the F1-optimal OOD threshold of ``evaluator``
    (``None`` without OOD pixels)."""
    try:
        threshold = evaluator.threshold("ood")
    except ValueError:
        return None
    components = ComponentEvaluator(threshold, COMPONENT_SIZES)
    components.update(scores, labels)
    return components.compute()


def _stride(segmenter: nn.Module) -> int:
    """The segmenter's output stride: its ``stride`` attribute, else 1 (logits at full size)."""
    return int(getattr(segmenter, "stride", 1))


def _run(cfg: BenchConfig, out_dir: Path, *, figures: bool) -> dict[str, Any]:
    from ..zoo import load_reference_segmenter, reference_name

    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    segmenter = load_reference_segmenter(world=cfg.world, name=cfg.segmenter)
    num_classes = segmenter.num_classes
    detectors = fit_detectors(segmenter, cfg)
    methods = make_baselines(segmenter, detectors["FED-C"], cfg)
    results: dict[str, Any] = {
        "config": _jsonable(cfg),
        "world": cfg.world,
        "segmenter": reference_name(cfg.world, cfg.segmenter),
        "splits": {},
    }
    thresholds = None  # calibrated on the clean validation split, used for every test split
    for split_name, corruption, severity in _splits(cfg):
        num = cfg.val_scenes if split_name == "val" else cfg.test_scenes
        split = load_split(segmenter, split_name, num, cfg, corruption, severity)
        score_split(split, detectors, methods, cfg)
        evaluators: dict[str, PixelEvaluator] = {}
        rows, oracle = evaluate_split(split, num_classes, thresholds, evaluators)
        if thresholds is None:
            thresholds = oracle
            calibrate_detectors(detectors, split)  # the saved files score with --masks
        results["splits"][split.name] = rows
        if figures and split.name == "test":
            from .plots import save_curves, save_panels

            calibration = detectors["FED-C"].calibration
            thresholds_c = dict(calibration.thresholds) if calibration else None
            save_panels(split, out_dir / "scenes.png", detector="FED-C", thresholds=thresholds_c)
            save_curves(split, num_classes, out_dir / "curves.png", evaluators=evaluators)
            save_curves(
                split, num_classes, out_dir / "curves-idm.png", "idm", evaluators=evaluators
            )
        del evaluators
    for name, det in detectors.items():
        det.save(out_dir / f"{name.lower()}.safetensors")
    results["seconds"] = time.perf_counter() - started
    return results


def _splits(cfg: BenchConfig) -> list[tuple[str, Any, Any]]:
    """``(split, corruption, severity)`` of every evaluated split, clean validation first."""
    shifted = shifted_split(cfg)
    splits: list[tuple[str, Any, Any]] = []
    for split in ("val", "test"):
        splits.append((split, None, 0))
        if shifted:
            splits.append((split, *shifted))
    return splits + [("test", c, s) for c, s in cfg.corruptions]


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
