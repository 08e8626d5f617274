"""Fit-time augmentation: random resize, random crop and horizontal flip, applied with the
same geometry to an image and its label map (the training pipeline of the reference
release: resize ratio 0.5-2, crops of 512x1024 for DeepLabV3+ or 1024x1024 for SegFormer,
flip with probability 0.5).

Needs only torch. Padding that a crop adds past the image is labelled
:data:`flowenedet.labels.PADDING_INDEX`, which every metric and the fit leave out.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..labels import PADDING_INDEX
from ..shifts import seed_of

__all__ = ["AugmentDraw", "FitAugment"]


def _stream() -> tuple[int, int]:
    """``(rank, worker seed)`` of the calling process: 0 outside torch.distributed and
    outside DataLoader workers."""
    rank = 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank = torch.distributed.get_rank()
    info = torch.utils.data.get_worker_info()
    return rank, 0 if info is None else info.seed + 1


@dataclass(frozen=True)
class AugmentDraw:
    """The random choices of one call: resize ``factor`` giving ``size`` ``(h, w)``, crop
    corner ``(top, left)`` in the resized image, and whether it is flipped."""

    factor: float
    size: tuple[int, int]
    top: int
    left: int
    flip: bool


class FitAugment:
    """Random resize, random crop and horizontal flip of ``(image, label)`` pairs.

    Called as ``augment(image (C, H, W) float, label (H, W) int64) -> (image, label)``:

    1. resize by a factor drawn uniformly from ``scale`` (image bilinear, label nearest;
       both to ``(round(H * f), round(W * f))``);
    2. crop a random ``crop = (h, w)`` window; where the resized image is smaller than the
       crop, the window keeps all of it and the bottom / right rest is padding: ``fill``
       in the image (a number, or one per channel) and ``PADDING_INDEX`` in the label
       (padded after the flip, so padding is always at the bottom / right).
       ``crop=None`` keeps the whole resized image (sizes then vary from call to call);
    3. flip both horizontally with probability 0.5 when ``hflip``.

    Draws are deterministic: call ``n`` of an object uses a generator seeded from
    ``(seed, n)``, so a given seed and call sequence always gives the same crops and
    consecutive items get different ones. A ``DataLoader`` with ``num_workers > 0`` gives
    each worker a copy of the object; there the seed also mixes in the worker's seed
    (``torch.utils.data.get_worker_info().seed``, new for every worker and every pass over
    the loader, reproducible when the loader has a seeded ``generator=`` or the global RNG
    is seeded), and under torch.distributed the rank, so workers, passes and ranks never
    repeat each other's crops. A resumed fit draws from call 0 again, so its crops differ
    from an uninterrupted fit's (the result is reproducible, not identical).
    """

    def __init__(
        self,
        crop: tuple[int, int] | None = (512, 1024),
        scale: tuple[float, float] = (0.5, 2.0),
        hflip: bool = True,
        seed: int = 0,
        fill: float | Sequence[float] = 0.0,
    ) -> None:
        if crop is not None:
            sides = _items(crop)
            if len(sides) != 2 or not all(_is_int(s) and s > 0 for s in sides):
                raise ValueError(f"crop must be None or (height, width) positive ints; got {crop}")
            crop = (int(sides[0]), int(sides[1]))
        bounds = _items(scale)
        if len(bounds) != 2 or not all(_is_real(s) for s in bounds):
            raise ValueError(f"scale must be a pair (low, high) of numbers; got {scale}")
        low, high = float(bounds[0]), float(bounds[1])
        if not (0 < low <= high and math.isfinite(high)):
            raise ValueError(f"scale must satisfy 0 < low <= high < inf; got {scale}")
        if not isinstance(hflip, bool):
            raise ValueError(f"hflip must be True or False; got {hflip!r}")
        if not _is_int(seed) or seed < 0:
            raise ValueError(f"seed must be a non-negative int; got {seed!r}")
        fills = [fill] if _is_real(fill) else _items(fill)
        if not fills or not all(_is_real(v) and math.isfinite(v) for v in fills):
            raise ValueError(f"fill must be a finite number or one per channel; got {fill!r}")
        self.crop: tuple[int, int] | None = crop
        self.scale = (low, high)
        self.hflip = hflip
        self.seed = int(seed)
        self.fill = fills[0] if _is_real(fill) else tuple(float(v) for v in fills)
        self.calls = 0

    def __repr__(self) -> str:
        return (
            f"FitAugment(crop={self.crop}, scale={self.scale}, hflip={self.hflip}, "
            f"seed={self.seed}, fill={self.fill})"
        )

    def draw(self, height: int, width: int) -> AugmentDraw:
        """The next call's random choices for an ``height`` x ``width`` image."""
        rank, worker = _stream()
        generator = torch.Generator().manual_seed(seed_of(self.seed, rank, worker, self.calls))
        self.calls += 1
        u_scale, u_top, u_left, u_flip = torch.rand(4, generator=generator, dtype=torch.float64)
        low, high = self.scale
        factor = low + (high - low) * float(u_scale)
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        top = left = 0
        if self.crop is not None:  # uniform over the valid corners 0 .. size - crop
            top = int(float(u_top) * (max(size[0] - self.crop[0], 0) + 1))
            left = int(float(u_left) * (max(size[1] - self.crop[1], 0) + 1))
        return AugmentDraw(factor, size, top, left, self.hflip and float(u_flip) < 0.5)

    def apply(self, image: Tensor, label: Tensor, draw: AugmentDraw) -> tuple[Tensor, Tensor]:
        """``image (C, H, W)`` and ``label (H, W)`` resized, cropped and flipped as ``draw``
        says: ``(C, h, w)`` and ``(h, w)``, ``(h, w) = crop`` (or ``draw.size`` without)."""
        _check_pair(image, label)
        label = label.to(torch.int64)
        if draw.size != tuple(image.shape[-2:]):
            image = F.interpolate(
                image[None], size=draw.size, mode="bilinear", align_corners=False
            )[0]
            # nearest-exact samples the pixel whose centre is nearest to the same point the
            # bilinear image samples, so label and image stay aligned
            label = F.interpolate(label[None, None].double(), size=draw.size, mode="nearest-exact")
            label = label[0, 0].round().to(torch.int64)
        if self.crop is not None:
            rows = slice(draw.top, draw.top + self.crop[0])
            cols = slice(draw.left, draw.left + self.crop[1])
            image, label = image[:, rows, cols], label[rows, cols]
        if draw.flip:
            image, label = image.flip(-1), label.flip(-1)
        if self.crop is not None and tuple(image.shape[-2:]) != self.crop:
            image, label = self._pad(image, label, self.crop)
        return image.contiguous(), label.contiguous()

    def _pad(self, image: Tensor, label: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Pad ``image (C, h, w)`` with ``fill`` and ``label (h, w)`` with ``PADDING_INDEX``
        at the bottom and right to ``size``."""
        fill = torch.as_tensor(self.fill, dtype=image.dtype, device=image.device)
        if fill.dim() == 1 and fill.numel() != image.shape[0]:
            raise ValueError(
                f"fill has {fill.numel()} values but the image has {image.shape[0]} channels"
            )
        out_image = fill.reshape(-1, 1, 1).expand(image.shape[0], *size).clone()
        out_label = label.new_full(size, PADDING_INDEX)
        out_image[:, : image.shape[1], : image.shape[2]] = image
        out_label[: label.shape[0], : label.shape[1]] = label
        return out_image, out_label

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        """Augment one pair: ``image (C, H, W)`` float and ``label (H, W)`` int64."""
        _check_pair(image, label)
        return self.apply(image, label, self.draw(*image.shape[-2:]))


def _items(value: object) -> list[object]:
    """The elements of a tuple / list, or ``[]`` for anything else (refused by the caller)."""
    return list(value) if isinstance(value, tuple | list) else []


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_pair(image: Tensor, label: Tensor) -> None:
    if not isinstance(image, Tensor) or image.dim() != 3 or not image.is_floating_point():
        got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a float tensor (C, H, W); got {got}")
    if not isinstance(label, Tensor) or label.dim() != 2 or label.is_floating_point():
        got = tuple(label.shape) if isinstance(label, Tensor) else type(label).__name__
        raise ValueError(f"label must be an integer tensor (H, W); got {got}")
    if tuple(label.shape) != tuple(image.shape[-2:]):
        raise ValueError(
            f"label has shape {tuple(label.shape)} but the image is {tuple(image.shape)}"
        )
