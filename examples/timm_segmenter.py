"""Wrap a timm-backbone segmenter in three lines (offline: random weights, random data).

A real user passes their trained model and a loader over its training set; everything
else stays the same. Run: python examples/timm_segmenter.py
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from flowenedet import FlowEneDet


class TimmSegmenter(nn.Module):
    """A timm feature extractor with a 1x1 classifier: logits at 1/8 resolution."""

    def __init__(self, backbone: str = "resnet18", num_classes: int = 5) -> None:
        super().__init__()
        self.backbone = timm.create_model(
            backbone, pretrained=False, features_only=True, out_indices=(2,)
        )
        channels = self.backbone.feature_info.channels()[-1]
        self.decoder = nn.Sequential(nn.Conv2d(channels, 64, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(64, num_classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.decoder(self.backbone(images)[-1]))


def main() -> None:
    torch.manual_seed(0)
    model = TimmSegmenter().eval()
    images = torch.rand(8, 3, 128, 128)
    labels = torch.randint(0, 5, (8, 128, 128))
    train_loader = [(images[i : i + 4], labels[i : i + 4]) for i in range(0, 8, 4)]

    det = FlowEneDet(model).fit(train_loader, steps=20)  # 1. wrap and fit
    maps = det.score(images[:2])  # 2. score
    det.save("timm_detector.safetensors")  # 3. save (FlowEneDet.load(path, model) loads)

    print(
        f"idm {tuple(maps.idm.shape)}, ood {tuple(maps.ood.shape)}, pred {tuple(maps.pred.shape)}"
    )
    print(f"features hooked at {det.config.fitted.feature_layer!r}")
    print(FlowEneDet.load("timm_detector.safetensors", model))


if __name__ == "__main__":
    main()
