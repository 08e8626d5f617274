"""The model families people use, with random weights and tiny configurations: each
fits, finds its FED-C feature layer and scores at the images' size. A family whose
package is not installed is skipped."""

from __future__ import annotations

import copy
import dataclasses
import runpy
from pathlib import Path

import pytest
import torch
from torch import nn

from flowenedet import FlowEneDet, io
from flowenedet.hooks import MaskClassificationLogits, logits_of
from flowenedet.storage import segmenter_fingerprint

from .toy import NUM_CLASSES, make_scenes, tiny_segformer

K = 3
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def fit_and_score(model: nn.Module, size: int = 64) -> FlowEneDet:
    torch.manual_seed(0)
    images = torch.rand(2, 3, size, size)
    labels = torch.randint(0, K, (2, size, size))
    det = FlowEneDet(model).fit([(images, labels)], steps=2, pixels_per_image=64, progress=False)
    maps = det.score(images)
    for kind in ("idm", "ood", "concurrent"):
        value = getattr(maps, kind)
        assert value.shape == (2, size, size) and torch.isfinite(value).all()
    return det


def test_torchvision_lraspp_gets_its_high_resolution_classifier_input():
    segmentation = pytest.importorskip("torchvision.models.segmentation")
    torch.manual_seed(0)
    model = segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=K
    ).eval()
    # its logits are low_classifier(low) + high_classifier(high): the wider input is taken
    det = fit_and_score(model, size=32)
    assert det.config.fitted.feature_layer == "classifier.high_classifier:input"
    assert det.config.fitted.feature_channels == 128


def test_transformers_segformer():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = tiny_segformer(transformers, K)
    det = fit_and_score(model)
    assert det.config.fitted.feature_layer == "decode_head.classifier:input"


def test_transformers_upernet_skips_its_auxiliary_head():
    transformers = pytest.importorskip("transformers")
    backbone = transformers.ConvNextConfig(
        hidden_sizes=[8, 16, 16],
        depths=[1, 1, 1],
        num_stages=3,
        out_features=["stage1", "stage2", "stage3"],
    )
    config = transformers.UperNetConfig(
        backbone_config=backbone,
        hidden_size=16,
        auxiliary_in_channels=16,
        auxiliary_channels=8,
        use_auxiliary_head=True,
        pool_scales=[1, 2],
        num_labels=K,
    )
    torch.manual_seed(0)
    model = transformers.UperNetForSemanticSegmentation(config).eval()
    assert fit_and_score(model).config.fitted.feature_layer == "decode_head.classifier:input"


def tiny_mask2former(transformers):
    swin = transformers.SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=32,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=2,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = transformers.Mask2FormerConfig(
        backbone_config=swin,
        num_labels=K,
        num_queries=5,
        hidden_dim=32,
        mask_feature_size=32,
        feature_size=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_feedforward_dim=32,
        dim_feedforward=32,
        num_attention_heads=2,
        use_timm_backbone=False,
    )
    torch.manual_seed(0)
    return transformers.Mask2FormerForUniversalSegmentation(config).eval()


def test_transformers_mask2former_is_refused_with_the_wrapper_to_use_then_works_wrapped():
    transformers = pytest.importorskip("transformers")
    model = tiny_mask2former(transformers)
    images = torch.rand(2, 3, 64, 64)
    with pytest.raises(TypeError, match=r"MaskClassificationLogits\(model\)"):
        FlowEneDet(model).fit([(images, torch.zeros(2, 64, 64, dtype=torch.long))], steps=1)
    det = fit_and_score(MaskClassificationLogits(model))
    # FED-C conditions on the pixel decoder's mask features, at the masks' resolution
    layer = "model.model.pixel_level_module.decoder.mask_projection"
    assert det.config.fitted.feature_layer == layer
    assert det.config.fitted.feature_channels == 32


class FixedQueries(nn.Module):
    """Two queries: query 0 is class 1 and covers the left half, query 1 is class 0 and
    covers the right half; as the reference release names them."""

    def forward(self, images):
        b, w = images.shape[0], images.shape[-1]
        classes = torch.full((b, 2, K + 1), -10.0)
        classes[:, 0, 1] = 10.0
        classes[:, 1, 0] = 10.0
        masks = torch.full((b, 2, 4, w), -10.0)
        masks[:, 0, :, : w // 2] = 10.0
        masks[:, 1, :, w // 2 :] = 10.0
        return {"pred_logits": classes, "pred_masks": masks}


def test_mask_classification_logits_predict_each_querys_class_where_its_mask_is():
    model = MaskClassificationLogits(FixedQueries())
    logits = model(torch.zeros(1, 3, 4, 8))
    assert logits.shape == (1, K, 4, 8)
    expected = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0]).expand(1, 4, 8)
    assert torch.equal(logits.argmax(1), expected)
    assert torch.isfinite(logits).all()
    with pytest.raises(TypeError, match="MaskClassificationLogits"):
        logits_of(FixedQueries()(torch.zeros(1, 3, 4, 8)))


