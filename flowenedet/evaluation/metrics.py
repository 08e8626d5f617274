"""Pooled pixel metrics over streams of maps: AUROC / AP / FPR95 for the OOD, IDM and CDD
tasks (:mod:`flowenedet.thresholds` defines them), mIoU and open-mIoU.

Conventions (docs/benchmarks.md, "Metric conventions"): all valid pixels of all images
are pooled into one curve (per-image averages on request); a higher score means more
suspicious. ``IGNORE_INDEX`` pixels are left out of everything, ``UNLABELLED_ID`` pixels
out of everything but ``"ood"``. A pixel is flagged when ``score > threshold``; an
open-set prediction marks rejected pixels with the class ``K`` (``num_classes``), the
``K + 1``-th class of open-mIoU. The exact functions of one curve (``auroc``,
``average_precision``, ...) live in :mod:`flowenedet.evaluation.curves` and are
re-exported here.

Longer than 400 lines: the streaming evaluator and its exact and binned accumulators
share their state; the curve arithmetic itself is in :mod:`flowenedet.evaluation.curves`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from ..labels import IGNORE_INDEX, OOD_INDEX, UNLABELLED_ID
from ..thresholds import (
    CORRECT,
    OOD,
    TASK_CODES,
    TASKS,
    UNLABELLED,
    WRONG,
    Bins,
    Target,
    check_target,
    code_table,
    cut_index,
    exact_counts,
    exact_threshold,
    flaggable_cuts,
    pixel_codes,
    sorted_counts,
    threshold_at,
    to_numpy,
)
from .curves import (
    auroc,
    average_precision,
    check_tpr,
    curve_metrics,
    f1_optimal_threshold,
    fpr_at_tpr,
)
from .report import format_table

__all__ = ["TASKS", "OpenSetIoU", "PixelEvaluator", "Target", "auroc", "average_precision"]
__all__ += ["check_target", "f1_optimal_threshold", "format_table", "fpr_at_tpr", "threshold_at"]

logger = logging.getLogger(__name__)


class PixelEvaluator:
    """Streaming pooled evaluator for OOD, IDM and CDD scores over many images.

    Args:
        num_classes: ``K``; labels ``0..K-1`` are the in-distribution classes.
        score_range: ``None`` for exact curves (keeps one float64 score, one category
            byte and one int32 prediction per valid pixel); ``(lo, hi)`` for fixed-bin
            histograms whose memory is ``(2K + 2) * bins`` int64 counts whatever the
            number of images. Scores outside the range are clamped into the end bins.
            Bin ``i`` holds scores in ``(lo + i*w, lo + (i+1)*w]``, ``w = (hi-lo)/bins``.
        bins: number of histogram bins (histogram mode only).
        ignore_index: void label, left out of everything.
        ood_index: label of out-of-distribution pixels.
        unlabelled_index: in-distribution pixels without a class label.
        per_image: also measure every image on its own (exact curves of its valid pixels,
            FPR at 95 % TPR) for :meth:`compute_per_image`; everything else stays pooled.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        score_range: tuple[float, float] | None = None,
        bins: int = 100_000,
        ignore_index: int = IGNORE_INDEX,
        ood_index: int = OOD_INDEX,
        unlabelled_index: int = UNLABELLED_ID,
        per_image: bool = False,
    ) -> None:
        if not isinstance(per_image, bool):
            raise TypeError(f"per_image must be True or False, got {per_image!r}")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        specials = (ignore_index, ood_index, unlabelled_index)
        if len(set(specials)) != 3 or any(0 <= v < num_classes for v in specials):
            raise ValueError(
                "ignore_index, ood_index and unlabelled_index must be distinct and outside "
                f"0..{num_classes - 1}, got {specials}"
            )
        self._bins = Bins(*score_range, bins) if score_range is not None else None
        self.score_range = None if self._bins is None else (self._bins.low, self._bins.high)
        self.num_classes = int(num_classes)
        self.bins = int(bins)
        self.ignore_index = ignore_index
        self.ood_index = ood_index
        self.unlabelled_index = unlabelled_index
        self.per_image = per_image
        self.reset()

    # ---------------------------------------------------------------- accumulation
    def reset(self) -> None:
        """Forget every pixel seen so far."""
        k = self.num_classes
        self._confusion = np.zeros(k * k, dtype=np.int64)
        empty = (np.zeros(0), np.zeros(0, np.uint8), np.zeros(0, np.int32))
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [empty]
        self._sorted: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._images: list[dict[str, dict[str, float] | None]] = []
        self._highest = [-1, -1]  # the highest class predicted, and labelled, so far
        self._warned = False
        # rows 0..K-1: correct by class; K..2K-1: wrong or OOD by prediction;
        # 2K: unlabelled; 2K+1: OOD (also counted in the wrong-or-OOD rows).
        self._hist = (
            np.zeros((2 * k + 2) * self.bins, dtype=np.int64)
            if self.score_range is not None
            else None
        )

    def update(self, scores: Any, labels: Any, preds: Any) -> None:
        """Add a batch: float ``scores``, int ``labels`` and int ``preds``, all ``(B, H, W)``.

        Pixels labelled ``ignore_index`` are dropped first and may hold any score (NaN too).
        """
        s, y, p = to_numpy(scores), to_numpy(labels), to_numpy(preds)
        if s.shape != y.shape or p.shape != y.shape:
            raise ValueError(
                f"scores has shape {s.shape}, labels {y.shape} and preds {p.shape}; "
                "all three must be equal (B, H, W)"
            )
        for name, arr in (("labels", y), ("preds", p)):
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"{name} must be an integer array, got {arr.dtype}")
        k = self.num_classes
        images = y.shape[0] if y.ndim == 3 else 1  # per_image: measured after the checks
        image_of = np.repeat(np.arange(images), y.size // max(images, 1))
        valid, code = pixel_codes(
            y.reshape(-1),
            p.reshape(-1),
            k,
            ignore_index=self.ignore_index,
            ood_index=self.ood_index,
            unlabelled_index=self.unlabelled_index,
        )
        image_of = image_of[valid]
        y = y.reshape(-1)[valid].astype(np.int64)
        p = p.reshape(-1)[valid].astype(np.int64)
        s = s.reshape(-1)[valid].astype(np.float64)
        if np.isnan(s).any():
            raise ValueError(f"scores contains {int(np.isnan(s).sum())} NaN value(s)")
        is_class = code <= WRONG
        is_ood, is_unl = code == OOD, code == UNLABELLED
        if p.size:
            self._highest[0] = max(self._highest[0], int(p.max()))
        if is_class.any():
            self._highest[1] = max(self._highest[1], int(y[is_class].max()))
        self._confusion += np.bincount(y[is_class] * k + p[is_class], minlength=k * k)
        if self.per_image:
            for image in range(images):
                mine = image_of == image
                self._images.append(_image_metrics(s[mine], code[mine]))

        if self._hist is None:
            self._chunks.append((s, code, p.astype(np.int32)))
            self._sorted = None
        else:
            b = self._bins.index(s)
            row = np.where(code == CORRECT, p, k + p)
            row[is_unl] = 2 * k
            idx = np.r_[row * self.bins + b, (2 * k + 1) * self.bins + b[is_ood]]
            self._hist += np.bincount(idx, minlength=self._hist.size)

    def _check_classes(self) -> None:
        """Warn, once, when the classes seen so far suggest another ``num_classes``: the
        predictions and labels reach at most half of the classes, or the predictions at
        most half of the labels' classes (the segmenter's classes and the labels' then
        disagree). Warnings, not errors: a few images may lack the higher classes; a
        prediction outside ``0..K-1`` is an error (:meth:`update`)."""
        pred, label = self._highest
        if self._warned or pred < 0:
            return
        k, seen = self.num_classes, max(pred, label) + 1
        if seen <= k // 2:
            self._warned = True
            logger.warning(
                "PixelEvaluator(num_classes=%d): the predictions and labels never exceed "
                "class %d; pass num_classes=%d if that is how many classes the segmenter has",
                k,
                seen - 1,
                seen,
            )
        elif label >= 0 and pred + 1 <= (label + 1) // 2:
            self._warned = True
            logger.warning(
                "PixelEvaluator(num_classes=%d): the predictions never exceed class %d but "
                "the labels reach class %d; do the segmenter's classes match the labels'?",
                k,
                pred,
                label,
            )

    # ---------------------------------------------------------------- curves
    def _stored(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stored exact pixels sorted by descending score: (scores, codes, preds)."""
        if self._sorted is None:
            s, code, pred = (np.concatenate(parts) for parts in zip(*self._chunks, strict=True))
            order = np.argsort(s)[::-1]  # ties meet at one cut: their order is free
            self._sorted = (s[order], code[order], pred[order])
            self._chunks = [self._sorted]
        return self._sorted

    def _hist_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(correct (K, bins), wrong-or-OOD by pred (K, bins), unlabelled, OOD (bins,))."""
        assert self._hist is not None
        k = self.num_classes
        h = self._hist.reshape(2 * k + 2, self._bins.count)
        return h[:k], h[k : 2 * k], h[2 * k], h[2 * k + 1]

    def _task_counts(self, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cumulative (tps, fps, thresholds), highest score first; raises if degenerate."""
        if task not in TASK_CODES:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        members, pos_codes = TASK_CODES[task]
        if self._hist is None:
            s, code, _ = self._stored()
            keep = code_table(members)[code]  # a lookup: much cheaper than np.isin
            return sorted_counts(s[keep], code_table(pos_codes)[code[keep]], task)
        correct, wrong_or_ood, unl, ood = self._hist_rows()
        wrong = wrong_or_ood.sum(0) - ood
        per_code = {CORRECT: correct.sum(0), WRONG: wrong, OOD: ood, UNLABELLED: unl}
        pos = sum(per_code[c] for c in pos_codes)
        neg = sum(per_code[c] for c in members if c not in pos_codes)
        return self._bins.counts(pos, neg, task)

    def compute(self, tpr: float = 0.95) -> dict[str, dict[str, float] | None]:
        """``{task: {"auroc", "ap", "fpr95"}}`` as fractions for ``"ood"``, ``"idm"``, ``"cdd"``.

        A task without positives or without negatives is ``None`` (logged as a warning).
        ``"fpr95"`` is the FPR at ``tpr``.
        """
        check_tpr(tpr)
        self._check_classes()
        out: dict[str, dict[str, float] | None] = {}
        for task in TASKS:
            try:
                tps, fps, _ = self._task_counts(task)
            except ValueError as err:
                logger.warning("metrics for task %r not computed: %s", task, err)
                out[task] = None
                continue
            out[task] = curve_metrics(tps, fps, tpr)
        return out

    def compute_per_image(self) -> dict[str, dict[str, float] | None]:
        """``{task: {"auroc", "ap", "fpr95", "images"}}``: each metric averaged over the images
        that have positives and negatives for the task (``"images"`` of them; FPR at 95 %
        TPR); ``None`` for a task no image can measure. Needs ``per_image=True``."""
        if not self.per_image:
            raise RuntimeError("per-image metrics need PixelEvaluator(..., per_image=True)")
        out: dict[str, dict[str, float] | None] = {}
        for task in TASKS:
            measured = [image[task] for image in self._images if image[task] is not None]
            if not measured:
                out[task] = None
                continue
            out[task] = {m: float(np.mean([r[m] for r in measured])) for m in measured[0]}
            out[task]["images"] = len(measured)
        return out

    def image_results(self) -> list[dict[str, dict[str, float] | None]]:
        """Per image, in update order: ``{task: {"auroc", "ap", "fpr95"} or None}`` (``None``
        without positives or negatives). Needs ``per_image=True``."""
        if not self.per_image:
            raise RuntimeError("per-image metrics need PixelEvaluator(..., per_image=True)")
        return [dict(image) for image in self._images]

    def curve(self, task: str) -> dict[str, np.ndarray]:
        """ROC and precision-recall curves of ``task``: arrays ``fpr``, ``tpr``,
        ``precision``, ``recall`` over the distinct thresholds, highest first."""
        tps, fps, _ = self._task_counts(task)
        t, f = tps.astype(np.float64), fps.astype(np.float64)
        return {
            "fpr": f / f[-1],
            "tpr": t / t[-1],
            "precision": t / (t + f),
            "recall": t / t[-1],
        }

    def threshold(self, task: str = "cdd", target: Target = "f1") -> float:
        """Threshold of ``task`` for the rule ``score > t`` that meets ``target``
        (default F1-optimal; see :data:`Target`).

        Exact mode: halfway between the lowest flagged and highest unflagged score.
        Histogram mode: the lower edge of the lowest flagged bin (the upper edge of the
        highest occupied bin when nothing is flagged). ``-inf`` if everything is flagged.
        """
        target = check_target(target)
        tps, fps, thr = self._task_counts(task)
        if self._hist is None:
            return exact_threshold(thr, cut_index(tps, fps, target, flaggable_cuts(thr)))
        return self._bins.threshold(tps, fps, thr, target)

    # ---------------------------------------------------------------- segmentation
    def miou(self) -> float:
        """Mean IoU of preds vs labels over classes ``0..K-1`` present in either."""
        self._check_classes()
        k = self.num_classes
        cm = self._confusion.reshape(k, k)
        inter = np.diagonal(cm).astype(np.float64)
        union = cm.sum(0) + cm.sum(1) - inter
        if not (union > 0).any():
            raise ValueError("miou: no pixel with a class label 0..K-1 was seen")
        return float(np.mean(inter[union > 0] / union[union > 0]))

    def open_miou(self, threshold: float) -> float:
        """Open-mIoU over ``K + 1`` classes (the last is "reject").

        Ground truth is reject where ``pred != label`` or the pixel is OOD; the
        prediction is reject where ``score > threshold``. Unlabelled pixels are left out.
        In histogram mode a bin is rejected when its lower edge is ``>= threshold``
        (exact for thresholds from :meth:`threshold`, else up to one bin width off).
        """
        if math.isnan(threshold):
            raise ValueError("threshold is NaN")
        k = self.num_classes
        if self._hist is None:
            s, code, pred = self._stored()
            keep = code != UNLABELLED
            s, code, pred = s[keep], code[keep], pred[keep].astype(np.int64)
            key = (code != CORRECT) * (2 * k) + (s > threshold) * k + pred
            c = np.bincount(key, minlength=4 * k).reshape(4, k)
            cor_keep, cor_rej, wro_keep, wro_rej = c[0], c[1], c[2], c[3]
        else:
            correct, wrong_or_ood, _, _ = self._hist_rows()
            rej = self._bins.edges() >= threshold
            cor_keep, cor_rej = correct[:, ~rej].sum(1), correct[:, rej].sum(1)
            wro_keep, wro_rej = wrong_or_ood[:, ~rej].sum(1), wrong_or_ood[:, rej].sum(1)
        return _open_miou(cor_keep, cor_rej, wro_keep, wro_rej)


def _open_miou(
    cor_keep: np.ndarray, cor_rej: np.ndarray, wro_keep: np.ndarray, wro_rej: np.ndarray
) -> float:
    """Open-mIoU from ``(K,)`` pixel counts by predicted class: correct or wrong-or-OOD
    (ground truth "reject"), kept or rejected."""
    inter = np.r_[cor_keep, wro_rej.sum()].astype(np.float64)
    union = np.r_[cor_keep + cor_rej + wro_keep, wro_rej.sum() + wro_keep.sum() + cor_rej.sum()]
    if not (union > 0).any():
        raise ValueError("open_miou: no pixel with a class label or OOD label was seen")
    return float(np.mean(inter[union > 0] / union[union > 0]))


class OpenSetIoU:
    """Streaming open-mIoU of open-set predictions (rejected pixels hold the label ``K``),
    as :meth:`PixelEvaluator.open_miou` counts it at a threshold.

    Ground truth is "reject" where the closed-set ``pred != label`` or the pixel is OOD;
    ``IGNORE_INDEX`` and unlabelled pixels are left out.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        ignore_index: int = IGNORE_INDEX,
        ood_index: int = OOD_INDEX,
        unlabelled_index: int = UNLABELLED_ID,
    ) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index, self.ood_index = ignore_index, ood_index
        self.unlabelled_index = unlabelled_index
        self._counts = np.zeros((4, self.num_classes), dtype=np.int64)

    def update(self, open_pred: Any, labels: Any, preds: Any) -> None:
        """Add ``(B, H, W)`` open-set predictions (``0..K``), labels and the closed-set
        predictions (``0..K-1``) they were made from."""
        o, y, p = (to_numpy(a) for a in (open_pred, labels, preds))
        if o.shape != y.shape or p.shape != y.shape:
            raise ValueError(
                f"open_pred has shape {o.shape}, labels {y.shape} and preds {p.shape}; "
                "all three must be equal (B, H, W)"
            )
        k = self.num_classes
        y, o, p = (a.reshape(-1).astype(np.int64) for a in (y, o, p))
        keep = (y != self.ignore_index) & (y != self.unlabelled_index)
        y, o, p = y[keep], o[keep], p[keep]
        is_class, is_ood = (y >= 0) & (y < k), y == self.ood_index
        if not (is_class | is_ood).all() or ((o < 0) | (o > k)).any() or ((p < 0) | (p >= k)).any():
            raise ValueError(
                f"labels must be classes 0..{k - 1} or ignore / ood / unlabelled, preds "
                f"0..{k - 1} and open-set predictions 0..{k} (the reject label)"
            )
        rejected = o == k
        if (~rejected & (o != p)).any():
            raise ValueError("open_pred differs from preds where it does not reject")
        wrong = is_ood | (p != y)
        self._counts += np.bincount((wrong * 2 + rejected) * k + p, minlength=4 * k).reshape(4, k)

    def compute(self) -> float:
        """Open-mIoU over the ``K + 1`` classes of everything added."""
        c = self._counts
        return _open_miou(c[0], c[1], c[2], c[3])


def _image_metrics(scores: np.ndarray, code: np.ndarray) -> dict[str, dict[str, float] | None]:
    """One image's exact metrics per task from its valid pixels' scores and categories."""
    out: dict[str, dict[str, float] | None] = {}
    for task, (members, pos_codes) in TASK_CODES.items():
        keep = code_table(members)[code]
        positives = code_table(pos_codes)[code[keep]]
        if positives.all() or not positives.any():
            out[task] = None
            continue
        tps, fps, _ = exact_counts(scores[keep], positives, task)
        out[task] = curve_metrics(tps, fps)
    return out
