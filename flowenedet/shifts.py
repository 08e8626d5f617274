"""Fit-time distribution shift: corrupted copies of the fit's images.

A segmenter makes few mistakes on its own training images, and those few lie along class
boundaries; on new or shifted images it also errs inside regions. So the fit also shows
the flow each training batch under one corruption per image (``FitOptions.shifted_copies``)
and the segmenter's errors there. The corruptions are photometric (labels unchanged) and
work in the images' own units, whatever normalisation the segmenter expects: every
strength is relative to the image's per-channel spread and sizes to its resolution.

Four families, each at severities 1-4: multiplicative and impulse noise, blur (Gaussian
or a disk: defocus), pixelation (resolution loss), and a change of colour saturation.
Each image's family and severity follow from ``(seed, batch, image)``, so a batch's
shifted copy is the same on every pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SHIFTS", "seed_of", "shift_image", "shifted_copy"]

SHIFTS = ("speckle", "impulse", "gaussian_blur", "defocus", "pixelate", "saturation")
"""The corruptions, in the order :func:`shifted_copy` cycles through them."""
SEVERITIES = 4
_REFERENCE_SIDE = 256  # blur and pixel sizes are given for this shorter side


def shifted_copy(images: Tensor, seed: int, batch: int) -> Tensor:
    """``images`` ``(B, C, H, W)`` (float) each under one corruption of :data:`SHIFTS` at
    one severity, both drawn from ``(seed, batch, image)``."""
    out = torch.empty_like(images)
    for i, image in enumerate(images):
        generator = torch.Generator().manual_seed(seed_of(seed, batch, i))
        kind = SHIFTS[int(torch.randint(len(SHIFTS), (), generator=generator))]
        severity = int(torch.randint(1, SEVERITIES + 1, (), generator=generator))
        out[i] = shift_image(image, kind, severity, generator)
    return out


def shift_image(image: Tensor, kind: str, severity: int, generator: torch.Generator) -> Tensor:
    """``image`` ``(C, H, W)`` under corruption ``kind`` (one of :data:`SHIFTS`) at
    ``severity`` 1-4; the random draws come from ``generator`` (on the CPU)."""
    if kind not in SHIFTS or not 1 <= severity <= SEVERITIES:
        raise ValueError(f"kind must be one of {SHIFTS} and severity 1..{SEVERITIES}")
    x = image.float()
    s = severity - 1
    mean = x.mean((1, 2), keepdim=True)
    spread = x.std((1, 2), keepdim=True).clamp_min(1e-6)
    scale = max(1.0, min(x.shape[-2:]) / _REFERENCE_SIDE)  # sizes grow with the image
    if kind == "speckle":  # noise proportional to the signal around the channel mean
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        out = x + (x - mean + spread) * noise * (0.15, 0.25, 0.4, 0.6)[s]
    elif kind == "impulse":  # pixels stuck at the channel's extremes
        share = (0.01, 0.03, 0.06, 0.1)[s]
        u = torch.rand(x.shape, generator=generator).to(x.device)
        low, high = x.amin((1, 2), keepdim=True), x.amax((1, 2), keepdim=True)
        out = torch.where(u < share / 2, low, torch.where(u > 1 - share / 2, high, x))
    elif kind == "gaussian_blur":
        out = _blur(x, _gaussian((0.7, 1.2, 1.8, 2.6)[s] * scale, x))
    elif kind == "defocus":
        out = _blur(x, _disk((1.0, 1.5, 2.5, 3.5)[s] * scale, x))
    elif kind == "pixelate":
        factor = (1.5, 2.0, 3.0, 4.0)[s] * scale
        h, w = x.shape[-2:]
        small = (max(1, round(h / factor)), max(1, round(w / factor)))
        coarse = F.interpolate(x[None], size=small, mode="area")
        out = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    else:  # saturation: the channels drawn towards (or away from) their mean
        grey = x.mean(0, keepdim=True)
        amount = (0.5, 0.25, 1.8, 2.6)[s]  # greyer at 1-2, garish at 3-4
        out = grey + amount * (x - grey)
    return out.to(image.dtype)


def _blur(x: Tensor, kernel: Tensor) -> Tensor:
    """``x`` ``(C, H, W)`` convolved per channel with a 2-D ``kernel``, reflect-padded."""
    pad = kernel.shape[-1] // 2
    h, w = x.shape[-2:]
    mode = "reflect" if pad < min(h, w) else "replicate"
    padded = F.pad(x[None], [pad] * 4, mode=mode)
    weight = kernel.expand(x.shape[0], 1, *kernel.shape)
    return F.conv2d(padded, weight, groups=x.shape[0])[0]


def _gaussian(sigma: float, like: Tensor) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=like.dtype, device=like.device)
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = weights[:, None] * weights[None, :]
    return kernel / kernel.sum()


def _disk(radius: float, like: Tensor) -> Tensor:
    size = math.ceil(radius)
    offsets = torch.arange(-size, size + 1, dtype=like.dtype, device=like.device)
    inside = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).to(like.dtype)
    return inside / inside.sum()


def seed_of(*words: int) -> int:
    """A 63-bit seed from integers (the splitmix64 finaliser, chained)."""
    state = 0x9E3779B97F4A7C15
    for word in words:
        state = (state ^ (word & (2**64 - 1))) * 0xBF58476D1CE4E5B9 % 2**64
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB % 2**64
        state ^= state >> 29
    return state >> 1
