"""Evaluation protocols: each leaderboard's rows and columns, and the FlowEneDet reference
release's per-image IDM metrics against scikit-learn's curves."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import auc, precision_recall_curve, roc_curve

from flowenedet.evaluation.components import ComponentEvaluator
from flowenedet.evaluation.metrics import PixelEvaluator
from flowenedet.evaluation.protocols import (
    PROTOCOLS,
    ProtocolEvaluator,
    ReferencePerImage,
    append_columns,
    protocol_table,
)
from flowenedet.evaluation.smiyc import SmiycPixelCurve
from flowenedet.labels import IGNORE_INDEX, OOD_INDEX

K = 3


def scenes(seed: int, n: int = 4, size: int = 48):
    """Labels with classes, an OOD block (>= 100 px) and void; predictions that err; scores
    higher on errors and OOD."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, (n, size, size))
    preds = np.where(rng.random(labels.shape) < 0.15, (labels + 1) % K, labels)
    for i in range(n):
        r, c = rng.integers(0, size - 14, 2)
        labels[i, r : r + 14, c : c + 14] = OOD_INDEX
    labels[:, :, :3] = IGNORE_INDEX
    scores = rng.random(labels.shape) + 0.6 * ((preds != labels) | (labels == OOD_INDEX))
    return scores.astype(np.float32), labels, preds


def reference_image(scores, labels, preds) -> dict[str, float]:
    """The reference's idm_metrics on one image, with scikit-learn and ood_metrics' rules."""
    keep = labels < K
    miss, s = (preds != labels)[keep], scores[keep]
    fpr, tpr, _ = roc_curve(miss, s)
    precision, recall, _ = precision_recall_curve(miss, s)
    return {
        "auroc": auc(fpr, tpr),
        "ap": auc(recall, precision),
        "fpr95": np.interp(0.95, tpr, fpr),
    }


def test_reference_per_image_matches_scikit_learn_curves():
    scores, labels, preds = scenes(0)
    preds[2] = np.where(labels[2] < K, labels[2], preds[2])  # image 2: no misclassification
    reference = ReferencePerImage(K)
    reference.update(scores, labels, preds)
    got = reference.compute()
    expected = [reference_image(*(a[i] for a in (scores, labels, preds))) for i in (0, 1, 3)]
    assert got["images"] == 3 and reference.skipped == 1
    for key in ("auroc", "ap", "fpr95"):
        assert got[key] == pytest.approx(np.mean([e[key] for e in expected]), abs=1e-12)
    # the reference's AUPR is the trapezoid area, not the step-wise AP the pooled columns use
    step = PixelEvaluator(K, per_image=True)
    step.update(scores, labels, preds)
    assert abs(step.compute_per_image()["idm"]["ap"] - got["ap"]) > 1e-4


def test_smiyc_rows_hold_the_benchmark_curve_and_components():
    scores, labels, preds = scenes(1)
    evaluator = ProtocolEvaluator("smiyc-obstacle", K)
    evaluator.update(scores, labels, preds)
    assert evaluator.needs_second_pass
    for i in range(len(scores)):  # the second pass may come one frame at a time
        evaluator.update_components(scores[i], labels[i])
    row = evaluator.compute()
    curve = SmiycPixelCurve()
    curve.update(scores, labels)
    pixel = curve.compute()
    assert row["ood"] == {k: pixel[k] for k in ("auroc", "ap", "fpr95")}
    assert row["threshold"] == pixel["threshold"] and row["f1"] == pixel["f1"]
    components = ComponentEvaluator(pixel["threshold"], "obstacle")
    components.update(scores.astype(np.float16), labels)  # float16, as the benchmark stores
    assert row["components"] == components.compute()
    assert row["components"]["components"] == 4  # one 196 px OOD block per scene


def test_fishyscapes_and_cityscapes_idm_rows_are_the_pooled_evaluator_s():
    scores, labels, preds = scenes(2)
    pooled = PixelEvaluator(K)
    pooled.update(scores, labels, preds)
    fishy = ProtocolEvaluator("fishyscapes", K)
    fishy.update(scores, labels, preds)
    assert not fishy.needs_second_pass
    assert fishy.compute() == {"ood": pooled.compute()["ood"]}
    idm = ProtocolEvaluator(PROTOCOLS["cityscapes-idm"], K)
    idm.update(scores, labels, preds)
    row = idm.compute()
    assert row["idm"] == pooled.compute()["idm"]
    assert row["idm_per_image"]["images"] == 4
    with pytest.raises(RuntimeError, match="no component metrics"):
        idm.update_components(scores, labels)


def test_the_table_has_the_leaderboard_s_columns():
    scores, labels, preds = scenes(3)
    rows = {}
    for name, shift in (("FED ood", 0.0), ("MSP", 0.3)):
        evaluator = ProtocolEvaluator("smiyc-obstacle", K)
        evaluator.update(scores + shift, labels, preds)
        evaluator.update_components(scores + shift, labels)
        rows[name] = evaluator.compute()
    table = protocol_table(rows, "smiyc-obstacle").splitlines()
    assert table[0] == "| Method | OOD AUROC | OOD AP | OOD FPR95 | sIoU | PPV | mean F1 |"
    assert table[1].count("--:") == 6 and len(table) == 4
    siou = 100 * rows["MSP"]["components"]["siou"]
    assert table[3].startswith("| MSP |") and table[3].split(" | ")[4] == f"{siou:.2f}"
    idm = {"FED idm": {"idm": {"auroc": 0.9, "ap": 0.5, "fpr95": 0.2}, "idm_per_image": None}}
    header = protocol_table(idm, "cityscapes-idm").splitlines()
    assert header[0].endswith("| AUROC/img | AUPR/img | FPR95/img |")
    assert header[2].endswith("| 20.00 | - | - | - |")


def test_append_columns_checks_the_row_count():
    with pytest.raises(ValueError, match="1 row"):
        append_columns("| a |\n| --- |\n| x |", ["b"], [{}, {}], ["b"])


def test_options_that_do_not_apply_are_refused():
    with pytest.raises(ValueError, match="protocol must be one of"):
        ProtocolEvaluator("smiyc", K)
    with pytest.raises(ValueError, match="histogram_bins does not apply"):
        ProtocolEvaluator("smiyc-anomaly", K, histogram_bins=100)
    binned = ProtocolEvaluator("fishyscapes", K, histogram_bins=1000, score_range=(0.0, 2.0))
    assert binned.pixels.score_range == (0.0, 2.0)
