"""SegmentMeIfYouCan's pixel curve: per-frame quantile bins, pooled over the frames.

The benchmark's code (``road_anomaly_benchmark/metrics/pixel_classification.py`` and
``pixel_classification_curves.py``, configuration ``PixBinaryClass``) does not sort the
pooled pixels. It stores each frame's scores as float16 and bins the frame's valid
pixels (label not 255) at edges made of quantiles: ``min(384, n)`` evenly spaced quantiles
of the frame's positive scores and as many of its negative ones, plus two anchors,
de-duplicated. Each bin counts as one point of the pooled curve at its lower edge; the
points of all frames are sorted by that edge (highest first) and accumulated. Every
number of the benchmark's pixel table comes from that curve:

* ``revision="2021"`` (the code behind the published tables, 2021 to July 2023): anchors
  0 and 1; the leading points without any flagged pixel are dropped; AP is the
  trapezoid area under precision over recall (``np.trapz``), starting at the first point;
* ``revision="2023"`` (the code since August 2023): anchors ``min - eps`` and
  ``max + eps`` (``eps = max(0.01 (max - min), 0.01)``); points of one repeated edge are
  collapsed; the curve starts at recall 0, precision 1; AP is the step-wise sum
  ``sum (R_n - R_{n-1}) P_n`` over the binned points.

Both: AUROC is the trapezoid area under the binned ROC curve, FPR95 the false-positive
rate at the first point whose TPR reaches 0.95, and the F1-optimal threshold (the
component metrics' threshold) the lower edge of the point with the best pixel F1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flowenedet.labels import IGNORE_INDEX, OOD_INDEX

from .components import as_numpy

__all__ = ["REVISIONS", "SmiycPixelCurve"]

REVISIONS = ("2021", "2023")
"""The benchmark code's revisions :class:`SmiycPixelCurve` reproduces."""


def trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """The trapezoid rule over the points in the order given (as ``np.trapz``)."""
    return float((np.diff(x) * (y[1:] + y[:-1]) / 2.0).sum())


