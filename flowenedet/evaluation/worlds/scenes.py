"""What every embedded world shares: the splits, the scene set it returns and the soft
random shapes its objects are cut with."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ...data.files import Transform
from ...progress import progress_bar

__all__ = [
    "SPLITS",
    "SceneSet",
    "check_size",
    "check_split",
    "generate",
    "shape_mask",
    "shared_sources",
]

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


Block = tuple[int, int, int, int]
"""A source picture's block ``(top, left, height, width)``."""


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def check_size(
    size: int | Sequence[int], minimum: tuple[int, int], aspect: int = 1
) -> tuple[int, int]:
    """``(height, width)`` of ``size``: ``(H, W)``, or one number ``S`` for ``(S, aspect S)``;
    ``ValueError`` below ``minimum``."""
    dims = (int(size), aspect * int(size)) if isinstance(size, int | np.integer) else tuple(size)
    if len(dims) != 2 or any(isinstance(d, bool) or int(d) != d for d in dims):
        raise ValueError(f"size must be an int or (height, width), got {size!r}")
    if dims[0] < minimum[0] or dims[1] < minimum[1]:
        raise ValueError(f"size must be at least {minimum}, got {tuple(dims)}")
    return int(dims[0]), int(dims[1])


def generate(
    world: str,
    split: str,
    num_scenes: int,
    seed: int,
    size: tuple[int, int],
    render: Callable[[str, int, int, tuple[int, int]], tuple[np.ndarray, np.ndarray, Any]],
    shift: Callable[[np.ndarray, int, tuple[int, int, int]], np.ndarray] | None,
    shift_request: tuple[Any, Any],
    shifts: tuple[tuple[str, ...], tuple[int, ...]],
    progress: bool = False,
) -> SceneSet:
    """``num_scenes`` scenes of ``split``: ``render(split, i, seed, size)`` gives scene
    ``i``'s uint8 image ``(H, W, 3)`` and labels ``(H, W)``, then ``shift(image, i, key)``
    its shifted version (``key``: ``(seed, split index, i)``) when ``shift`` is given."""
    check_split(split)
    for name, value in (("num_scenes", num_scenes), ("seed", seed)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    num_scenes, seed = int(num_scenes), int(seed)
    images = np.empty((num_scenes, *size, 3), dtype=np.uint8)
    labels = np.empty((num_scenes, *size), dtype=np.int64)
    desc = f"{world} {split}" + (" (shifted)" if shift else "")
    for i in progress_bar(range(num_scenes), desc=desc, unit="scenes", progress=progress):
        image, labels[i], _ = render(split, i, seed, size)
        images[i] = image if shift is None else shift(image, i, (seed, SPLITS.index(split), i))
    return SceneSet.from_arrays(images, labels, split, seed, shift_request, shifts)


def shared_sources(
    pair: tuple[str, str],
    blocks: tuple[dict[str, Block], dict[str, Block]],
    objects: tuple[Sequence[str], Sequence[str]],
) -> list[str]:
    """What two splits (named ``pair``) share of their sources: overlapping pixels of a
    texture picture (its ``blocks``), an object picture (``objects``: void and OOD), or an
    object that is a texture of either."""
    a, b = pair
    problems = []
    for name in set(blocks[0]) & set(blocks[1]):
        (t1, l1, h1, w1), (t2, l2, h2, w2) = blocks[0][name], blocks[1][name]
        if t1 < t2 + h2 and t2 < t1 + h1 and l1 < l2 + w2 and l2 < l1 + w1:
            problems.append(f"{a} and {b} share pixels of {name}")
    objects_a, objects_b = set(objects[0]), set(objects[1])
    textures = set(blocks[0]) | set(blocks[1])
    shared = (objects_a & objects_b) | (objects_a & textures) | (objects_b & textures)
    if shared:
        problems.append(f"{a} and {b} share object pictures {sorted(shared)}")
    return problems
