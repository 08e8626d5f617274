"""Reject thresholds: the metric module's searches at F1 / FPR / TPR targets, calibration
on held-out toy scenes, storage in the detector file, masks and open-set predictions."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from flowenedet import FlowEneDet, FormatError
from flowenedet import io as fio
from flowenedet.evaluation.metrics import (
    OpenSetIoU,
    PixelEvaluator,
    check_target,
    threshold_at,
)
from flowenedet.storage import FORMAT, FORMAT_VERSION

from .toy import NUM_CLASSES, OOD_LABEL, make_scenes

# ------------------------------------------------------------------ threshold searches
SCORES = np.array([0.95, 0.85, 0.75, 0.65, 0.55, 0.45])
POSITIVES = np.array([1, 1, 0, 1, 0, 0], dtype=bool)  # 3 positives, 3 negatives


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (("tpr", 0.6), 0.80),  # two of three positives: flag the top two
        (("tpr", 1.0), 0.60),  # all three: the top four
        (("fpr", 0.0), 0.80),  # no negative: the top two
        (("fpr", 0.34), 0.60),  # one negative of three: the top four
        ("f1", 0.60),  # top four: F1 = 6/7, the best cut
    ],
)
def test_threshold_at_targets_exact_and_histogram(target, expected):
    assert threshold_at(SCORES, POSITIVES, target) == pytest.approx(expected)
    labels = np.zeros((1, 1, 6), dtype=np.int64)
    preds = POSITIVES.astype(np.int64).reshape(1, 1, 6)  # wrong where positive: the idm task
    for evaluator in (PixelEvaluator(2), PixelEvaluator(2, score_range=(0.0, 1.0), bins=10)):
        evaluator.update(SCORES.reshape(1, 1, 6), labels, preds)
        t = evaluator.threshold("idm", target)
        flagged = SCORES > t
        assert flagged.sum() == (SCORES > expected).sum()


def test_fpr_target_that_no_cut_meets_flags_nothing():
    scores, positives = np.array([0.9, 0.2]), np.array([False, True])
    t = threshold_at(scores, positives, ("fpr", 0.0))
    assert not (scores > t).any()


@pytest.mark.parametrize("bad", ["f2", ("fpr", 1.5), ("tpr", 0.0), ("fpr", math.nan), ("x", 0.1)])
def test_bad_targets_are_refused(bad):
    with pytest.raises(ValueError, match="target must be"):
        check_target(bad)


def test_open_set_iou_by_hand():
    labels = np.array([[[0, 0, 1, 254]]])
    preds = np.array([[[0, 1, 1, 0]]])
    open_pred = np.array([[[0, 2, 2, 2]]])  # reject the last three
    iou = OpenSetIoU(2)
    iou.update(open_pred, labels, preds)
    # class 0: {0} vs {0} -> 1; class 1: {2} vs {} -> 0; reject: {1, 3} vs {1, 2, 3} -> 2/3
    assert iou.compute() == pytest.approx((1 + 0 + 2 / 3) / 3)
    with pytest.raises(ValueError, match="differs from preds"):
        iou.update(np.array([[[1, 2, 2, 2]]]), labels, preds)


# ------------------------------------------------------------------ calibration
@pytest.fixture(scope="module")
def held_out():
    """Labelled scenes with OOD objects, disjoint from the fit data (seed 5)."""
    images, labels = make_scenes(32, seed=11, ood=True)
    return [(images[i : i + 8], labels[i : i + 8]) for i in range(0, 32, 8)]


def _pooled(det, loader):
    maps = [det.score(images) for images, _ in loader]
    labels = torch.cat([labels for _, labels in loader])
    pooled = {kind: torch.cat([getattr(m, kind) for m in maps]) for kind in ("idm", "ood")}
    pooled["concurrent"] = torch.cat([m.concurrent for m in maps])
    return pooled, torch.cat([m.pred for m in maps]), labels


def _task(kind, labels, pred):
    """(members, positives) of each map's task, written out from the benchmark's rules."""
    is_class = labels < NUM_CLASSES
    is_ood = labels == OOD_LABEL
    wrong = is_class & (pred != labels)
    if kind == "idm":
        return is_class, wrong
    if kind == "ood":
        return is_class | is_ood, is_ood
    return is_class | is_ood, wrong | is_ood


def _rates(scores, members, positives, t):
    flagged = scores > t
    tp = (flagged & positives).sum().item()
    fp = (flagged & members & ~positives).sum().item()
    fn = (~flagged & positives).sum().item()
    negatives = (members & ~positives).sum().item()
    return tp / (tp + fn), fp / negatives, 2 * tp / (2 * tp + fp + fn)


@pytest.fixture(scope="module")
def calibrated(fitted, held_out):
    det = copy.copy(fitted["C"])
    return det.calibrate(held_out, target=("fpr", 0.05), progress=False)


def test_fpr_calibration_meets_the_target_on_every_map(calibrated, held_out):
    pooled, pred, labels = _pooled(calibrated, held_out)
    thresholds = calibrated.calibration.thresholds
    assert set(thresholds) == {"idm", "ood", "concurrent"}
    for kind, t in thresholds.items():
        members, positives = _task(kind, labels, pred)
        tpr, fpr, _ = _rates(pooled[kind], members, positives, t)
        assert fpr <= 0.05
        # the lowest such threshold: one bin (1e-5) lower breaks the target or adds nothing
        _, lower_fpr, _ = _rates(pooled[kind], members, positives, t - 2e-5)
        assert lower_fpr > 0.05 or tpr == _rates(pooled[kind], members, positives, t - 2e-5)[0]


def test_tpr_and_f1_calibration(fitted, held_out):
    det = copy.copy(fitted["U"])
    pooled, pred, labels = _pooled(det, held_out)
    det.calibrate(held_out, target=("tpr", 0.9), maps=("ood",), progress=False)
    members, positives = _task("ood", labels, pred)
    assert _rates(pooled["ood"], members, positives, det.calibration.thresholds["ood"])[0] >= 0.9
    det.calibrate(held_out, target="f1", maps=("concurrent",), progress=False)
    members, positives = _task("concurrent", labels, pred)
    best = det.calibration.thresholds["concurrent"]
    f1 = _rates(pooled["concurrent"], members, positives, best)[2]
    grid = [_rates(pooled["concurrent"], members, positives, t)[2] for t in np.linspace(0, 1, 201)]
    assert f1 >= max(grid) - 1e-9


def test_masks_and_open_set_prediction_use_the_stored_thresholds(calibrated, held_out):
    images, labels = held_out[0]
    scores = calibrated.score(images)
    thresholds = calibrated.calibration.thresholds
    masks = scores.masks()
    assert set(masks) == set(thresholds)
    for kind, mask in masks.items():
        assert mask.dtype == torch.bool and mask.shape == labels.shape
        assert torch.equal(mask, getattr(scores, kind) > thresholds[kind])
    open_pred = scores.open_set_prediction()
    rejected = scores.concurrent > thresholds["concurrent"]
    assert rejected.any() and not rejected.all()
    assert torch.equal(open_pred[rejected], torch.full_like(open_pred[rejected], NUM_CLASSES))
    assert torch.equal(open_pred[~rejected], scores.pred[~rejected])


def test_open_miou_reads_the_open_set_prediction(calibrated, held_out):
    t = calibrated.calibration.thresholds["concurrent"]
    iou, evaluator = OpenSetIoU(NUM_CLASSES), PixelEvaluator(NUM_CLASSES)
    for images, labels in held_out:
        scores = calibrated.score(images)
        iou.update(scores.open_set_prediction(), labels, scores.pred)
        evaluator.update(scores.concurrent, labels, scores.pred)
    assert iou.compute() == pytest.approx(evaluator.open_miou(t), abs=1e-12)


def test_thresholds_survive_save_and_load(calibrated, segmenter, held_out, tmp_path):
    path = calibrated.save(tmp_path / "det.safetensors")
    loaded = FlowEneDet.load(path, segmenter)
    assert dict(loaded.calibration.thresholds) == dict(calibrated.calibration.thresholds)
    assert loaded.calibration.target == ("fpr", 0.05)
    assert "calibrated fpr=0.05" in repr(loaded)
    images, _ = held_out[1]
    for kind, mask in loaded.score(images).masks().items():
        assert torch.equal(mask, calibrated.score(images).masks()[kind])


def test_a_format_3_file_loads_uncalibrated():
    from flowenedet.zoo import load_reference_segmenter

    fixture = Path(__file__).parent / "fixtures" / "detector-v3.safetensors"
    loaded = FlowEneDet.load(fixture, load_reference_segmenter())
    assert loaded.calibration is None and "uncalibrated" in repr(loaded)
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"no calibrated threshold.*format 3 or older"):
        loaded.score(images).masks()


@pytest.mark.parametrize(
    ("stored", "match"),
    [
        ({"target": "f1", "thresholds": {"idm": 1.5}}, "must be in"),
        ({"target": "f1", "thresholds": {"idm": "0.5"}}, "must be a number"),
        ({"target": "f1", "thresholds": {"sky": 0.5}}, "maps must be"),
        ({"target": ("fpr", 2.0), "thresholds": {"idm": 0.5}}, "target must be"),
        ({"thresholds": {"idm": 0.5}}, "must hold 'target' and 'thresholds'"),
    ],
)
def test_crafted_thresholds_are_refused(calibrated, segmenter, tmp_path, stored, match):
    path = calibrated.save(tmp_path / "det.safetensors")
    tensors, config, _ = fio.load_file(path, kind=FORMAT, version=FORMAT_VERSION)
    config["calibration"] = stored
    fio.save_file_atomic(path, tensors, kind=FORMAT, version=FORMAT_VERSION, config=config)
    with pytest.raises(FormatError, match=match):
        FlowEneDet.load(path, segmenter)


def test_calibration_needs_positives_of_each_map(fitted):
    images, labels = make_scenes(8, seed=12)  # no OOD objects
    det = copy.copy(fitted["U"])
    with pytest.raises(ValueError, match=r"cannot calibrate the 'ood' map.*OOD pixels"):
        det.calibrate([(images, labels)], progress=False)
    det.calibrate([(images, labels)], maps=("idm",), progress=False)
    scores = det.score(images)
    assert set(scores.masks()) == {"idm"}
    with pytest.raises(ValueError, match="'concurrent' map"):
        scores.open_set_prediction()


def test_calibration_labels_must_match_the_images(fitted):
    images, labels = make_scenes(2, seed=13, ood=True)
    with pytest.raises(ValueError, match="labels has shape"):
        copy.copy(fitted["U"]).calibrate([(images, labels[:, :16])], progress=False)


def test_calibrating_without_ood_pixels_says_what_is_missing_and_what_to_do(fitted):
    images, labels = make_scenes(8, seed=12)  # no OOD objects
    with pytest.raises(ValueError) as error:
        copy.copy(fitted["U"]).calibrate([(images, labels)], progress=False)
    message = str(error.value)
    assert "separates OOD pixels (label 254) from in-distribution pixels" in message
    assert "these data hold 0 of the first and" in message
    assert "maps=('idm',)" in message  # the maps these data can calibrate
