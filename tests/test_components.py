"""Component metrics (sIoU, PPV, F1) of SegmentMeIfYouCan: hand-worked frames and an
independent pixel-set computation on random maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowenedet.evaluation import components
from flowenedet.evaluation.components import (
    ANOMALY_TRACK,
    OBSTACLE_TRACK,
    SIOU_THRESHOLDS,
    ComponentEvaluator,
    SizeFilter,
    evaluate_components,
    frame_components,
)

A, V = 254, 255  # anomaly, void; 0 is in-distribution
NO_FILTER = SizeFilter(min_prediction=0, min_ground_truth=0)


def grid(rows: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predicted mask from text: ``.`` ID, ``a`` anomaly, ``v`` void; upper case
    (``P``, ``A``, ``V``) the same pixel also predicted."""
    text = np.array([list(row) for row in rows])
    labels = np.select([np.isin(text, ["a", "A"]), np.isin(text, ["v", "V"])], [A, V], 0)
    return labels, np.char.isupper(text)


def metrics_of(rows: list[str], sizes: SizeFilter = NO_FILTER) -> dict:
    labels, mask = grid(rows)
    evaluator = ComponentEvaluator(0.5, sizes)
    evaluator.update(mask.astype(np.float32), labels)
    return {**evaluator.compute(), **evaluator.counts()}


def test_one_prediction_spanning_two_ground_truth_components():
    rows = [
        "..........",
        ".aAPPAa...",
        ".aAPPAa...",
        ".aAPPAa...",
        "..........",
    ]
    # GT left and right: 6 px each; the prediction P: 12 px, 3 on each GT component.
    # sIoU(left) = 3 / (12 + 6 - 3 - 3) = 1/4 (the 3 px on the right GT are not counted
    # against it); the same for the right one. PPV(P) = 6 / 12.
    got = metrics_of(rows)
    assert got["siou"] == 0.25 and got["ppv"] == 0.5
    assert got["components"] == 2 and got["predicted_components"] == 1
    # tau = 0.25: both GT found, P (PPV 0.5) no FP -> F1 1. tau 0.30..0.50: 0 TP, 2 FN.
    # tau 0.55..0.75: 0 TP, 2 FN, 1 FP. Mean F1 = 1 / 11.
    assert got["tp"] == [2] + [0] * 10 and got["fn"] == [0] + [2] * 10
    assert got["fp"] == [0] * 6 + [1] * 5
    assert got["f1_25"] == 1.0 and got["f1_50"] == 0.0 and got["f1_75"] == 0.0
    assert got["f1_mean"] == pytest.approx(1 / 11)


def test_diagonal_neighbours_are_one_component():
    rows = [
        ".....",
        ".A...",
        "..a..",
        "...a.",
        ".....",
    ]
    # 8-connectivity: one GT component of 3 px, one predicted pixel on it:
    # sIoU = 1 / (1 + 3 - 1) = 1/3 (4-connectivity would give three components).
    got = metrics_of(rows)
    assert got["components"] == 1 and got["siou"] == pytest.approx(1 / 3)
    assert got["ppv"] == 1.0


def test_void_pixels_are_never_predicted():
    hole = [
        ".....",
        ".AAA.",
        ".AVA.",
        ".AAA.",
        ".....",
    ]
    # The predicted 3 x 3 block loses its void centre: 8 px, all on the GT ring.
    got = metrics_of(hole)
    assert got["siou"] == 1.0 and got["ppv"] == 1.0
    wall = [
        "....v...",
        ".AAAVPP.",
        ".AAAVPP.",
        ".AAAVPP.",
        "....v...",
    ]
    # A void column cuts the predicted block in two components: the left one is the GT
    # (sIoU 1, PPV 1), the right one lies on ID (PPV 0): one FP at every tau.
    got = metrics_of(wall)
    assert got["siou"] == 1.0 and got["ppv"] == 0.5 and got["predicted_components"] == 2
    assert got["f1_mean"] == pytest.approx(2 / 3)


def test_size_filters_drop_small_predictions_and_void_small_ground_truth():
    rows = [
        "AAA.......",
        "......PP..",
        "..........",
        ".aaAA.....",
        ".aaAA.PPP.",
        "..........",
    ]
    sizes = SizeFilter(min_prediction=3, min_ground_truth=4)
    # top left: a 3 px GT component (< 4: void) predicted exactly: the prediction vanishes
    # with it, counted neither way. "PP": 2 px (< 3: dropped). Bottom: GT 8 px with 4 px
    # predicted: sIoU 4 / 8 = 1/2; "PPP" on ID: PPV 0.
    got = metrics_of(rows, sizes)
    assert got["components"] == 1 and got["predicted_components"] == 2
    assert got["siou"] == 0.5 and got["ppv"] == 0.5
    # sIoU 0.5 >= tau up to 0.50 (6 taus): F1 2/3 there, then 0; PPV 0 is an FP everywhere
    assert got["f1_mean"] == pytest.approx(6 * (2 / 3) / 11)
    unfiltered = metrics_of(rows)
    assert unfiltered["components"] == 2 and unfiltered["predicted_components"] == 4


