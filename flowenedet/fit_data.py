"""Where a fit's batches come from, and what training keeps of them.

A :class:`FitSource` gives aligned batches ``(logits (B, K, h, w), labels (B, H, W),
pooled features (B, P, h, w) | None)``: a loader of images run through the frozen
segmenter (:class:`LoaderSource`) or logits computed elsewhere (:class:`TensorSource`),
each batch checked against the shapes measured on the first one (:class:`Shapes`).

:class:`FitBatches` runs the passes over a source and keeps, up to a memory budget, what
training reads of each batch (:class:`TrainBatch`: flow inputs, features and hit / miss
targets at logit resolution), so that the segmenter and the upsampled argmax run once per
batch rather than once per step. A loader is trusted to repeat itself only after a pass
that gave every batch again unchanged (compared by a hash of its images and labels); one
that augments or shuffles is read afresh on every pass, as without the cache. Kept or
not, a batch gives training the same tensors, so the fit's result does not depend on the
budget.

Longer than 400 lines: the sources and the pass cache share the checks and the
batch key that decide whether a pass repeated itself.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from .checks import check_images, check_labels, check_logits, unpack_batch
from .config import FlowSettings, Spec, check_field
from .energy import flow_inputs
from .flow import align_features
from .hooks import SegmenterTap
from .progress import StageTimer, stage
from .rules import raw_terms
from .selection import held_out_mask
from .shifts import shifted_copy
from .training import miss_targets

__all__ = [
    "BATCH",
    "FitBatches",
    "FitSource",
    "LoaderSource",
    "LogitBatch",
    "Shapes",
    "TensorSource",
    "TrainBatch",
]

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

    def prepare(self, raw: Any, shift: tuple[int, int] | None = None) -> LogitBatch:
        """The aligned batch of ``raw``; with ``shift=(seed, batch)`` its images'
        shifted copy (:func:`flowenedet.shifts.shifted_copy`)."""

    def prepare_stats(self, raw: Any) -> LogitBatch:
        """The part of ``raw``'s batch the class statistics are taken from."""

    def fingerprint(self, raw: Any) -> str | None:
        """A hash of ``raw``'s data, to tell whether a pass gave the same batch again;
        None for a source that always does."""

    def size(self, raw: Any) -> int:
        """The number of images in ``raw``'s batch."""

    @property
    def has_images(self) -> bool:
        """Whether the batches hold images (which shifted copies need)."""

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
        self.timer: StageTimer | None = None

    @property
    def feature_layer(self) -> str | None:
        return self.tap.feature_layer

    def raw_batches(self) -> Iterator[Any]:
        return iter(self.loader)

    has_images = True

    def prepare(self, raw: Any, shift: tuple[int, int] | None = None) -> LogitBatch:
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
        if shift is not None:
            with stage(self.timer, "shift"):
                images = shifted_copy(images, *shift)
        if self.shapes.settings.variant == "C" and self.tap.feature_layer is None:
            self.tap = SegmenterTap.finding_features(self.tap.segmenter, images[:1])
        with stage(self.timer, "segmenter"):
            logits, features = self.tap(images)
        measured = self.shapes.num_classes is None
        batch = self.shapes.align(logits, labels.to(self.device), features)
        if measured:  # the first batch: its labels' values checked once K is known
            settings = self.shapes.settings
            check_labels(
                labels, images.shape[-2:], len(labels), logits.shape[1], settings.ignore_index
            )
        return batch

    prepare_stats = prepare

    def size(self, raw: Any) -> int:
        return len(unpack_batch(raw, self.batch_keys)[0])

    def fingerprint(self, raw: Any) -> str:
        digest = hashlib.blake2b(digest_size=16)
        for tensor in unpack_batch(raw, self.batch_keys):
            if isinstance(tensor, Tensor):
                digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


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

    has_images = False

    def prepare(self, raw: int, shift: None = None, stop: int | None = None) -> LogitBatch:
        chunk = slice(raw, min(raw + self.batch_size, stop or self.logits.shape[0]))
        feats = None if self.features is None else self.features[chunk]
        return self.shapes.align(self.logits[chunk], self.labels[chunk], feats)

    def prepare_stats(self, raw: int) -> LogitBatch:
        return self.prepare(raw, stop=self.stats_items)

    def size(self, raw: int) -> int:
        return min(self.batch_size, self.logits.shape[0] - raw)

    def fingerprint(self, raw: int) -> None:
        return None  # the same tensors on every pass


