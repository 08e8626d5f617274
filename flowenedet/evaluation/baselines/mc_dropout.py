"""Monte-Carlo dropout: several stochastic passes of the segmenter."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from ...checks import check_images, check_logits
from ...hooks import segmenter_device
from ...postprocess import resize, upsampled_argmax
from ...scores import Scores
from .base import Baseline, as_scores, check_size

__all__ = ["MCDropout"]


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
    needs_images = True
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

    def score(self, images: Tensor) -> Scores:
        """:class:`~flowenedet.Scores` of ``images`` ``(B, 3, H, W)`` from ``samples``
        stochastic passes; ``pred`` is the argmax of their mean softmax."""
        images = check_images(images).to(segmenter_device(self.segmenter))
        passes = (self._tap(images, dropout=True)[0] for _ in range(self.samples))
        return self._from_samples(passes, images.shape[-2:])

    def score_logits(
        self,
        logits: Tensor,
        features: Tensor | None = None,
        size: Sequence[int] | None = None,
    ) -> Scores:
        """:class:`~flowenedet.Scores` from the logits of all samples ``(S, B, K, h, w)``
        at ``size`` (default: the logits' size)."""
        if not isinstance(logits, Tensor) or logits.dim() != 5 or logits.shape[0] == 0:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(
                f"MC dropout needs the logits of every sample, shape (S, B, K, h, w); got {shape}"
            )
        size = tuple(logits.shape[-2:]) if size is None else check_size(size)
        return self._from_samples(logits.unbind(0), size)

    def _from_samples(self, samples: Iterable[Tensor], size: Sequence[int]) -> Scores:
        """The scores at ``size`` from a stream of per-sample logits ``(B, K, h, w)``."""
        count, total_prob, total_entropy = 0, torch.zeros(()), torch.zeros(())
        for logits in samples:
            log_p = torch.log_softmax(check_logits(logits), dim=1)
            p = log_p.exp()
            total_prob = total_prob + p
            total_entropy = total_entropy - (p * log_p).sum(dim=1)
            count += 1
        mean_prob = total_prob / count
        predictive = -torch.xlogy(mean_prob, mean_prob).sum(dim=1)
        if self.measure == "mutual_information":
            predictive = (predictive - total_entropy / count).clamp_min(0.0)
        pred = upsampled_argmax(mean_prob, size)
        return as_scores(resize(predictive, size), pred, mean_prob.shape[1])
