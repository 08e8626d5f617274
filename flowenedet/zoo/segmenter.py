"""The reference segmenters of the embedded worlds and the registry they ship in.

:class:`DigitSegmenter` is a timm backbone with a light FPN head: images in [0, 1]
``(B, 3, H, W)`` -> logits ``(B, K, H/s, W/s)`` (not upsampled), ``s`` the stride of its
finest backbone stage. Each segmenter of :data:`SEGMENTERS` ends in ``dropout ->
classifier``, where ``classifier`` is a ``Conv2d(hidden, K, 1)``: FlowEneDet's FED-C reads
the classifier's input as decoder features, and the dropout makes MC dropout a meaningful
baseline. Their trained weights ship with the package as safetensors (one file per entry
of :data:`SEGMENTERS`) and load without pickle or network; :data:`REFERENCES` names the
one each embedded world is benchmarked with.
"""

from __future__ import annotations

import copy
import importlib.resources
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowenedet import io

__all__ = [
    "AERIAL_ARCHITECTURE",
    "FORMAT",
    "FORMAT_VERSION",
    "REFERENCES",
    "REFERENCE_ARCHITECTURE",
    "SEGMENTERS",
    "STREET_ARCHITECTURE",
    "STREET_S8_ARCHITECTURE",
    "WEIGHTS_FILE",
    "DigitSegmenter",
    "ZooEntry",
    "build_reference_segmenter",
    "check_images",
    "load_reference_segmenter",
    "model_class",
    "reference_card",
    "reference_name",
]

logger = logging.getLogger(__name__)

FORMAT = "flowenedet-segmenter"
FORMAT_VERSION = 2  # 2: the checksum covers the header too
LEGACY_VERSIONS = (1,)  # the shipped weights; read, their header unprotected
WEIGHTS_FILE = "digits.safetensors"
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
    "out_indices": [1, 2, 3, 4],
    "hidden": 64,
    "num_classes": 8,
    "dropout": 0.1,
    "backbone_kwargs": {"channels": [32, 64, 128, 256], "stem_width": 16},
}
"""The street world's reference: the same half-width ResNet-10-T, all four stages, features
at strides 4, 8, 16 and 32, so its logits come out at stride 4 (64 x 128 for 256 x 512
scenes), as those of DeepLabV3+ and SegFormer do."""

STREET_S8_ARCHITECTURE: dict[str, Any] = {
    **STREET_ARCHITECTURE,
    "out_indices": [2, 3, 4],
}
"""The street world's secondary segmenter (``"street-s8"``): features at strides 8, 16 and 32,
logits at stride 8 (32 x 64 for 256 x 512 scenes)."""


@dataclass(frozen=True)
class ZooEntry:
    """A shipped segmenter: the ``world`` it was trained on, the keyword arguments of its
    ``model`` class (see :func:`model_class`) and the file holding its weights."""

    world: str
    architecture: Mapping[str, Any]
    weights_file: str
    model: str = "DigitSegmenter"


AERIAL_ARCHITECTURE: dict[str, Any] = {
    "backbone": "pvt_v2_b0",
    "hidden": 64,
    "num_classes": 5,
    "dropout": 0.1,
    "backbone_kwargs": {
        "embed_dims": [32, 64, 112, 160],
        "num_heads": [1, 2, 4, 5],
        "mlp_ratios": [4, 4, 4, 4],
        "depths": [2, 2, 2, 1],
    },
}
"""Keyword arguments of :class:`~flowenedet.zoo.mix.MixSegmenter` for the aerial world's
reference: a slimmed PVTv2-B0 (stage widths 32, 64, 112, 160, MLP ratio 4, one block in the
last stage) with features at strides 4, 8, 16 and 32, so its logits come out at stride 4."""


SEGMENTERS: dict[str, ZooEntry] = {
    "digits": ZooEntry("digits", REFERENCE_ARCHITECTURE, WEIGHTS_FILE),
    "street": ZooEntry("street", STREET_ARCHITECTURE, "street.safetensors"),
    "street-s8": ZooEntry("street", STREET_S8_ARCHITECTURE, "street_s8.safetensors"),
    "aerial": ZooEntry("aerial", AERIAL_ARCHITECTURE, "aerial.safetensors", "MixSegmenter"),
}
"""``{name: entry}`` of every shipped segmenter."""

