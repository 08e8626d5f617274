"""Scoring rules: each map is a weighted sum of per-pixel terms, through a sigmoid.

Terms (higher = more suspicious), read off the flow's posterior and its inputs:

* ``"posterior"``: the posterior's log-odds ``log p(miss | z) - log p(hit | z)`` as it
  is, so that the rule ``"posterior"`` gives the posterior probability itself;
* the others are standardised by their mean and spread over the fit data
  (:attr:`~flowenedet.storage.Stats.scale`), so that weights compare: ``"flow"`` (the
  log-odds), ``"energy"`` (the free energy of the standardised logits), ``"rawenergy"``
  and ``"maxlogit"`` (the free energy and minus the max of the raw logits: the Energy and
  MaxLogit baselines), and with the ``"rich"`` input set ``"sml"`` (minus the standardised
  max logit), ``"entropy"`` (of the softmax), ``"msp"`` (one minus the max softmax: the
  MSP baseline) and ``"margin"`` (minus the top-2 logit margin).

A rule's score is linear in its terms, and the sigmoid comes after post-processing and
resizing (both linear, or close to it), so a rule of one term ranks image pixels exactly
as that measure does when it is upsampled to the image (as the baselines are).

A rule is written ``"flow + 1.5 energy"``: terms joined by ``+``, each with an optional
weight before it. The fit chooses each map's rule on images it held out (rules set to
``"auto"``, the default; see :func:`flowenedet.selection.choose_rules`).
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from .energy import free_energy

__all__ = [
    "AUTO",
    "STANDARDISED",
    "TERMS",
    "Rule",
    "apply_rule",
    "check_rule",
    "format_rule",
    "parse_rule",
    "raw_terms",
    "term_maps",
    "terms_of",
]

STANDARDISED = ("flow", "energy", "rawenergy", "maxlogit", "sml", "entropy", "msp", "margin")
"""The standardised terms, in the order of :func:`term_maps` and of ``Stats.scale``."""
TERMS = ("posterior", *STANDARDISED)
AUTO = "auto"
"""A rule the fit chooses (on held-out images)."""
MAX_WEIGHT = 100.0
Rule = dict[str, float]
_TERM = re.compile(r"^\s*(?:([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*\*?\s*)?([a-z]+)\s*$")


def terms_of(inputs: str) -> tuple[str, ...]:
    """The standardised terms the input set ``inputs`` gives (``"energy"``: the log-odds,
    the energy pair's and the raw logits' terms)."""
    return STANDARDISED if inputs == "rich" else STANDARDISED[:4]


def raw_terms(logits: Tensor) -> Tensor:
    """The raw logits' terms ``(B, 2, h, w)`` of ``logits`` ``(B, K, h, w)``: their free
    energy and minus their max (what the flow's inputs, of standardised logits, lack)."""
    logits = logits.float()
    return torch.stack([free_energy(logits), -logits.amax(1)], 1)


def term_maps(inputs: Tensor, log_odds: Tensor, raw: Tensor) -> Tensor:
    """The unstandardised terms ``(B, T, h, w)`` in :data:`STANDARDISED` order, from flow
    ``inputs`` ``(B, D, h, w)`` (the energy pair first, then the rich set's channels),
    ``log_odds`` ``(B, h, w)`` and the logits' :func:`raw_terms` ``(B, 2, h, w)``
    (``T = 4`` for the energy pair)."""
    terms = [log_odds, inputs[:, 1] - inputs[:, 0], raw[:, 0], raw[:, 1]]
    if inputs.shape[1] >= 6:  # rich: standardised max logit, entropy, max p, margin
        terms += [-inputs[:, 2], inputs[:, 3], 1.0 - inputs[:, 4].exp(), -inputs[:, 5]]
    return torch.stack(terms, 1)


def parse_rule(text: str) -> Rule:
    """``{term: weight}`` of a rule ``"flow + 1.5 energy"``; ``ValueError`` for anything
    else (an unknown term, a weight over :data:`MAX_WEIGHT`, a term twice)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a rule must be terms joined by '+'; got {text!r}")
    rule: Rule = {}
    for part in text.split("+"):
        found = _TERM.match(part)
        if found is None:
            raise ValueError(f"cannot read {part.strip()!r} of rule {text!r} as '[weight] term'")
        weight = 1.0 if found.group(1) is None else float(found.group(1))
        term = found.group(2)
        if term not in TERMS:
            raise ValueError(f"rule {text!r}: unknown term {term!r}; terms are {TERMS}")
        if term in rule:
            raise ValueError(f"rule {text!r} names {term!r} twice")
        if not (math.isfinite(weight) and abs(weight) <= MAX_WEIGHT):
            raise ValueError(f"rule {text!r}: weights must be finite, at most {MAX_WEIGHT:g}")
        rule[term] = weight
    if "posterior" in rule and len(rule) > 1:
        raise ValueError(f"rule {text!r}: 'posterior' stands alone (blend 'flow' instead)")
    return rule


def check_rule(text: str) -> str:
    """``text`` if it is :data:`AUTO` or a valid rule (see :func:`parse_rule`)."""
    if text != AUTO:
        parse_rule(text)
    return text


def format_rule(rule: Rule) -> str:
    """The text of ``rule``: ``{"flow": 1, "energy": 1.5}`` -> ``"flow + 1.5 energy"``."""
    return " + ".join(t if w == 1.0 else f"{w:g} {t}" for t, w in rule.items())


def apply_rule(rule: Rule, log_odds: Tensor, terms: Tensor, scale: Tensor) -> Tensor:
    """The rule's score ``(B, h, w)`` before the sigmoid: ``log_odds`` for
    ``"posterior"``, else the weighted sum of the standardised ``terms`` ``(B, T, h, w)``
    (``scale`` ``(T, 2)``: each term's mean and spread)."""
    if "posterior" in rule:
        return rule["posterior"] * log_odds
    out = torch.zeros_like(log_odds)
    for term, weight in rule.items():
        k = STANDARDISED.index(term)
        out = out + weight * (terms[:, k] - scale[k, 0]) / scale[k, 1]
    return out
