"""Reject thresholds: which pixels each task flags, what a threshold must achieve, and the
search for it. Shared by calibration (the detector's stored thresholds) and the
evaluation metrics, so both read the same definitions.

Tasks (docs/benchmarks.md, "Metric conventions"), over pixels that are not void:

* ``"ood"``: positives are OOD pixels, negatives in-distribution ones (a class label or
  ``UNLABELLED_ID``);
* ``"idm"``: over class-labelled pixels only; positives are ``pred != label``;
* ``"cdd"``: over class-labelled and OOD pixels; positives are OOD or ``pred != label``.

Rule: a pixel is flagged (rejected) when ``score > threshold``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .labels import IGNORE_INDEX, OOD_INDEX, PADDING_INDEX, UNLABELLED_ID

__all__ = [
    "TASKS",
    "TASK_CODES",
    "Bins",
    "Target",
    "TaskHistogram",
    "check_target",
    "curve_metrics",
    "pixel_codes",
    "threshold_at",
]

TASKS: tuple[str, ...] = ("ood", "idm", "cdd")
"""Task names, in table order."""

Target = str | tuple[str, float]
"""What a threshold achieves: ``"f1"`` (the F1-optimal cut), ``("fpr", r)`` (the lowest
threshold whose false-positive rate is at most ``r``) or ``("tpr", r)`` (the highest
threshold whose true-positive rate reaches ``r``)."""

# Pixel categories: a valid pixel is exactly one of them.
CORRECT, WRONG, OOD, UNLABELLED = 0, 1, 2, 3
TASK_CODES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "ood": ((CORRECT, WRONG, OOD, UNLABELLED), (OOD,)),
    "idm": ((CORRECT, WRONG), (WRONG,)),
    "cdd": ((CORRECT, WRONG, OOD), (WRONG, OOD)),
}
"""Task -> (categories taking part, those of them that are positives)."""


def code_table(codes: tuple[int, ...]) -> np.ndarray:
    """A ``(256,)`` bool lookup table that is True at ``codes`` (uint8 pixel categories)."""
    table = np.zeros(256, dtype=np.bool_)
    table[list(codes)] = True
    return table


def to_numpy(x: Any) -> np.ndarray:
    """``x`` (a tensor, bfloat16 included, or array-like) as a numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    return np.asarray(x)


def pixel_codes(
    labels: np.ndarray,
    preds: np.ndarray,
    num_classes: int,
    *,
    ignore_index: int = IGNORE_INDEX,
    ood_index: int = OOD_INDEX,
    unlabelled_index: int = UNLABELLED_ID,
) -> tuple[np.ndarray, np.ndarray]:
    """``(valid, codes)``: the pixels of flat int ``labels`` that are neither void nor
    padding (``PADDING_INDEX``) (bool, same shape) and their categories (uint8, one per
    valid pixel: ``CORRECT``, ``WRONG``, ``OOD``, ``UNLABELLED``). ``ValueError`` for a
    label that is no class and no special value, or a prediction outside ``0..K-1`` on a
    valid pixel."""
    k = num_classes
    valid = (labels != ignore_index) & (labels != PADDING_INDEX)
    y, p = labels[valid].astype(np.int64), preds[valid].astype(np.int64)
    is_class = (y >= 0) & (y < k)
    is_ood = y == ood_index
    is_unl = y == unlabelled_index
    bad = ~(is_class | is_ood | is_unl)
    if bad.any():
        raise ValueError(
            f"labels contain values {np.unique(y[bad])[:5].tolist()} that are neither "
            f"a class 0..{k - 1} nor ignore/ood/unlabelled "
            f"({ignore_index}/{ood_index}/{unlabelled_index})"
        )
    bad = (p < 0) | (p >= k)
    if bad.any():
        raise ValueError(
            f"preds must be classes 0..{k - 1} on valid pixels, got values "
            f"{np.unique(p[bad])[:5].tolist()}"
        )
    code = np.full(y.shape, CORRECT, dtype=np.uint8)
    code[is_class & (p != y)] = WRONG
    code[is_ood] = OOD
    code[is_unl] = UNLABELLED
    return valid, code


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


# ------------------------------------------------------------------ cumulative counts
def check_both(n_pos: int, n_neg: int, task: str) -> None:
    """``ValueError`` unless there are positives and negatives."""
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"{task}: needs positives and negatives, got {n_pos} positive(s) "
            f"and {n_neg} negative(s)"
        )


