"""From a fitted flow to the maps: the scoring path of :meth:`FlowEneDet.score_logits` and,
over test-time scales, of :meth:`FlowEneDet.score`.

Per logit pixel: the flow's log-odds of "miss" (:func:`flowenedet.inference.log_odds`)
and the confidence measures of its inputs, the terms of each map's rule
(:mod:`flowenedet.rules`: the posterior, or a weighted sum of terms standardised on the
fit data). Then the post-processing of :mod:`flowenedet.postprocess`, bilinear resizing
to the image and the sigmoid (files written before format 5: the sigmoid first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_logits, check_scales
from .config import TTA_SCALES, DetectorConfig, FitRecord, FlowSettings, ScoringOptions
from .conv_flow import ConvEnergyFlow
from .energy import flow_inputs
from .flow import EnergyFlow, align_features
from .inference import ScoringCache, log_odds
from .postprocess import postprocess_maps, resize, upsampled_argmax
from .rules import AUTO, Rule, apply_rule, parse_rule, raw_terms, term_maps
from .scores import MAPS, Scores
from .storage import Stats

__all__ = ["Scorer", "align_to_fit", "map_rules", "rescale", "test_time_scales"]


@dataclass
class Scorer:
    """Everything scoring reads, none of which it changes: the fitted ``flow`` and
    ``stats``, the flow's ``settings``, the fit's ``record`` and the scoring ``options``;
    ``cache`` gives the log-odds function of the flow (``cache.get(flow)``).
    ``check_finite=False`` skips the one data-dependent branch, the check that the maps
    are finite, so that :mod:`flowenedet.export` can trace this path into one graph."""

    flow: EnergyFlow | ConvEnergyFlow
    stats: Stats
    settings: FlowSettings
    record: FitRecord
    options: ScoringOptions
    cache: ScoringCache
    check_finite: bool = True

    def rules(self) -> list[Rule]:
        """The three maps' rules (:func:`map_rules`)."""
        return map_rules(self.options)

    @torch.no_grad()
    def logits(
        self,
        logits: Tensor,
        features: Tensor | None,
        size: tuple[int, int],
        autocast: torch.dtype | None = None,
        thresholds: dict[str, float] | None = None,
    ) -> Scores:
        """The maps at ``size`` from checked float32 ``logits`` ``(B, K, h, w)`` and pooled
        ``features`` ``(B, P, h, w)`` at the logits' size (FED-C) or None."""
        opts, stats = self.options, self.stats
        inputs = flow_inputs(logits, stats.mean, stats.var, self.settings.inputs)
        odds = log_odds(self.flow, inputs, features, opts.chunk_pixels, autocast, self.cache)
        terms = term_maps(inputs, odds, raw_terms(logits))
        rule_maps = [apply_rule(rule, odds, terms, stats.scale) for rule in self.rules()]
        if not opts.sigmoid_last:  # files of formats before 5
            rule_maps = [torch.sigmoid(m) for m in rule_maps]
        pred = upsampled_argmax(logits, size)
        if opts.postprocess == "image-pixels":  # the reference: upsample first
            rule_maps = [resize(m, size) for m in rule_maps]
            maps = postprocess_maps(*rule_maps, pred=pred, config=opts, stride=1.0)
        else:
            # image pixels per logit pixel: as measured at fit, else as this call's
            measured = self.record.stride or size[-2] / logits.shape[-2]
            stride = 1.0 if opts.postprocess == "logit-pixels" else measured
            # the logits' argmax only if boundary suppression needs it (14 ms at 128 x 256)
            low_pred = partial(torch.argmax, logits, 1)
            maps = postprocess_maps(*rule_maps, pred=low_pred, config=opts, stride=stride)
        # checked before the resize (finite maps resize to finite maps): fewer pixels
        if self.check_finite and not all(torch.isfinite(m).all() for m in maps):
            top = logits.abs().max().item()
            raise ValueError(
                f"the maps are not finite for these logits (largest |logit| {top:.3g}): they "
                "are far outside the range the detector was fitted on; check the images' "
                "scale and normalisation"
            )
        maps = [resize(m, size) for m in maps]
        if opts.sigmoid_last:
            maps = [torch.sigmoid(m) for m in maps]
        maps = [m.clamp_(0, 1) for m in maps]
        return Scores(
            *maps,
            pred=pred,
            thresholds=dict(thresholds or {}),
            num_classes=self.record.num_classes,
        )

    def images(
        self,
        segment: Callable[[Tensor], tuple[Tensor, Tensor | None]],
        images: Tensor,
        scales: tuple[float, ...],
        autocast: torch.dtype | None = None,
        thresholds: dict[str, float] | None = None,
    ) -> Scores:
        """The maps of ``images`` ``(B, 3, H, W)`` averaged over test-time ``scales``;
        ``segment(images)`` gives checked logits and aligned features of (rescaled)
        images. With several scales and ``tta_maps="all"`` ``pred`` is the argmax of the
        averaged upsampled softmax (the reference release); with ``"ood"`` only the
        ``ood`` map is averaged."""
        every_map = self.options.tta_maps == "all"
        averaged = MAPS if every_map else ("ood",)
        size = tuple(images.shape[-2:])
        result, softmax = None, None
        for scale in scales:
            logits, features = segment(images if scale == 1.0 else rescale(images, scale))
            scores = self.logits(logits, features, size, autocast, thresholds)
            if len(scales) > 1 and every_map:
                probs = F.interpolate(
                    logits, size=size, mode="bilinear", align_corners=False
                ).softmax(1)
                softmax = probs if softmax is None else softmax.add_(probs)
            if result is None:
                result = scores
            else:
                for kind in averaged:
                    getattr(result, kind).add_(getattr(scores, kind))
        for kind in averaged:
            getattr(result, kind).div_(len(scales))
        if softmax is not None:
            result.pred = softmax.argmax(1)
        return result


