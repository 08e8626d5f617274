"""The reference segmenters of the embedded worlds: a timm backbone with a light FPN head.

``DigitSegmenter`` maps images in [0, 1] ``(B, 3, H, W)`` to logits ``(B, K, H/s, W/s)``
(not upsampled), ``s`` the stride of its finest backbone stage: 4 for the digits world's
reference, 8 for the street world's (:data:`STREET_ARCHITECTURE`). The decoder ends in
``dropout -> classifier``, where ``classifier`` is a
``Conv2d(hidden, K, 1)``: FlowEneDet's FED-C reads the classifier's input as decoder
features, and the dropout makes MC dropout a meaningful baseline. The trained weights for
the 11 classes of :mod:`flowenedet.evaluation.worlds.digits` and for the 8 classes of
:mod:`flowenedet.evaluation.worlds.street` ship with the package as safetensors
(``digits.safetensors``, ``street.safetensors``) and load without pickle or network.
"""

from __future__ import annotations

import copy
import importlib.resources
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowenedet import io

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "REFERENCE_ARCHITECTURE",
    "STREET_ARCHITECTURE",
    "WEIGHTS_FILE",
    "WORLDS",
    "DigitSegmenter",
    "build_reference_segmenter",
    "load_reference_segmenter",
    "reference_card",
]

logger = logging.getLogger(__name__)

FORMAT = "flowenedet-segmenter"
FORMAT_VERSION = 2  # 2: the checksum covers the header too
LEGACY_VERSIONS = (1,)  # the shipped weights; read, their header unprotected
WEIGHTS_FILE = "digits.safetensors"
STREET_WEIGHTS_FILE = "street.safetensors"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

REFERENCE_ARCHITECTURE: dict[str, Any] = {
    "backbone": "resnet10t",
    "out_indices": [1, 2, 3],
    "hidden": 64,
    "num_classes": 11,
    "dropout": 0.1,
    "backbone_kwargs": {"channels": [32, 64, 128, 256], "stem_width": 16},
}
"""Keyword arguments of :class:`DigitSegmenter` for the shipped model: a half-width
ResNet-10-T (timm ``resnet10t`` with ``channels=(32, 64, 128, 256)``) cut after its
third stage, so it uses features at strides 4, 8 and 16."""

STREET_ARCHITECTURE: dict[str, Any] = {
    "backbone": "resnet10t",
    "out_indices": [2, 3, 4],
    "hidden": 64,
    "num_classes": 8,
    "dropout": 0.1,
    "backbone_kwargs": {"channels": [32, 64, 128, 256], "stem_width": 16},
}
"""The street world's reference: the same half-width ResNet-10-T, all four stages, features
at strides 8, 16 and 32, so its logits come out at stride 8 (32 x 64 for 256 x 512 scenes)."""

WORLDS: dict[str, tuple[dict[str, Any], str]] = {
    "digits": (REFERENCE_ARCHITECTURE, WEIGHTS_FILE),
    "street": (STREET_ARCHITECTURE, STREET_WEIGHTS_FILE),
}
"""``{world: (architecture, weights file)}`` of the shipped reference segmenters."""


class DigitSegmenter(nn.Module):
    """timm backbone (``features_only``) + FPN-style decoder + dropout + 1x1 classifier.

    Args:
        backbone: a timm model name; created with ``pretrained=False`` (nothing downloads).
        out_indices: backbone stages to use, finest first; logits come out at the stride of
            the finest one (4 for the reference ``resnet10t`` stages 1, 2, 3).
        hidden: channels of the decoder (and of the features the classifier reads).
        num_classes: number of classes ``K``.
        dropout: probability of the dropout layer in front of the classifier.
        backbone_kwargs: extra keyword arguments of ``timm.create_model`` (e.g. the
            ``channels`` and ``stem_width`` of a timm ResNet).

    Forward: images float ``(B, 3, H, W)`` in [0, 1] (normalised inside) -> logits
    ``(B, K, ceil(H/s), ceil(W/s))``; ``stride`` holds the output stride ``s``.
    """

    def __init__(
        self,
        backbone: str = "resnet10t",
        out_indices: Sequence[int] = (1, 2, 3),
        hidden: int = 64,
        num_classes: int = 11,
        dropout: float = 0.1,
        backbone_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.backbone = timm.create_model(
            backbone,
            pretrained=False,
            features_only=True,
            out_indices=tuple(out_indices),
            **dict(backbone_kwargs or {}),
        )
        channels = self.backbone.feature_info.channels()
        self.stride = int(self.backbone.feature_info.reduction()[0])
        self.lateral = nn.ModuleList(nn.Conv2d(c, hidden, 1) for c in channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(hidden, num_classes, 1)
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, images: Tensor) -> Tensor:
        """Decoder features ``(B, hidden, H/s, W/s)``: the classifier's input in eval mode."""
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(
                "images must be float (B, 3, H, W) in [0, 1]; got "
                f"{images.dtype} {tuple(images.shape)}"
            )
        feats = self.backbone((images - self.mean) / self.std)
        x = self.lateral[-1](feats[-1])
        for lateral, feat in zip(self.lateral[-2::-1], feats[-2::-1], strict=True):
            x = lateral(feat) + F.interpolate(
                x, size=feat.shape[-2:], mode="bilinear", align_corners=False
            )
        return self.fuse(x)

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, K, H/s, W/s)`` for images ``(B, 3, H, W)`` in [0, 1]."""
        return self.classifier(self.dropout(self.features(images)))


def _world(world: str) -> tuple[dict[str, Any], str]:
    if world not in WORLDS:
        raise ValueError(f"world must be one of {tuple(WORLDS)}, got {world!r}")
    return WORLDS[world]


def build_reference_segmenter(world: str = "digits") -> DigitSegmenter:
    """An untrained segmenter with the architecture of ``world``'s shipped weights."""
    return DigitSegmenter(**copy.deepcopy(_world(world)[0]))


def _read_weights(world: str = "digits") -> tuple[dict[str, Tensor], dict[str, Any]]:
    weights_file = _world(world)[1]
    resource = importlib.resources.files(__package__) / weights_file
    if not resource.is_file():
        raise FileNotFoundError(
            f"the reference weights {weights_file} are missing from {__package__}; reinstall "
            f"flowenedet or train them with `python -m benchmarks.train_segmenter --world {world}`"
        )
    with importlib.resources.as_file(resource) as path:
        tensors, card, _ = io.load_file(
            path, kind=FORMAT, version=FORMAT_VERSION, legacy_versions=LEGACY_VERSIONS
        )
        return tensors, card


def reference_card(world: str = "digits") -> dict[str, Any]:
    """The header of ``world``'s shipped weights: architecture, training command, metrics."""
    return _read_weights(world)[1]


def load_reference_segmenter(
    device: str | torch.device = "cpu", world: str = "digits"
) -> DigitSegmenter:
    """The trained reference segmenter of ``world`` (``"digits"``:
    :mod:`flowenedet.evaluation.worlds.digits`, ``"street"``:
    :mod:`flowenedet.evaluation.worlds.street`), in eval mode. Loads the safetensors file
    shipped inside the package (no pickle, no network)."""
    tensors, card = _read_weights(world)
    architecture = card.get("architecture")
    if not isinstance(architecture, Mapping):
        raise io.FormatError(f"{_world(world)[1]} has no architecture in its header")
    model = DigitSegmenter(**architecture)
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    logger.debug("loaded reference segmenter %s (%s)", world, architecture)
    return model.to(device).eval()
