"""Wrap a torchvision segmentation model (dict output with "out" and an aux head).

Offline, with random weights and random data, so it shows the calls and what they return
and nothing more: a randomly initialised segmenter predicts noise, its mistakes have no
pattern to learn, and the scores it prints mean nothing (they sit near 0.5). With your
trained model and a loader over its training data the same lines give meaningful maps.
Run: python examples/torchvision_segmenter.py
"""

from __future__ import annotations

import torch
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

from flowenedet import FlowEneDet


def main() -> None:
    torch.manual_seed(0)
    model = deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=4, aux_loss=True
    ).eval()  # your trained model here
    images = torch.rand(2, 3, 64, 64)  # your training images and labels here
    labels = torch.randint(0, 4, (2, 64, 64))

    det = FlowEneDet(model).fit([(images, labels)], steps=5, pixels_per_image=256)
    maps = det.score(images)  # Scores: idm, ood, concurrent (B, H, W) in [0, 1], pred
    ood = det(images)  # pytorch-ood style: the (B, H, W) "ood" map
    det.save("torchvision_detector.safetensors")

    print(f"features hooked at {det.config.fitted.feature_layer!r} (the aux head is skipped)")
    print(f"maps of shape {tuple(ood.shape)}; mean OOD {maps.ood.mean():.3f}")
    print(
        "These numbers mean nothing: the segmenter has random weights, so its predictions "
        "are noise. Use your trained model and its training data for meaningful scores."
    )


if __name__ == "__main__":
    main()
