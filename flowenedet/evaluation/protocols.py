"""Named evaluation protocols: each public leaderboard's pixels, curves and columns.

A :class:`Protocol` says which task a leaderboard scores, which pixel convention its
curve follows, whether it adds component metrics (with which size filters) or per-image
means, and which published table it reproduces. :class:`ProtocolEvaluator` measures one
method under one protocol; :func:`protocol_table` prints the leaderboard's columns.
Definitions in full: ``docs/metrics.md``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import metrics
from .components import OBSTACLE_TRACK, TRACKS, ComponentEvaluator, SizeFilter, as_numpy
from .metrics import PixelEvaluator
from .report import COMPONENT_COLUMNS, append_columns, format_table
from .smiyc import SmiycPixelCurve, trapezoid

__all__ = [
    "PROTOCOLS",
    "Protocol",
    "ProtocolEvaluator",
    "ReferencePerImage",
    "append_columns",
    "protocol_table",
]


@dataclass(frozen=True)
class Protocol:
    """One leaderboard's evaluation rules.

    Attributes:
        name: the ``--protocol`` name.
        task: ``"ood"`` or ``"idm"`` (see :mod:`flowenedet.evaluation.metrics`).
        pixel: ``"fishyscapes"`` (pooled exact curve, step-wise AP, FPR at the first TPR
            >= 0.95: :class:`PixelEvaluator`) or ``"smiyc"`` (the benchmark's binned curve:
            :class:`~flowenedet.evaluation.smiyc.SmiycPixelCurve`).
        components: size filters of the component metrics, or ``None`` for none.
        per_image: also the FlowEneDet reference release's per-image means
            (:class:`ReferencePerImage`).
        fed_map: the FlowEneDet map made for ``task``.
        reproduces: the published table the columns follow.
    """

    name: str
    task: str
    pixel: str
    components: SizeFilter | None
    per_image: bool
    fed_map: str
    reproduces: str


PROTOCOLS: dict[str, Protocol] = {
    "fishyscapes": Protocol(
        "fishyscapes", "ood", "fishyscapes", None, False, "ood",
        "the Fishyscapes leaderboard (Blum et al., IJCV 2021): pixel AP and FPR95, with AUROC",
    ),
    "smiyc-anomaly": Protocol(
        "smiyc-anomaly", "ood", "smiyc", TRACKS["anomaly"], False, "ood",
        "SegmentMeIfYouCan's anomaly track (RoadAnomaly21; Chan et al., NeurIPS 2021 Datasets "
        "and Benchmarks): AUPRC, FPR95, sIoU gt, PPV, mean F1",
    ),
    "smiyc-obstacle": Protocol(
        "smiyc-obstacle", "ood", "smiyc", OBSTACLE_TRACK, False, "ood",
        "SegmentMeIfYouCan's obstacle track (RoadObstacle21 and its Lost & Found split): "
        "AUPRC, FPR95, sIoU gt, PPV, mean F1",
    ),
    "cityscapes-idm": Protocol(
        "cityscapes-idm", "idm", "fishyscapes", None, True, "idm",
        "FlowEneDet's misclassification tables (Cityscapes and Cityscapes-C; Gudovskiy et "
        "al., UAI 2023): IDM AUROC, AP, FPR95 pooled and per image",
    ),
}  # fmt: skip
"""The protocols of ``flowenedet evaluate --protocol``, by name."""


def _image_reference(evaluator: PixelEvaluator) -> dict[str, float] | None:
    """The reference's numbers from one image's exact IDM curve (``None`` without hits or
    misses): AUROC and AUPR by the trapezoid rule from (0, 0) and (recall 0, precision 1),
    as scikit-learn's ``roc_curve`` / ``precision_recall_curve`` with ``auc`` give them;
    FPR at TPR 0.95 interpolated linearly, as ``ood_metrics.fpr_at_95_tpr``."""
    try:
        c = evaluator.curve("idm")
    except ValueError:
        return None
    fpr, tpr = np.r_[0.0, c["fpr"]], np.r_[0.0, c["tpr"]]
    recall, precision = np.r_[0.0, c["recall"]], np.r_[1.0, c["precision"]]
    return {
        "auroc": trapezoid(tpr, fpr),
        "ap": trapezoid(precision, recall),
        "fpr95": float(np.interp(0.95, tpr, fpr)),
    }


class ReferencePerImage:
    """The FlowEneDet reference release's per-image IDM metrics (``idm_metrics`` of its
    ``mmseg/core/evaluation/metrics.py``): for each image, over its class-labelled pixels,
    AUROC, AUPR (trapezoid area under the precision-recall curve, not the step-wise AP)
    and FPR at 95 % TPR (interpolated), then the mean over images.

    Images without a misclassified or without a correct pixel have no curve; they are left
    out of the means (``"images"`` counts the rest). The reference divides by every image,
    which makes its mean NaN for such an image.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = int(num_classes)
        self._sums = {"auroc": 0.0, "ap": 0.0, "fpr95": 0.0}
        self.images = self.skipped = 0

    def update(self, scores: Any, labels: Any, preds: Any) -> None:
        """Add images: ``scores``, ``labels`` and ``preds`` ``(B, H, W)`` (or ``(H, W)``)."""
        s, y, p = (
            as_numpy(a, n) for a, n in ((scores, "scores"), (labels, "labels"), (preds, "preds"))
        )
        for image in zip(*(a.reshape(-1, *a.shape[-2:]) for a in (s, y, p)), strict=True):
            evaluator = PixelEvaluator(self.num_classes)
            evaluator.update(*(a[None] for a in image))
            found = _image_reference(evaluator)
            if found is None:
                self.skipped += 1
                continue
            self.images += 1
            for key, value in found.items():
                self._sums[key] += value

    def compute(self) -> dict[str, float | int] | None:
        """``{"auroc", "ap", "fpr95", "images"}`` averaged over the measured images (``"ap"``
        is the reference's AUPR); ``None`` if no image could be measured."""
        if not self.images:
            return None
        return {**{k: v / self.images for k, v in self._sums.items()}, "images": self.images}


