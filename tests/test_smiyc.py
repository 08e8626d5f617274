"""SegmentMeIfYouCan's binned pixel curve: a hand-worked frame, and small frames (every
score its own bin) against scikit-learn's exact curves."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from flowenedet.evaluation.metrics import fpr_at_tpr
from flowenedet.evaluation.smiyc import SmiycPixelCurve

A, V = 254, 255


def curve_of(frames, revision: str) -> dict[str, float]:
    curve = SmiycPixelCurve(revision=revision)
    for scores, labels in frames:
        curve.update(np.asarray(scores, np.float32)[None], np.asarray(labels)[None])
    return curve.compute()


HAND = [([0.9, 0.8, 0.7, 0.2, 0.5], [A, 0, A, 0, V])]


def test_a_hand_worked_frame_in_both_revisions():
    # Valid pixels 0.9 (+), 0.8 (-), 0.7 (+), 0.2 (-); few pixels, so every score is a bin
    # edge and each bin holds the pixels at its lower edge. Points (recall, precision):
    # (1/2, 1), (1/2, 1/2), (1, 2/3), (1, 1/2).
    old, new = curve_of(HAND, "2021"), curve_of(HAND, "2023")
    # 2021: trapezoids from the first point on, none from recall 0:
    # (1 - 1/2) (1/2 + 2/3) / 2 = 7/24 (step-wise it would be 1/2 + 1/2 * 2/3 = 5/6).
    assert old["ap"] == pytest.approx(7 / 24)
    # 2023: from (0, 1), step-wise: 1/2 * 1 + 1/2 * 2/3
    assert new["ap"] == pytest.approx(5 / 6)
    for found in (old, new):
        assert found["auroc"] == pytest.approx(0.75)  # 3 of the 4 (+, -) pairs ordered
        assert found["fpr95"] == 0.5  # TPR reaches 1 with one of two negatives
        # best F1 at (tp 2, fp 1): 4 / 5; the threshold is that bin's lower edge, the
        # positive's own score as float16, so `score > threshold` leaves that pixel out
        assert found["f1"] == pytest.approx(0.8)
        assert found["threshold"] == float(np.float16(0.7))


def small_frames(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Frames with fewer than 384 positives and negatives each and distinct float16 scores
    over all frames. Each kind counts 2**j + 1 pixels, so the quantile levels i / 2**j hit
    the sorted scores exactly and every bin holds the pixels of one score."""
    rng = np.random.default_rng(seed)
    values = np.arange(1, 2048, dtype=np.float64) / 2048  # exact in float16
    high, low = rng.permutation(values[700:]), rng.permutation(values[:1500])
    frames = []
    for _ in range(4):
        n_pos, n_neg = 2 ** int(rng.integers(1, 6)) + 1, 2 ** int(rng.integers(3, 8)) + 1
        taken = set(np.concatenate([s for s, _ in frames])) if frames else set()
        pos = [v for v in high if v not in taken][:n_pos]
        neg = [v for v in low if v not in taken and v not in pos][:n_neg]
        order = rng.permutation(n_pos + n_neg)
        scores = np.array(pos + neg)[order]
        labels = np.array([A] * n_pos + [0] * n_neg)[order]
        frames.append((scores, labels))
    return frames


@pytest.mark.parametrize("seed", range(6))
def test_small_frames_give_the_exact_curves(seed: int):
    frames = small_frames(seed)
    scores = np.concatenate([s for s, _ in frames]).astype(np.float16).astype(np.float64)
    positive = np.concatenate([y for _, y in frames]) == A
    assert len(np.unique(scores)) == len(scores)
    new, old = curve_of(frames, "2023"), curve_of(frames, "2021")
    assert new["ap"] == pytest.approx(average_precision_score(positive, scores), abs=1e-12)
    assert new["auroc"] == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)
    assert new["fpr95"] == pytest.approx(fpr_at_tpr(scores, positive), abs=1e-12)
    # 2021: the trapezoid rule over the same points, from the highest score on
    precision, recall, _ = precision_recall_curve(positive, scores)
    trapezoid = np.sum(np.diff(recall[:-1]) * (precision[1:-1] + precision[:-2]) / 2)
    assert old["ap"] == pytest.approx(-trapezoid, abs=1e-12)
    assert old["fpr95"] == new["fpr95"] and old["threshold"] == new["threshold"]


def test_scores_are_rounded_to_float16_as_the_benchmark_stores_them():
    frame = ([0.50001, 0.5, 0.2], [A, 0, 0])  # equal in float16: one bin, a tie
    assert curve_of([frame], "2023")["ap"] == pytest.approx(0.5)


def test_large_frames_keep_a_bounded_number_of_bins_close_to_the_exact_curve():
    rng = np.random.default_rng(0)
    curve, scores, positive = SmiycPixelCurve(revision="2023"), [], []
    for _ in range(3):
        labels = np.where(rng.random((200, 300)) < 0.1, A, 0)
        frame = rng.random((200, 300)) + 0.5 * (labels == A)
        curve.update(frame, labels)
        scores.append(frame.astype(np.float16).ravel())
        positive.append((labels == A).ravel())
    assert curve.frames == 3 and len(curve.curve()["tp"]) <= 3 * 769  # not 180000 points
    exact = average_precision_score(np.concatenate(positive), np.concatenate(scores))
    assert curve.compute()["ap"] == pytest.approx(exact, abs=2e-3)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="revision must be one of"):
        SmiycPixelCurve(revision="2022")
    curve = SmiycPixelCurve()
    curve.update(np.zeros((2, 2)), np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="needs positives and negatives"):
        curve.compute()
    with pytest.raises(ValueError, match="no frame with valid pixels"):
        SmiycPixelCurve().compute()
