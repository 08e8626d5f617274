"""One benchmark split: generated scenes with the segmenter's logits and features."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..hooks import SegmenterTap
from ..progress import progress_bar
from .config import FEATURE_LAYER, BenchConfig
from .worlds import world_module

__all__ = ["SplitData", "load_split", "shifted_split"]


@dataclass
class SplitData:
    """One split with the segmenter's outputs.

    ``images`` uint8 ``(N, 3, H, W)``, ``labels`` ``(N, H, W)``, ``logits`` ``(N, K, h, w)``,
    ``features`` ``(N, F, h, w)`` (the classifier's input).
    """

    name: str
    images: Tensor
    labels: Tensor
    logits: Tensor
    features: Tensor
    scores: dict[str, Tensor] = field(default_factory=dict)
    pred: Tensor | None = None


def load_split(
    segmenter: nn.Module, split: str, num: int, cfg: BenchConfig, corruption=None, severity=0
) -> SplitData:
    """Generate a split and run the segmenter over it once, in batches.

    ``corruption`` and ``severity`` as for :func:`flowenedet.evaluation.worlds.digits.make_scenes`;
    the scenes come from ``cfg.world``.
    """
    make_scenes = world_module(cfg.world).make_scenes
    size = {} if cfg.size is None else {"size": cfg.size}
    scenes = make_scenes(
        split, num, seed=cfg.seed, corruption=corruption, severity=severity, **size
    )
    if corruption is None:
        name = split
    elif isinstance(corruption, str) and isinstance(severity, int):
        name = f"{split}/{corruption}-{severity}"
    else:
        name = f"{split}/shifted"
    tap = SegmenterTap(segmenter, FEATURE_LAYER)
    logits, features = [], []
    for start in progress_bar(
        range(0, num, cfg.batch_size),
        desc=f"segmenting {name}",
        unit="batches",
        progress=cfg.progress,
    ):
        batch = scenes.images[start : start + cfg.batch_size].float() / 255
        out, feats = tap(batch)
        logits.append(out)
        features.append(feats)
    return SplitData(name, scenes.images, scenes.labels, torch.cat(logits), torch.cat(features))


def shifted_split(cfg: BenchConfig) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
    """``(corruptions, severities)`` of the shifted splits, as ``make_scenes`` takes them
    (every ``cfg.shift`` type at every severity 1-4); None when ``cfg.shift`` is empty."""
    from .worlds.shift import MAX_SEVERITY

    return (tuple(cfg.shift), tuple(range(1, MAX_SEVERITY + 1))) if cfg.shift else None
