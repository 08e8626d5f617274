"""pytorch-ood's conventions beside ours, and detectors fitted on logits scoring images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowenedet import FlowEneDet, PixelEvaluator, Scores
from flowenedet.evaluation.baselines import make_baseline
from flowenedet.hooks import SegmenterTap
from flowenedet.postprocess import upsampled_argmax

from .toy import NUM_CLASSES, make_scenes


@pytest.fixture(scope="module")
def images():
    return make_scenes(3, seed=11)[0]


def test_calling_the_detector_gives_one_map_higher_is_more_anomalous(fitted, images):
    det = fitted["C"]
    maps = det.score(images)
    assert torch.equal(det(images), maps.ood)  # the default map
    assert torch.equal(det.predict(images), maps.ood)
    assert torch.equal(det.predict(images, map="idm"), maps.idm)
    assert torch.equal(det(images, map="concurrent"), maps.concurrent)
    assert det(images).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="map must be one of"):
        det.predict(images, map="energy")


DETECTORS = ("FED-U", "FED-C", "msp", "maxlogit", "energy", "entropy", "sml", "mcdropout")


@pytest.mark.parametrize("name", DETECTORS)
def test_every_detector_offers_one_interface(name, fitted, segmenter, train_loader, images):
    """FlowEneDet and each baseline: fit / fit_logits return the detector, predict (and
    calling it) gives one (B, H, W) map, score and score_logits give Scores at the
    images' size with the segmenter's prediction."""
    if name.startswith("FED-"):
        det = fitted[name[-1]]
    else:
        det = make_baseline(name, segmenter)
        assert det.fit(train_loader[:1], progress=False) is det
        logits, labels = segmenter(train_loader[0][0]).detach(), train_loader[0][1]
        assert det.fit_logits(logits, labels) is det
    torch.manual_seed(0)  # MC dropout's masks
    anomaly = det.predict(images)
    assert anomaly.shape == (3, 32, 32) and anomaly.dtype == torch.float32
    torch.manual_seed(0)
    assert torch.equal(det(images), anomaly)
    torch.manual_seed(0)
    scores = det.score(images)
    assert isinstance(scores, Scores) and torch.equal(scores.ood, anomaly)
    assert all(getattr(scores, k).shape == (3, 32, 32) for k in ("idm", "ood", "concurrent"))
    with torch.no_grad():
        expected_pred = upsampled_argmax(segmenter(images), (32, 32))
    if det.needs_images:  # MC dropout: its own prediction, from the passes' mean
        assert (scores.pred == expected_pred).float().mean() > 0.9
        return
    assert torch.equal(scores.pred, expected_pred)
    logits, features = SegmenterTap(segmenter, "classifier:input")(images)
    from_logits = det.score_logits(logits, features, size=(32, 32))
    assert torch.allclose(from_logits.ood, scores.ood, atol=1e-6)


def test_to_moves_segmenter_flow_and_statistics_and_returns_the_detector(segmenter, train_loader):
    det = FlowEneDet(segmenter.__class__(), variant="U")
    det.segmenter.load_state_dict(segmenter.state_dict())
    det.fit(train_loader[:1], steps=1, progress=False)
    assert det.to("meta") is det
    tensors = [*det.segmenter.parameters(), *det.flow.parameters(), *vars(det.stats).values()]
    assert all(t.device.type == "meta" for t in tensors)


def test_transformers_style_dict_batches_and_named_keys(segmenter, train_loader):
    reference = FlowEneDet(segmenter, variant="U").fit(train_loader[:1], steps=1, progress=False)
    images, labels = train_loader[0]
    hf = [{"pixel_values": images, "labels": labels}]
    det = FlowEneDet(segmenter, variant="U").fit(hf, steps=1, progress=False)
    assert torch.equal(det.stats.mean, reference.stats.mean)
    named = [{"img": images, "mask": labels, "name": "a"}]
    det = FlowEneDet(segmenter, variant="U").fit(
        named, steps=1, progress=False, batch_keys=("img", "mask")
    )
    assert torch.equal(det.stats.mean, reference.stats.mean)
    with pytest.raises(ValueError, match=r"batch_keys=\(image_key, label_key\)"):
        FlowEneDet(segmenter, variant="U").fit(named, steps=1, progress=False)
    with pytest.raises(TypeError, match="batch_keys"):
        FlowEneDet(segmenter, variant="U").fit(named, steps=1, progress=False, batch_keys="img")


def test_a_detector_fitted_on_logits_scores_the_models_images(segmenter, train_loader, tmp_path):
    images, labels = train_loader[0]
    logits, features = SegmenterTap(segmenter, "classifier:input")(images)
    det = FlowEneDet(segmenter).fit_logits(logits, labels, features, steps=2, progress=False)
    named = FlowEneDet(segmenter, feature_layer="classifier:input").fit_logits(
        logits, labels, features, steps=2, progress=False
    )
    assert torch.equal(det.score(images).ood, named.score(images).ood)
    assert det.config.fitted.feature_layer is None  # found as fit finds it, not recorded
    unresolved = FlowEneDet(segmenter).fit_logits(logits, labels, features, steps=2, progress=False)
    path = unresolved.save(tmp_path / "det.safetensors")
    loaded = FlowEneDet.load(path, segmenter)
    assert torch.equal(loaded.score(images).ood, named.score(images).ood)


def test_features_from_another_layer_are_named_in_the_error(segmenter, train_loader):
    images, labels = train_loader[0]
    logits = segmenter(images).detach()
    other = torch.randn(len(images), 9, 16, 16)
    det = FlowEneDet(segmenter).fit_logits(logits, labels, other, steps=1, progress=False)
    for _ in range(2):  # nothing wrong is kept
        with pytest.raises(ValueError, match="feature_layer= naming the layer"):
            det.score(images)
    assert det.config.fitted.feature_layer is None


# ------------------------------------------------------------------ per-image metrics
def test_per_image_metrics_average_each_images_own_curve():
    scores = torch.tensor([[[0.9, 0.1], [0.2, 0.3]], [[0.4, 0.6], [0.5, 0.7]]])
    labels = torch.tensor([[[254, 0], [0, 0]], [[254, 1], [1, 255]]])
    preds = torch.tensor([[[0, 0], [0, 0]], [[0, 1], [1, 0]]])
    evaluator = PixelEvaluator(2, per_image=True)
    evaluator.update(scores, labels, preds)
    ood = evaluator.compute_per_image()["ood"]
    # image 0: the OOD pixel (0.9) tops its 3 negatives: AUROC 1. image 1: the OOD pixel
    # (0.4) is below both negatives (0.6, 0.5): AUROC 0. Mean 0.5; pooled differs.
    assert ood["auroc"] == pytest.approx(0.5) and ood["images"] == 2
    assert evaluator.compute()["ood"]["auroc"] == pytest.approx(4 / 5)
    per_image = evaluator.image_results()
    assert per_image[0]["ood"]["auroc"] == 1.0 and per_image[1]["ood"]["auroc"] == 0.0
    assert per_image[0]["idm"] is None  # no misclassified pixel in image 0
    assert evaluator.compute_per_image()["idm"] is None  # none in image 1 either
    with pytest.raises(RuntimeError, match="per_image=True"):
        PixelEvaluator(2).compute_per_image()


def test_per_image_metrics_match_evaluating_each_image_alone(fitted):
    images, labels = make_scenes(3, seed=21, ood=True)
    maps = fitted["C"].score(images)
    together = PixelEvaluator(NUM_CLASSES, per_image=True)
    together.update(maps.ood, labels, maps.pred)
    alone = []
    for i in range(3):
        one = PixelEvaluator(NUM_CLASSES)
        one.update(maps.ood[i : i + 1], labels[i : i + 1], maps.pred[i : i + 1])
        alone.append(one.compute())
    for task in ("ood", "cdd"):
        mean = np.mean([r[task]["auroc"] for r in alone])
        assert together.compute_per_image()[task]["auroc"] == pytest.approx(mean)
