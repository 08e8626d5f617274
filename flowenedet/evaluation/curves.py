"""Exact pooled curves of one binary task: AUROC (trapezoid), step-wise AP and the FPR at a
TPR, from scores and positives of any shape (docs/benchmarks.md, "Metric conventions").
For streams of maps over many images use :class:`flowenedet.evaluation.metrics.PixelEvaluator`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..thresholds import binary_inputs, exact_counts, threshold_at

__all__ = ["auroc", "average_precision", "curve_metrics", "f1_optimal_threshold", "fpr_at_tpr"]


def check_tpr(tpr: float) -> None:
    """``ValueError`` unless ``0 < tpr <= 1``."""
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")


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


def auroc(scores: Any, positives: Any) -> float:
    """Area under the ROC curve (trapezoid rule, ties grouped), any shape, flattened."""
    tps, fps, _ = exact_counts(*binary_inputs(scores, positives))
    return curve_metrics(tps, fps)["auroc"]


def average_precision(scores: Any, positives: Any) -> float:
    """Step-wise average precision, ``sum (R_n - R_{n-1}) P_n`` as in scikit-learn."""
    tps, fps, _ = exact_counts(*binary_inputs(scores, positives))
    return curve_metrics(tps, fps)["ap"]


def fpr_at_tpr(scores: Any, positives: Any, tpr: float = 0.95) -> float:
    """False-positive rate at the first (highest) threshold whose TPR reaches ``tpr``."""
    check_tpr(tpr)
    tps, fps, _ = exact_counts(*binary_inputs(scores, positives))
    return curve_metrics(tps, fps, tpr)["fpr95"]


def f1_optimal_threshold(scores: Any, positives: Any) -> float:
    """Threshold ``t`` maximising the F1 score of the rule ``score > t``:
    :func:`threshold_at` with ``target="f1"``."""
    return threshold_at(scores, positives, "f1")