def test_track_filters_at_their_exact_sizes():
    labels = np.zeros((60, 80), np.int64)
    labels[2:12, 2:12] = A  # 100 px: kept by the anomaly track
    labels[20:29, 2:13] = A  # 99 px: void
    scores = np.zeros((60, 80), np.float32)
    scores[2:22, 40:65] = 1.0  # 500 px on ID: kept, an FP
    scores[35:55, 40:65] = 1.0
    scores[35, 40] = 0.0  # 499 px: dropped
    scores[20:29, 2:13] = 1.0  # 99 px on the voided GT: vanishes with it
    evaluator = ComponentEvaluator(0.5, "anomaly")
    evaluator.update(scores, labels)
    got = evaluator.compute()
    assert (got["components"], got["predicted_components"]) == (1, 1)
    assert got["siou"] == 0.0 and got["ppv"] == 0.0 and got["f1_mean"] == 0.0
    assert ANOMALY_TRACK == SizeFilter(500, 100) and OBSTACLE_TRACK == SizeFilter(50, 10)
    obstacle = ComponentEvaluator(0.5, "obstacle")
    obstacle.update(scores, labels)
    assert obstacle.compute()["components"] == 2  # 99 px >= 10
    assert obstacle.compute()["predicted_components"] == 3  # 499 px >= 50


def test_an_siou_of_exactly_0_6_misses_the_benchmarks_0_6_threshold():
    rows = [
        ".......",
        ".AAAaa.",
        ".......",
    ]
    got = metrics_of(rows)
    assert got["siou"] == 0.6  # 3 / (3 + 5 - 3)
    assert SIOU_THRESHOLDS[7] == 0.6000000000000001  # np.linspace, as the benchmark
    assert got["tp"] == [1] * 7 + [0] * 4


def test_frames_are_counted_separately_and_batches_equal_single_frames():
    rows = [
        ".AAa.",
        ".....",
        ".PP..",
    ]
    labels, mask = grid(rows)
    scores = torch.from_numpy(mask.astype(np.float32))
    batch = ComponentEvaluator(0.5, NO_FILTER)
    batch.update(torch.stack([scores, scores]), torch.from_numpy(np.stack([labels, labels])))
    single = ComponentEvaluator(0.5, NO_FILTER)
    for _ in range(2):
        single.update(scores, labels)
    assert batch.compute() == single.compute()
    assert batch.compute()["components"] == 2 and batch.compute()["predicted_components"] == 4
    track = ComponentEvaluator(0.5)  # the anomaly track: 3 px is under 100, void
    track.update(scores, labels)
    assert track.compute()["components"] == 0


def test_a_large_batch_is_taken_in_chunks_with_the_same_result(monkeypatch):
    rng = np.random.default_rng(1)
    labels = np.where(rng.random((7, 12, 15)) < 0.3, A, 0)
    scores = rng.random((7, 12, 15)) + 0.3 * (labels == A)
    whole = ComponentEvaluator(0.6, NO_FILTER)
    whole.update(scores, labels)
    monkeypatch.setattr(components, "_CHUNK_PIXELS", 400)  # two frames per chunk
    chunked = ComponentEvaluator(0.6, NO_FILTER)
    chunked.update(scores, labels)
    assert chunked.counts() == whole.counts()
    assert chunked.compute() == pytest.approx(whole.compute())


def test_nothing_to_count_gives_none_not_a_division_error():
    evaluator = ComponentEvaluator(0.5)
    evaluator.update(np.zeros((4, 4)), np.zeros((4, 4), np.int64))
    got = evaluator.compute()
    assert got["siou"] is None and got["ppv"] is None and got["f1_mean"] is None


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="sizes must be"):
        ComponentEvaluator(0.5, "road")
    with pytest.raises(ValueError, match="min_prediction"):
        SizeFilter(-1, 0)
    with pytest.raises(ValueError, match="threshold is NaN"):
        ComponentEvaluator(float("nan"))
    with pytest.raises(ValueError, match=r"scores has shape \(2, 3\) and labels \(3, 3\)"):
        ComponentEvaluator(0.5).update(np.zeros((2, 3)), np.zeros((3, 3), np.int64))


