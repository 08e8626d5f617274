"""Component-level metrics of SegmentMeIfYouCan: sIoU, PPV and F1 over connected components.

The definitions of the benchmark's code (``road_anomaly_benchmark/metrics/
instance_segmentation.py``, Chan et al., "SegmentMeIfYouCan", NeurIPS 2021 Datasets and
Benchmarks), per frame:

1. the predicted anomaly mask is ``score > threshold``, with void pixels set to 0;
2. connected components (8-connectivity) of the ground-truth anomaly pixels and of the
   predicted mask, separately;
3. size filters (:class:`SizeFilter`): predicted components with fewer than
   ``min_prediction`` pixels are dropped; ground-truth components with fewer than
   ``min_ground_truth`` pixels become void, and so do the predicted pixels on them;
4. sIoU of a ground-truth component ``k``, with ``K`` the union of the predicted components
   that share a pixel with ``k`` and ``A`` the pixels of ``K`` on other ground-truth
   components: ``|k & K| / (|K| + |k| - |k & K| - |A|)`` (0 when nothing touches ``k``);
5. PPV of a predicted component: the fraction of its pixels on ground-truth components;
6. at each ``tau`` of :data:`SIOU_THRESHOLDS`: TP = ground-truth components with
   ``sIoU >= tau``, FN = the others, FP = predicted components with ``PPV < tau``, counted
   over all frames; ``F1(tau) = 2 TP / (2 TP + FN + FP)``.

:class:`ComponentEvaluator` keeps running sums only (constant memory in the number of
frames); the threshold must be known before the first frame (the benchmark takes the
F1-optimal one of its pixel curve, :class:`~flowenedet.evaluation.smiyc.SmiycPixelCurve`;
:func:`evaluate_components` runs both passes over a re-iterable source).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flowenedet.labels import IGNORE_INDEX, OOD_INDEX

__all__ = [
    "ANOMALY_TRACK",
    "OBSTACLE_TRACK",
    "SIOU_THRESHOLDS",
    "TRACKS",
    "ComponentEvaluator",
    "FrameComponents",
    "SizeFilter",
    "evaluate_components",
    "frame_components",
]

SIOU_THRESHOLDS: np.ndarray = np.linspace(0.25, 0.75, 11)
"""The 11 thresholds 0.25, 0.30, ..., 0.75 exactly as the benchmark makes them
(``np.linspace``): the seventh is 0.6000000000000001, so an sIoU of exactly 0.6 is below it."""


@dataclass(frozen=True)
class SizeFilter:
    """Component size filters of one SegmentMeIfYouCan track, in pixels.

    Attributes:
        min_prediction: predicted components with fewer pixels are dropped.
        min_ground_truth: ground-truth components with fewer pixels become void.
    """

    min_prediction: int
    min_ground_truth: int

    def __post_init__(self) -> None:
        for name in ("min_prediction", "min_ground_truth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")


ANOMALY_TRACK = SizeFilter(min_prediction=500, min_ground_truth=100)
"""RoadAnomaly21's filters (``SegEval-AnomalyTrack``)."""
OBSTACLE_TRACK = SizeFilter(min_prediction=50, min_ground_truth=10)
"""RoadObstacle21's filters (``SegEval-ObstacleTrack``), also used for its Lost & Found."""
TRACKS: dict[str, SizeFilter] = {"anomaly": ANOMALY_TRACK, "obstacle": OBSTACLE_TRACK}
"""The tracks' filters by name."""

_CHUNK_PIXELS = 1 << 22  # frames labelled together: about 4 M pixels (a 2 MP frame alone)
# 8-connectivity within each frame of a (B, H, W) stack, none across frames
_EIGHT_NEIGHBOURS = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_NEIGHBOURS[1] = True


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage  # a core dependency; imported here to keep imports light

    labelled, count = ndimage.label(mask, structure=_EIGHT_NEIGHBOURS)
    return labelled, int(count)


def _sizes(filter_: SizeFilter | str) -> SizeFilter:
    if isinstance(filter_, SizeFilter):
        return filter_
    if filter_ in TRACKS:
        return TRACKS[filter_]
    raise ValueError(f"sizes must be a SizeFilter or one of {tuple(TRACKS)}, got {filter_!r}")


