"""Tests for flowenedet.evaluation.metrics: exact curves vs scikit-learn, histogram mode,
tasks, mIoU."""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score, roc_curve

from flowenedet.evaluation.metrics import (
    PixelEvaluator,
    auroc,
    average_precision,
    f1_optimal_threshold,
    format_table,
    fpr_at_tpr,
)
from flowenedet.labels import IGNORE_INDEX, OOD_INDEX, PADDING_INDEX, UNLABELLED_ID


def sk_fpr95(positives: np.ndarray, scores: np.ndarray, tpr: float = 0.95) -> float:
    fpr, tprs, _ = roc_curve(positives, scores, drop_intermediate=False)
    return float(fpr[np.argmax(tprs >= tpr)])


def sk_all(positives: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    return {
        "auroc": roc_auc_score(positives, scores),
        "ap": average_precision_score(positives, scores),
        "fpr95": sk_fpr95(positives, scores),
    }


def ours_all(scores: np.ndarray, positives: np.ndarray) -> dict[str, float]:
    return {
        "auroc": auroc(scores, positives),
        "ap": average_precision(scores, positives),
        "fpr95": fpr_at_tpr(scores, positives),
    }


def assert_close(got: dict, want: dict, tol: float) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=tol), key


# ----------------------------------------------------------------- exact functions
@pytest.mark.parametrize("n, rate, seed", [(50, 0.5, 0), (2000, 0.1, 1), (20000, 0.02, 2)])
def test_exact_functions_match_sklearn_on_continuous_scores(n: int, rate: float, seed: int):
    rng = np.random.default_rng(seed)
    positives = rng.random(n) < rate
    positives[:2] = [True, False]
    scores = rng.normal(size=n) + positives * 1.2
    assert_close(ours_all(scores, positives), sk_all(positives, scores), 1e-12)


@settings(derandomize=True, max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=2, max_size=40).filter(
        lambda xs: len({p for _, p in xs}) == 2
    )
)
def test_exact_functions_match_sklearn_with_heavy_ties(pairs: list[tuple[int, bool]]):
    scores = np.array([s for s, _ in pairs], dtype=np.float32) / 4
    positives = np.array([p for _, p in pairs])
    assert_close(ours_all(scores, positives), sk_all(positives, scores), 1e-12)


@pytest.mark.parametrize(
    "scores, positives",
    [
        ([0.3, 0.7], [0, 1]),
        ([0.7, 0.3], [0, 1]),
        ([0.5, 0.5], [1, 0]),
        ([0.1, 0.9, 0.4, 0.4, 0.2], [0, 0, 1, 0, 0]),  # a single positive, tied
        ([1.0, 2.0, 3.0, 3.0], [1, 1, 1, 0]),  # a single negative
    ],
)
def test_exact_functions_match_sklearn_on_tiny_inputs(scores: list, positives: list):
    s, p = np.array(scores), np.array(positives)
    assert_close(ours_all(s, p), sk_all(p, s), 1e-12)


def test_hand_computed_values_and_tpr_rule():
    scores = np.array([4.0, 3.0, 2.0, 1.0])
    positives = np.array([True, False, True, False])
    # ROC points (0,0) (0,.5) (.5,.5) (.5,1) (1,1): area .75; AP = .5*1 + .5*(2/3).
    assert auroc(scores, positives) == pytest.approx(0.75)
    assert average_precision(scores, positives) == pytest.approx(0.5 + 1 / 3)
    assert fpr_at_tpr(scores, positives, tpr=0.5) == 0.0  # first threshold, 4.0
    assert fpr_at_tpr(scores, positives, tpr=1.0) == 0.5  # threshold 2.0
    assert fpr_at_tpr(scores, positives) == 0.5


