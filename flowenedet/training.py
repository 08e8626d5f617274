"""The pieces of flow training: balanced pixel sampling, the hit / miss loss, the schedule.

Kept apart from the detector so the single-process, distributed and resumed fits share
exactly the same arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["balanced_pixel_sample", "hit_miss_loss", "warmup_step_schedule"]


def balanced_pixel_sample(
    valid: Tensor, miss: Tensor, per_image: int, generator: torch.Generator
) -> Tensor:
    """Flat indices into ``(B, h, w)`` maps: up to ``per_image // 2`` hits and as many misses
    per image, drawn uniformly without replacement from the valid pixels.

    Sampling a fixed number per image keeps the cost of a step independent of the image
    size; balancing hits and misses keeps rare errors visible to the loss.
    """
    if valid.shape != miss.shape or valid.dim() != 3:
        raise ValueError(f"valid and miss must both be (B, h, w); got {valid.shape}, {miss.shape}")
    half = max(1, per_image // 2)
    pixels = valid.shape[1] * valid.shape[2]
    chosen = []
    for b in range(valid.shape[0]):
        for wanted in (valid[b] & ~miss[b], valid[b] & miss[b]):
            candidates = wanted.flatten().nonzero().flatten()
            if candidates.numel() > half:
                order = torch.randperm(candidates.numel(), generator=generator)[:half]
                candidates = candidates[order.to(candidates.device)]
            chosen.append(candidates + b * pixels)
    return torch.cat(chosen)


def hit_miss_loss(component_log_prob: Tensor, miss: Tensor) -> Tensor:
    """Class-balanced cross-entropy of ``softmax_m log p(z | m)`` against ``miss``.

    ``component_log_prob`` ``(N, 2)``, ``miss`` ``(N,)`` bool. Hits and misses each
    contribute half of the loss (when both are present), whatever their counts.
    """
    per_pixel = F.cross_entropy(component_log_prob, miss.long(), reduction="none")
    parts = [per_pixel[miss].mean()] if miss.any() else []
    if (~miss).any():
        parts.append(per_pixel[~miss].mean())
    return torch.stack(parts).mean()


def warmup_step_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_fraction: float = 0.05,
    decay_at: float = 0.8,
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first steps, then constant, then one step decay by ``gamma``."""
    warmup = max(1, round(warmup_fraction * total_steps))
    decay = round(decay_at * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return gamma if step >= decay else 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
