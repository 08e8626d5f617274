"""Wrap a torchvision segmentation model (dict output with "out" and an aux head).

Offline: random weights, random data. Run: python examples/torchvision_segmenter.py
"""

from __future__ import annotations

import torch
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

from flowenedet import FlowEneDet


def main() -> None:
    torch.manual_seed(0)
    model = deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=4, aux_loss=True
    ).eval()
    images = torch.rand(4, 3, 96, 96)
    labels = torch.randint(0, 4, (4, 96, 96))

    det = FlowEneDet(model).fit([(images, labels)], steps=10, pixels_per_image=256)
    maps = det.score(images)
    det.save("torchvision_detector.safetensors")

    print(f"features hooked at {det.config.feature_layer!r} (the aux head is skipped)")
    print(f"mean OOD score {maps.ood.mean():.3f}, mean IDM score {maps.idm.mean():.3f}")


if __name__ == "__main__":
    main()
