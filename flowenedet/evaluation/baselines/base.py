"""The interface every baseline shares with :class:`flowenedet.FlowEneDet`, and the checks
of its arguments."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ...checks import check_images, check_logits
from ...hooks import SegmenterTap, segmenter_device
from ...postprocess import resize, upsampled_argmax
from ...scores import Scores

__all__ = ["Baseline", "as_scores", "check_size", "check_stats"]


class Baseline:
    """The detector interface every method shares with :class:`flowenedet.FlowEneDet`:
    ``fit(loader)`` / ``fit_logits(logits, labels)`` (nothing to fit for most),
    ``predict(images)`` (the ``(B, H, W)`` map, higher = more anomalous; also
    ``det(images)``), ``score(images)`` and ``score_logits(logits, features, size)``
    (:class:`~flowenedet.Scores`: the one map as ``idm``, ``ood`` and ``concurrent``, and
    the segmenter's prediction).

    Args:
        segmenter: any ``nn.Module`` mapping images ``(B, 3, H, W)`` to logits
            ``(B, K, h, w)`` (or a dict / tuple / object holding them, see
            :class:`flowenedet.hooks.SegmenterTap`). It is never modified.
    """

    paper: ClassVar[str] = ""
    needs_images: ClassVar[bool] = False
    """Whether :meth:`score` needs the images rather than one pass's logits (MC dropout's
    several stochastic passes): evaluation code then calls :meth:`score`."""

    def __init__(self, segmenter: nn.Module) -> None:
        if not isinstance(segmenter, nn.Module):
            raise TypeError(f"segmenter must be a torch.nn.Module; got {type(segmenter).__name__}")
        self.segmenter = segmenter
        self._tap = SegmenterTap(segmenter)

    def fit(self, loader: Iterable[Any], progress: bool | None = None) -> Baseline:
        """Nothing to fit for this method; returns ``self``."""
        return self

    def fit_logits(self, logits: Tensor, labels: Tensor) -> Baseline:
        """Nothing to fit for this method; returns ``self``."""
        return self

    def predict(self, images: Tensor) -> Tensor:
        """Scores ``(B, H, W)`` for ``images`` ``(B, 3, H, W)``, bilinearly upsampled."""
        return self.score(images).ood

    def __call__(self, images: Tensor) -> Tensor:
        """:meth:`predict`."""
        return self.predict(images)

    def score(self, images: Tensor) -> Scores:
        """:class:`~flowenedet.Scores` at the size of ``images`` ``(B, 3, H, W)``."""
        images = check_images(images)
        logits, _ = self._tap(images.to(segmenter_device(self.segmenter)))
        return self.score_logits(logits, size=images.shape[-2:])

    def score_logits(
        self,
        logits: Tensor,
        features: Tensor | None = None,
        size: Sequence[int] | None = None,
    ) -> Scores:
        """:class:`~flowenedet.Scores` from ``logits`` ``(B, K, h, w)`` at ``size`` (default:
        the logits' size); ``features`` are not used."""
        logits = check_logits(logits)
        size = tuple(logits.shape[-2:]) if size is None else check_size(size)
        scores = resize(self._score(logits), size)
        return as_scores(scores, upsampled_argmax(logits, size), logits.shape[1])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.segmenter).__name__})"

    def _score(self, logits: Tensor) -> Tensor:
        raise NotImplementedError


def as_scores(scores: Tensor, pred: Tensor, num_classes: int) -> Scores:
    """A baseline's one map ``(B, H, W)`` as every map of a :class:`Scores`."""
    return Scores(scores, scores, scores, pred=pred, num_classes=num_classes)


def check_stats(mean: Any, var: Any) -> tuple[Tensor, Tensor]:
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


def check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
        raise ValueError(f"size must be two positive integers (H, W); got {tuple(size)}")
    return int(size[0]), int(size[1])