def map_rules(options: ScoringOptions) -> list[Rule]:
    """The rules of the ``idm``, ``ood`` and ``concurrent`` maps; ``ValueError`` for one
    still ``"auto"`` (the fit chooses it)."""
    rules = []
    for kind in MAPS:
        text = getattr(options, f"{kind}_rule")
        if text == AUTO:
            raise ValueError(
                f"the {kind} map's rule is 'auto': a fit chooses it; give a rule such as "
                "'flow + 1.5 energy' (flowenedet.rules)"
            )
        rules.append(parse_rule(text))
    return rules


def align_to_fit(
    config: DetectorConfig, logits: Tensor, features: Tensor | None, device: torch.device
) -> tuple[Tensor, Tensor | None]:
    """Checked float32 ``logits`` ``(B, K, h, w)`` on ``device`` and, for FED-C, decoder
    ``features`` ``(B, F, h', w')`` pooled to the flow's channels at the logits' size;
    ``ValueError`` unless their shapes are those the fitted detector of ``config`` is for."""
    record = config.fitted
    logits = check_logits(logits).to(device)
    if logits.shape[1] != record.num_classes:
        raise ValueError(
            f"the segmenter gives {logits.shape[1]} classes but the detector is for "
            f"num_classes={record.num_classes}"
        )
    if config.flow.variant != "C":
        return logits, None
    if features is None:
        raise ValueError("variant 'C' needs decoder features; pass features=")
    if features.shape[1] != record.feature_channels:
        raise ValueError(
            f"the segmenter gives {features.shape[1]} feature channels but the detector is "
            f"for feature_channels={record.feature_channels}"
        )
    if features.shape[0] != logits.shape[0]:
        raise ValueError(f"features has {features.shape[0]} items but logits have {len(logits)}")
    return logits, align_features(features.to(device), logits, config.flow.pooled_channels)


def test_time_scales(
    options: ScoringOptions, scales: Sequence[float] | None = None
) -> tuple[float, ...]:
    """The test-time scales to score at: those given (checked), else the reference's
    ``(1.0, 0.5, 0.25)`` when ``options.tta``, else ``(1.0,)``."""
    if scales is None:
        scales = TTA_SCALES if options.tta else (1.0,)
    return check_scales(scales)


def rescale(images: Tensor, scale: float) -> Tensor:
    """``images`` ``(B, C, H, W)`` bilinearly resized by ``scale`` (sides rounded half to
    even, as Python's ``round``; also while tracing, where the sides are tensors)."""
    size = [
        (s.double() * scale).round().clamp(min=1).long()
        if isinstance(s, Tensor)
        else max(1, round(s * scale))
        for s in images.shape[-2:]
    ]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)