REFERENCES: dict[str, str] = {"digits": "digits", "street": "street", "aerial": "aerial"}
"""``{world: segmenter name}``: the segmenter each embedded world is benchmarked with."""


def check_images(images: Tensor) -> None:
    """Raise ``ValueError`` unless ``images`` is float ``(B, 3, H, W)``."""
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(
            f"images must be float (B, 3, H, W) in [0, 1]; got {images.dtype} {tuple(images.shape)}"
        )


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

    decoder_name = "FPN"

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
        check_images(images)
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


def _models() -> dict[str, type[nn.Module]]:
    from .mix import MixSegmenter

    return {"DigitSegmenter": DigitSegmenter, "MixSegmenter": MixSegmenter}


def model_class(name: str) -> type[nn.Module]:
    """The segmenter class a :class:`ZooEntry` names (``"DigitSegmenter"``, ``"MixSegmenter"``)."""
    models = _models()
    if name not in models:
        raise ValueError(f"model must be one of {tuple(models)}, got {name!r}")
    return models[name]


def reference_name(world: str = "digits", name: str | None = None) -> str:
    """The segmenter ``name`` (checked against :data:`SEGMENTERS`), else ``world``'s reference."""
    if name is not None:
        if name not in SEGMENTERS:
            raise ValueError(f"segmenter must be one of {tuple(SEGMENTERS)}, got {name!r}")
        return name
    if world not in REFERENCES:
        raise ValueError(f"world must be one of {tuple(REFERENCES)}, got {world!r}")
    return REFERENCES[world]


def _entry(world: str, name: str | None) -> ZooEntry:
    return SEGMENTERS[reference_name(world, name)]


def build_reference_segmenter(world: str = "digits", *, name: str | None = None) -> nn.Module:
    """An untrained segmenter with the architecture of ``world``'s reference (or of the
    segmenter ``name`` of :data:`SEGMENTERS`)."""
    entry = _entry(world, name)
    return model_class(entry.model)(**copy.deepcopy(dict(entry.architecture)))


def _read_weights(world: str, name: str | None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    entry = _entry(world, name)
    resource = importlib.resources.files(__package__) / entry.weights_file
    if not resource.is_file():
        raise FileNotFoundError(
            f"the reference weights {entry.weights_file} are missing from {__package__}; "
            "reinstall flowenedet or train them with "
            f"`python -m benchmarks.train_segmenter --segmenter {reference_name(world, name)}`"
        )
    with importlib.resources.as_file(resource) as path:
        tensors, card, _ = io.load_file(
            path, kind=FORMAT, version=FORMAT_VERSION, legacy_versions=LEGACY_VERSIONS
        )
        return tensors, card


def reference_card(world: str = "digits", *, name: str | None = None) -> dict[str, Any]:
    """The header of the shipped weights of ``world``'s reference (or of segmenter ``name``):
    architecture, training command, metrics."""
    return _read_weights(world, name)[1]


def load_reference_segmenter(
    device: str | torch.device = "cpu", world: str = "digits", *, name: str | None = None
) -> nn.Module:
    """The trained reference segmenter of ``world`` (``"digits"``:
    :mod:`flowenedet.evaluation.worlds.digits`, ``"street"``:
    :mod:`flowenedet.evaluation.worlds.street`, ...), or the shipped segmenter ``name`` of
    :data:`SEGMENTERS` (e.g. ``"street-s8"``), in eval mode. Loads the safetensors file
    shipped inside the package (no pickle, no network)."""
    tensors, card = _read_weights(world, name)
    entry = _entry(world, name)
    architecture = card.get("architecture")
    if not isinstance(architecture, Mapping):
        raise io.FormatError(f"{entry.weights_file} has no architecture in its header")
    model = model_class(entry.model)(**architecture)
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    logger.debug("loaded segmenter %s (%s)", reference_name(world, name), architecture)
    return model.to(device).eval()
