"""What every embedded world shares: the splits, the scene set it returns and the soft
random shapes its objects are cut with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ...data.files import Transform

__all__ = ["SPLITS", "SceneSet", "shape_mask"]

SPLITS = ("train", "val", "test")


@dataclass(eq=False)
class SceneSet(Dataset):
    """Generated scenes: ``images`` uint8 ``(N, 3, S, S)``, ``labels`` int64 ``(N, S, S)``.

    Indexing gives ``(image (3, S, S) float in [0, 1], label (S, S) int64)``, so the set can
    be handed to a ``torch.utils.data.DataLoader`` directly; a ``transform(image, label)``
    (e.g. :class:`flowenedet.data.FitAugment`) is applied to each indexed pair (not to
    ``images`` / ``labels`` / :meth:`to_float`).
    """

    images: torch.Tensor
    labels: torch.Tensor
    split: str
    seed: int
    corruption: str | tuple[str, ...] | None = None
    severity: int | tuple[int, ...] = 0
    transform: Transform | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.images[index].float().div_(255.0), self.labels[index]
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image, label

    def to_float(self) -> torch.Tensor:
        """All images as float32 ``(N, 3, S, S)`` in [0, 1]."""
        return self.images.float().div_(255.0)

    @classmethod
    def from_arrays(
        cls,
        images: np.ndarray,
        labels: np.ndarray,
        split: str,
        seed: int,
        shift_request: tuple[Any, Any],
        shifts: tuple[tuple[str, ...], tuple[int, ...]],
        transform: Transform | None = None,
    ) -> SceneSet:
        """A set from generated uint8 ``images`` ``(N, H, W, 3)`` and ``labels`` ``(N, H, W)``;
        ``shift_request`` is the ``(corruption, severity)`` asked for, kept as given when it
        named one, else the checked ``shifts``."""
        corruption, severity = shift_request
        corruptions, severities = shifts
        return cls(
            images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
            labels=torch.from_numpy(labels),
            split=split,
            seed=seed,
            corruption=corruption if isinstance(corruption, str | None) else corruptions,
            severity=severity if isinstance(severity, int | np.integer) else severities,
            transform=transform,
        )


def shape_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Soft random ellipse or star-shaped blob mask ``(h, w)`` in [0, 1] (4x supersampled)."""
    ss = 4
    yy, xx = np.mgrid[0 : h * ss, 0 : w * ss].astype(np.float32)
    yy, xx = (yy + 0.5) / (h * ss) - 0.5, (xx + 0.5) / (w * ss) - 0.5  # in [-0.5, 0.5]
    if rng.random() < 0.5:
        a, b = rng.uniform(0.3, 0.5, size=2)
        t = rng.uniform(0, np.pi)
        u, v = xx * np.cos(t) + yy * np.sin(t), -xx * np.sin(t) + yy * np.cos(t)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1
    else:
        n = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
        radii = rng.uniform(0.25, 0.5, size=n)
        theta = np.arctan2(yy, xx) % (2 * np.pi)
        ext_angles = np.r_[angles[-1] - 2 * np.pi, angles, angles[0] + 2 * np.pi]
        boundary = np.interp(theta, ext_angles, np.r_[radii[-1], radii, radii[0]])
        inside = np.hypot(xx, yy) <= boundary  # boundary radius interpolated in angle
    return inside.reshape(h, ss, w, ss).mean(axis=(1, 3), dtype=np.float32)
