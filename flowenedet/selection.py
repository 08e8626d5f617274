"""The fit's choice of scoring rules, on images it held out from training.

The flow learns which pixels the segmenter gets wrong on the fit data; whether that
carries over to new images is checked, not assumed. A fifth of the fit's images (and
their shifted copies) never train the flow; after training, every candidate rule
(:mod:`flowenedet.rules`) ranks their pixels, and each ``"auto"`` map takes the one with
the best average precision for misclassified pixels. The precision is that of image
pixels, as the maps are judged: each held-out logit pixel stands for its cell, the
share of the cell's pixels the segmenter gets wrong counting as positives and the rest
as negatives (a cell with one wrong pixel in sixteen is mostly right, not a hit, and a
thin band of boundary errors weighs what it covers):

* ``idm``: the posterior, each confidence measure of the flow's inputs alone (``msp``,
  ``entropy``, ``margin``, ``sml``, ``energy``), or the log-odds blended with one of
  them. So the map never ranks the held-out pixels worse than the best of its own
  inputs: where the flow does not carry over, the rule falls back to an input.
* ``concurrent``: ``idm``'s rule plus the free energy (unknown objects, which the fit data
  do not show), with the largest weight that keeps the held-out precision within
  :data:`TOLERANCE` of the rule's own.
* ``ood``: the fit data hold no unknown objects to choose by, so ``"auto"`` is
  :data:`DEFAULT_OOD_RULE`, chosen on the embedded worlds' validation splits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .rules import AUTO, Rule, apply_rule, format_rule, parse_rule, term_maps, terms_of
from .shifts import seed_of
from .thresholds import curve_metrics

__all__ = [
    "DEFAULT_OOD_RULE",
    "DEFAULT_RULES",
    "TOLERANCE",
    "Choice",
    "HeldOut",
    "candidate_rules",
    "choose_rules",
    "held_out_mask",
]

logger = logging.getLogger(__name__)

HELD_OUT = 5
"""One image in this many is held out from training (at random, per image)."""
PIXELS_PER_IMAGE = 2048
"""Held-out pixels kept per image, at most (memory flat in the image size)."""
TOLERANCE = 0.01
"""How much held-out average precision the concurrent map's energy term may cost."""
DEFAULT_OOD_RULE = "flow + 1.5 energy"
DEFAULT_RULES = {
    "idm_rule": "posterior",
    "ood_rule": DEFAULT_OOD_RULE,
    "concurrent_rule": "flow + 0.5 energy",
}
"""The rules of a fit with too few held-out pixels to choose by (and of files written
before the rules were chosen)."""
_BLEND_WEIGHTS = (0.5, 1.0, 2.0)
_ENERGY_WEIGHTS = (1.0, 0.5, 0.25)


def candidate_rules(inputs: str) -> list[Rule]:
    """The rules the ``idm`` map is chosen from, for the input set ``inputs``."""
    others = [t for t in terms_of(inputs) if t != "flow"]
    rules: list[Rule] = [{"flow": 1.0}, *({t: 1.0} for t in others)]
    rules += [{"flow": 1.0, t: w} for t in others for w in _BLEND_WEIGHTS]
    return rules


class HeldOut:
    """Held-out pixels' raw terms and targets, gathered batch by batch."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.log_odds: list[Tensor] = []
        self.terms: list[Tensor] = []
        self.miss: list[Tensor] = []  # each cell's share of wrong pixels

    def add(self, log_odds: Tensor, inputs: Tensor, valid: Tensor, miss: Tensor) -> None:
        """The held-out images' ``log_odds`` ``(b, h, w)``, flow ``inputs``
        ``(b, D, h, w)`` and targets ``valid`` / ``miss`` ``(b, h, w)``."""
        terms = term_maps(inputs, log_odds)  # (b, T, h, w)
        for i in range(log_odds.shape[0]):
            pixels = valid[i].flatten().nonzero().flatten()
            if pixels.numel() > PIXELS_PER_IMAGE:
                order = torch.randperm(pixels.numel(), generator=self.generator)
                pixels = pixels[order[:PIXELS_PER_IMAGE].to(pixels.device)]
            self.log_odds.append(log_odds[i].flatten()[pixels].cpu())
            self.terms.append(terms[i].flatten(1)[:, pixels].cpu())
            self.miss.append(miss[i].flatten()[pixels].float().cpu())

    def arrays(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(log_odds (N,), terms (1, T, N), miss (N,))`` of every pixel added, ``miss``
        the share of its cell's pixels that are wrong."""
        log_odds, miss = torch.cat(self.log_odds), torch.cat(self.miss)
        return log_odds, torch.cat(self.terms, 1)[None], miss


