"""Pooled pixel metrics: AUROC / AP / FPR95 for OOD, IDM and CDD, mIoU and open-mIoU.

Conventions (docs/benchmarks.md, "Metric conventions"): all valid pixels of all
images are pooled into one curve (per-image averages on request); a higher score means
more suspicious.

* ``"ood"``: positives are OOD pixels, negatives are in-distribution pixels (a class
  label or ``UNLABELLED_ID``).
* ``"idm"``: over pixels with a class label only; positives are ``pred != label``.
* ``"cdd"``: over class-labelled and OOD pixels; positives are OOD or ``pred != label``.

``IGNORE_INDEX`` pixels are left out of everything, ``UNLABELLED_ID`` pixels out of
everything but ``"ood"``.

Threshold rule: a pixel is flagged (rejected) when ``score > threshold``. The thresholds
of :func:`threshold_at` / :meth:`PixelEvaluator.threshold` (F1-optimal, or at a target FPR
or TPR) and open-mIoU all use this rule. An open-set prediction marks rejected pixels with
the class ``K`` (``num_classes``), the ``K + 1``-th class of open-mIoU.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from flowenedet.labels import IGNORE_INDEX, OOD_INDEX, UNLABELLED_ID

__all__ = ["TASKS", "OpenSetIoU", "PixelEvaluator", "Target", "auroc", "average_precision"]
__all__ += ["check_target", "f1_optimal_threshold", "format_table", "fpr_at_tpr", "threshold_at"]

logger = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("ood", "idm", "cdd")
"""Task names reported by :meth:`PixelEvaluator.compute`, in table order."""

ArrayLike = np.ndarray | torch.Tensor
Target = str | tuple[str, float]
"""What a threshold achieves: ``"f1"`` (the F1-optimal cut), ``("fpr", r)`` (the lowest
threshold whose false-positive rate is at most ``r``) or ``("tpr", r)`` (the highest
threshold whose true-positive rate reaches ``r``)."""

# Pixel categories kept by the evaluator.
_CORRECT, _WRONG, _OOD, _UNLABELLED = 0, 1, 2, 3
# Categories taking part in each task, and those of them that are positives.
_TASK_CODES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "ood": ((_CORRECT, _WRONG, _OOD, _UNLABELLED), (_OOD,)),
    "idm": ((_CORRECT, _WRONG), (_WRONG,)),
    "cdd": ((_CORRECT, _WRONG, _OOD), (_WRONG, _OOD)),
}


# --------------------------------------------------------------------------- helpers
def _code_table(codes: tuple[int, ...]) -> np.ndarray:
    """A (256,) bool lookup table that is True at ``codes`` (uint8 pixel codes)."""
    table = np.zeros(256, dtype=np.bool_)
    table[list(codes)] = True
    return table


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    return np.asarray(x)


def _binary_inputs(scores: ArrayLike, positives: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate and flatten ``scores`` (float64) and ``positives`` (bool)."""
    s = _to_numpy(scores)
    p = _to_numpy(positives)
    if s.shape != p.shape:
        raise ValueError(f"scores has shape {s.shape} but positives has shape {p.shape}")
    s = s.reshape(-1).astype(np.float64, copy=False)
    if np.isnan(s).any():
        raise ValueError(f"scores contains {int(np.isnan(s).sum())} NaN value(s)")
    p = p.reshape(-1)
    if p.dtype != np.bool_:
        if p.size and not np.isin(p, (0, 1)).all():
            raise ValueError(
                f"positives must be boolean or 0/1, got values {np.unique(p)[:5].tolist()}"
            )
        p = p.astype(np.bool_)
    return s, p


def _check_both(n_pos: int, n_neg: int, task: str) -> None:
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"{task}: needs positives and negatives, got {n_pos} positive(s) "
            f"and {n_neg} negative(s)"
        )