class SmiycPixelCurve:
    """Pixel AUROC, AP, FPR95 and F1-optimal threshold as SegmentMeIfYouCan computes them.

    Args:
        bins: the benchmark's ``num_bins`` (768): up to ``bins // 2`` quantiles per frame
            of its positive and of its negative scores.
        revision: ``"2021"`` (trapezoid AP; the published tables) or ``"2023"`` (step-wise
            AP on the binned curve); see the module docstring.
        ood_index: label of anomaly pixels (the positives).
        ignore_index: label of void pixels; every other label is a negative.

    Scores are rounded to float16 first, as the benchmark stores them. Memory: about
    ``2 * bins`` numbers per frame (the frame's bins), not one per pixel.
    """

    def __init__(
        self,
        bins: int = 768,
        revision: str = "2021",
        *,
        ood_index: int = OOD_INDEX,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins must be an int >= 2, got {bins!r}")
        if revision not in REVISIONS:
            raise ValueError(f"revision must be one of {REVISIONS}, got {revision!r}")
        self.bins, self.revision = bins, revision
        self.ood_index, self.ignore_index = ood_index, ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget every frame seen so far."""
        self._edges: list[np.ndarray] = []
        self._pos: list[np.ndarray] = []
        self._neg: list[np.ndarray] = []
        self.frames = 0

    def update(self, scores: Any, labels: Any) -> None:
        """Add frames: ``scores`` float and ``labels`` int, both ``(H, W)`` or ``(B, H, W)``.
        A frame without valid pixels adds nothing."""
        s, y = as_numpy(scores, "scores"), as_numpy(labels, "labels")
        if s.shape != y.shape or s.ndim not in (2, 3):
            raise ValueError(
                f"scores has shape {s.shape} and labels {y.shape}; both must be (H, W) or (B, H, W)"
            )
        s = s.reshape(-1, *s.shape[-2:]).astype(np.float16)
        for score, label in zip(s, y.reshape(-1, *y.shape[-2:]), strict=True):
            valid = label != self.ignore_index
            if valid.any():
                self._add_frame(score[valid], label[valid] == self.ood_index)

    def _add_frame(self, score: np.ndarray, positive: np.ndarray) -> None:
        if np.isnan(score).any():
            raise ValueError(f"scores contains {int(np.isnan(score).sum())} NaN value(s)")
        on_pos, on_neg = score[positive], score[~positive]
        if self.revision == "2021":
            anchors = np.array([0.0, 1.0])
        else:
            low, high = float(score.min()), float(score.max())
            eps = max((high - low) * 1e-2, 1e-2)
            anchors = np.array([low - eps, high + eps])
        parts = [anchors]
        for values in (on_pos, on_neg):
            if values.size:
                levels = np.linspace(0, 1, min(self.bins // 2, values.size))
                parts.append(np.quantile(values, levels))
        edges = np.unique(np.concatenate(parts))
        # highest bin first; a bin's point sits at its lower edge
        self._pos.append(np.histogram(on_pos, bins=edges)[0][::-1])
        self._neg.append(np.histogram(on_neg, bins=edges)[0][::-1])
        self._edges.append(edges[::-1][1:])
        self.frames += 1

    def curve(self) -> dict[str, np.ndarray]:
        """The binned curve, highest threshold first: ``thresholds`` and cumulative ``tp``,
        ``fp`` (float64) with the revision's start and ends applied; raises ``ValueError``
        without positives or negatives."""
        if not self._edges:
            raise ValueError("smiyc curve: no frame with valid pixels was added")
        thresholds = np.concatenate(self._edges)
        order = np.argsort(thresholds)[::-1]  # as the benchmark sorts them
        tp = np.cumsum(np.concatenate(self._pos)[order].astype(np.float64))
        fp = np.cumsum(np.concatenate(self._neg)[order].astype(np.float64))
        thresholds = thresholds[order]
        if tp[-1] == 0 or fp[-1] == 0:
            raise ValueError(
                f"smiyc curve: needs positives and negatives, got {int(tp[-1])} positive(s) "
                f"and {int(fp[-1])} negative(s)"
            )
        if self.revision == "2021":
            start = int(np.argmax(tp + fp > 0.01))  # drop the points that flag nothing
            return {"thresholds": thresholds[start:], "tp": tp[start:], "fp": fp[start:]}
        last = np.r_[0, np.flatnonzero(thresholds[:-1] != thresholds[1:]), len(thresholds) - 1]
        tp, fp, thresholds = tp[last], fp[last], thresholds[last]
        if tp[0] != 0 or fp[0] != 0:
            tp, fp = np.r_[0.0, tp], np.r_[0.0, fp]
            thresholds = np.r_[thresholds.max() + 1, thresholds]
        return {"thresholds": thresholds, "tp": tp, "fp": fp}

    def compute(self) -> dict[str, float]:
        """``{"auroc", "ap", "fpr95", "f1", "threshold"}``: fractions from the binned curve,
        ``"f1"`` the best pixel F1 and ``"threshold"`` its lower bin edge (the rule
        ``score > threshold`` makes the component metrics' prediction)."""
        c = self.curve()
        tp, fp, thresholds = c["tp"], c["fp"], c["thresholds"]
        n_pos, n_neg = tp[-1], fp[-1]
        tpr, fpr = tp / n_pos, fp / n_neg
        flagged = tp + fp
        precision = np.ones_like(tp)
        np.divide(tp, flagged, out=precision, where=flagged > 0)
        if self.revision == "2021":
            ap = trapezoid(precision, tpr)
        else:
            ap = float(np.sum(np.diff(tpr) * precision[1:]))
        f1 = 2 * tp / (2 * tp + fp + (n_pos - tp))
        hit = int(np.searchsorted(tpr, 0.95))
        best = int(np.nanargmax(f1))
        return {
            "auroc": trapezoid(tpr, fpr),
            "ap": ap,
            "fpr95": float(fpr[hit]) if hit < len(tpr) else 1.0,
            "f1": float(f1[best]),
            "threshold": float(thresholds[best]),
        }
