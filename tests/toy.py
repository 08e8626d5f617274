"""A tiny, seeded segmentation world for the tests: coloured rectangles, a small conv net.

Classes are colours (0 = background); noise and blur make the segmenter err near
boundaries and on faint rectangles. OOD objects are rectangles of a colour no class has.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NUM_CLASSES = 4
CLASS_COLOURS = torch.tensor([[0.5, 0.5, 0.5], [0.9, 0.2, 0.2], [0.2, 0.8, 0.2], [0.2, 0.3, 0.9]])
OOD_COLOUR = torch.tensor([0.55, 0.25, 0.55])  # between two classes: ambiguous, not novel
OOD_LABEL = 254


def make_scenes(n: int, size: int = 32, seed: int = 0, ood: bool = False) -> tuple[Tensor, Tensor]:
    """``n`` images ``(n, 3, size, size)`` and labels ``(n, size, size)``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    colours = CLASS_COLOURS[labels].permute(0, 3, 1, 2).clone()
    for i in range(n):
        for _ in range(4):
            cls = int(torch.randint(1, NUM_CLASSES, (1,), generator=g))
            y, x = torch.randint(0, size - 8, (2,), generator=g).tolist()
            h, w = torch.randint(5, 14, (2,), generator=g).tolist()
            strength = float(torch.empty(1).uniform_(0.35, 1.0, generator=g))
            labels[i, y : y + h, x : x + w] = cls
            colour = strength * CLASS_COLOURS[cls] + (1 - strength) * CLASS_COLOURS[0]
            colours[i, :, y : y + h, x : x + w] = colour[:, None, None]
        if ood:
            y, x = torch.randint(0, size - 10, (2,), generator=g).tolist()
            labels[i, y : y + 9, x : x + 9] = OOD_LABEL
            colours[i, :, y : y + 9, x : x + 9] = OOD_COLOUR[:, None, None]
    noise = 0.12 * torch.randn(colours.shape, generator=g)
    images = F.avg_pool2d(colours + noise, 3, stride=1, padding=1, count_include_pad=False)
    return images, labels


class ToySegmenter(nn.Module):
    """Conv net with logits at half resolution and a dropout layer (for MC dropout)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(16, num_classes, 1)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.backbone(images)))


def train_toy_segmenter(seed: int = 0, steps: int = 60) -> ToySegmenter:
    """A few Adam steps: good enough to be worth protecting, bad enough to err."""
    torch.manual_seed(seed)
    model = ToySegmenter()
    images, labels = make_scenes(64, seed=seed + 1000)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        batch = slice((step * 16) % 64, (step * 16) % 64 + 16)
        logits = F.interpolate(model(images[batch]), size=32, mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def tiny_segformer(transformers, num_labels: int):
    """A two-stage SegFormer of a few thousand parameters (random weights), in eval mode."""
    config = transformers.SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        num_attention_heads=[1, 1],
        patch_sizes=[7, 3],
        strides=[4, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=num_labels,
    )
    return transformers.SegformerForSemanticSegmentation(config).eval()
