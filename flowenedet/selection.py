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

* ``idm``: the posterior, each confidence measure alone (``msp``, ``entropy``,
  ``margin``, ``sml``, ``maxlogit``, ``energy``, ``rawenergy``), or the log-odds blended
  with one of them. The held-out images as given and their shifted copies are scored
  apart, and the rule taken is the one whose AP is the highest relative to the best
  single measure's, in the part where it is lowest: a blend replaces the inputs only if
  it ranks both the clean and the shifted held-out pixels as well as the best of them. So
  the map never ranks the held-out pixels worse than the best of its own inputs by more
  than it must: where the flow does not carry over, the rule falls back to an input.
* ``concurrent``: ``idm``'s rule plus the free energy (unknown objects, which the fit data
  do not show), with the largest weight that keeps the held-out precision (as above)
  within :data:`TOLERANCE` of the rule's own.
* ``ood``: the fit data hold no unknown objects to choose by, so ``"auto"`` is
  :data:`DEFAULT_OOD_RULE` (:data:`PAIR_OOD_RULE` with the energy pair), chosen on the
  embedded worlds' validation splits.
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
    "PAIR_OOD_RULE",
    "TOLERANCE",
    "Choice",
    "HeldOut",
    "candidate_rules",
    "choose_rules",
    "default_rules",
    "held_out_mask",
]

logger = logging.getLogger(__name__)

HELD_OUT = 5
"""One image in this many is held out from training (at random, per image)."""
MIN_PIXELS = 10
"""Held-out hits and misses a part needs to choose by."""
PIXELS_PER_IMAGE = 2048
"""Held-out pixels kept per image, at most (memory flat in the image size)."""
TOLERANCE = 0.01
"""How much held-out average precision the concurrent map's energy term may cost."""
DEFAULT_OOD_RULE = "flow + 3 sml"
"""The ``ood`` rule with the rich inputs: of the rules tried on the validation splits of
the three embedded worlds (three seeds, clean and shifted), the one whose OOD AP fell
least short of SML's in its worst split (docs/studies.md)."""
PAIR_OOD_RULE = "flow + 1.5 energy"
"""The ``ood`` rule with the energy pair (which has no ``sml`` term)."""


def default_rules(inputs: str) -> dict[str, str]:
    """The rules of a fit with too few held-out pixels to choose by, for the input set
    ``inputs`` (``ood``: the rule an ``"auto"`` ood map always gets)."""
    ood = DEFAULT_OOD_RULE if "sml" in terms_of(inputs) else PAIR_OOD_RULE
    return {"idm_rule": "posterior", "ood_rule": ood, "concurrent_rule": "flow + 0.5 energy"}


_BLEND_WEIGHTS = (0.5, 1.0, 2.0)
_ENERGY_WEIGHTS = (1.0, 0.5, 0.25)


def candidate_rules(inputs: str) -> list[Rule]:
    """The rules the ``idm`` map is chosen from, for the input set ``inputs``."""
    others = [t for t in terms_of(inputs) if t != "flow"]
    rules: list[Rule] = [{"flow": 1.0}, *({t: 1.0} for t in others)]
    rules += [{"flow": 1.0, t: w} for t in others for w in _BLEND_WEIGHTS]
    return rules


class HeldOut:
    """Held-out pixels' raw terms and targets, gathered batch by batch, in two parts: the
    images as given (``"clean"``) and their shifted copies (``"shifted"``)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.terms: list[Tensor] = []  # (T, n) per image
        self.miss: list[Tensor] = []  # each cell's share of wrong pixels
        self.part: list[str] = []

    def add(
        self,
        log_odds: Tensor,
        inputs: Tensor,
        raw: Tensor,
        valid: Tensor,
        miss: Tensor,
        shifted: bool,
    ) -> None:
        """The held-out images' ``log_odds`` ``(b, h, w)``, flow ``inputs``
        ``(b, D, h, w)``, :func:`~flowenedet.rules.raw_terms` ``(b, 2, h, w)`` and targets
        ``valid`` / ``miss`` ``(b, h, w)``; ``shifted``: they are shifted copies."""
        terms = term_maps(inputs, log_odds, raw)  # (b, T, h, w)
        for i in range(log_odds.shape[0]):
            pixels = valid[i].flatten().nonzero().flatten()
            if pixels.numel() > PIXELS_PER_IMAGE:
                order = torch.randperm(pixels.numel(), generator=self.generator)
                pixels = pixels[order[:PIXELS_PER_IMAGE].to(pixels.device)]
            self.terms.append(terms[i].flatten(1)[:, pixels].cpu())
            self.miss.append(miss[i].flatten()[pixels].float().cpu())
            self.part.append("shifted" if shifted else "clean")

    def parts(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``{part: (terms (1, T, N), miss (N,))}`` of every pixel added, ``miss`` the
        share of its cell's pixels that are wrong; a part without hits and misses is left
        out."""
        found = {}
        for part in ("clean", "shifted"):
            index = [i for i, p in enumerate(self.part) if p == part]
            if not index:
                continue
            miss = torch.cat([self.miss[i] for i in index])
            if int((miss > 0).sum()) >= MIN_PIXELS and int((miss < 1).sum()) >= MIN_PIXELS:
                found[part] = torch.cat([self.terms[i] for i in index], 1)[None], miss
        return found