def test_torch_and_any_shape_give_the_same_numbers():
    rng = np.random.default_rng(3)
    scores = rng.random((2, 5, 7)).astype(np.float32)
    positives = rng.random((2, 5, 7)) < 0.3
    want = ours_all(scores.ravel(), positives.ravel())
    got = ours_all(torch.from_numpy(scores), torch.from_numpy(positives).long())
    assert got == want


@pytest.mark.parametrize("fn", [auroc, average_precision, fpr_at_tpr, f1_optimal_threshold])
def test_exact_functions_reject_bad_inputs(fn):
    with pytest.raises(ValueError, match=r"0 positive\(s\)"):
        fn(np.array([0.1, 0.2]), np.array([False, False]))
    with pytest.raises(ValueError, match=r"0 negative\(s\)"):
        fn(np.array([0.1, 0.2]), np.array([True, True]))
    with pytest.raises(ValueError, match="NaN"):
        fn(np.array([0.1, np.nan]), np.array([True, False]))
    with pytest.raises(ValueError, match=r"scores has shape \(3,\) but positives has shape \(2,\)"):
        fn(np.array([0.1, 0.2, 0.3]), np.array([True, False]))
    with pytest.raises(ValueError, match="positives must be boolean or 0/1"):
        fn(np.array([0.1, 0.2]), np.array([2, 0]))


def test_f1_optimal_threshold_by_hand_and_rule_is_strictly_greater():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    positives = np.array([False, False, True, True])
    # Cuts: {.8} F1 2/3, {.8,.4} 1/2, {.8,.4,.35} 4/5, all 2/3: flag score >= .35.
    t = f1_optimal_threshold(scores, positives)
    assert t == pytest.approx(0.225)
    assert list(scores > t) == [False, True, True, True]
    # Flagging everything is optimal here: the threshold is -inf.
    assert f1_optimal_threshold(np.array([0.2, 0.1, 0.3]), np.array([1, 1, 0])) == -np.inf


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_optimal_threshold_reaches_the_best_f1(seed: int):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=300), 1)  # ties
    positives = rng.random(300) < 0.3 + 0.4 * (scores > 0.5)
    candidates = np.r_[-np.inf, np.unique(scores)]
    best = max(f1_score(positives, scores > c) for c in candidates)
    t = f1_optimal_threshold(scores, positives)
    assert f1_score(positives, scores > t) == pytest.approx(best, abs=1e-12)


# ----------------------------------------------------------------- task definitions
# One 3x3 image, K = 3. Flat pixel: (label, pred) and its role in each task.
LABELS = np.array([[[0, 1, IGNORE_INDEX], [OOD_INDEX, UNLABELLED_ID, 2], [1, 0, OOD_INDEX]]])
PREDS = np.array([[[0, 2, 1], [0, 1, 2], [1, 1, 0]]])
# 0 correct, 1 wrong, 2 void, 3 OOD, 4 unlabelled, 5 correct, 6 correct, 7 wrong, 8 OOD
HAND_TASKS = {
    "ood": ([0, 1, 3, 4, 5, 6, 7, 8], [3, 8]),
    "idm": ([0, 1, 5, 6, 7], [1, 7]),
    "cdd": ([0, 1, 3, 5, 6, 7, 8], [1, 3, 7, 8]),
}
SCORES = np.array([[[0.1, 0.7, np.nan], [0.9, 0.95, 0.6], [0.2, 0.3, 0.8]]])


@pytest.mark.parametrize("score_range", [None, (0.0, 1.0)])
@pytest.mark.parametrize("seed", range(4))
def test_task_definitions_on_a_hand_built_label_map(seed: int, score_range):
    rng = np.random.default_rng(seed)
    scores = rng.permutation(9).reshape(1, 3, 3) / 10.0
    scores[0, 0, 2] = np.nan  # void pixels may hold anything
    ev = PixelEvaluator(3, score_range=score_range)
    ev.update(scores, LABELS, PREDS)
    got = ev.compute()
    flat = scores.ravel()
    for task, (members, pos) in HAND_TASKS.items():
        want = sk_all(np.isin(members, pos), flat[members])
        assert_close(got[task], want, 1e-9)