def sorted_counts(
    s_desc: np.ndarray, p_desc: np.ndarray, task: str = "positives"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative ``(tps, fps, thresholds)`` at each distinct score of scores sorted in
    descending order ``s_desc`` with their positives ``p_desc``."""
    n_pos = int(np.count_nonzero(p_desc))
    check_both(n_pos, p_desc.size - n_pos, task)
    # distinct scores by comparison, not np.diff: inf - inf is NaN, so tied infinities
    # would otherwise be split in input order
    last = np.r_[np.flatnonzero(s_desc[1:] != s_desc[:-1]), s_desc.size - 1]
    tps = np.cumsum(p_desc, dtype=np.int64)[last]
    return tps, last + 1 - tps, s_desc[last]


def exact_counts(
    scores: np.ndarray, positives: np.ndarray, task: str = "positives"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative ``(tps, fps, thresholds)`` at each distinct score, highest first."""
    order = np.argsort(scores)[::-1]  # the order within ties does not change the counts
    return sorted_counts(scores[order], positives[order], task)


def cut_index(
    tps: np.ndarray, fps: np.ndarray, target: Target, cuts: int | None = None
) -> int | None:
    """The cut (flag thresholds ``0..k``) that meets ``target``; ``None``: flag nothing.
    Only the first ``cuts`` cuts (default all) are candidates: the rule ``score > t``
    cannot flag a score of ``-inf``, so the cut that flags it is no candidate
    (:func:`flaggable_cuts`); a rate no candidate reaches gets the last one."""
    cuts = len(tps) if cuts is None else cuts
    if cuts == 0:
        return None
    n_pos, n_neg = float(tps[-1]), float(fps[-1])
    tps, fps = tps[:cuts], fps[:cuts]
    if target == "f1":  # the highest F1, the first on ties
        return int(np.argmax(2.0 * tps / (tps + fps + n_pos)))
    kind, rate = target
    if kind == "tpr":  # the first (highest) threshold whose TPR reaches the rate
        reached = tps / n_pos >= rate
        return int(np.argmax(reached)) if reached.any() else cuts - 1
    within = np.flatnonzero(fps / n_neg <= rate)  # FPR grows with k
    return int(within[-1]) if within.size else None


def flaggable_cuts(thr: np.ndarray) -> int:
    """How many cuts of the distinct scores ``thr`` (highest first) ``score > t`` can make:
    all but the last when the lowest score is ``-inf``, which no ``t`` lies below."""
    return len(thr) - 1 if len(thr) and thr[-1] == -math.inf else len(thr)


def _threshold_between(upper: float, lower: float) -> float:
    """A value ``t`` with ``lower <= t < upper`` (the midpoint when representable; 0
    between ``-inf`` and ``inf``, whose midpoint is NaN)."""
    if math.isinf(upper) and math.isinf(lower):
        return 0.0
    mid = upper / 2.0 + lower / 2.0
    return float(mid) if lower <= mid < upper else float(lower)


def exact_threshold(thr: np.ndarray, k: int | None) -> float:
    """``t`` for the rule ``score > t`` that flags exactly the scores ``thr[:k + 1]``
    (``-inf`` for every score, which flags every score but ``-inf`` itself)."""
    if k is None:
        return float(thr[0])
    return -math.inf if k == len(thr) - 1 else _threshold_between(thr[k], thr[k + 1])


def binary_inputs(scores: Any, positives: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and flatten ``scores`` (float64, no NaN) and ``positives`` (bool or 0/1)."""
    s = to_numpy(scores)
    p = to_numpy(positives)
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


def threshold_at(scores: Any, positives: Any, target: Target = "f1") -> float:
    """Threshold ``t`` of the rule ``score > t`` that meets ``target`` (see :data:`Target`)
    on ``scores`` and ``positives`` of any (equal) shape.

    ``t`` lies halfway between the lowest flagged score and the highest unflagged one,
    so ``score > t`` reproduces the chosen cut exactly on these data; ``-inf`` when
    flagging every pixel is needed, the highest score when flagging none is. Scores may
    be infinite: ``score > t`` never flags ``-inf``, so the cuts searched are those the
    rule can make.
    """
    target = check_target(target)
    tps, fps, thr = exact_counts(*binary_inputs(scores, positives))
    return exact_threshold(thr, cut_index(tps, fps, target, flaggable_cuts(thr)))


def curve_metrics(tps: np.ndarray, fps: np.ndarray, tpr: float = 0.95) -> dict[str, float]:
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


# ------------------------------------------------------------------ histograms
class Bins:
    """``count`` fixed bins over ``[low, high]``: bin ``i`` holds scores in
    ``(low + i w, low + (i + 1) w]``, ``w = (high - low) / count``; scores outside are
    clamped into the end bins."""

    def __init__(self, low: float, high: float, count: int) -> None:
        low, high = float(low), float(high)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"score_range must be finite (lo, hi) with lo < hi, got {(low, high)}")
        if int(count) < 1:
            raise ValueError(f"bins must be >= 1, got {count}")
        self.low, self.high, self.count = low, high, int(count)

    def index(self, s: np.ndarray) -> np.ndarray:
        """The bin of each score of ``s``."""
        x = (np.clip(s, self.low, self.high) - self.low) * (self.count / (self.high - self.low))
        return np.clip(np.ceil(x).astype(np.int64) - 1, 0, self.count - 1)

    def edges(self) -> np.ndarray:
        """The lower edge of each bin; bin 0 takes everything clamped from below."""
        width = (self.high - self.low) / self.count
        edges = self.low + np.arange(self.count, dtype=np.float64) * width
        edges[0] = -math.inf
        return edges

    def counts(
        self, pos: np.ndarray, neg: np.ndarray, task: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cumulative ``(tps, fps, lower edges)`` over occupied bins, highest first, from
        per-bin positive and negative counts."""
        check_both(int(pos.sum()), int(neg.sum()), task)
        occupied = np.flatnonzero((pos + neg)[::-1])
        tps, fps = np.cumsum(pos[::-1])[occupied], np.cumsum(neg[::-1])[occupied]
        return tps, fps, self.edges()[::-1][occupied]

    def threshold(self, tps: np.ndarray, fps: np.ndarray, edges: np.ndarray, target: Target):
        """The threshold meeting ``target`` from :meth:`counts`: the lower edge of the
        lowest flagged bin (the upper edge of the highest occupied bin when nothing is
        flagged); ``-inf`` if everything is flagged."""
        k = cut_index(tps, fps, check_target(target))
        if k is not None:
            return float(edges[k])
        top = self.low if edges[0] == -math.inf else float(edges[0])
        return top + (self.high - self.low) / self.count


class TaskHistogram:
    """Streaming per-category score histograms of one map, for thresholds of every task
    with memory ``4 * bins`` counts whatever the amount of data.

    Args:
        num_classes: ``K``; labels ``0..K-1`` are the in-distribution classes.
        score_range: ``(lo, hi)`` of the :class:`Bins`.
        bins: number of bins.
        ignore_index: void label, left out of everything.
    """

    def __init__(
        self,
        num_classes: int,
        score_range: tuple[float, float] = (0.0, 1.0),
        bins: int = 100_000,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        self.bins = Bins(*score_range, bins)
        self._hist = np.zeros((4, self.bins.count), dtype=np.int64)

    def update(self, scores: Any, labels: Any, preds: Any) -> None:
        """Add ``(B, H, W)`` float scores, int labels and int predictions."""
        s, y, p = (to_numpy(a) for a in (scores, labels, preds))
        if s.shape != y.shape or p.shape != y.shape:
            raise ValueError(f"scores {s.shape}, labels {y.shape} and preds {p.shape} differ")
        s, y, p = s.reshape(-1), y.reshape(-1), p.reshape(-1)
        valid, code = pixel_codes(y, p, self.num_classes, ignore_index=self.ignore_index)
        s = s[valid]
        if np.isnan(s).any():
            raise ValueError(f"scores contains {int(np.isnan(s).sum())} NaN value(s)")
        index = code.astype(np.int64) * self.bins.count + self.bins.index(s)
        self._hist += np.bincount(index, minlength=self._hist.size).reshape(self._hist.shape)

    def counts(self, task: str) -> tuple[int, int]:
        """``(positives, negatives)`` of ``task`` among the pixels added."""
        members, positives = TASK_CODES[task]
        pos = sum(int(self._hist[c].sum()) for c in positives)
        return pos, sum(int(self._hist[c].sum()) for c in members) - pos

    def threshold(self, task: str, target: Target = "f1") -> float:
        """The threshold of ``task`` that meets ``target`` (see :meth:`Bins.threshold`);
        ``ValueError`` when the data hold no positives or no negatives of the task."""
        members, positives = TASK_CODES[task]
        pos = sum(self._hist[c] for c in positives)
        neg = sum(self._hist[c] for c in members if c not in positives)
        return self.bins.threshold(*self.bins.counts(pos, neg, task), target)