def _exact_counts(
    scores: np.ndarray, positives: np.ndarray, task: str = "positives"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (tps, fps, thresholds) at each distinct score, highest first."""
    order = np.argsort(scores, kind="stable")[::-1]
    return _sorted_counts(scores[order], positives[order], task)


def _sorted_counts(
    s_desc: np.ndarray, p_desc: np.ndarray, task: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_pos = int(np.count_nonzero(p_desc))
    _check_both(n_pos, p_desc.size - n_pos, task)
    # distinct scores by comparison, not np.diff: inf - inf is NaN, so tied infinities
    # would otherwise be split in input order
    last = np.r_[np.flatnonzero(s_desc[1:] != s_desc[:-1]), s_desc.size - 1]
    tps = np.cumsum(p_desc, dtype=np.int64)[last]
    return tps, last + 1 - tps, s_desc[last]


def _curve_metrics(tps: np.ndarray, fps: np.ndarray, tpr: float = 0.95) -> dict[str, float]:
    """AUROC, AP and FPR at ``tpr`` from cumulative counts at distinct thresholds."""
    n_pos, n_neg = float(tps[-1]), float(fps[-1])
    t = tps.astype(np.float64)
    f = fps.astype(np.float64)
    t_prev = np.r_[0.0, t[:-1]]
    f_prev = np.r_[0.0, f[:-1]]
    area = float(np.sum((f - f_prev) * (t + t_prev))) / (2.0 * n_pos * n_neg)
    ap = float(np.sum((t - t_prev) / n_pos * (t / (t + f))))
    hit = int(np.argmax(t / n_pos >= tpr))
    return {"auroc": area, "ap": ap, "fpr95": float(f[hit] / n_neg)}


def _best_f1_index(tps: np.ndarray, fps: np.ndarray) -> int:
    """Index of the cut (flag thresholds ``0..k``) with the highest F1, first on ties."""
    f1 = 2.0 * tps / (tps + fps + float(tps[-1]))
    return int(np.argmax(f1))


def _check_tpr(tpr: float) -> None:
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")


def check_target(target: Any) -> Target:
    """``target`` as ``"f1"`` or ``(kind, rate)`` with a float rate; ``ValueError`` otherwise
    (``"fpr"`` rates lie in [0, 1], ``"tpr"`` rates in (0, 1])."""
    if target == "f1":
        return "f1"
    if (
        isinstance(target, (tuple, list))
        and len(target) == 2
        and target[0] in ("fpr", "tpr")
        and isinstance(target[1], (int, float))
        and not isinstance(target[1], bool)
    ):
        kind, rate = target[0], float(target[1])
        low_ok = rate >= 0.0 if kind == "fpr" else rate > 0.0
        if low_ok and rate <= 1.0:  # NaN fails too
            return (kind, rate)
    raise ValueError(
        f'target must be "f1", ("fpr", r) with r in [0, 1] or ("tpr", r) with r in (0, 1]; '
        f"got {target!r}"
    )


def _cut_index(tps: np.ndarray, fps: np.ndarray, target: Target) -> int | None:
    """The cut (flag thresholds ``0..k``) that meets ``target``; ``None``: flag nothing."""
    if target == "f1":
        return _best_f1_index(tps, fps)
    kind, rate = target
    if kind == "tpr":  # the first (highest) threshold whose TPR reaches the rate
        return int(np.argmax(tps / float(tps[-1]) >= rate))
    within = np.flatnonzero(fps / float(fps[-1]) <= rate)  # FPR grows with k
    return int(within[-1]) if within.size else None


# ------------------------------------------------------------------ exact functions
def auroc(scores: ArrayLike, positives: ArrayLike) -> float:
    """Area under the ROC curve (trapezoid rule, ties grouped), any shape, flattened."""
    tps, fps, _ = _exact_counts(*_binary_inputs(scores, positives))
    return _curve_metrics(tps, fps)["auroc"]


def average_precision(scores: ArrayLike, positives: ArrayLike) -> float:
    """Step-wise average precision, ``sum (R_n - R_{n-1}) P_n`` as in scikit-learn."""
    tps, fps, _ = _exact_counts(*_binary_inputs(scores, positives))
    return _curve_metrics(tps, fps)["ap"]


def fpr_at_tpr(scores: ArrayLike, positives: ArrayLike, tpr: float = 0.95) -> float:
    """False-positive rate at the first (highest) threshold whose TPR reaches ``tpr``."""
    _check_tpr(tpr)
    tps, fps, _ = _exact_counts(*_binary_inputs(scores, positives))
    return _curve_metrics(tps, fps, tpr)["fpr95"]


def _threshold_between(upper: float, lower: float) -> float:
    """A value ``t`` with ``lower <= t < upper`` (the midpoint when representable)."""
    mid = upper / 2.0 + lower / 2.0
    return float(mid) if lower <= mid < upper else float(lower)


def _exact_threshold(thr: np.ndarray, k: int | None) -> float:
    """``t`` for the rule ``score > t`` that flags exactly the scores ``thr[:k + 1]``."""
    if k is None:
        return float(thr[0])
    return -math.inf if k == len(thr) - 1 else _threshold_between(thr[k], thr[k + 1])


def threshold_at(scores: ArrayLike, positives: ArrayLike, target: Target = "f1") -> float:
    """Threshold ``t`` of the rule ``score > t`` that meets ``target`` (see :data:`Target`).

    ``t`` lies halfway between the lowest flagged score and the highest unflagged one,
    so ``score > t`` reproduces the chosen cut exactly on these data; ``-inf`` when
    flagging every pixel is needed, the highest score when flagging none is.
    """
    target = check_target(target)
    tps, fps, thr = _exact_counts(*_binary_inputs(scores, positives))
    return _exact_threshold(thr, _cut_index(tps, fps, target))


def f1_optimal_threshold(scores: ArrayLike, positives: ArrayLike) -> float:
    """Threshold ``t`` maximising the F1 score of the rule ``score > t``:
    :func:`threshold_at` with ``target="f1"``."""
    return threshold_at(scores, positives, "f1")


# ------------------------------------------------------------------ pooled evaluator
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
        if score_range is not None:
            lo, hi = (float(v) for v in score_range)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(
                    f"score_range must be finite (lo, hi) with lo < hi, got {score_range}"
                )
            if int(bins) < 1:
                raise ValueError(f"bins must be >= 1, got {bins}")
            self.score_range: tuple[float, float] | None = (lo, hi)
        else:
            self.score_range = None
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
        # rows 0..K-1: correct by class; K..2K-1: wrong or OOD by prediction;
        # 2K: unlabelled; 2K+1: OOD (also counted in the wrong-or-OOD rows).
        self._hist = (
            np.zeros((2 * k + 2) * self.bins, dtype=np.int64)
            if self.score_range is not None
            else None
        )

    def update(self, scores: ArrayLike, labels: ArrayLike, preds: ArrayLike) -> None:
        """Add a batch: float ``scores``, int ``labels`` and int ``preds``, all ``(B, H, W)``.

        Pixels labelled ``ignore_index`` are dropped first and may hold any score (NaN too).
        """
        s, y, p = _to_numpy(scores), _to_numpy(labels), _to_numpy(preds)
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
        valid = y.reshape(-1) != self.ignore_index
        image_of = image_of[valid]
        y = y.reshape(-1)[valid].astype(np.int64)
        p = p.reshape(-1)[valid].astype(np.int64)
        s = s.reshape(-1)[valid].astype(np.float64)

        is_class = (y >= 0) & (y < k)
        is_ood = y == self.ood_index
        is_unl = y == self.unlabelled_index
        bad = ~(is_class | is_ood | is_unl)
        if bad.any():
            raise ValueError(
                f"labels contain values {np.unique(y[bad])[:5].tolist()} that are neither "
                f"a class 0..{k - 1} nor ignore/ood/unlabelled "
                f"({self.ignore_index}/{self.ood_index}/{self.unlabelled_index})"
            )
        bad = (p < 0) | (p >= k)
        if bad.any():
            raise ValueError(
                f"preds must be classes 0..{k - 1} on valid pixels, got values "
                f"{np.unique(p[bad])[:5].tolist()}"
            )
        if np.isnan(s).any():
            raise ValueError(f"scores contains {int(np.isnan(s).sum())} NaN value(s)")

        code = np.full(y.shape, _CORRECT, dtype=np.uint8)
        code[is_class & (p != y)] = _WRONG
        code[is_ood] = _OOD
        code[is_unl] = _UNLABELLED
        self._confusion += np.bincount(y[is_class] * k + p[is_class], minlength=k * k)
        if self.per_image:
            for image in range(images):
                mine = image_of == image
                self._images.append(_image_metrics(s[mine], code[mine]))

        if self._hist is None:
            self._chunks.append((s, code, p.astype(np.int32)))
            self._sorted = None
        else:
            b = self._bin_index(s)
            row = np.where(code == _CORRECT, p, k + p)
            row[is_unl] = 2 * k
            idx = np.r_[row * self.bins + b, (2 * k + 1) * self.bins + b[is_ood]]
            self._hist += np.bincount(idx, minlength=self._hist.size)

    def _bin_index(self, s: np.ndarray) -> np.ndarray:
        assert self.score_range is not None
        lo, hi = self.score_range
        x = (np.clip(s, lo, hi) - lo) * (self.bins / (hi - lo))
        return np.clip(np.ceil(x).astype(np.int64) - 1, 0, self.bins - 1)

    def _edges(self) -> np.ndarray:
        """Lower edge of each bin; bin 0 takes everything clamped from below."""
        assert self.score_range is not None
        lo, hi = self.score_range
        edges = lo + np.arange(self.bins, dtype=np.float64) * ((hi - lo) / self.bins)
        edges[0] = -math.inf
        return edges

    # ---------------------------------------------------------------- curves
    def _stored(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stored exact pixels sorted by descending score: (scores, codes, preds)."""
        if self._sorted is None:
            s, code, pred = (np.concatenate(parts) for parts in zip(*self._chunks, strict=True))
            order = np.argsort(s, kind="stable")[::-1]
            self._sorted = (s[order], code[order], pred[order])
            self._chunks = [self._sorted]
        return self._sorted

    def _hist_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(correct (K, bins), wrong-or-OOD by pred (K, bins), unlabelled, OOD (bins,))."""
        assert self._hist is not None
        k = self.num_classes
        h = self._hist.reshape(2 * k + 2, self.bins)
        return h[:k], h[k : 2 * k], h[2 * k], h[2 * k + 1]

    def _task_counts(self, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cumulative (tps, fps, thresholds), highest score first; raises if degenerate."""
        if task not in _TASK_CODES:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        members, pos_codes = _TASK_CODES[task]
        if self._hist is None:
            s, code, _ = self._stored()
            keep = _code_table(members)[code]  # a lookup: much cheaper than np.isin
            return _sorted_counts(s[keep], _code_table(pos_codes)[code[keep]], task)
        correct, wrong_or_ood, unl, ood = self._hist_rows()
        wrong = wrong_or_ood.sum(0) - ood
        per_code = {_CORRECT: correct.sum(0), _WRONG: wrong, _OOD: ood, _UNLABELLED: unl}
        pos = sum(per_code[c] for c in pos_codes)
        neg = sum(per_code[c] for c in members if c not in pos_codes)
        _check_both(int(pos.sum()), int(neg.sum()), task)
        occupied = np.flatnonzero((pos + neg)[::-1])
        tps, fps = np.cumsum(pos[::-1])[occupied], np.cumsum(neg[::-1])[occupied]
        return tps, fps, self._edges()[::-1][occupied]

    def compute(self, tpr: float = 0.95) -> dict[str, dict[str, float] | None]:
        """``{task: {"auroc", "ap", "fpr95"}}`` as fractions for ``"ood"``, ``"idm"``, ``"cdd"``.

        A task without positives or without negatives is ``None`` (logged as a warning).
        ``"fpr95"`` is the FPR at ``tpr``.
        """
        _check_tpr(tpr)
        out: dict[str, dict[str, float] | None] = {}
        for task in TASKS:
            try:
                tps, fps, _ = self._task_counts(task)
            except ValueError as err:
                logger.warning("metrics for task %r not computed: %s", task, err)
                out[task] = None
                continue
            out[task] = _curve_metrics(tps, fps, tpr)
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
        k = _cut_index(tps, fps, target)
        if self._hist is None:
            return _exact_threshold(thr, k)
        if k is not None:
            return float(thr[k])
        lo, hi = self.score_range
        return (lo if thr[0] == -math.inf else float(thr[0])) + (hi - lo) / self.bins

    # ---------------------------------------------------------------- segmentation
    def miou(self) -> float:
        """Mean IoU of preds vs labels over classes ``0..K-1`` present in either."""
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
            keep = code != _UNLABELLED
            s, code, pred = s[keep], code[keep], pred[keep].astype(np.int64)
            key = (code != _CORRECT) * (2 * k) + (s > threshold) * k + pred
            c = np.bincount(key, minlength=4 * k).reshape(4, k)
            cor_keep, cor_rej, wro_keep, wro_rej = c[0], c[1], c[2], c[3]
        else:
            correct, wrong_or_ood, _, _ = self._hist_rows()
            rej = self._edges() >= threshold
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

    def update(self, open_pred: ArrayLike, labels: ArrayLike, preds: ArrayLike) -> None:
        """Add ``(B, H, W)`` open-set predictions (``0..K``), labels and the closed-set
        predictions (``0..K-1``) they were made from."""
        o, y, p = (_to_numpy(a) for a in (open_pred, labels, preds))
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
    for task, (members, pos_codes) in _TASK_CODES.items():
        keep = _code_table(members)[code]
        positives = _code_table(pos_codes)[code[keep]]
        if positives.all() or not positives.any():
            out[task] = None
            continue
        tps, fps, _ = _exact_counts(scores[keep], positives, task)
        out[task] = _curve_metrics(tps, fps)
    return out


# ------------------------------------------------------------------------ table
_TASK_TITLES = {"ood": "OOD", "idm": "IDM", "cdd": "CDD"}
_METRIC_TITLES = {"auroc": "AUROC", "ap": "AP", "fpr95": "FPR95"}
_EXTRA_TITLES = {"miou": "mIoU", "open_miou": "Open-mIoU", "open_miou_oracle": "Open-mIoU (oracle)"}


def _percent(value: Any, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100.0 * float(value):.{decimals}f}"


def format_table(
    rows: Mapping[str, Mapping[str, Any]],
    *,
    tasks: Sequence[str] | None = None,
    metrics: Sequence[str] = ("auroc", "ap", "fpr95"),
    extras: Sequence[str] = (),
    decimals: int = 2,
    method_header: str = "Method",
) -> str:
    """Markdown table, one row per method, values as percentages.

    Args:
        rows: ``{method: compute() output}``, optionally with extra top-level keys
            holding fractions (e.g. ``"miou"``, ``"open_miou"``).
        tasks: task columns to show; default every task of :data:`TASKS` that has
            numbers in at least one row.
        metrics: metric keys per task (FPR95: lower is better; the others higher).
        extras: extra top-level keys to append as columns.
        decimals: digits after the decimal point.

    Missing or ``None`` values are shown as ``-``.
    """
    if tasks is None:
        tasks = [t for t in TASKS if any(isinstance(r.get(t), Mapping) for r in rows.values())]
    titles = [
        f"{_TASK_TITLES.get(t, t)} {_METRIC_TITLES.get(m, m)}" for t in tasks for m in metrics
    ]
    header = [method_header, *titles, *(_EXTRA_TITLES.get(e, e) for e in extras)]
    table = [header, ["---"] + ["--:"] * (len(header) - 1)]
    for method, row in rows.items():
        cells = [str(method).replace("|", "\\|")]
        for t in tasks:
            res = row.get(t) if isinstance(row.get(t), Mapping) else {}
            cells += [_percent(res.get(m), decimals) for m in metrics]
        table.append(cells + [_percent(row.get(e), decimals) for e in extras])
    return "\n".join("| " + " | ".join(cells) + " |" for cells in table)
