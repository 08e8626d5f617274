"""Where a fit's batches come from: a loader of images run through the frozen segmenter
(:class:`LoaderSource`) or logits computed elsewhere (:class:`TensorSource`), each batch
checked against the shapes measured on the first one (:class:`Shapes`) and aligned for
the flow: ``(logits (B, K, h, w), labels (B, H, W), pooled features (B, P, h, w) | None)``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import torch
from torch import Tensor

from .checks import check_images, check_labels, check_logits, unpack_batch
from .config import FlowSettings, Spec, check_field
from .flow import align_features
from .hooks import SegmenterTap

__all__ = ["BATCH", "FitSource", "LoaderSource", "LogitBatch", "Shapes", "TensorSource"]

logger = logging.getLogger(__name__)

BATCH = Spec(int, 1, 1 << 20)  # items per batch of fit_logits
LogitBatch = tuple[Tensor, Tensor, Tensor | None]
"""logits ``(B, K, h, w)`` float32, labels ``(B, H, W)`` at input size, pooled features
``(B, P, h, w)`` at logit size (FED-C) or None."""


class Shapes:
    """The shapes a fit measures on its first batch, which every later batch must match:
    ``num_classes`` ``K``, ``feature_channels`` ``F`` (FED-C) and ``stride``."""

    def __init__(self, settings: FlowSettings, num_classes: int | None = None) -> None:
        self.settings = settings
        self.num_classes = num_classes
        self.feature_channels: int | None = None
        self.stride: float | None = None

    def align(self, logits: Tensor, labels: Tensor, features: Tensor | None) -> LogitBatch:
        """Check a batch against the shapes (measuring them on the first), pool FED-C
        features to the flow's channels at the logits' size."""
        logits = check_logits(logits)
        self.num_classes = _agree(self.num_classes, logits.shape[1], "classes", "num_classes")
        if self.stride is None:  # image pixels per logit pixel
            self.stride = labels.shape[-2] / logits.shape[-2]
        if self.settings.variant != "C":
            return logits, labels, None
        if features is None:
            raise ValueError("variant 'C' needs decoder features; pass features=")
        self.feature_channels = _agree(
            self.feature_channels, features.shape[1], "feature channels", "feature_channels"
        )
        return logits, labels, align_features(features, logits, self.settings.pooled_channels)


def _agree(current: int | None, value: int, what: str, field: str) -> int:
    if current is not None and value != current:
        raise ValueError(
            f"the segmenter gives {value} {what} but the detector is for {field}={current}"
        )
    return value


class FitSource(Protocol):
    """Where a fit's batches come from."""

    shapes: Shapes

    def raw_batches(self) -> Iterator[Any]:
        """One pass over the data: keys that :meth:`prepare` turns into batches."""

    def prepare(self, raw: Any) -> LogitBatch:
        """The aligned batch of ``raw``."""

    def prepare_stats(self, raw: Any) -> LogitBatch:
        """The part of ``raw``'s batch the class statistics are taken from."""

    @property
    def feature_layer(self) -> str | None:
        """The FED-C layer the features come from, if known."""


class LoaderSource:
    """Batches ``(images, labels)`` of a re-iterable ``loader`` run through the frozen
    segmenter's ``tap`` on ``device``; FED-C's feature layer is found on the first batch
    when the tap has none."""

    def __init__(
        self,
        loader: Iterable[Any],
        tap: SegmenterTap,
        device: torch.device,
        shapes: Shapes,
        batch_keys: tuple[str, str] | None = None,
    ) -> None:
        if isinstance(loader, Iterator):
            raise TypeError(
                f"loader is a one-shot iterator ({type(loader).__name__}); fit reads the data "
                "more than once (statistics, then training), so pass a list or a DataLoader"
            )
        self.loader, self.tap, self.device = loader, tap, device
        self.shapes, self.batch_keys = shapes, batch_keys

    @property
    def feature_layer(self) -> str | None:
        return self.tap.feature_layer

    def raw_batches(self) -> Iterator[Any]:
        return iter(self.loader)

    def prepare(self, raw: Any) -> LogitBatch:
        images, labels = unpack_batch(raw, self.batch_keys)
        images = check_images(images)
        labels = check_labels(
            labels,
            images.shape[-2:],
            images.shape[0],
            self.shapes.num_classes,
            self.shapes.settings.ignore_index,
        )
        images = images.to(self.device)
        if self.shapes.settings.variant == "C" and self.tap.feature_layer is None:
            self.tap = SegmenterTap.finding_features(self.tap.segmenter, images[:1])
        logits, features = self.tap(images)
        return self.shapes.align(logits, labels.to(self.device), features)

    prepare_stats = prepare


class TensorSource:
    """Batches of ``batch_size`` items of ``logits`` ``(N, K, h, w)``, ``labels``
    ``(N, H, W)`` and ``features`` ``(N, F, h', w')`` (FED-C), checked here; the class
    statistics come from the first ``stats_items`` items only (default: all)."""

    def __init__(
        self,
        logits: Tensor,
        labels: Tensor,
        features: Tensor | None,
        shapes: Shapes,
        batch_size: int,
        stats_items: int | None = None,
    ) -> None:
        settings = shapes.settings
        if settings.variant == "C" and features is None:
            raise ValueError("variant 'C' needs features; pass features= or use variant='U'")
        self.batch_size = check_field("fit_logits", "batch_size", batch_size, BATCH)
        self.logits = check_logits(logits)
        total = self.logits.shape[0]
        self.labels = check_labels(
            labels, labels.shape[-2:], total, self.logits.shape[1], settings.ignore_index
        )
        if features is not None and features.shape[0] != total:
            raise ValueError(f"features has {features.shape[0]} items but logits have {total}")
        if stats_items is None:
            stats_items = total
        elif isinstance(stats_items, bool) or not 1 <= stats_items <= total:
            raise ValueError(
                f"stats_items must be in 1..{total} (the items given); got {stats_items}"
            )
        self.features, self.shapes, self.stats_items = features, shapes, stats_items

    @property
    def feature_layer(self) -> str | None:
        return self.shapes.settings.feature_layer

    def raw_batches(self) -> Iterator[int]:
        return iter(range(0, self.logits.shape[0], self.batch_size))

    def prepare(self, raw: int, stop: int | None = None) -> LogitBatch:
        chunk = slice(raw, min(raw + self.batch_size, stop or self.logits.shape[0]))
        feats = None if self.features is None else self.features[chunk]
        return self.shapes.align(self.logits[chunk], self.labels[chunk], feats)

    def prepare_stats(self, raw: int) -> LogitBatch:
        return self.prepare(raw, self.stats_items)
