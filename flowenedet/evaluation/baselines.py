"""Baseline per-pixel detectors on the logits of a frozen segmenter.

Every baseline turns logits ``(B, K, h, w)`` into scores ``(B, h, w)``, higher = more
suspicious (misclassified or out-of-distribution). The pure functions work on logits from
any framework; the detector classes share one interface in the style of ``pytorch-ood``::

    det = make_baseline("sml", segmenter).fit(train_loader)
    scores = det.score(images)  # (B, H, W) at the images' resolution

Baselines never modify the segmenter: it runs under :func:`flowenedet.hooks.frozen`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..checks import check_images, check_labels, check_logits, unpack_batch
from ..energy import ClassStats, free_energy, standardize
from ..hooks import SegmenterTap, segmenter_device
from ..labels import IGNORE_INDEX
from ..postprocess import gaussian_smooth, resize, resize_labels, suppress_boundaries
from ..progress import progress_bar
from .config import sml_postprocess

__all__ = [
    "BASELINES",
    "MSP",
    "SML",
    "Baseline",
    "Energy",
    "Entropy",
    "MCDropout",
    "MaxLogit",
    "energy",
    "entropy",
    "make_baseline",
    "max_logit",
    "msp",
    "sml",
    "sml_pair",
]

logger = logging.getLogger(__name__)

# SML post-processing, as in the SML paper and FlowEneDet's ``ood`` map.
BOUNDARY_WIDTH = 4
BOUNDARY_ITERATIONS = 4
SMOOTH_KERNEL = 7
SMOOTH_SIGMA = 1.0
SMOOTH_DILATION = 6


# ---------------------------------------------------------------- pure score functions
def msp(logits: Tensor) -> Tensor:
    """``1 - max_k softmax(l)_k``: scores ``(B, h, w)`` in ``[0, 1 - 1/K]``."""
    logits = check_logits(logits)
    return 1.0 - logits.softmax(dim=1).amax(dim=1)


def max_logit(logits: Tensor) -> Tensor:
    """``-max_k l_k``: scores ``(B, h, w)``."""
    return -check_logits(logits).amax(dim=1)


def energy(logits: Tensor) -> Tensor:
    """Free energy ``-logsumexp_k l_k`` (temperature 1): scores ``(B, h, w)``."""
    return free_energy(check_logits(logits))


def entropy(logits: Tensor) -> Tensor:
    """Softmax entropy ``-sum_k p_k log p_k`` in nats: scores ``(B, h, w)`` in ``[0, log K]``."""
    log_p = torch.log_softmax(check_logits(logits), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def sml(logits: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """Minus the standardized max logit: ``-(l_c - mean_c) / sqrt(var_c)``, ``c = argmax l``.

    ``logits`` ``(B, K, h, w)``; ``mean`` and ``var`` ``(K,)`` as from
    :meth:`flowenedet.energy.ClassStats.finalize`. Returns scores ``(B, h, w)``.
    """
    logits = check_logits(logits)
    standardized = standardize(logits, torch.as_tensor(mean), torch.as_tensor(var))
    pred = logits.argmax(dim=1, keepdim=True)
    return -standardized.gather(1, pred)[:, 0]


# ---------------------------------------------------------------- detector classes
class Baseline:
    """Common interface: ``fit(loader)``, ``score(images)``, ``score_logits(logits)``.

    Args:
        segmenter: any ``nn.Module`` mapping images ``(B, 3, H, W)`` to logits
            ``(B, K, h, w)`` (or a dict / tuple / object holding them, see
            :class:`flowenedet.hooks.SegmenterTap`). It is never modified.
    """

    paper: ClassVar[str] = ""

    def __init__(self, segmenter: nn.Module) -> None:
        if not isinstance(segmenter, nn.Module):
            raise TypeError(f"segmenter must be a torch.nn.Module; got {type(segmenter).__name__}")
        self.segmenter = segmenter
        self._tap = SegmenterTap(segmenter)

    def fit(self, loader: Iterable[Any], progress: bool | None = None) -> Baseline:
        """Nothing to fit for this method; returns ``self``."""
        return self

    def score(self, images: Tensor) -> Tensor:
        """Scores ``(B, H, W)`` for ``images`` ``(B, 3, H, W)``, bilinearly upsampled."""
        images = check_images(images)
        logits, _ = self._tap(images.to(segmenter_device(self.segmenter)))
        return self.score_logits(logits, size=images.shape[-2:])

    def score_logits(self, logits: Tensor, size: Sequence[int] | None = None) -> Tensor:
        """Scores ``(B, h, w)`` from ``logits`` ``(B, K, h, w)``; resized to ``size`` if given."""
        scores = self._score(check_logits(logits))
        return scores if size is None else resize(scores, _check_size(size))

    def __call__(self, images: Tensor) -> Tensor:
        return self.score(images)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.segmenter).__name__})"

    def _score(self, logits: Tensor) -> Tensor:
        raise NotImplementedError


class MSP(Baseline):
    """Maximum softmax probability, scored as ``1 - max softmax``.

    Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution
    Examples in Neural Networks", ICLR 2017. (``pytorch-ood``'s ``MaxSoftmax`` gives
    ``-max softmax``, i.e. the same score minus 1.)
    """

    paper = "Hendrycks & Gimpel, ICLR 2017"

    def _score(self, logits: Tensor) -> Tensor:
        return msp(logits)


class MaxLogit(Baseline):
    """Negative maximum logit.

    Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings",
    ICML 2022.
    """

    paper = "Hendrycks et al., ICML 2022"

    def _score(self, logits: Tensor) -> Tensor:
        return max_logit(logits)


class Energy(Baseline):
    """Free energy ``-logsumexp`` of the logits.

    Liu et al., "Energy-based Out-of-distribution Detection", NeurIPS 2020.
    """

    paper = "Liu et al., NeurIPS 2020"

    def _score(self, logits: Tensor) -> Tensor:
        return energy(logits)


class Entropy(Baseline):
    """Entropy of the softmax distribution (nats).

    Chan, Rottmann & Gottschalk, "Entropy Maximization and Meta Classification for
    Out-of-Distribution Detection in Semantic Segmentation", ICCV 2021.
    """

    paper = "Chan et al., ICCV 2021"

    def _score(self, logits: Tensor) -> Tensor:
        return entropy(logits)


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
            self.mean, self.var = _check_stats(mean, var)

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
            if stats is None:
                stats = ClassStats(logits.shape[1])
            elif logits.shape[1] != stats.num_classes:
                raise ValueError(
                    f"the segmenter gave {logits.shape[1]} classes but earlier batches "
                    f"had {stats.num_classes}"
                )
            labels = resize_labels(labels.to(logits.device), logits.shape[-2:])
            stats.update(logits, labels, self.ignore_index)
        if stats is None:
            raise ValueError("loader yielded no batches")
        self.mean, self.var = stats.finalize()
        logger.info("SML class statistics from %d correct pixels", int(stats.count.sum()))
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


class MCDropout(Baseline):
    """Monte-Carlo dropout: ``samples`` stochastic forward passes with dropout active.

    Gal & Ghahramani, "Dropout as a Bayesian Approximation: Representing Model Uncertainty
    in Deep Learning", ICML 2016 (for segmentation: Kendall et al., Bayesian SegNet, 2015).

    Only the segmenter's dropout layers (``nn.Dropout``, ``nn.Dropout2d``, ...) are switched
    on; batch norm and everything else stay in eval mode, and every module's mode is
    restored afterwards. Scores depend on torch's global random state (seed it with
    ``torch.manual_seed`` for reproducible scores).

    Args:
        segmenter: the frozen segmenter; must contain a dropout layer with ``p > 0``.
        samples: number of stochastic passes (at least 2).
        measure: ``"entropy"`` (default): predictive entropy of the mean softmax, which
            covers both data and model uncertainty and so also flags misclassifications;
            ``"mutual_information"``: predictive entropy minus the mean per-sample entropy
            (model uncertainty only, the BALD score).
    """

    paper = "Gal & Ghahramani, ICML 2016"
    MEASURES: ClassVar[tuple[str, ...]] = ("entropy", "mutual_information")

    def __init__(self, segmenter: nn.Module, samples: int = 8, measure: str = "entropy") -> None:
        super().__init__(segmenter)
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
            raise ValueError(f"samples must be an integer >= 2; got {samples!r}")
        if measure not in self.MEASURES:
            raise ValueError(f"measure must be one of {self.MEASURES}; got {measure!r}")
        dropouts = [m for m in segmenter.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
        if not any(m.p > 0 for m in dropouts):
            found = "only dropout layers with p=0" if dropouts else "no dropout layer"
            raise ValueError(
                f"MC dropout needs a dropout layer (nn.Dropout, nn.Dropout2d, ...) with p > 0 "
                f"in the segmenter; {type(segmenter).__name__} has {found}"
            )
        self.samples = samples
        self.measure = measure

    def score(self, images: Tensor) -> Tensor:
        """Scores ``(B, H, W)`` for ``images`` ``(B, 3, H, W)`` from ``samples`` passes."""
        images = check_images(images).to(segmenter_device(self.segmenter))
        passes = (self._tap(images, dropout=True)[0] for _ in range(self.samples))
        return resize(self._from_samples(passes), images.shape[-2:])

    def score_logits(self, logits: Tensor, size: Sequence[int] | None = None) -> Tensor:
        """Scores ``(B, h, w)`` from the logits of all samples, ``(S, B, K, h, w)``."""
        if not isinstance(logits, Tensor) or logits.dim() != 5 or logits.shape[0] == 0:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(
                f"MC dropout needs the logits of every sample, shape (S, B, K, h, w); got {shape}"
            )
        scores = self._from_samples(logits.unbind(0))
        return scores if size is None else resize(scores, _check_size(size))

    def _from_samples(self, samples: Iterable[Tensor]) -> Tensor:
        """The score ``(B, h, w)`` from a stream of per-sample logits ``(B, K, h, w)``."""
        count, total_prob, total_entropy = 0, torch.zeros(()), torch.zeros(())
        for logits in samples:
            log_p = torch.log_softmax(check_logits(logits), dim=1)
            p = log_p.exp()
            total_prob = total_prob + p
            total_entropy = total_entropy - (p * log_p).sum(dim=1)
            count += 1
        mean_prob = total_prob / count
        predictive = -torch.xlogy(mean_prob, mean_prob).sum(dim=1)
        if self.measure == "entropy":
            return predictive
        return (predictive - total_entropy / count).clamp_min(0.0)


# ---------------------------------------------------------------- registry
BASELINES: dict[str, type[Baseline]] = {
    "msp": MSP,
    "maxlogit": MaxLogit,
    "energy": Energy,
    "entropy": Entropy,
    "sml": SML,
    "mcdropout": MCDropout,
}


def sml_pair(segmenter: nn.Module, mean: Tensor, var: Tensor, stride: float) -> dict[str, SML]:
    """``{"SML": plain, "SML+post": with post-processing}`` sharing class statistics ``(K,)``;
    the post-processing has the reference's sizes, given in image pixels, divided by the
    logit ``stride`` (:func:`flowenedet.evaluation.config.sml_postprocess`)."""
    sizes = sml_postprocess(stride)
    return {
        "SML": SML(segmenter, mean, var, postprocess=False),
        "SML+post": SML(segmenter, mean, var, postprocess=True, **sizes),
    }


def make_baseline(name: str, segmenter: nn.Module, **kwargs: Any) -> Baseline:
    """Build the baseline registered as ``name`` (see :data:`BASELINES`) for ``segmenter``."""
    key = name.lower() if isinstance(name, str) else name
    if key not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    return BASELINES[key](segmenter, **kwargs)


# ---------------------------------------------------------------- helpers
def _check_stats(mean: Any, var: Any) -> tuple[Tensor, Tensor]:
    mean = torch.as_tensor(mean, dtype=torch.float32).detach().clone()
    var = torch.as_tensor(var, dtype=torch.float32).detach().clone()
    if mean.dim() != 1 or mean.shape[0] < 2 or var.shape != mean.shape:
        raise ValueError(
            f"mean and var must both have shape (K,) with K >= 2; "
            f"got {tuple(mean.shape)} and {tuple(var.shape)}"
        )
    if not (torch.isfinite(mean).all() and torch.isfinite(var).all()) or (var < 0).any():
        raise ValueError("mean must be finite and var finite and non-negative")
    return mean, var


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
        raise ValueError(f"size must be two positive integers (H, W); got {tuple(size)}")
    return int(size[0]), int(size[1])
