"""Export of the model families people deploy, with random weights and tiny sizes: each
exports to ONNX with dynamic batch and size and scores as ``det.score`` does, or fails
with one line naming what blocks it. A family whose package is missing is skipped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from flowenedet import FlowEneDet
from flowenedet.export import ExportError, OnnxDetector
from flowenedet.zoo import DigitSegmenter

from .toy import tiny_segformer

pytest.importorskip("onnx", reason="ONNX export needs the export extra (onnx)")
pytest.importorskip("onnxruntime", reason="running ONNX needs the export extra (onnxruntime)")

K = 3


pytestmark = pytest.mark.usefixtures("one_thread")


def fitted(model: nn.Module, size: int = 64) -> FlowEneDet:
    torch.manual_seed(0)
    images, labels = torch.rand(2, 3, size, size), torch.randint(0, K, (2, size, size))
    return FlowEneDet(model.eval()).fit(
        [(images, labels)], steps=2, pixels_per_image=64, progress=False
    )


def exports_and_scores(det: FlowEneDet, path, other=(1, 3, 72, 88)) -> None:
    """ONNX at 64 x 64 (checked there and at a second size by the export itself), then
    run at ``other``: maps within 1e-4 of det.score's."""
    runner = OnnxDetector(det.export(path, image_size=(64, 64)))
    images = torch.rand(other)
    got, expected = runner(images.numpy()), det.score(images)
    for name in ("idm", "ood", "concurrent"):
        assert np.abs(got[name] - getattr(expected, name).numpy()).max() <= 1e-4
    assert (got["pred"] == expected.pred.numpy()).all()


def _small_resnet():
    models = pytest.importorskip("torchvision.models")
    from torchvision.models._utils import IntermediateLayerGetter

    return IntermediateLayerGetter(models.resnet18(weights=None), {"layer4": "out"})


def test_torchvision_deeplabv3(tmp_path):
    pytest.importorskip("torchvision")
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

    torch.manual_seed(0)  # the ASPP head (with its image-pooling branch) on a ResNet-18
    exports_and_scores(fitted(DeepLabV3(_small_resnet(), DeepLabHead(512, K))), tmp_path / "m.onnx")


def test_torchvision_fcn(tmp_path):
    pytest.importorskip("torchvision")
    from torchvision.models.segmentation.fcn import FCN, FCNHead

    torch.manual_seed(0)
    exports_and_scores(fitted(FCN(_small_resnet(), FCNHead(512, K))), tmp_path / "m.onnx")


def test_torchvision_lraspp(tmp_path):
    segmentation = pytest.importorskip("torchvision.models.segmentation")
    torch.manual_seed(0)
    model = segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=K
    )
    exports_and_scores(fitted(model), tmp_path / "m.onnx")


@pytest.mark.parametrize("backbone", ["mobilenetv3_small_050", "convnext_atto"])
def test_timm_backbone_with_a_head(backbone, tmp_path):
    torch.manual_seed(0)
    model = DigitSegmenter(backbone, out_indices=(0, 1, 2), hidden=16, num_classes=K)
    exports_and_scores(fitted(model), tmp_path / "m.onnx")


def test_transformers_segformer(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    exports_and_scores(fitted(tiny_segformer(transformers, K)), tmp_path / "m.onnx")


class _VitSegmenter(nn.Module):
    """A timm ViT (absolute position embeddings) with a 1x1 classifier on its last map."""

    def __init__(self, dynamic_img_size: bool) -> None:
        super().__init__()
        import timm

        self.backbone = timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            img_size=64,
            dynamic_img_size=dynamic_img_size,
            features_only=True,
            out_indices=(-1,),
        )
        self.classifier = nn.Conv2d(self.backbone.feature_info.channels()[-1], K, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(images)[-1])


@pytest.mark.parametrize("dynamic_img_size", [False, True])
def test_vit_position_embeddings_export_at_one_size_only(dynamic_img_size, tmp_path):
    """A fixed-size ViT refuses other sizes itself; one that resamples its position
    embeddings does it with sizes fixed when traced. Either way a dynamic export is
    refused in one line, and a static one works."""
    torch.manual_seed(0)
    det = fitted(_VitSegmenter(dynamic_img_size))
    reason = "graph depends on the traced size" if dynamic_img_size else "takes one size only"
    with pytest.raises(ExportError, match=reason) as error:
        det.export(tmp_path / "dynamic.onnx", image_size=(64, 64))
    assert "\n" not in str(error.value) and "dynamic=False" in str(error.value)
    runner = OnnxDetector(det.export(tmp_path / "static.onnx", image_size=(64, 64), dynamic=False))
    images = torch.rand(1, 3, 64, 64)
    got = runner(images.numpy())
    assert np.abs(got["ood"] - det.score(images).ood.numpy()).max() <= 1e-4


class _UsesDiag(nn.Module):
    """A segmenter with an operator the ONNX exporter does not convert (``aten::diag``)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.classifier = nn.Conv2d(8, K, 1)
        self.gains = nn.Parameter(torch.ones(K))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(torch.relu(self.features(images)))
        return torch.einsum("bkhw,kj->bjhw", logits, torch.diag(self.gains))


def test_an_unsupported_operator_is_named_in_one_line(tmp_path):
    det = fitted(_UsesDiag())
    with pytest.raises(ExportError, match="operator 'aten::diag'") as error:
        det.export(tmp_path / "m.onnx", image_size=(64, 64))
    assert "\n" not in str(error.value)
    det.export(tmp_path / "m.pt", format="torchscript", image_size=(64, 64))  # TorchScript can
