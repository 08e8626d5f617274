"""Exact pooled curves of one binary task: AUROC (trapezoid), step-wise AP and the FPR at a
TPR, from scores and positives of any shape (docs/benchmarks.md, "Metric conventions").
For streams of maps over many images use :class:`flowenedet.evaluation.metrics.PixelEvaluator`.
"""

from __future__ import annotations

from typing import Any

from ..thresholds import binary_inputs, curve_metrics, exact_counts, threshold_at

__all__ = ["auroc", "average_precision", "curve_metrics", "f1_optimal_threshold", "fpr_at_tpr"]


def check_tpr(tpr: float) -> None:
    """``ValueError`` unless ``0 < tpr <= 1``."""
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")


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