class ProtocolEvaluator:
    """One method's numbers under ``protocol`` (a :class:`Protocol` or its name).

    Pass 1: :meth:`update` with every batch. Protocols with component metrics then need
    pass 2 over the same data: :meth:`threshold` gives the F1-optimal pixel threshold of
    pass 1, :meth:`update_components` takes the batches again. :meth:`compute` gives the
    row. ``histogram_bins`` (Fishyscapes-style pooled curves only) bins scores in
    ``score_range`` instead of keeping every pixel.
    """

    def __init__(
        self,
        protocol: Protocol | str,
        num_classes: int,
        *,
        histogram_bins: int | None = None,
        score_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        if isinstance(protocol, str):
            if protocol not in PROTOCOLS:
                raise ValueError(f"protocol must be one of {tuple(PROTOCOLS)}, got {protocol!r}")
            protocol = PROTOCOLS[protocol]
        self.protocol = protocol
        if protocol.pixel == "smiyc":
            if histogram_bins is not None:
                raise ValueError(
                    f"histogram_bins does not apply to {protocol.name}: its curve is binned "
                    "per frame, as the benchmark bins it"
                )
            self.pixels: PixelEvaluator | SmiycPixelCurve = SmiycPixelCurve()
        elif histogram_bins is not None:
            self.pixels = PixelEvaluator(num_classes, score_range=score_range, bins=histogram_bins)
        else:
            self.pixels = PixelEvaluator(num_classes)
        self.per_image = ReferencePerImage(num_classes) if protocol.per_image else None
        self.components: ComponentEvaluator | None = None

    @property
    def needs_second_pass(self) -> bool:
        """Whether :meth:`update_components` must see the data again."""
        return self.protocol.components is not None

    def update(self, scores: Any, labels: Any, preds: Any) -> None:
        """Pass 1: ``scores`` float, ``labels`` and ``preds`` int, all ``(B, H, W)``."""
        if isinstance(self.pixels, SmiycPixelCurve):
            self.pixels.update(scores, labels)
        else:
            self.pixels.update(scores, labels, preds)
        if self.per_image is not None:
            self.per_image.update(scores, labels, preds)

    def threshold(self) -> float:
        """The F1-optimal pixel threshold of pass 1 (``score > t`` is flagged)."""
        if isinstance(self.pixels, SmiycPixelCurve):
            return self.pixels.compute()["threshold"]
        return self.pixels.threshold(self.protocol.task)

    def update_components(self, scores: Any, labels: Any) -> None:
        """Pass 2: the same ``(B, H, W)`` scores and labels again, in any order. SMIYC
        protocols round the scores to float16 first, as the benchmark stores them."""
        if self.protocol.components is None:
            raise RuntimeError(f"{self.protocol.name} has no component metrics")
        if self.components is None:
            self.components = ComponentEvaluator(self.threshold(), self.protocol.components)
        s = as_numpy(scores, "scores")
        self.components.update(
            s.astype(np.float16) if self.protocol.pixel == "smiyc" else s, labels
        )

    def compute(self) -> dict[str, Any]:
        """The row: ``{task: {"auroc", "ap", "fpr95"} or None}``; SMIYC adds ``"f1"`` (best
        pixel F1), ``"threshold"`` and ``"components"``; ``cityscapes-idm`` adds
        ``"idm_per_image"``."""
        task = self.protocol.task
        row: dict[str, Any] = {}
        if isinstance(self.pixels, SmiycPixelCurve):
            try:
                found = self.pixels.compute()
            except ValueError:
                found = None
            row[task] = None if found is None else {k: found[k] for k in ("auroc", "ap", "fpr95")}
            row["f1"] = None if found is None else found["f1"]
            row["threshold"] = None if found is None else found["threshold"]
        else:
            with _only_task(task):  # the other tasks' "no positives" warnings are not news
                row[task] = self.pixels.compute()[task]
        if self.protocol.components is not None:
            row["components"] = None if self.components is None else self.components.compute()
        if self.per_image is not None:
            row[f"{task}_per_image"] = self.per_image.compute()
        return row


@contextlib.contextmanager
def _only_task(task: str) -> Iterator[None]:
    """While inside, the metrics logger drops its warnings about tasks other than ``task``."""

    def keep(record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not args or args[0] == task

    log = logging.getLogger(metrics.__name__)
    log.addFilter(keep)
    try:
        yield
    finally:
        log.removeFilter(keep)


# ------------------------------------------------------------------------ tables
PER_IMAGE_COLUMNS = (("AUROC/img", "auroc"), ("AUPR/img", "ap"), ("FPR95/img", "fpr95"))
"""``cityscapes-idm``'s per-image columns (the reference's means): ``(title, key)``."""


def protocol_table(rows: Mapping[str, Mapping[str, Any]], protocol: Protocol | str) -> str:
    """Markdown table of ``{method: ProtocolEvaluator.compute()}`` in the leaderboard's
    columns (percentages): the task's AUROC, AP, FPR95, then the components' or the
    per-image columns."""
    protocol = PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
    table = format_table(rows, tasks=[protocol.task])
    if protocol.components is not None:
        titles, keys = zip(*COMPONENT_COLUMNS, strict=True)
        table = append_columns(table, titles, [r.get("components") for r in rows.values()], keys)
    if protocol.per_image:
        titles, keys = zip(*PER_IMAGE_COLUMNS, strict=True)
        per_image = [r.get(f"{protocol.task}_per_image") for r in rows.values()]
        table = append_columns(table, titles, per_image, keys)
    return table
