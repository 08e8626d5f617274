"""Class statistics (Standardized Max Logits) and the energy inputs of the flow.

Notation: logits ``l`` of shape ``(B, K, h, w)``; labels ``y`` of shape ``(B, h, w)``.

1. For each class ``c``, over pixels with ``argmax(l) == c`` and ``y == c``, the mean
   ``mu_c`` and variance ``var_c`` of the max logit (accumulated in a stream).
2. Standardised logits ``lt_k = (l_k - mu_k) / sqrt(var_k)``; free energy
   ``E = -logsumexp_k(lt_k)``.
3. Inputs ``z = [log p_in, log p_out]`` with ``log p_in = log sigmoid(-E)`` and
   ``log p_out = log sigmoid(E)``, both computed with softplus, never via exp/log (the
   paper's input set, ``"energy"``).
4. The ``"rich"`` input set (the default, chosen on the embedded benchmark's validation
   split, see docs/benchmarks.md) appends four confidence measures of the same logits:
   the standardised max logit, the softmax entropy, the log max softmax probability and
   the margin between the two largest logits.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "INPUT_SETS",
    "ClassStats",
    "energy_inputs",
    "energy_of_inputs",
    "flow_inputs",
    "free_energy",
    "rich_inputs",
    "standardize",
]

logger = logging.getLogger(__name__)

MIN_VARIANCE = 1e-6


class ClassStats:
    """Streaming per-class mean and variance of the max logit over correct pixels.

    Sums are kept in float64, so partial statistics from several processes or loaders add
    up exactly (see :meth:`merge` and the distributed fit).
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2; got {num_classes}")
        self.num_classes = num_classes
        self.count = torch.zeros(num_classes, dtype=torch.float64)
        self.total = torch.zeros(num_classes, dtype=torch.float64)
        self.total_sq = torch.zeros(num_classes, dtype=torch.float64)

    def update(self, logits: Tensor, labels: Tensor, ignore_index: int = 255) -> None:
        """Add the correct pixels of ``logits`` ``(B, K, h, w)`` with ``labels`` ``(B, h, w)``."""
        max_logit, pred = logits.detach().max(dim=1)
        correct = (pred == labels) & (labels != ignore_index)
        classes = pred[correct].cpu()
        values = max_logit[correct].double().cpu()
        self.count += torch.bincount(classes, minlength=self.num_classes).double()
        self.total += torch.bincount(classes, values, minlength=self.num_classes)
        self.total_sq += torch.bincount(classes, values * values, minlength=self.num_classes)

    def merge(self, other: ClassStats) -> None:
        """Add another accumulator's sums into this one."""
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq

    def finalize(self) -> tuple[Tensor, Tensor]:
        """Return ``(mean, var)``, each ``(K,)`` float32.

        Classes never predicted correctly at least twice fall back to the pooled
        statistics of all classes (with a warning), so no class divides by zero.
        """
        if self.count.sum() < 2:
            raise ValueError("class statistics need at least two correctly predicted pixels")
        mean = self.total / self.count.clamp_min(1)
        var = self.total_sq / self.count.clamp_min(1) - mean**2
        pooled_mean = self.total.sum() / self.count.sum()
        pooled_var = self.total_sq.sum() / self.count.sum() - pooled_mean**2
        missing = self.count < 2
        if missing.any():
            logger.warning(
                "classes %s have fewer than 2 correctly predicted pixels; "
                "using the statistics pooled over all classes for them",
                missing.nonzero().flatten().tolist(),
            )
            mean = torch.where(missing, pooled_mean, mean)
            var = torch.where(missing, pooled_var, var)
        return mean.float(), var.clamp_min(MIN_VARIANCE).float()


def standardize(logits: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """Standardise each channel of ``logits`` ``(B, K, h, w)`` with its class's statistics."""
    if mean.shape != (logits.shape[1],) or var.shape != mean.shape:
        raise ValueError(
            f"mean and var must have shape ({logits.shape[1]},) for logits with "
            f"{logits.shape[1]} classes; got {tuple(mean.shape)} and {tuple(var.shape)}"
        )
    mean = mean.to(logits.device, torch.float32)[None, :, None, None]
    std = var.to(logits.device, torch.float32).clamp_min(MIN_VARIANCE).sqrt()[None, :, None, None]
    return (logits.float() - mean) / std


def free_energy(logits: Tensor) -> Tensor:
    """Free energy ``-logsumexp_k(l_k)`` of ``logits`` ``(B, K, h, w)``, shape ``(B, h, w)``."""
    return -torch.logsumexp(logits.float(), dim=1)


def energy_inputs(logits: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """The flow's inputs ``[log p_in, log p_out]``, shape ``(B, 2, h, w)``, float32.

    ``logits`` ``(B, K, h, w)``; ``mean`` and ``var`` ``(K,)`` from :class:`ClassStats`.
    Stable for logits of any finite magnitude.
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must have shape (B, K, h, w); got {tuple(logits.shape)}")
    energy = free_energy(standardize(logits, mean, var))
    log_p_in = -F.softplus(energy)  # log sigmoid(-E)
    log_p_out = -F.softplus(-energy)  # log sigmoid(E) = log(1 - p_in)
    return torch.stack([log_p_in, log_p_out], dim=1)


def rich_inputs(logits: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """The energy pair plus four confidence measures, shape ``(B, 6, h, w)``, float32.

    Channels: ``log p_in``, ``log p_out`` (as :func:`energy_inputs`), the standardised max
    logit of the predicted class, the softmax entropy, the log max softmax probability and
    the margin between the two largest logits.
    """
    pair = energy_inputs(logits, mean, var)
    logits = logits.float()
    top2, top_class = logits.topk(2, dim=1)  # (B, 2, h, w) each
    top, top_class = top2[:, :1], top_class[:, :1]
    std = var.to(logits.device, torch.float32).clamp_min(MIN_VARIANCE).sqrt()
    standardized_max = (top - mean.to(logits.device, torch.float32)[top_class]) / std[top_class]
    # log Z and the softmax from one exp pass, shifted by the max logit (``top``): the
    # stable logsumexp and softmax, without recomputing the max or the exponentials
    exp = (logits - top).exp_()
    total = exp.sum(dim=1, keepdim=True)
    log_partition = top + total.log()
    # entropy = -sum_k p_k log p_k = log Z - sum_k p_k l_k
    entropy = log_partition - exp.mul_(logits).sum(dim=1, keepdim=True) / total
    log_max_prob = top - log_partition
    margin = top - top2[:, 1:]
    return torch.cat([pair, standardized_max, entropy, log_max_prob, margin], dim=1)


def energy_of_inputs(inputs: Tensor) -> Tensor:
    """The standardised free energy ``E`` ``(B, h, w)`` from flow inputs ``(B, D, h, w)``
    whose first channels are ``log sigmoid(-E)``, ``log sigmoid(E)``: their difference."""
    return inputs[:, 1] - inputs[:, 0]


INPUT_SETS = {"energy": (energy_inputs, 2), "rich": (rich_inputs, 6)}
"""Name -> (function, number of channels) of the flow's per-pixel input sets."""


def flow_inputs(logits: Tensor, mean: Tensor, var: Tensor, kind: str = "rich") -> Tensor:
    """The flow's inputs ``(B, D, h, w)`` of input set ``kind`` (see :data:`INPUT_SETS`)."""
    if kind not in INPUT_SETS:
        raise ValueError(f"unknown input set {kind!r}; choose one of {sorted(INPUT_SETS)}")
    return INPUT_SETS[kind][0](logits, mean, var)