# ------------------------------------------------------------------ what training keeps
@dataclass
class TrainBatch:
    """What training reads of one batch, at logit resolution: the flow's ``inputs``
    ``(B, D, h, w)``, the logits' :func:`~flowenedet.rules.raw_terms` ``raw``
    ``(B, 2, h, w)``, pooled ``features`` ``(B, P, h, w)`` (FED-C) or None, ``valid``
    ``(B, h, w)`` bool, ``miss`` ``(B, h, w)``, the share of wrong label pixels, and
    ``held_out`` ``(B,)`` bool, the images that choose the rules instead of training."""

    inputs: Tensor
    raw: Tensor
    features: Tensor | None
    valid: Tensor
    miss: Tensor
    held_out: Tensor

    def nbytes(self) -> int:
        """Bytes its tensors hold."""
        tensors = [self.inputs, self.raw, self.features, self.valid, self.miss, self.held_out]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


StatsBatch = tuple[Tensor, Tensor, Tensor, Tensor]
"""logits ``(B, K, h, w)``, labels ``(B, H, W)``, valid and miss ``(B, h, w)``: what the
statistics pass reads of a batch."""
Key = tuple[int, int, Any]
"""A batch's position in its pass, its copy (0: as given, ``n``: the ``n``-th shifted copy)
and the source's raw batch (None: read from memory)."""