def test_task_definitions_on_random_maps_match_numpy_masks():
    rng = np.random.default_rng(5)
    k = 4
    labels = rng.choice([0, 1, 2, 3, UNLABELLED_ID, OOD_INDEX, IGNORE_INDEX], size=(3, 20, 20))
    preds = rng.integers(0, k, size=(3, 20, 20))
    scores = rng.random((3, 20, 20)) + 0.3 * (labels == OOD_INDEX) + 0.2 * (preds != labels)
    ev = PixelEvaluator(k)
    ev.update(torch.from_numpy(scores), torch.from_numpy(labels), torch.from_numpy(preds))
    got = ev.compute()
    cls = labels < k
    ood = labels == OOD_INDEX
    masks = {
        "ood": (labels != IGNORE_INDEX, ood),
        "idm": (cls, preds != labels),
        "cdd": (cls | ood, ood | (preds != labels)),
    }
    for task, (member, pos) in masks.items():
        assert_close(got[task], sk_all(pos[member], scores[member]), 1e-12)


def test_clean_split_reports_ood_as_none_with_a_warning(caplog):
    labels = np.where(LABELS == OOD_INDEX, 0, LABELS)
    ev = PixelEvaluator(3)
    ev.update(np.nan_to_num(SCORES), labels, PREDS)
    with caplog.at_level(logging.WARNING, logger="flowenedet.evaluation.metrics"):
        out = ev.compute()
    assert out["ood"] is None
    assert out["idm"] is not None and out["cdd"] is not None
    assert "ood" in caplog.text
    with pytest.raises(ValueError, match="ood"):
        ev.threshold("ood")


# ----------------------------------------------------------------- mIoU / open-mIoU
@pytest.mark.parametrize("num_classes", [3, 4])  # class 3 absent: left out of the means
@pytest.mark.parametrize("score_range", [None, (0.0, 1.0)])
def test_miou_and_open_miou_by_hand(score_range, num_classes: int):
    ev = PixelEvaluator(num_classes, score_range=score_range, bins=100)
    ev.update(SCORES, LABELS, PREDS)
    # Class pixels (label, pred): (0,0) (1,2) (2,2) (1,1) (0,1): IoUs 1/2, 1/3, 1/2.
    assert ev.miou() == pytest.approx(4 / 9)
    # tau = .5 rejects pixels 1, 3, 5, 8 (4 is unlabelled, left out).
    # Open GT: 0->0, 1->R, 3->R, 5->2, 6->1, 7->R, 8->R; open pred: 0->0, 1->R, 3->R,
    # 5->R, 6->1, 7->1, 8->R. IoUs: class 0 1, class 1 1/2, class 2 0, reject 3/5.
    assert ev.open_miou(0.5) == pytest.approx((1 + 0.5 + 0 + 0.6) / 4)
    if score_range is None:
        # Rule is score > tau: pixel 5 (score .6) stays class 2; reject IoU 3/4.
        assert ev.open_miou(0.6) == pytest.approx((1 + 0.5 + 1 + 0.75) / 4)
    # CDD sorted: .9P .8P .7P .6N .3P .2N .1N; best F1 flags down to .3 (8/9).
    tau = ev.threshold("cdd")
    assert 0.2 <= tau < 0.3
    if score_range is None:
        assert tau == pytest.approx(0.25)
    # Rejecting down to .3: class 0 1, class 1 1, class 2 0, reject 4/5.
    assert ev.open_miou(tau) == pytest.approx((1 + 1 + 0 + 0.8) / 4)
    # Rejecting everything: every class IoU 0, reject 4/7 (3 correct pixels rejected).
    assert ev.open_miou(-np.inf) == pytest.approx((4 / 7) / 4)


