"""``flowenedet evaluate``: the metric table of FlowEneDet and the baselines on labelled data."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import io
from ..detector import MAPS
from ..evaluation import metrics
from ..evaluation.baselines import BASELINES, make_baseline, sml_pair
from ..evaluation.metrics import PixelEvaluator, format_table
from ..evaluation.protocols import PROTOCOLS
from ..progress import progress_bar
from ..scoring import test_time_scales
from .dataset import build_dataset, make_loader
from .errors import CLIError, require_file, require_output_file
from .options import DATA_OPTIONS, DETECTOR_OPTIONS, MODEL_OPTIONS, Command, Option, positive_int
from .protocol import check_protocol_args, run_protocol
from .segmenter import load_detector, load_segmenter, select_device

__all__ = ["BASELINE_ROWS", "DEFAULT_BASELINES", "cmd_evaluate"]

DEFAULT_BASELINES = ("msp", "maxlogit", "energy", "entropy", "sml")
BASELINE_ROWS = {
    "msp": "MSP",
    "maxlogit": "MaxLogit",
    "energy": "Energy",
    "entropy": "Entropy",
    "sml": "SML",
    "mcdropout": "MC dropout",
}


def _evaluator(name: str, k: int, bins: int | None) -> PixelEvaluator:
    """Histogram mode for bounded scores when ``--histogram-bins`` is given, else exact."""
    bounded = {f"FED {kind}": 1.0 for kind in MAPS} | {"MSP": 1.0, "Entropy": math.log(k)}
    if bins and name in bounded:
        return PixelEvaluator(k, score_range=(0.0, bounded[name]), bins=bins)
    return PixelEvaluator(k)


def _summary(ev: PixelEvaluator, calibrated: float | None, has_classes: bool) -> dict[str, Any]:
    row: dict[str, Any] = dict(ev.compute())
    try:
        tau = ev.threshold("cdd")
    except ValueError:
        tau = None
    row["threshold"] = tau
    if has_classes and tau is not None:
        row["open_miou_oracle"] = ev.open_miou(tau)
        if calibrated is not None:
            row["open_miou"] = ev.open_miou(calibrated)
    return row


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _calibrated_thresholds(path: str | None) -> dict[str, float]:
    if path is None:
        return {}
    require_file(path, "--thresholds-from")
    try:
        methods = json.loads(Path(path).read_text())["methods"]
        found = {k: v["threshold"] for k, v in methods.items() if v.get("threshold") is not None}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as error:
        raise CLIError(
            f"--thresholds-from {path} is not a JSON written by evaluate: {error}"
        ) from None
    for name, value in found.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise CLIError(
                f"--thresholds-from {path}: the threshold of {name} is {value!r}, not a number"
            )
    return found


class _Once(logging.Filter):
    """Lets each distinct message through once."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


@contextlib.contextmanager
def _each_warning_once(log: logging.Logger) -> Iterator[None]:
    """While inside, ``log`` emits each distinct message once: every method's evaluator
    finds the same task without positives (no OOD pixels in Cityscapes), one warning says so."""
    once = _Once()
    log.addFilter(once)
    try:
        yield
    finally:
        log.removeFilter(once)


def _split_used(dataset: Any) -> str:
    """The split ``dataset`` was read from (the dataset's default when ``--split`` was not
    given); ``all`` for a folder without splits."""
    return getattr(dataset, "split", None) or "all"