@dataclass
class Choice:
    """The rules chosen for ``"auto"`` maps and every candidate's held-out AP."""

    rules: dict[str, str]
    scores: dict[str, float]
    pixels: int


def choose_rules(
    held_out: HeldOut, scale: Tensor, inputs: str, requested: dict[str, str]
) -> Choice:
    """The rules of the ``"auto"`` fields of ``requested`` (``idm_rule``, ``ood_rule``,
    ``concurrent_rule``) from the held-out pixels (see the module docstring); fields with
    a rule keep it. Too few held-out hits or misses: :data:`DEFAULT_RULES`."""
    chosen = {k: (DEFAULT_RULES[k] if v == AUTO else v) for k, v in requested.items()}
    log_odds, terms, miss = held_out.arrays() if held_out.miss else (None, None, None)
    wrong = 0 if miss is None else int((miss > 0).sum())
    if miss is None or wrong < 10 or int((miss < 1).sum()) < 10:
        logger.info("too few held-out pixels to choose the maps' rules by: the defaults")
        return Choice(chosen, {}, 0 if miss is None else miss.numel())

    def ap(rule: Rule) -> float:
        score = apply_rule(rule, log_odds[None, :, None], terms[..., None], scale)
        return weighted_ap(score.flatten(), miss)

    scores = {format_rule(rule): ap(rule) for rule in candidate_rules(inputs)}
    best = max(scores, key=scores.get)
    if requested["idm_rule"] == AUTO:
        chosen["idm_rule"] = "posterior" if best == "flow" else best
    if requested["concurrent_rule"] == AUTO:
        base = chosen["idm_rule"].replace("posterior", "flow")
        chosen["concurrent_rule"] = base
        floor = (1 - TOLERANCE) * scores.get(base, ap(parse_rule(base)))
        for weight in _ENERGY_WEIGHTS:  # the most energy that costs little
            rule = _with_energy(base, weight)
            scores[rule] = ap(parse_rule(rule))
            if scores[rule] >= floor:
                chosen["concurrent_rule"] = rule
                break
    logger.info(
        "scoring rules chosen on %d held-out pixels (%d with errors): %s",
        miss.numel(),
        wrong,
        ", ".join(f"{k} {v!r}" for k, v in chosen.items()),
    )
    return Choice(chosen, scores, miss.numel())


def weighted_ap(scores: Tensor, share: Tensor) -> float:
    """Average precision of ranking by ``scores`` ``(N,)`` when item ``i`` counts as
    ``share[i]`` of a positive and ``1 - share[i]`` of a negative (ties share a cut)."""
    scores, share = scores.double().numpy(), share.double().numpy()
    order = np.argsort(scores, kind="stable")[::-1]
    scores, share = scores[order], share[order]
    cuts = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # last of each score
    return curve_metrics(np.cumsum(share)[cuts], np.cumsum(1.0 - share)[cuts])["ap"]


def _with_energy(text: str, weight: float) -> str:
    """``text``'s rule with ``weight`` more free energy."""
    rule = parse_rule(text)
    rule["energy"] = rule.get("energy", 0.0) + weight
    return format_rule(rule)


def is_held_out(seed: int, batch: int, image: int) -> bool:
    """Whether image ``image`` of batch ``batch`` is held out from training: one in
    :data:`HELD_OUT`, never the first image of the first batch (so every fit trains)."""
    first = batch == 0 and image == 0
    return not first and seed_of(seed, batch, image, 0x5E1EC7) % HELD_OUT == 0


def held_out_mask(seed: int, batch: int, size: int) -> Tensor:
    """``(size,)`` bool: the held-out images of batch ``batch``."""
    return torch.tensor([is_held_out(seed, batch, i) for i in range(size)], dtype=torch.bool)