def as_numpy(x: Any, name: str) -> np.ndarray:
    """``x`` (tensor or array-like) as a numpy array; half floats become float32."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        return x.numpy()
    array = np.asarray(x)
    if array.dtype == object:
        raise TypeError(f"{name} must be a numeric array or tensor, got {type(x).__name__}")
    return array


@dataclass(frozen=True)
class FrameComponents:
    """Components of one frame or a batch: ``siou`` ``(G,)`` of the ground-truth components
    and ``ppv`` ``(P,)`` of the predicted ones, after the size filters (frame by frame, each
    in label order)."""

    siou: np.ndarray
    ppv: np.ndarray


def frame_components(
    mask: Any,
    labels: Any,
    sizes: SizeFilter | str = "anomaly",
    *,
    ood_index: int = OOD_INDEX,
    ignore_index: int = IGNORE_INDEX,
) -> FrameComponents:
    """sIoU of every ground-truth component and PPV of every predicted component of one
    frame, ``mask`` bool ``(H, W)`` (the predicted anomaly pixels) and ``labels`` int
    ``(H, W)`` (``ood_index`` = anomaly, ``ignore_index`` = void, anything else
    in-distribution), or of each frame of ``(B, H, W)`` stacks (components never reach
    across frames); ``sizes`` a :class:`SizeFilter` or a track name of :data:`TRACKS`."""
    sizes = _sizes(sizes)
    m, y = as_numpy(mask, "mask"), as_numpy(labels, "labels")
    if m.ndim not in (2, 3) or m.shape != y.shape:
        raise ValueError(
            f"mask has shape {m.shape} and labels {y.shape}; both must be (H, W) or (B, H, W)"
        )
    m, y = m.reshape(-1, *m.shape[-2:]), y.reshape(-1, *y.shape[-2:])
    gt, n_gt = _label(y == ood_index)
    pred, n_pred = _label(m.astype(bool) & (y != ignore_index))  # void is never predicted
    # only pixels in a component matter: the rest of the frame is left behind here
    where = np.flatnonzero(gt | pred)
    g, p = gt.ravel()[where], pred.ravel()[where]
    # the prediction's filter: small predicted components are dropped
    kept = np.bincount(p, minlength=n_pred + 1) >= sizes.min_prediction
    kept[0] = False
    p = np.where(kept[p], p, 0)
    # the ground truth's filter: small components become void, with whatever lies on them
    small = np.bincount(g, minlength=n_gt + 1) < sizes.min_ground_truth
    small[0] = False
    g, p = g[~small[g]], p[~small[g]]
    g_size = np.bincount(g, minlength=n_gt + 1)
    p_size = np.bincount(p, minlength=n_pred + 1)
    # overlaps: one entry per (ground-truth, predicted) pair that shares pixels
    both = (g > 0) & (p > 0)
    pairs, overlap = np.unique(
        g[both].astype(np.int64) * (n_pred + 1) + p[both], return_counts=True
    )
    pair_g, pair_p = pairs // (n_pred + 1), pairs % (n_pred + 1)
    on_gt = np.bincount(pair_p, weights=overlap, minlength=n_pred + 1)  # |k^ & any GT|
    gts = np.flatnonzero(g_size[1:]) + 1
    preds = np.flatnonzero(p_size[1:]) + 1
    # per ground-truth component, sums over the predicted components touching it
    inter = np.bincount(pair_g, weights=overlap, minlength=n_gt + 1)
    union_pred = np.bincount(pair_g, weights=p_size[pair_p], minlength=n_gt + 1)
    others = np.bincount(pair_g, weights=on_gt[pair_p] - overlap, minlength=n_gt + 1)
    # integer counts (exact in float64) divided as the benchmark divides them
    inter, union_pred, others = (a.astype(np.int64) for a in (inter, union_pred, others))
    denominator = union_pred + g_size - inter - others
    siou = inter[gts] / denominator[gts]
    ppv = on_gt.astype(np.int64)[preds] / p_size[preds]
    return FrameComponents(siou=siou.astype(np.float64), ppv=ppv.astype(np.float64))


class ComponentEvaluator:
    """Streaming component metrics (sIoU, PPV, F1) at a known score threshold.

    Args:
        threshold: the rule ``score > threshold`` makes the predicted anomaly mask.
        sizes: a :class:`SizeFilter` or a track name of :data:`TRACKS` (default
            ``"anomaly"``: 500 / 100 pixels).
        ood_index: label of anomaly pixels.
        ignore_index: label of void pixels.

    Memory is constant in the number of frames: running sums and 11 counts per kind.
    """

    def __init__(
        self,
        threshold: float,
        sizes: SizeFilter | str = "anomaly",
        *,
        ood_index: int = OOD_INDEX,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float | np.number):
            raise TypeError(f"threshold must be a number, got {threshold!r}")
        if math.isnan(threshold):
            raise ValueError("threshold is NaN")
        self.threshold = float(threshold)
        self.sizes = _sizes(sizes)
        self.ood_index, self.ignore_index = ood_index, ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget every frame seen so far."""
        self._siou_sum = self._ppv_sum = 0.0
        self._gt = self._pred = 0
        n = len(SIOU_THRESHOLDS)
        self._tp = np.zeros(n, np.int64)
        self._fn = np.zeros(n, np.int64)
        self._fp = np.zeros(n, np.int64)

    def update(self, scores: Any, labels: Any) -> None:
        """Add frames: ``scores`` float and ``labels`` int, both ``(H, W)`` or ``(B, H, W)``
        (tensors or arrays); each frame's components are its own. Frames are taken a few
        million pixels at a time, so a large batch costs no more than a few frames."""
        s, y = as_numpy(scores, "scores"), as_numpy(labels, "labels")
        if s.shape != y.shape or s.ndim not in (2, 3):
            raise ValueError(
                f"scores has shape {s.shape} and labels {y.shape}; both must be (H, W) or (B, H, W)"
            )
        s, y = s.reshape(-1, *s.shape[-2:]), y.reshape(-1, *y.shape[-2:])
        kw = {"ood_index": self.ood_index, "ignore_index": self.ignore_index}
        step = max(1, _CHUNK_PIXELS // max(1, s[0].size))
        for start in range(0, len(s), step):
            chunk = slice(start, start + step)
            self.add_frame(frame_components(s[chunk] > self.threshold, y[chunk], self.sizes, **kw))

    def add_frame(self, frame: FrameComponents) -> None:
        """Add the :class:`FrameComponents` of a frame or batch (:func:`frame_components`)."""
        self._siou_sum += float(np.sum(frame.siou))
        self._ppv_sum += float(np.sum(frame.ppv))
        self._gt += frame.siou.size
        self._pred += frame.ppv.size
        hit = frame.siou[:, None] >= SIOU_THRESHOLDS
        self._tp += hit.sum(0)
        self._fn += (~hit).sum(0)
        self._fp += (frame.ppv[:, None] < SIOU_THRESHOLDS).sum(0)

    def counts(self) -> dict[str, list[int]]:
        """``{"tp", "fn", "fp"}``: the counts at each of :data:`SIOU_THRESHOLDS`."""
        return {"tp": self._tp.tolist(), "fn": self._fn.tolist(), "fp": self._fp.tolist()}

    def compute(self) -> dict[str, float | int | None]:
        """Fractions: ``"siou"`` (mean over ground-truth components), ``"ppv"`` (mean over
        predicted components), ``"f1_25"``, ``"f1_50"``, ``"f1_75"`` and ``"f1_mean"`` (over the
        11 thresholds); counts ``"components"`` and ``"predicted_components"``. A mean or F1
        without anything to average or count is ``None``."""
        total = 2 * self._tp + self._fn + self._fp
        f1 = [2 * tp / d if d else None for tp, d in zip(self._tp, total, strict=True)]
        out: dict[str, float | int | None] = {
            "siou": self._siou_sum / self._gt if self._gt else None,
            "ppv": self._ppv_sum / self._pred if self._pred else None,
        }
        for i, tau in ((0, 25), (5, 50), (10, 75)):
            out[f"f1_{tau}"] = None if f1[i] is None else float(f1[i])
        out["f1_mean"] = None if None in f1 else float(sum(f1) / len(f1))
        out["components"], out["predicted_components"] = self._gt, self._pred
        return out


def evaluate_components(
    frames: Iterable[tuple[Any, Any]],
    sizes: SizeFilter | str = "anomaly",
    threshold: float | None = None,
    *,
    ood_index: int = OOD_INDEX,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, Any]:
    """Component metrics of ``frames``, ``(scores, labels)`` pairs of ``(H, W)`` or
    ``(B, H, W)`` maps, as SegmentMeIfYouCan computes them.

    Without ``threshold`` this reads ``frames`` twice: first the benchmark's pixel curve
    (:class:`~flowenedet.evaluation.smiyc.SmiycPixelCurve`, scores rounded to float16 as the
    benchmark stores them) for its F1-optimal threshold, then the components of the
    float16 scores at that threshold. So ``frames`` must be re-iterable (a list, a dataset,
    not a generator). With ``threshold`` one pass over the scores as given.

    Returns :meth:`ComponentEvaluator.compute` plus ``"threshold"`` (and ``"pixel"``, the
    curve's ``compute()``, when it was measured).
    """
    from .smiyc import SmiycPixelCurve

    out: dict[str, Any] = {}
    cast = threshold is None
    if cast:
        if iter(frames) is frames:
            raise TypeError(
                "frames is a one-shot iterator but the threshold needs a first pass over it: "
                "pass a list or dataset, or give threshold="
            )
        curve = SmiycPixelCurve(ood_index=ood_index, ignore_index=ignore_index)
        for scores, labels in frames:
            curve.update(scores, labels)
        out["pixel"] = curve.compute()
        threshold = out["pixel"]["threshold"]
    evaluator = ComponentEvaluator(threshold, sizes, ood_index=ood_index, ignore_index=ignore_index)
    for scores, labels in frames:
        s = as_numpy(scores, "scores")
        evaluator.update(s.astype(np.float16) if cast else s, labels)
    return {**evaluator.compute(), "threshold": float(threshold), **out}