def _batches(
    args: argparse.Namespace,
    dataset: Any,
    detector: Any,
    baselines: dict[str, Any],
    device: Any,
    desc: str = "evaluating",
) -> Iterator[tuple[dict[str, Any], Any, Any]]:
    """``(scores by row name, labels, pred)`` per batch: the FED maps (``FED idm`` ...) and
    every baseline on the same images, at the detector's scales unless ``--scales``."""
    scales = test_time_scales(detector.config.scoring, args.scales)  # the detector's own
    for images, labels in progress_bar(
        make_loader(dataset, args), desc=desc, unit="batches", progress=args.progress
    ):
        images = images.to(device)
        logits, features = detector.segment(images)
        size = tuple(images.shape[-2:])
        if scales == (1.0,):
            maps = detector.score_logits(logits, features, size=size)
        else:
            maps = detector.score(images, scales=scales)
        scores = {f"FED {kind}": getattr(maps, kind) for kind in MAPS}
        for name, baseline in baselines.items():
            if baseline.needs_images:
                scores[name] = baseline.score(images).ood
            else:
                scores[name] = baseline.score_logits(logits, features, size).ood
        yield scores, labels, maps.pred.cpu()


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Print the metric table (FlowEneDet and baselines) for a labelled dataset."""
    require_file(args.detector, "--detector")
    require_output_file(args.json, "--json")
    check_protocol_args(args)
    calibrated = _calibrated_thresholds(args.thresholds_from)
    device = select_device(args.device)
    split = args.split or ("test" if args.dataset == "embedded" else None)
    dataset = build_dataset(args, split)
    segmenter = load_segmenter(args, device)
    detector = load_detector(args, segmenter)
    if not calibrated and detector.calibration is not None:  # the thresholds stored with it
        calibrated = {f"FED {m}": t for m, t in detector.calibration.thresholds.items()}
    k = detector.config.fitted.num_classes
    baselines = {}
    for key in args.baselines:
        if key != "sml":
            baselines[BASELINE_ROWS[key]] = make_baseline(key, segmenter)
            continue
        # as the embedded benchmark, at the stride the detector measured at fit
        stride = detector.config.fitted.stride or 1.0
        baselines |= sml_pair(segmenter, detector.stats.mean, detector.stats.var, stride)
    scales = test_time_scales(detector.config.scoring, args.scales)  # the detector's own
    if args.protocol:
        batches = functools.partial(_batches, args, dataset, detector, baselines, device)
        head, fields, rows = run_protocol(args, batches, k)
        _write_json(args, dataset, k, scales, rows, head, fields)
        return 0
    names = [*(f"FED {kind}" for kind in MAPS), *baselines]
    evaluators = {name: _evaluator(name, k, args.histogram_bins) for name in names}
    for scores, labels, pred in _batches(args, dataset, detector, baselines, device):
        for name, ev in evaluators.items():
            ev.update(scores[name].float().cpu(), labels, pred)
    try:
        miou = evaluators["FED idm"].miou()
    except ValueError:  # anomaly-only labels: no class pixels
        miou = None
    with _each_warning_once(logging.getLogger(metrics.__name__)):  # not once per method
        rows = {
            n: _summary(ev, calibrated.get(n), miou is not None) for n, ev in evaluators.items()
        }
    extras = ["open_miou_oracle", *(["open_miou"] if calibrated else [])]
    print(format_table(rows, extras=extras if miou is not None else []))
    print(f"\nsegmenter mIoU: {'-' if miou is None else f'{100 * miou:.2f}'} ({k} classes)")
    print("F1-optimal CDD threshold (score > t is rejected):")
    for name, row in rows.items():
        print(f"  {name}: {'-' if row['threshold'] is None else format(row['threshold'], '.6g')}")
        row["threshold"] = _finite(row["threshold"])  # strict JSON: -inf (reject all) -> null
    _write_json(args, dataset, k, scales, rows, {}, {"miou": miou})
    return 0


def _write_json(
    args: argparse.Namespace,
    dataset: Any,
    k: int,
    scales: tuple[float, ...],
    rows: dict[str, Any],
    head: dict[str, Any],
    fields: dict[str, Any],
) -> None:
    """Write ``--json`` (if given): ``head``, the data read, ``fields``, the scales and the
    rows."""
    if not args.json:
        return
    report = {
        **head,
        "dataset": args.dataset or "folder",
        "split": _split_used(dataset),
        "images": len(dataset),
        "num_classes": k,
        **fields,
        "scales": list(scales),
        "histogram_bins": args.histogram_bins,
        "methods": rows,
    }
    text = json.dumps(report, indent=2)
    io.atomic_write(args.json, lambda tmp: tmp.write_text(text))
    print(f"wrote {args.json}")


EVALUATE_OPTIONS: list[Option] = [
    (
        "--protocol",
        {
            "choices": tuple(PROTOCOLS),
            "help": "a leaderboard's columns instead of the default table (see below)",
        },
    ),
    ("--corruption", {"metavar": "NAME", "help": "embedded: an imagecorruptions name"}),
    ("--severity", {"type": int, "default": 0, "metavar": "K", "help": "embedded: 1..4"}),
    (
        "--baselines",
        {
            "nargs": "*",
            "choices": list(BASELINES),
            "default": list(DEFAULT_BASELINES),
            "metavar": "NAME",
            "help": f"of {', '.join(BASELINES)}",
        },
    ),
    (
        "--histogram-bins",
        {"type": positive_int, "metavar": "N", "help": "histogram metrics (see below)"},
    ),
    ("--thresholds-from", {"metavar": "JSON", "help": "evaluate JSON of a validation split"}),
    ("--json", {"metavar": "FILE", "help": "also write the results as JSON"}),
]
COMMAND = Command(
    cmd_evaluate,
    [
        ("segmenter", MODEL_OPTIONS),
        ("data", DATA_OPTIONS),
        ("scoring", DETECTOR_OPTIONS),
        ("evaluation", EVALUATE_OPTIONS),
    ],
    """Example:
  flowenedet evaluate --model mypkg.models:deeplab --weights deeplab.pth \\
      --detector deeplab_fed.safetensors --dataset fishyscapes_laf \\
      --root /data/fs_lostandfound --image-root /data/lost_and_found --json fs_laf.json
Pooled curves are exact unless --histogram-bins N is given: then the bounded scores
(FED idm / ood, MSP, Entropy) use N-bin histograms (constant memory) and the unbounded
baselines (MaxLogit, Energy, SML, MC dropout) stay exact.
  flowenedet evaluate ... --dataset road_anomaly21 --root /data/dataset_AnomalyTrack \\
      --protocol smiyc-anomaly --json ra21.json
--protocol prints one leaderboard's columns for the FED map of its task and every
baseline: fishyscapes (OOD AUROC, AP, FPR95), smiyc-anomaly / smiyc-obstacle (the
SegmentMeIfYouCan pixel curve and its component metrics sIoU, PPV, mean F1; the data are
read twice), cityscapes-idm (IDM pooled and per image). Definitions: docs/metrics.md.""",
    {"batch_size": 1},
)
