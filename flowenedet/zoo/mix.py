"""A SegFormer-style segmenter: a hierarchical transformer encoder (timm ``pvt_v2``, the
Mix-Transformer design of SegFormer: overlapping patch embeddings, spatial-reduction
attention, Mix-FFN with a depth-wise convolution) and SegFormer's all-MLP decoder.

The aerial world's reference segmenter (:mod:`flowenedet.evaluation.worlds.aerial`);
an architecture family neither the digits nor the street segmenter (ResNet + FPN) uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .segmenter import IMAGENET_MEAN, IMAGENET_STD, check_images

__all__ = ["MixSegmenter"]


class MixSegmenter(nn.Module):
    """timm transformer backbone (``features_only``) + all-MLP decoder + dropout + 1x1
    classifier, as in SegFormer.

    The decoder projects every stage to ``hidden`` channels with a 1x1 convolution (a
    per-pixel linear layer), upsamples them to the finest stage, concatenates them and
    fuses them with a 1x1 convolution, batch norm and ReLU: the decoder features. Then
    ``dropout`` (``nn.Dropout2d``, as SegFormer's) and ``classifier``
    (``Conv2d(hidden, K, 1)``).

    Args:
        backbone: a timm model name with ``features_only`` support (created with
            ``pretrained=False``: nothing downloads).
        hidden: channels of the decoder (and of the features the classifier reads).
        num_classes: number of classes ``K``.
        dropout: probability of the dropout layer in front of the classifier.
        backbone_kwargs: extra keyword arguments of ``timm.create_model``.

    Forward: images float ``(B, 3, H, W)`` in [0, 1] (normalised inside) -> logits
    ``(B, K, ceil(H/s), ceil(W/s))``; ``stride`` holds the output stride ``s`` (4).
    """

    decoder_name = "all-MLP"

    def __init__(
        self,
        backbone: str = "pvt_v2_b0",
        hidden: int = 64,
        num_classes: int = 5,
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
        kwargs = {
            k: tuple(v) if isinstance(v, list) else v for k, v in (backbone_kwargs or {}).items()
        }
        self.backbone = timm.create_model(backbone, pretrained=False, features_only=True, **kwargs)
        channels = self.backbone.feature_info.channels()
        self.stride = int(self.backbone.feature_info.reduction()[0])
        self.project = nn.ModuleList(nn.Conv2d(c, hidden, 1) for c in channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(hidden * len(channels), hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(hidden, num_classes, 1)
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, images: Tensor) -> Tensor:
        """Decoder features ``(B, hidden, H/s, W/s)``: the classifier's input in eval mode."""
        check_images(images)
        feats = self.backbone((images - self.mean) / self.std)
        size = feats[0].shape[-2:]
        parts = [
            F.interpolate(project(feat), size=size, mode="bilinear", align_corners=False)
            if feat.shape[-2:] != size
            else project(feat)
            for project, feat in zip(self.project, feats, strict=True)
        ]
        return self.fuse(torch.cat(parts, dim=1))

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, K, H/s, W/s)`` for images ``(B, 3, H, W)`` in [0, 1]."""
        return self.classifier(self.dropout(self.features(images)))