@dataclass
class Choice:
    """The rules chosen for ``"auto"`` maps; ``aps``: each candidate's held-out AP per
    part (``{"clean": {rule: ap}, "shifted": {...}}``); ``scores``: each candidate's AP
    relative to the best input's, in the part where that is lowest (what was maximised)."""

    rules: dict[str, str]
    scores: dict[str, float]
    aps: dict[str, dict[str, float]]
    pixels: int


def choose_rules(
    held_out: HeldOut, scale: Tensor, inputs: str, requested: dict[str, str]
) -> Choice:
    """The rules of the ``"auto"`` fields of ``requested`` (``idm_rule``, ``ood_rule``,
    ``concurrent_rule``) from the held-out pixels (see the module docstring); fields with
    a rule keep it. Too few held-out hits or misses: :func:`default_rules`."""
    defaults = default_rules(inputs)
    chosen = {k: (defaults[k] if v == AUTO else v) for k, v in requested.items()}
    parts = held_out.parts()
    pixels = sum(miss.numel() for _, miss in parts.values())
    if not parts:
        logger.info("too few held-out pixels to choose the maps' rules by: the defaults")
        return Choice(chosen, {}, {}, sum(m.numel() for m in held_out.miss))

    def aps(rule: Rule) -> dict[str, float]:
        return {
            part: weighted_ap(
                apply_rule(rule, terms[:, 0, :, None], terms[..., None], scale).flatten(), miss
            )
            for part, (terms, miss) in parts.items()
        }

    measured = {format_rule(rule): aps(rule) for rule in candidate_rules(inputs)}
    alone = [t for t in terms_of(inputs) if t != "flow"]
    best_input = {p: max(measured[t][p] for t in alone) for p in parts}

    def worst(rule: str) -> float:  # the AP relative to the best input, where lowest
        return min(ap / max(best_input[p], 1e-12) for p, ap in measured[rule].items())

    if requested["idm_rule"] == AUTO:
        best = max(measured, key=worst)
        chosen["idm_rule"] = "posterior" if best == "flow" else best
    if requested["concurrent_rule"] == AUTO:
        base = chosen["idm_rule"].replace("posterior", "flow")
        chosen["concurrent_rule"] = base
        if base not in measured:  # a rule given for idm, not a candidate
            measured[base] = aps(parse_rule(base))
        floor = (1 - TOLERANCE) * worst(base)
        for weight in _ENERGY_WEIGHTS:  # the most energy that costs little
            rule = _with_energy(base, weight)
            measured[rule] = aps(parse_rule(rule))
            if worst(rule) >= floor:
                chosen["concurrent_rule"] = rule
                break
    logger.info(
        "scoring rules chosen on %d held-out pixels: %s",
        pixels,
        ", ".join(f"{k} {v!r}" for k, v in chosen.items()),
    )
    by_part = {p: {rule: ap[p] for rule, ap in measured.items()} for p in parts}
    return Choice(chosen, {rule: worst(rule) for rule in measured}, by_part, pixels)


def weighted_ap(scores: Tensor, share: Tensor) -> float:
    """Average precision of ranking by ``scores`` ``(N,)`` when item ``i`` counts as
    ``share[i]`` of a positive and ``1 - share[i]`` of a negative (ties share a cut)."""
    scores, share = scores.double().numpy(), share.double().numpy()
    order = np.argsort(scores)[::-1]  # ties meet at one cut: their order is free
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
