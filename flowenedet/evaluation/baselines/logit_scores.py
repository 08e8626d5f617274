"""Baselines read off one pass's logits: maximum softmax probability, maximum logit,
free energy, softmax entropy and the standardized max logit, as pure functions of logits
``(B, K, h, w)`` from any framework (scores ``(B, h, w)``, higher = more suspicious) and
as detectors (all but SML's, which needs class statistics: :mod:`.standardized_max_logit`)."""

from __future__ import annotations

import torch
from torch import Tensor

from ...checks import check_logits
from ...energy import free_energy, standardize
from .base import Baseline

__all__ = ["MSP", "Energy", "Entropy", "MaxLogit", "energy", "entropy", "max_logit", "msp", "sml"]


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
