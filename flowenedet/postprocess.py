"""Post-processing of per-pixel score maps: smoothing, boundary suppression, resizing.

All functions take and return score maps of shape ``(B, h, w)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Gaussian",
    "boundary_mask",
    "convert_boundary",
    "gaussian_smooth",
    "postprocess_maps",
    "resize",
    "resize_labels",
    "suppress_boundaries",
    "upsampled_argmax",
]


def resize(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize ``maps`` ``(B, h, w)`` to ``(B, *size)``; a no-op at that size."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def resize_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of integer ``labels`` ``(B, H, W)`` to ``(B, *size)``."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    resized = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")
    return resized[:, 0].long()


def _gaussian_kernel(kernel_size: int, sigma: float, device: torch.device) -> Tensor:
    offsets = torch.arange(kernel_size, device=device, dtype=torch.float32) - kernel_size // 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    weights = weights / weights.sum()
    return weights[:, None] * weights[None, :]


def gaussian_smooth(
    maps: Tensor, kernel_size: int = 7, sigma: float = 1.0, dilation: int = 1
) -> Tensor:
    """Gaussian smoothing of ``maps`` ``(B, h, w)`` with reflect padding.

    ``dilation`` spreads the kernel taps apart (the reference's OOD smoothing uses
    ``kernel_size=7, dilation=6``); padding falls back to replicate where the map is too
    small to reflect.
    """
    kernel = _gaussian_kernel(kernel_size, sigma, maps.device)[None, None]
    pad = dilation * (kernel_size // 2)
    h, w = maps.shape[-2:]
    mode = "reflect" if pad < h and pad < w else "replicate"
    padded = F.pad(maps[:, None].float(), [pad] * 4, mode=mode)
    return F.conv2d(padded, kernel, dilation=dilation)[:, 0]


@dataclass(frozen=True)
class Gaussian:
    """A (dilated) Gaussian smoothing kernel: ``kernel_size`` taps, ``sigma`` in taps, taps
    ``dilation`` pixels apart; :func:`gaussian_smooth` applies it."""

    kernel_size: int
    sigma: float = 1.0
    dilation: int = 1

    def apply(self, maps: Tensor) -> Tensor:
        """``maps`` ``(B, h, w)`` smoothed; a 1-tap kernel returns them unchanged."""
        if self.kernel_size <= 1:
            return maps
        return gaussian_smooth(maps, self.kernel_size, self.sigma, self.dilation)

    def at_stride(self, stride: float) -> Gaussian:
        """The kernel given in image pixels, for maps of ``stride`` image pixels per pixel:
        the same spread (``sigma * dilation / stride``) and reach (``(k // 2) * dilation /
        stride``, rounded) with contiguous taps. (A dilated kernel on a map that was
        upsampled from logits is close to a plain one of the same spread.)"""
        radius = math.floor((self.kernel_size // 2) * self.dilation / stride + 0.5)
        return Gaussian(2 * radius + 1, self.sigma * self.dilation / stride, 1)


def convert_boundary(width: int, iterations: int, stride: float) -> tuple[int, int]:
    """Boundary suppression ``(width, iterations)`` given in image pixels, for maps of
    ``stride`` image pixels per pixel: the width rounded (half up), at most that many
    iterations."""
    converted = math.floor(width / stride + 0.5)
    return converted, min(iterations, converted)


def postprocess_maps(
    idm: Tensor,
    ood: Tensor,
    concurrent: Tensor,
    *,
    pred: Tensor | Callable[[], Tensor],
    config: Any,
    stride: float,
) -> list[Tensor]:
    """The detector's smoothing and boundary suppression of its three raw maps ``(B, h, w)``
    (``pred`` at the same resolution, or a function giving it, called only when boundary
    suppression runs), with ``config``'s sizes (a
    :class:`~flowenedet.config.ScoringOptions`) divided by ``stride``: ``idm`` and
    ``concurrent`` get the plain Gaussian, ``ood`` boundary suppression, then the dilated
    Gaussian (keeping peaks with ``ood_keep_peaks``)."""
    cfg = config
    smooth = Gaussian(cfg.smooth_kernel).at_stride(stride)
    ood_kernel = cfg.smooth_kernel if cfg.ood_smooth_kernel is None else cfg.ood_smooth_kernel
    ood_smooth = Gaussian(ood_kernel, cfg.ood_smooth_sigma, cfg.ood_dilation)
    if stride != 1.0:
        ood_smooth = ood_smooth.at_stride(stride)
    width, iterations = convert_boundary(cfg.boundary_width, cfg.boundary_iterations, stride)
    if width > 0 and iterations > 0:  # else it leaves the map as it is: no prediction needed
        ood = suppress_boundaries(ood, pred() if callable(pred) else pred, width, iterations)
    smoothed = ood_smooth.apply(ood)
    ood = torch.maximum(ood, smoothed) if cfg.ood_keep_peaks else smoothed
    return [smooth.apply(idm), ood, smooth.apply(concurrent)]


def boundary_mask(pred: Tensor, width: int) -> Tensor:
    """Pixels of ``pred`` ``(B, h, w)`` within ``width`` pixels of a class change, ``(B, h, w)``."""
    if width <= 0:
        return torch.zeros_like(pred, dtype=torch.bool)
    labels = pred[:, None].float()
    local_max = _square_max(labels, width)
    local_min = -_square_max(-labels, width)
    return (local_max != local_min)[:, 0]


def _square_max(maps: Tensor, radius: int) -> Tensor:
    """Maximum over the ``(2 radius + 1)``-square around each pixel of ``maps``
    ``(B, 1, h, w)``, as a column then a row pass (exact, and much cheaper than one
    square window)."""
    size = 2 * radius + 1
    columns = F.max_pool2d(maps, (size, 1), stride=1, padding=(radius, 0))
    return F.max_pool2d(columns, (1, size), stride=1, padding=(0, radius))


def suppress_boundaries(maps: Tensor, pred: Tensor, width: int = 4, iterations: int = 4) -> Tensor:
    """Replace scores near predicted class boundaries by their non-boundary neighbours.

    Boundaries between predicted classes are where even a good segmenter is unsure, so
    for OOD detection their scores are overwritten, from the outside in: at iteration
    ``i`` the pixels within ``width - i * width // iterations`` of a boundary take the
    mean of the non-boundary scores in their 3x3 neighbourhood (as in SML).

    Args:
        maps: scores ``(B, h, w)``.
        pred: predicted labels ``(B, h, w)`` at the same resolution.
    """
    if pred.shape != maps.shape:
        raise ValueError(f"pred has shape {tuple(pred.shape)} but maps are {tuple(maps.shape)}")
    ones = torch.ones(1, 1, 3, 3, device=maps.device)
    out = maps.float()
    for i in range(iterations):
        boundary = boundary_mask(pred, width - i * (width // iterations))
        keep = (~boundary).float()[:, None]
        total = F.conv2d(out[:, None] * keep, ones, padding=1)[:, 0]
        count = F.conv2d(keep, ones, padding=1)[:, 0]
        filled = boundary & (count > 0)
        out = torch.where(filled, total / count.clamp_min(1), out)
    return out


def upsampled_argmax(logits: Tensor, size: Sequence[int], group: int = 4) -> Tensor:
    """``argmax`` of bilinearly upsampled ``logits`` ``(B, K, h, w)`` -> ``(B, *size)``.

    Classes are upsampled ``group`` at a time with a running maximum, so a 2048x1024
    prediction never holds all ``K`` upsampled channels at once. Ties go to the lower
    class, as in ``torch.argmax``.
    """
    size = tuple(size)
    if tuple(logits.shape[-2:]) == size:
        return logits.argmax(1)
    best = pred = None
    for first in range(0, logits.shape[1], group):
        up = F.interpolate(
            logits[:, first : first + group], size=size, mode="bilinear", align_corners=False
        )
        value, index = up.max(1)
        if best is None:
            best, pred = value, index
        else:
            better = value > best
            best = torch.where(better, value, best)
            pred = torch.where(better, index + first, pred)
    return pred