# ----------------------------------------------------------------- histogram mode
def make_split(seed: int, n_images: int, size: int, k: int = 6):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n_images, size, size), generator=gen)
    labels[:, : size // 8] = OOD_INDEX
    labels[:, size // 8 : size // 8 + 4] = IGNORE_INDEX
    labels[:, -3:] = UNLABELLED_ID
    noise = torch.randint(0, k, labels.shape, generator=gen)
    keep = torch.rand(labels.shape, generator=gen) < 0.85
    preds = torch.where(keep & (labels < k), labels, noise)
    suspicious = (labels == OOD_INDEX) | ((preds != labels) & (labels < k))
    scores = torch.rand(labels.shape, generator=gen) ** 2 + 0.6 * suspicious
    return scores, labels, preds, k


def test_histogram_mode_matches_exact_on_millions_of_pixels():
    scores, labels, preds, k = make_split(0, 12, 512)  # 3.1 million pixels
    exact = PixelEvaluator(k)
    hist = PixelEvaluator(k, score_range=(0.0, 1.6), bins=100_000)
    for i in range(0, 12, 4):
        exact.update(scores[i : i + 4], labels[i : i + 4], preds[i : i + 4])
        hist.update(scores[i : i + 4], labels[i : i + 4], preds[i : i + 4])
    want, got = exact.compute(), hist.compute()
    for task in ("ood", "idm", "cdd"):
        assert_close(got[task], want[task], 1e-3)
    assert hist.miou() == exact.miou()
    tau = exact.threshold()
    assert abs(hist.threshold() - tau) < 1e-3
    assert hist.open_miou(tau) == pytest.approx(exact.open_miou(tau), abs=1e-3)


def test_histogram_mode_with_adversarial_ties_and_clamping():
    rng = np.random.default_rng(7)
    k = 3
    labels = rng.choice([0, 1, 2, OOD_INDEX], size=(4, 100, 100), p=[0.3, 0.3, 0.3, 0.1])
    preds = np.where(rng.random(labels.shape) < 0.8, np.minimum(labels, k - 1), 0)
    # Few distinct values, many sitting exactly on bin edges of (0, 1) with 1000 bins.
    scores = rng.integers(0, 11, size=labels.shape) / 10.0
    exact = PixelEvaluator(k)
    hist = PixelEvaluator(k, score_range=(0.0, 1.0), bins=1000)
    exact.update(scores, labels, preds)
    hist.update(scores, labels, preds)
    want, got = exact.compute(), hist.compute()
    for task in ("ood", "idm", "cdd"):
        assert_close(got[task], want[task], 1e-12)
    # Out-of-range values are clamped into the end bins: same as clamping beforehand.
    wide = scores * 3 - 1
    wide[0, 0, :5] = np.inf
    wide[1, 0, :5] = -np.inf
    clamped = PixelEvaluator(k)
    clamped.update(np.clip(wide, 0.0, 1.0), labels, preds)
    hist_wide = PixelEvaluator(k, score_range=(0.0, 1.0), bins=1000)
    hist_wide.update(wide, labels, preds)
    for task in ("ood", "idm", "cdd"):
        assert_close(hist_wide.compute()[task], clamped.compute()[task], 1e-12)


@pytest.mark.parametrize("score_range", [None, (0.0, 1.6)])
def test_streaming_updates_equal_one_big_update(score_range):
    scores, labels, preds, k = make_split(1, 6, 32)
    one = PixelEvaluator(k, score_range=score_range, bins=5000)
    one.update(scores, labels, preds)
    many = PixelEvaluator(k, score_range=score_range, bins=5000)
    for i in range(6):
        many.update(scores[i : i + 1].numpy(), labels[i : i + 1].numpy(), preds[i : i + 1])
    assert many.compute() == one.compute()
    assert many.miou() == one.miou()
    assert many.threshold() == one.threshold()
    assert many.open_miou(0.7) == one.open_miou(0.7)
    many.reset()
    with pytest.raises(ValueError, match="miou"):
        many.miou()


def test_update_rejects_bad_inputs():
    ev = PixelEvaluator(3)
    s = np.zeros((2, 4, 4))
    y = np.zeros((2, 4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match=r"scores has shape \(2, 4, 4\), labels \(2, 4, 5\)"):
        ev.update(s, np.zeros((2, 4, 5), dtype=np.int64), y)
    with pytest.raises(ValueError, match=r"preds \(2, 4\)"):
        ev.update(s, y, y[:, 0])
    with pytest.raises(ValueError, match=r"labels contain values \[7\]"):
        ev.update(s, np.full_like(y, 7), y)
    with pytest.raises(ValueError, match=r"preds must be classes 0..2.*\[3\]"):
        ev.update(s, y, np.full_like(y, 3))
    with pytest.raises(ValueError, match="NaN"):
        ev.update(np.full_like(s, np.nan), y, y)
    with pytest.raises(ValueError, match="labels must be an integer"):
        ev.update(s, s, y)
    with pytest.raises(ValueError, match="score_range"):
        PixelEvaluator(3, score_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="task must be one of"):
        ev.threshold("foo")


# ----------------------------------------------------------------- table
def test_format_table_shows_percentages_with_two_decimals():
    rows = {
        "MSP": {
            "ood": None,
            "idm": {"auroc": 0.876543, "ap": 0.5, "fpr95": 0.123456},
            "cdd": {"auroc": 0.9, "ap": 0.25, "fpr95": 0.3},
            "miou": 0.7,
        },
        "FlowEneDet": {
            "ood": {"auroc": 0.95, "ap": 0.6, "fpr95": 0.2},
            "idm": {"auroc": 0.9, "ap": 0.55, "fpr95": 0.1},
            "cdd": {"auroc": 0.91, "ap": 0.3, "fpr95": 0.25},
        },
    }
    lines = format_table(rows, extras=["miou"]).splitlines()
    assert len(lines) == 4
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    titles = [f"{t} {m}" for t in ("OOD", "IDM", "CDD") for m in ("AUROC", "AP", "FPR95")]
    assert header == ["Method", *titles, "mIoU"]
    msp = [c.strip() for c in lines[2].strip("|").split("|")]
    numbers = ["87.65", "50.00", "12.35", "90.00", "25.00", "30.00", "70.00"]
    assert msp == ["MSP", "-", "-", "-", *numbers]
    assert lines[3].split("|")[-2].strip() == "-"  # FlowEneDet has no mIoU
    only_idm = format_table({"MSP": rows["MSP"]}).splitlines()[0]
    assert "OOD" not in only_idm and "IDM AUROC" in only_idm


def test_tied_infinite_scores_are_one_group_whatever_their_order():
    # two +inf (one positive, one negative) above a finite negative and a -inf positive
    scores = np.array([np.inf, np.inf, 0.5, -np.inf])
    positives = np.array([True, False, False, True])
    reference = roc_auc_score(positives, np.array([9.0, 9.0, 0.5, -9.0]))
    for order in itertools.permutations(range(4)):
        order = list(order)
        assert auroc(scores[order], positives[order]) == pytest.approx(reference)
        assert average_precision(scores[order], positives[order]) == pytest.approx(
            average_precision_score(positives, np.array([9.0, 9.0, 0.5, -9.0]))
        )


def test_the_old_module_names_still_work_with_a_deprecation_warning():
    script = (
        "import sys, warnings\n"
        "warnings.simplefilter('error', DeprecationWarning)\n"
        "import flowenedet\n"
        "assert 'flowenedet.evaluation' not in sys.modules, 'the core imported evaluation'\n"
        "try:\n"
        "    from flowenedet.metrics import auroc\n"
        "except DeprecationWarning as warning:\n"
        "    assert 'flowenedet.evaluation.metrics' in str(warning)\n"
        "else:\n"
        "    raise AssertionError('no DeprecationWarning')\n"
        "warnings.simplefilter('ignore', DeprecationWarning)\n"
        "from flowenedet.metrics import auroc\n"
        "from flowenedet.baselines import MSP\n"
        "import flowenedet.evaluation.baselines as b, flowenedet.evaluation.metrics as m\n"
        "assert auroc is m.auroc and MSP is b.MSP\n"
        "assert flowenedet.PixelEvaluator is m.PixelEvaluator\n"
        "assert flowenedet.metrics.auroc is m.auroc\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


# ------------------------------------------------------------------ infinite scores, padding
def _best_flaggable_f1(scores: np.ndarray, positives: np.ndarray) -> float:
    """The best F1 of the rule score > t over every t (brute force)."""
    candidates = np.r_[-np.inf, np.unique(scores)]
    return max(f1_score(positives, scores > t, zero_division=0.0) for t in candidates)


@pytest.mark.parametrize("seed", range(40))
def test_the_f1_threshold_is_optimal_with_infinite_scores(seed: int):
    """±inf scores: the threshold's F1 (rule score > t) is the best the rule can reach;
    -inf is never flagged, so "flag everything" is no answer when a score is -inf; with
    finite stand-ins for the infinities it is scikit-learn's optimum."""
    rng = np.random.default_rng(seed)
    scores = rng.choice([-np.inf, np.inf, -1.0, 0.0, 0.5, 1.0, 2.0], size=int(rng.integers(3, 14)))
    positives = rng.random(scores.size) < 0.5
    positives[:2] = (True, False)
    t = f1_optimal_threshold(scores, positives)
    achieved = f1_score(positives, scores > t, zero_division=0.0)
    assert achieved == pytest.approx(_best_flaggable_f1(scores, positives))
    finite = np.nan_to_num(scores, posinf=10.0, neginf=-10.0)
    t = f1_optimal_threshold(finite, positives)
    best = max(f1_score(positives, finite >= v) for v in np.unique(finite))  # sklearn's rule
    assert f1_score(positives, finite > t) == pytest.approx(best)


def test_padding_labels_are_left_out_of_every_metric():
    scores = np.array([[[0.9, 0.1, 0.5, 0.7]]])
    preds = np.array([[[1, 0, 0, 1]]])
    labels = np.array([[[0, 0, PADDING_INDEX, 1]]])
    evaluator, reference = PixelEvaluator(2), PixelEvaluator(2)
    evaluator.update(scores, labels, preds)
    reference.update(scores, np.where(labels == PADDING_INDEX, IGNORE_INDEX, labels), preds)
    assert evaluator.compute() == reference.compute()
    assert evaluator.miou() == reference.miou()


def test_a_num_classes_the_data_disagree_with_is_warned_about(caplog):
    labels = np.random.default_rng(0).integers(0, 4, size=(2, 8, 8))
    scores = np.random.default_rng(1).random((2, 8, 8))
    with caplog.at_level(logging.WARNING, logger="flowenedet.evaluation.metrics"):
        evaluator = PixelEvaluator(num_classes=19)
        evaluator.update(scores, labels, labels)
        evaluator.miou()
        evaluator.compute()
    assert caplog.text.count("never exceed class 3; pass num_classes=4") == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flowenedet.evaluation.metrics"):
        evaluator = PixelEvaluator(num_classes=19)
        evaluator.update(scores, labels * 6, labels)  # labels up to 18, predictions up to 3
        evaluator.miou()
    assert "predictions never exceed class 3 but the labels reach class 18" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flowenedet.evaluation.metrics"):
        evaluator = PixelEvaluator(num_classes=5)  # class 4 simply absent: no warning
        evaluator.update(scores, labels, labels)
        evaluator.miou()
    assert not caplog.text
    with pytest.raises(ValueError, match=r"preds must be classes 0\.\.2"):
        PixelEvaluator(num_classes=3).update(scores, labels.clip(0, 2), labels)
