"""Standardized max logits (SML), with the class statistics FlowEneDet uses."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor, nn

from ...checks import check_images, check_labels, check_logits, unpack_batch
from ...energy import ClassStats
from ...hooks import segmenter_device
from ...labels import IGNORE_INDEX
from ...postprocess import gaussian_smooth, resize_labels, suppress_boundaries
from ...progress import progress_bar
from .base import Baseline, check_stats
from .logit_scores import sml

__all__ = ["SML"]

logger = logging.getLogger(__name__)

# SML post-processing, as in the SML paper and FlowEneDet's ``ood`` map.
BOUNDARY_WIDTH = 4
BOUNDARY_ITERATIONS = 4
SMOOTH_KERNEL = 7
SMOOTH_SIGMA = 1.0
SMOOTH_DILATION = 6


class SML(Baseline):
    """Standardized max logit, scored as ``-(l_c - mean_c) / sqrt(var_c)``, ``c = argmax l``.

    Jung et al., "Standardized Max Logits: A Simple yet Effective Approach for Identifying
    Unexpected Road Obstacles in Urban-Scene Segmentation", ICCV 2021.

    The class statistics are those of FlowEneDet: per class ``c``, the mean and variance of
    the max logit over training pixels predicted *and* labelled ``c``, at logit resolution
    (labels nearest-downsampled). Either :meth:`fit` them or pass ``mean=`` and ``var=``
    (e.g. ``det.stats.mean`` and ``det.stats.var`` of a fitted FlowEneDet).

    Args:
        segmenter: the frozen segmenter.
        mean, var: per-class statistics ``(K,)``; both or neither.
        postprocess: apply SML's boundary suppression (width 4, 4 iterations, on the
            predicted label map) and dilated Gaussian smoothing (kernel 7, sigma 1,
            dilation 6) at logit resolution. Default ``True``, as in the SML paper and
            FlowEneDet's ``ood`` map; use ``False`` for the plain per-pixel score (e.g. in
            misclassification tables, where boundary errors must stay visible).
        boundary_width, boundary_iterations, dilation: post-processing sizes, in logit
            pixels (shrink them for small logit maps, as FlowEneDet's options allow).
        ignore_index: label value left out of the statistics.
    """

    paper = "Jung et al., ICCV 2021"

    def __init__(
        self,
        segmenter: nn.Module,
        mean: Tensor | Sequence[float] | None = None,
        var: Tensor | Sequence[float] | None = None,
        *,
        postprocess: bool = True,
        boundary_width: int = BOUNDARY_WIDTH,
        boundary_iterations: int = BOUNDARY_ITERATIONS,
        dilation: int = SMOOTH_DILATION,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(segmenter)
        self.postprocess = postprocess
        self.boundary = (boundary_width, boundary_iterations)
        self.dilation = dilation
        self.ignore_index = ignore_index
        self.mean: Tensor | None = None
        self.var: Tensor | None = None
        if (mean is None) != (var is None):
            raise ValueError("pass both mean= and var= (each of shape (K,)), or neither")
        if mean is not None and var is not None:
            self.mean, self.var = check_stats(mean, var)

    def fit_logits(self, logits: Tensor, labels: Tensor) -> SML:
        """Estimate the class statistics from ``logits`` ``(N, K, h, w)`` and ``labels``
        ``(N, H, W)`` (classes ``0..K-1`` and ``ignore_index``)."""
        logits = check_logits(logits, "logits")
        labels = check_labels(
            labels, labels.shape[-2:], logits.shape[0], logits.shape[1], self.ignore_index
        )
        self._finish(self._update(None, logits, labels))
        return self

    def _update(self, stats: ClassStats | None, logits: Tensor, labels: Tensor) -> ClassStats:
        if stats is None:
            stats = ClassStats(logits.shape[1])
        elif logits.shape[1] != stats.num_classes:
            raise ValueError(
                f"the segmenter gave {logits.shape[1]} classes but earlier batches "
                f"had {stats.num_classes}"
            )
        stats.update(
            logits, resize_labels(labels.to(logits.device), logits.shape[-2:]), self.ignore_index
        )
        return stats

    def _finish(self, stats: ClassStats | None) -> None:
        if stats is None:
            raise ValueError("loader yielded no batches")
        self.mean, self.var = stats.finalize()
        logger.info("SML class statistics from %d correct pixels", int(stats.count.sum()))

    def fit(self, loader: Iterable[Any], progress: bool | None = None) -> SML:
        """Estimate the class statistics from a loader of ``(images, labels)`` batches.

        ``images`` ``(B, 3, H, W)``, ``labels`` ``(B, H, W)`` with classes ``0..K-1`` and
        ``ignore_index``. Replaces any ``mean`` / ``var`` given before.
        """
        device = segmenter_device(self.segmenter)
        stats: ClassStats | None = None
        for batch in progress_bar(loader, desc="SML class statistics", progress=progress):
            images, labels = unpack_batch(batch)
            images = check_images(images)
            logits, _ = self._tap(images.to(device))
            logits = check_logits(logits, "segmenter logits")
            labels = check_labels(
                labels, images.shape[-2:], images.shape[0], logits.shape[1], self.ignore_index
            )
            stats = self._update(stats, logits, labels)
        self._finish(stats)
        return self

    def _score(self, logits: Tensor) -> Tensor:
        if self.mean is None or self.var is None:
            raise RuntimeError(
                "SML needs class statistics: call fit(loader) or pass mean= and var="
            )
        scores = sml(logits, self.mean, self.var)
        if self.postprocess:
            pred = logits.argmax(dim=1)
            scores = suppress_boundaries(scores, pred, *self.boundary)
            scores = gaussian_smooth(scores, SMOOTH_KERNEL, SMOOTH_SIGMA, self.dilation)
        return scores