@pytest.mark.parametrize("family", ["Unet", "DeepLabV3Plus"])
def test_segmentation_models_pytorch(family):
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    model = getattr(smp, family)(encoder_name="resnet18", encoder_weights=None, classes=K).eval()
    assert fit_and_score(model).config.fitted.feature_layer == "segmentation_head.0:input"


# ------------------------------------------------------------------ dtype and compile
def test_a_half_precision_copy_loads_and_scores_like_the_float32_model(fitted, tmp_path):
    det = fitted["C"]
    path = det.save(tmp_path / "det.safetensors")
    half = copy.deepcopy(det.segmenter).half()
    loaded = FlowEneDet.load(path, half)  # no "fitted on a different segmenter"
    images, labels = make_scenes(4, seed=3)
    maps, reference = loaded.score(images), det.score(images)
    assert maps.ood.dtype == torch.float32
    assert (maps.pred == reference.pred).float().mean() > 0.95
    # float16 logits differ by ~1e-3 relative; where the flow's posterior is steep the
    # (unsmoothed) idm map moves more, so bound its typical and its 99th-percentile change
    change = (maps.idm - reference.idm).abs().flatten()
    assert change.mean() < 0.01 and torch.quantile(change, 0.99) < 0.05
    refit = FlowEneDet(half).fit([(images, labels)], steps=1, progress=False)  # fits too
    assert refit.config.fitted.feature_layer == "classifier:input"
    other = copy.deepcopy(det.segmenter)
    with torch.no_grad():
        other.classifier.bias.add_(0.1)
    with pytest.raises(ValueError, match="different segmenter"):
        FlowEneDet.load(path, other)


def test_the_fingerprint_ignores_precision_and_device_but_not_weights(segmenter):
    same = segmenter_fingerprint(segmenter)
    assert segmenter_fingerprint(copy.deepcopy(segmenter).half()) == same
    assert segmenter_fingerprint(copy.deepcopy(segmenter).double()) == same
    changed = copy.deepcopy(segmenter)
    with torch.no_grad():
        changed.classifier.weight[0, 0] += 0.01
    assert segmenter_fingerprint(changed) != same


def test_a_torch_compiled_segmenter_fits_loads_and_scores_as_the_plain_one(
    fitted, segmenter, tmp_path
):
    compiled = torch.compile(segmenter, backend="eager")
    det = fitted["C"]
    path = det.save(tmp_path / "det.safetensors")
    loaded = FlowEneDet.load(path, compiled)  # same fingerprint, feature layer found
    images, labels = make_scenes(2, seed=4)
    assert torch.allclose(loaded.score(images).ood, det.score(images).ood, atol=1e-6)
    refit = FlowEneDet(compiled, num_classes=NUM_CLASSES).fit(
        [(images, labels)], steps=1, progress=False
    )
    assert refit.config.fitted.feature_layer == "classifier:input"  # the model's own names
    assert refit.config.fitted.segmenter_fingerprint == det.config.fitted.segmenter_fingerprint


# ------------------------------------------------------------------ examples
def test_the_torchvision_example_runs_and_says_its_numbers_mean_nothing(
    tmp_path, monkeypatch, capsys
):
    pytest.importorskip("torchvision")
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLES / "torchvision_segmenter.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "classifier.4:input" in out
    assert "mean nothing" in out and "random weights" in out
    assert (tmp_path / "torchvision_detector.safetensors").is_file()


def test_detectors_saved_with_the_earlier_fingerprint_still_load(fitted, segmenter, tmp_path):
    det = copy.copy(fitted["U"])
    det.config = dataclasses.replace(det.config)
    # earlier releases: the SHA-256 of the exact state dict's bytes
    det.config.fitted.segmenter_fingerprint = io.tensor_checksum(segmenter.state_dict())
    path = det.save(tmp_path / "old.safetensors")
    images, _ = make_scenes(2, seed=6)
    assert torch.equal(FlowEneDet.load(path, segmenter).score(images).idm, det.score(images).idm)
