"""The fitted detector as one traceable ``nn.Module``: image -> maps, masks and prediction.

:class:`DetectorGraph` runs exactly what :meth:`FlowEneDet.score` runs, through the same
objects: the detector's :class:`~flowenedet.hooks.SegmenterTap` (logits and, for FED-C,
the hooked decoder features), :func:`~flowenedet.flow.align_features`, and
:class:`~flowenedet.scoring.Scorer` (flow inputs with the class statistics, the energy
blends, post-processing, resizing and the test-time scales), then
:meth:`~flowenedet.scores.Scores.masks` at the stored thresholds. Two things differ, both
because a traced graph cannot hold them:

* the flow's log-odds: scoring evaluates the folded flow in bands of rows with Python
  loops (bounded memory, cache-sized bands); the graph evaluates the same folded matrices
  (:func:`~flowenedet.inference.fold`) over the whole map at once with
  :func:`~flowenedet.inference.folded_log_odds`, the function the fit trains through
  (:class:`WholeMapLogOdds`; the convolutional flow of ``coupling="conv"`` runs its own
  map forward without bands);
* the check that the maps are finite (a data-dependent branch) is left out.

The graph is checked equal to ``det.score`` by :func:`flowenedet.export.export_detector`
after every export, and by the tests.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..conv_flow import ConvEnergyFlow
from ..flow import HIT, MISS, EnergyFlow, align_features
from ..hooks import SegmenterTap, unwrap
from ..inference import Folded, FusedEnergyFlow, folded_log_odds
from ..postprocess import Gaussian
from ..scores import MAPS
from ..scoring import Scorer, test_time_scales

if TYPE_CHECKING:
    from ..detector import FlowEneDet

__all__ = ["DetectorGraph", "WholeMapLogOdds", "output_names"]


class WholeMapLogOdds(nn.Module):
    """``log p(z | miss) - log p(z | hit)`` ``(B, h, w)`` of a fitted flow over whole maps,
    with no loop over pixels, bands or images: what a graph can hold.

    For an :class:`~flowenedet.flow.EnergyFlow`: the masked 7x7 context convolution over
    the reflect-padded inputs, the feature term (FED-C) and then
    :func:`~flowenedet.inference.folded_log_odds` on channel-major pixel columns
    ``(B, channels, h w)``, from the buffers of a :class:`FusedEnergyFlow` (folded in
    float64, as scoring's). For a :class:`~flowenedet.conv_flow.ConvEnergyFlow`: its map
    forward (:meth:`~flowenedet.conv_flow.ConvEnergyFlow.map_component_log_prob`) on the
    whole map, which its banded scoring equals (its ``log|det|`` cancels).

    Called as scoring's log-odds functions are: ``(inputs (B, D, h, w), features
    (B, P, h, w) | None, chunk_pixels=None, dtype=None)``; ``chunk_pixels`` and ``dtype``
    are ignored (one band, float32).
    """

    def __init__(self, flow: EnergyFlow | ConvEnergyFlow) -> None:
        super().__init__()
        if isinstance(flow, EnergyFlow):
            self.fused: FusedEnergyFlow | None = FusedEnergyFlow(flow).eval()
            self.conv: ConvEnergyFlow | None = None
        elif isinstance(flow, ConvEnergyFlow):
            self.fused, self.conv = None, flow
        else:
            raise TypeError(f"no whole-map log-odds for {type(flow).__name__}")

    def forward(
        self,
        inputs: Tensor,
        features: Tensor | None = None,
        chunk_pixels: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        if self.conv is not None:
            log_probs = self.conv.map_component_log_prob(inputs, features)
            return log_probs[:, MISS] - log_probs[:, HIT]
        fused = self.fused
        if (fused.feature_weight is None) != (features is None):
            need = "needs" if features is None else "takes no"
            raise ValueError(f"this flow {need} decoder features")
        inputs = inputs.float()
        h, w = inputs.shape[-2:]
        mode = "reflect" if min(h, w) > fused.halo else "replicate"
        padded = F.pad(inputs, [fused.halo] * 4, mode=mode)
        hidden = F.conv2d(padded, fused.spatial_weight, fused.spatial_bias).flatten(2)
        if features is not None:
            hidden = hidden + torch.matmul(fused.feature_weight, features.float().flatten(2))
        buffers = {name: value for name, value in fused.named_buffers() if value is not None}
        folded = Folded(fused.halo, fused.hidden, fused.splits, buffers)
        odds = folded_log_odds(folded, F.gelu(hidden), inputs.flatten(2))  # (B, h w)
        return odds.view_as(inputs[:, 0])


class _Fixed:
    """Stands in for a :class:`~flowenedet.inference.ScoringCache`: always ``scoring``."""

    def __init__(self, scoring: nn.Module) -> None:
        self.scoring = scoring

    def get(self, flow: nn.Module) -> nn.Module:
        return self.scoring


def output_names(maps: Sequence[str], masks: Sequence[str]) -> list[str]:
    """The graph's outputs, in order: ``pred``, the ``maps``, then ``<map>_mask`` for
    each of ``masks``."""
    return ["pred", *maps, *(f"{name}_mask" for name in masks)]


class DetectorGraph(nn.Module):
    """A fitted detector and its segmenter as one module: ``images`` ``(B, 3, H, W)`` ->
    ``{"pred": (B, H, W) int64, <map>: (B, H, W) float32 in [0, 1], "<map>_mask":
    (B, H, W) bool}``, equal to :meth:`FlowEneDet.score`'s (see the module docstring).

    Args:
        detector: a fitted :class:`~flowenedet.FlowEneDet` (its FED-C feature layer known:
            call :meth:`~flowenedet.FlowEneDet.segment` once after ``fit_logits``).
        maps: which of ``idm``, ``ood``, ``concurrent`` to output (in this order).
        scales: test-time scales (default: the detector's, as :meth:`~FlowEneDet.score`).
        masks: also output ``score > t`` for every requested map the detector has a
            calibrated threshold for.
        mean, std: if given, the graph's input is RGB in [0, 1] and it normalises it
            ``(images - mean) / std`` first (what ``flowenedet score --mean --std`` does
            outside the detector); default: the images ``det.score`` takes.
        stride: image pixels per logit pixel, for detectors whose fit did not record it
            (files before the measurement): what ``det.score`` measures per call.
    """

    def __init__(
        self,
        detector: FlowEneDet,
        maps: Sequence[str] = MAPS,
        *,
        scales: Sequence[float] | None = None,
        masks: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        stride: float | None = None,
    ) -> None:
        super().__init__()
        if detector.flow is None or detector.stats is None:
            raise RuntimeError("this FlowEneDet is not fitted: call fit(), or load() a saved one")
        maps = tuple(maps)
        unknown = [m for m in maps if m not in MAPS]
        if unknown or not maps or len(set(maps)) != len(maps):
            raise ValueError(f"maps must be distinct names of {list(MAPS)}; got {list(maps)}")
        self.maps = tuple(m for m in MAPS if m in maps)
        config = detector.config
        thresholds = dict(detector.calibration.thresholds) if detector.calibration else {}
        self.thresholds = {m: thresholds[m] for m in self.maps if m in thresholds} if masks else {}
        self.scales = test_time_scales(config.scoring, scales)
        self.variant = config.flow.variant
        self.pooled_channels = config.flow.pooled_channels
        layer = detector._tap.feature_layer if self.variant == "C" else None
        if self.variant == "C" and layer is None:
            raise ValueError(
                "the detector does not know its FED-C feature layer yet (fitted with "
                "fit_logits): call det.segment(images) once, or pass feature_layer="
            )
        # the model itself, not a torch.compile wrapper: a graph is traced, not compiled
        self.segmenter = unwrap(detector.segmenter)
        self.tap = SegmenterTap(self.segmenter, layer)
        self.flow = detector.flow
        self.log_odds = WholeMapLogOdds(detector.flow)
        record = config.fitted
        if record.stride is None:
            if stride is None:
                raise ValueError("the detector's fit did not record its stride: pass stride=")
            record = dataclasses.replace(record, stride=float(stride))
        self.record = record
        self.scorer = Scorer(
            detector.flow,
            detector.stats,
            config.flow,
            record,
            config.scoring,
            _Fixed(self.log_odds),
            check_finite=False,
        )
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std (the input normalisation) or neither")
        self.normalise = mean is not None
        if self.normalise:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.output_names = output_names(self.maps, tuple(self.thresholds))

    def segment(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Float32 logits ``(B, K, h, w)`` and, for FED-C, pooled features ``(B, P, h, w)``
        at the logits' size: :meth:`FlowEneDet.segment` and the alignment of
        :func:`~flowenedet.scoring.align_to_fit`, without its value checks."""
        logits, features = self.tap(images)
        logits = logits.float()
        if self.variant != "C":
            return logits, None
        return logits, align_features(features, logits, self.pooled_channels)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if self.normalise:
            images = (images - self.mean) / self.std
        scores = self.scorer.images(self.segment, images, self.scales, None, self.thresholds)
        outputs = {"pred": scores.pred}
        outputs.update({name: getattr(scores, name) for name in self.maps})
        masks = scores.masks(tuple(self.thresholds)) if self.thresholds else {}
        outputs.update({f"{name}_mask": mask for name, mask in masks.items()})
        return outputs

    def min_logit_side(self) -> int:
        """The smallest logit-map side the traced graph is valid for: below it, the
        flow's and the smoothing's reflect padding (fixed when tracing) would have to be
        replicate padding, as scoring switches to on tiny maps."""
        return 1 + max(_padding_reach(self.flow), _smoothing_reach(self.scorer)[0])

    def min_image_side(self) -> int:
        """The smallest image side, in pixels, the traced graph is valid for: the logits'
        :meth:`min_logit_side` at the fit's stride and the smallest test-time scale, and
        the smoothing's reach where it runs at image resolution."""
        logit_side = self.min_logit_side() * self.record.stride / min(self.scales)
        return max(math.ceil(logit_side), 1 + _smoothing_reach(self.scorer)[1])


def _padding_reach(flow: nn.Module) -> int:
    """How far the flow's spatial convolutions reflect-pad a map."""
    if isinstance(flow, EnergyFlow):
        return flow.context_encoder.halo
    return max(m.kernel_size[0] for m in flow.modules() if isinstance(m, nn.Conv2d)) // 2


def _smoothing_reach(scorer: Scorer) -> tuple[int, int]:
    """How far the maps' Gaussian smoothing reflect-pads them, ``(at logit resolution, at
    image resolution)``, with :func:`~flowenedet.postprocess.postprocess_maps`'s kernels
    (boundary suppression pads with zeros, valid at any size)."""
    opts = scorer.options
    ood_kernel = opts.smooth_kernel if opts.ood_smooth_kernel is None else opts.ood_smooth_kernel
    kernels = [
        Gaussian(opts.smooth_kernel),
        Gaussian(ood_kernel, opts.ood_smooth_sigma, opts.ood_dilation),
    ]
    if opts.postprocess != "image-pixels":  # at logit resolution, sizes divided by stride
        stride = scorer.record.stride if opts.postprocess == "image-pixels-at-logits" else 1.0
        kernels = [k.at_stride(stride) if stride != 1.0 else k for k in kernels]
    reaches = [k.dilation * (k.kernel_size // 2) for k in kernels if k.kernel_size > 1]
    reach = max(reaches, default=0)
    return (0, reach) if opts.postprocess == "image-pixels" else (reach, 0)