class FitBatches:
    """The passes over ``source``, keeping each batch's :class:`TrainBatch` while
    ``budget`` bytes allow (0: none); see the module docstring.

    Use: iterate :meth:`statistics` once (unless resuming), :meth:`use_statistics`, then
    :meth:`passes` gives keys without end and :meth:`batch` turns a key into its
    :class:`TrainBatch`.
    """

    def __init__(
        self,
        source: FitSource,
        settings: FlowSettings,
        budget: int,
        copies: int = 0,
        timer: StageTimer | None = None,
    ) -> None:
        self.source, self.settings, self.budget, self.timer = source, settings, budget, timer
        self.copies = copies if source.has_images else 0  # logits cannot be shifted
        self.kept: dict[tuple[int, int], TrainBatch] = {}
        self.fingerprints: dict[int, str | None] = {}
        self.repeated: set[int] = set()  # batches a later pass gave unchanged
        self.count: int | None = None  # batches per pass
        self.changing = False  # the source gives other data on another pass
        self.mean: Tensor | None = None
        self.var: Tensor | None = None
        self._pending: dict[tuple[int, int], tuple[Tensor | None, ...]] = {}
        self._used = 0

    def statistics(self) -> Iterator[StatsBatch]:
        """The first pass, for the class statistics; keeps the full batches it can."""
        count = 0
        for index, raw in enumerate(self.source.raw_batches()):
            count += 1
            self.fingerprints[index] = fingerprint = self.source.fingerprint(raw)
            logits, labels, features = self.source.prepare_stats(raw)
            valid, miss = self._targets(logits, labels)
            if fingerprint is not None:  # a loader's whole batch (not fit_logits' part)
                self._keep_pending((index, 0), logits, features, valid, miss)
            yield logits, labels, valid, miss
        self.count = count

    def use_statistics(self, mean: Tensor, var: Tensor) -> None:
        """The class statistics: the batches kept so far become flow inputs."""
        self.mean, self.var = mean, var
        pending, self._pending, self._used = self._pending, {}, 0
        for key, (logits, features, valid, miss) in pending.items():
            held = held_out_mask(self.settings.seed, key[0], len(logits)).to(valid.device)
            self._keep(key, TrainBatch(*self._inputs(logits), features, valid, miss, held))

    def passes(self) -> Iterator[Key]:
        """The keys of the batches that train (not every image held out), pass after
        pass, endlessly (see :meth:`one_pass`)."""
        passes = 1  # the statistics pass
        while True:
            passes += 1
            yield from (key for key in self.one_pass(passes) if self._trains(key))

    def _trains(self, key: Key) -> bool:
        index, copy, raw = key
        kept = self.kept.get((index, copy))
        if kept is not None:
            return not kept.held_out.all()
        return not held_out_mask(self.settings.seed, index, self.source.size(raw)).all()

    def one_pass(self, number: int = 2) -> Iterator[Key]:
        """The keys of one pass, each batch followed by its shifted copies: from memory
        once every batch is kept, else from the source; a pass that yields nothing (a
        loader that can be read only once) is an error, never an endless loop."""
        copies = range(1 + self.copies)
        if self._all_kept():
            yield from ((index, c, None) for index in range(self.count) for c in copies)
            return
        count = 0
        for index, raw in enumerate(self.source.raw_batches()):
            count += 1
            yield from ((index, c, raw) for c in copies)
        if count == 0:
            raise ValueError(
                f"the loader yielded no batches on pass {number}: fit reads it several "
                "times (statistics, then training); pass a list or a DataLoader, not a "
                "generator"
            )
        if self.count is not None and count != self.count:
            self._forget(f"{self.count} batches on one pass and {count} on another")
        self.count = count

    def batch(self, key: Key) -> TrainBatch:
        """The :class:`TrainBatch` of ``key``, from memory when it is kept."""
        index, copy, raw = key
        if raw is not None and copy == 0:
            self._check_repeat(index, self.source.fingerprint(raw))
        kept = self.kept.get((index, copy))
        if kept is not None:
            return kept
        shift = (self.settings.seed + copy, index) if copy else None
        logits, labels, features = self.source.prepare(raw, shift)
        valid, miss = self._targets(logits, labels)
        held = held_out_mask(self.settings.seed, index, len(logits)).to(valid.device)
        batch = TrainBatch(*self._inputs(logits), features, valid, miss, held)
        if not self.changing:
            self._keep((index, copy), batch)
        return batch

    def _targets(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        with stage(self.timer, "targets"):
            s = self.settings
            return miss_targets(logits, labels, s.ignore_index, s.void_as_miss)

    def _inputs(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """The flow's inputs and the raw logits' terms."""
        with stage(self.timer, "targets"):
            inputs = flow_inputs(logits, self.mean, self.var, self.settings.inputs)
            return inputs, raw_terms(logits)

    def _check_repeat(self, index: int, fingerprint: str | None) -> None:
        if fingerprint is None or self.changing:
            return
        known = self.fingerprints.setdefault(index, fingerprint)
        if known != fingerprint:
            self._forget(f"batch {index} differs from an earlier pass's")
        elif (index, 0) in self.kept:
            self.repeated.add(index)

    def _all_kept(self) -> bool:
        """Whether a pass can come from memory alone."""
        if self.changing or self.count is None or len(self.kept) < self.count * (1 + self.copies):
            return False
        trusted = all(f is None for f in self.fingerprints.values())
        return trusted or len(self.repeated) == self.count

    def _forget(self, why: str) -> None:
        if not self.changing:
            logger.info(
                "the loader gives other data on another pass (%s: augmentation or "
                "shuffling); the segmenter runs on every batch of every pass",
                why,
            )
        self.changing = True
        self.kept.clear()
        self._pending.clear()

    def _keep_pending(self, index: tuple[int, int], *tensors: Tensor | None) -> None:
        if self._fits(sum(t.numel() * t.element_size() for t in tensors if t is not None)):
            self._pending[index] = tensors

    def _keep(self, index: tuple[int, int], batch: TrainBatch) -> None:
        if self._fits(batch.nbytes()):
            self.kept[index] = batch

    def _fits(self, size: int) -> bool:
        if self._used + size > self.budget:
            return False
        self._used += size
        return True
