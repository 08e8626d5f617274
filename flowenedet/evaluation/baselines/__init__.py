"""Baseline per-pixel detectors on the logits of a frozen segmenter.

Every baseline turns logits ``(B, K, h, w)`` into scores ``(B, h, w)``, higher = more
suspicious (misclassified or out-of-distribution). The pure functions work on logits from
any framework; the detector classes share :class:`flowenedet.FlowEneDet`'s interface, in
the style of ``pytorch-ood``::

    det = make_baseline("sml", segmenter).fit(train_loader)
    anomaly = det.predict(images)  # (B, H, W) at the images' resolution, = det(images)
    scores = det.score(images)  # Scores: its one map as idm, ood and concurrent; pred

Baselines never modify the segmenter: it runs under :func:`flowenedet.hooks.frozen`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..config import sml_postprocess
from .base import Baseline
from .logit_scores import MSP, Energy, Entropy, MaxLogit, energy, entropy, max_logit, msp, sml
from .mc_dropout import MCDropout
from .standardized_max_logit import SML

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