# ------------------------------------------------------------- independent computation
def pixel_components(pixels: set[tuple[int, int]]) -> list[set[tuple[int, int]]]:
    """8-connected components of a pixel set, by growing each from a seed."""
    left, found = set(pixels), []
    while left:
        seed = left.pop()
        component, frontier = {seed}, [seed]
        while frontier:
            r, c = frontier.pop()
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if (r + dr, c + dc) in left:
                        left.remove((r + dr, c + dc))
                        component.add((r + dr, c + dc))
                        frontier.append((r + dr, c + dc))
        found.append(component)
    return found


def brute_force(mask: np.ndarray, labels: np.ndarray, sizes: SizeFilter):
    """sIoU and PPV lists from the definitions, with pixel sets."""
    at = lambda cond: {(int(r), int(c)) for r, c in zip(*np.nonzero(cond), strict=True)}  # noqa: E731
    void = at(labels == V)
    truth = pixel_components(at(labels == A))
    predicted = [p for p in pixel_components(at(mask) - void) if len(p) >= sizes.min_prediction]
    voided = set().union(*(k for k in truth if len(k) < sizes.min_ground_truth))
    truth = [k for k in truth if len(k) >= sizes.min_ground_truth]
    predicted = [p - voided for p in predicted if p - voided]
    anomalous = set().union(*truth)
    siou = []
    for k in truth:
        covering = set().union(*(p for p in predicted if p & k))
        elsewhere = covering & (anomalous - k)
        siou.append(
            len(k & covering) / (len(covering) + len(k) - len(k & covering) - len(elsewhere))
        )
    ppv = [len(p & anomalous) / len(p) for p in predicted]
    return siou, ppv


@pytest.mark.parametrize("seed", range(12))
def test_random_maps_match_a_pixel_set_computation(seed: int):
    rng = np.random.default_rng(seed)
    sizes = SizeFilter(int(rng.integers(0, 6)), int(rng.integers(0, 5)))
    evaluator = ComponentEvaluator(0.5, sizes)
    all_siou, all_ppv = [], []
    for _ in range(3):
        labels = np.zeros((14, 17), np.int64)
        for _ in range(int(rng.integers(1, 6))):  # blocks of anomaly, some touching
            r, c, h, w = rng.integers(0, 14), rng.integers(0, 17), *rng.integers(1, 6, 2)
            labels[r : r + h, c : c + w] = A
        labels[rng.random(labels.shape) < 0.05] = A
        labels[rng.random(labels.shape) < 0.08] = V
        scores = rng.random(labels.shape) * 0.7 + 0.4 * (labels == A)
        frame = frame_components(scores > 0.5, labels, sizes)
        siou, ppv = brute_force(scores > 0.5, labels, sizes)
        np.testing.assert_allclose(np.sort(frame.siou), np.sort(siou), rtol=0, atol=1e-15)
        np.testing.assert_allclose(np.sort(frame.ppv), np.sort(ppv), rtol=0, atol=1e-15)
        evaluator.update(scores, labels)
        all_siou += siou
        all_ppv += ppv
    got = evaluator.compute()
    assert got["siou"] == pytest.approx(np.mean(all_siou)) if all_siou else got["siou"] is None
    assert got["ppv"] == pytest.approx(np.mean(all_ppv)) if all_ppv else got["ppv"] is None
    taus = np.linspace(0.25, 0.75, 11)
    tp = np.array([sum(s >= t for s in all_siou) for t in taus])
    fp = np.array([sum(p < t for p in all_ppv) for t in taus])
    assert evaluator.counts() == {
        "tp": tp.tolist(),
        "fn": (len(all_siou) - tp).tolist(),
        "fp": fp.tolist(),
    }
    if all_siou or all_ppv:
        f1 = 2 * tp / (2 * tp + (len(all_siou) - tp) + fp)
        assert got["f1_mean"] == pytest.approx(f1.mean())


# ------------------------------------------------------------------- two passes
def test_evaluate_components_reads_a_reiterable_source_twice_and_refuses_an_iterator():
    rng = np.random.default_rng(3)
    frames = []
    for _ in range(4):
        labels = np.zeros((30, 40), np.int64)
        labels[5:15, 5:20] = A
        labels[:, :2] = V
        frames.append((rng.random((30, 40)) * 0.6 + 0.5 * (labels == A), labels))
    got = evaluate_components(frames, "obstacle")
    assert 0 < got["threshold"] < 1 and set(got["pixel"]) >= {"ap", "fpr95", "threshold"}
    again = ComponentEvaluator(got["threshold"], "obstacle")
    for scores, labels in frames:  # float16 scores, as the benchmark stores them
        again.update(scores.astype(np.float16), labels)
    assert {k: got[k] for k in again.compute()} == again.compute()
    with pytest.raises(TypeError, match="one-shot iterator"):
        evaluate_components(iter(frames))
    fixed = evaluate_components(iter(frames), threshold=0.7)  # one pass: any iterable
    assert fixed["threshold"] == 0.7 and "pixel" not in fixed
