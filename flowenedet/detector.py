"""FlowEneDet: wrap a frozen segmenter, fit the energy flow, score IDM / OOD maps, save / load.

This module only orchestrates; the arithmetic lives in ``energy``, ``flow``, ``training``
and ``postprocess``, model access in ``hooks``, the saved state and file format in ``storage``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import config as presets
from . import storage
from .calibration import DEFAULT_BINS, Calibration, calibrate_maps
from .checkpoint import check_resumable, load_checkpoint
from .checks import (
    check_images,
    check_labels,
    check_logits,
    check_scales,
    check_size,
    unpack_batch,
)
from .config import (
    DEFAULT_STEPS,
    TTA_SCALES,
    DetectorConfig,
    FitOptions,
    Spec,
    check_field,
)
from .conv_flow import ConvEnergyFlow
from .energy import INPUT_SETS, flow_inputs
from .flow import HIT, MISS, EnergyFlow, pool_feature_channels
from .hooks import SegmenterTap, find_feature_layer, segmenter_device
from .inference import ScoringCache, check_autocast
from .postprocess import postprocess_maps, resize, upsampled_argmax
from .progress import progress_bar
from .scores import MAPS, Scores
from .storage import Stats, check_tensors, read_detector, segmenter_fingerprint, write_detector
from .training import (
    balanced_pixel_sample,
    divergence_hint,
    fit_statistics,
    miss_targets,
    passes,
    pooled_mean_std,
    train_flow,
    uniform_pixel_sample,
)

__all__ = ["MAPS", "Calibration", "DetectorConfig", "FitOptions", "FlowEneDet", "Scores", "Stats"]

logger = logging.getLogger(__name__)

LogitBatch = tuple[Tensor, Tensor, Tensor | None]  # logits, labels at input size, features
BATCH = Spec(int, 1, 1 << 20)


class FlowEneDet:
    """Misclassification and OOD detector for a frozen segmentation model (UAI 2023).

    Args:
        segmenter: any ``nn.Module`` mapping images ``(B, 3, H, W)`` to logits
            ``(B, K, h, w)`` (tensor, dict with "out", tuple, or ``.logits``; Mask2Former:
            wrap it in :class:`flowenedet.hooks.MaskClassificationLogits`). Never changed.
        variant: ``"C"`` (flow conditioned on decoder features) or ``"U"`` (logits only).
        inputs: the flow's per-pixel inputs: ``"rich"`` (energy pair plus four confidence
            measures, the default) or ``"energy"`` (the paper's pair); see
            :data:`flowenedet.energy.INPUT_SETS`.
        feature_layer: submodule whose output gives the decoder features for FED-C; by
            default the input of the classifier conv is found automatically.
        num_classes: ``K``, checked against the logits if given.
        ignore_index: label of void pixels.
        **config: further :class:`DetectorConfig` fields (flow size, post-processing).
    """

    def __init__(
        self,
        segmenter: nn.Module,
        *,
        preset: str = "default",
        variant: str | None = None,
        inputs: str | None = None,
        feature_layer: str | None = None,
        num_classes: int | None = None,
        ignore_index: int | None = None,
        **config: Any,
    ) -> None:
        if not isinstance(segmenter, nn.Module):
            raise TypeError(f"segmenter must be a torch.nn.Module; got {type(segmenter).__name__}")
        unknown = set(config) - {f.name for f in dataclasses.fields(DetectorConfig)}
        if unknown:
            raise TypeError(f"unknown FlowEneDet options: {sorted(unknown)}")
        preset_config, preset_fit = presets.preset(preset)
        given = {
            "variant": variant,
            "inputs": inputs,
            "feature_layer": feature_layer,
            "num_classes": num_classes,
            "ignore_index": ignore_index,
        }
        given = {k: v for k, v in given.items() if v is not None} | config
        self.segmenter = segmenter
        self.config = DetectorConfig(**(preset_config | given))
        self.fit_options = FitOptions(**preset_fit)
        self.flow: EnergyFlow | ConvEnergyFlow | None = None
        self.stats: Stats | None = None
        self.calibration: Calibration | None = None  # reject thresholds, see calibrate()
        self._tap = SegmenterTap(segmenter, self._tap_layer())
        self._scoring = ScoringCache()  # the fused log-odds of the current flow weights

    def _tap_layer(self) -> str | None:
        return self.config.feature_layer if self.config.variant == "C" else None

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        loader: Iterable[Any],
        *,
        device: str | torch.device | None = None,
        progress: bool | None = None,
        checkpoint: str | Path | None = None,
        resume: bool = False,
        batch_keys: tuple[str, str] | None = None,
        **options: Any,
    ) -> FlowEneDet:
        """Estimate class statistics, then train the flow; returns ``self``.

        ``loader`` yields ``(images (B, 3, H, W), labels (B, H, W))`` or dicts with "image"
        and "label" (or "pixel_values" and "labels", as transformers' datasets give them;
        other keys with ``batch_keys=(image_key, label_key)``), from the segmenter's
        training distribution; it is read once for the
        statistics and again for every training pass, so it must be re-iterable.
        ``options`` are :class:`FitOptions` fields (``steps``, ``epochs``, ``lr``,
        ``pixels_per_image``, ``checkpoint_every``, ``warmup_steps``, ``decay_every``,
        ``weight_decay``); those not given come from the preset. Training runs ``steps``
        optimizer steps (one per batch, cycling through the loader as often as needed;
        default :data:`~flowenedet.config.DEFAULT_STEPS`, whatever the loader's length)
        or, if only ``epochs`` is given, ``epochs`` passes (with a warning when that is
        fewer steps than the default budget). With ``checkpoint`` the
        training state is saved every ``checkpoint_every`` steps; ``resume=True``
        continues from it (same loader order and seed give the same result as an
        uninterrupted fit). ``progress``: bars (``None``: when stderr is a terminal).
        Under torch.distributed (torchrun) each process passes its
        shard of the data: statistics are summed and gradients averaged.
        """
        if isinstance(loader, Iterator):
            raise TypeError(
                f"loader is a one-shot iterator ({type(loader).__name__}); fit reads the data "
                "more than once (statistics, then training), so pass a list or a DataLoader"
            )
        device = torch.device(device) if device is not None else segmenter_device(self.segmenter)
        return self._fit(
            lambda: iter(loader),
            lambda batch: self._segment(*unpack_batch(batch, batch_keys), device=device),
            device,
            self._fit_options(options),
            progress=progress,
            checkpoint=checkpoint,
            resume=resume,
        )

    def _fit_options(self, given: dict[str, Any]) -> FitOptions:
        """The preset's :class:`FitOptions` with the ``given`` ones; ``epochs`` alone means
        passes, not the preset's ``steps``."""
        unknown = set(given) - {f.name for f in dataclasses.fields(FitOptions)}
        if unknown:
            raise TypeError(f"unknown fit options: {sorted(unknown)}")
        if "epochs" in given and "steps" not in given:
            given = {**given, "steps": None}
        return FitOptions(**(dataclasses.asdict(self.fit_options) | given))

    def fit_logits(
        self,
        logits: Tensor,
        labels: Tensor,
        features: Tensor | None = None,
        *,
        batch_size: int = 8,
        stats_items: int | None = None,
        progress: bool | None = None,
        checkpoint: str | Path | None = None,
        resume: bool = False,
        **options: Any,
    ) -> FlowEneDet:
        """Fit from logits computed elsewhere: ``logits`` ``(N, K, h, w)``, ``labels``
        ``(N, H, W)`` at input resolution, ``features`` ``(N, F, h', w')`` for FED-C.

        Without ``feature_layer``, :meth:`score` on images later finds the layer as
        :meth:`fit` does (the classifier's input), which must give the features' ``F``.

        ``stats_items=n`` takes the class statistics (and the hit / miss prior) from the
        first ``n`` items only, while the flow trains on all: for clean data followed by
        augmented copies, so the statistics describe the segmenter's own training
        distribution. The other arguments as for :meth:`fit` (not device).
        """
        if self.config.variant == "C" and features is None:
            raise ValueError("variant 'C' needs features; pass features= or use variant='U'")
        batch_size = check_field("fit_logits", "batch_size", batch_size, BATCH)
        logits = check_logits(logits)
        total = logits.shape[0]
        labels = check_labels(
            labels, labels.shape[-2:], total, logits.shape[1], self.config.ignore_index
        )
        if features is not None and features.shape[0] != total:
            raise ValueError(f"features has {features.shape[0]} items but logits have {total}")
        if stats_items is None:
            stats_items = total
        elif isinstance(stats_items, bool) or not 1 <= stats_items <= total:
            raise ValueError(
                f"stats_items must be in 1..{total} (the items given); got {stats_items}"
            )

        def prepare(index: int, stop: int = total) -> LogitBatch:
            chunk = slice(index, min(index + batch_size, stop))
            feats = None if features is None else features[chunk]
            return self._prepare(logits[chunk], labels[chunk], feats)

        starts = range(0, total, batch_size)
        return self._fit(
            lambda: iter(starts),
            prepare,
            logits.device,
            self._fit_options(options),
            prepare_stats=lambda index: prepare(index, stats_items),
            progress=progress,
            checkpoint=checkpoint,
            resume=resume,
            fixed_batches=True,
        )

    def _fit(
        self,
        raw_batches: Callable[[], Iterator[Any]],
        prepare: Callable[[Any], LogitBatch],
        device: torch.device,
        options: FitOptions,
        *,
        prepare_stats: Callable[[Any], LogitBatch] | None = None,
        progress: bool | None = None,
        checkpoint: str | Path | None = None,
        resume: bool = False,
        fixed_batches: bool = False,
    ) -> FlowEneDet:
        """The fit behind :meth:`fit` and :meth:`fit_logits`. With ``fixed_batches`` each
        raw batch is a key that always gives the same batch (``fit_logits``' item
        offsets), so its hit / miss targets are computed once and kept (at logit
        resolution: a fifth of the logits' own memory, or less)."""
        fingerprint = segmenter_fingerprint(self.segmenter)
        if resume and checkpoint is not None and Path(checkpoint).exists():
            state = load_checkpoint(checkpoint)
            self.config = check_resumable(state, checkpoint, self.config, options, fingerprint)
            self._tap = SegmenterTap(self.segmenter, self._tap_layer())
            mean, var = state.extra["mean"], state.extra["var"]
            self._build_flow(device)
            total = state.total_steps
        else:
            stats, num_batches = self._estimate_stats(
                map(prepare_stats or prepare, raw_batches()), progress
            )
            mean, var = stats.finalize()
            total = options.steps or options.epochs * num_batches
            if total < DEFAULT_STEPS:
                logger.warning(
                    "the flow trains for %d optimizer steps only; on both embedded worlds "
                    "validation AP rose up to about %d (the default budget, "
                    "docs/benchmarks.md): pass steps=%d rather than epochs",
                    total,
                    DEFAULT_STEPS,
                    DEFAULT_STEPS,
                )
        self.flow.to(device)
        cfg = self.config
        balanced = cfg.loss_weighting == "balanced"

        targets: dict[Any, tuple[Tensor, Tensor]] = {}

        def pixels(raw: Any, generator: torch.Generator):
            logits, labels, features = prepare(raw)
            inputs = flow_inputs(logits, mean, var, cfg.inputs)
            if fixed_batches and raw in targets:  # a loader's batch may be unhashable
                valid, miss = targets[raw]
            else:  # the upsampled argmax: costly
                valid, miss = miss_targets(logits, labels, cfg.ignore_index, cfg.void_as_miss)
                if fixed_batches:
                    targets[raw] = valid, miss
            if balanced:
                picked = balanced_pixel_sample(valid, miss > 0, options.pixels_per_image, generator)
            else:
                picked = uniform_pixel_sample(valid, options.pixels_per_image, generator)
            picked = picked.to(device)
            log_probs = self.flow.sampled_component_log_prob(inputs, features, picked)
            return log_probs + self.flow._distribution.log_prior(), miss.flatten()[picked]

        try:
            train_flow(
                self.flow,
                passes(raw_batches),
                pixels,
                total_steps=total,
                lr=options.lr,
                seed=cfg.seed,
                weight_decay=options.weight_decay,
                warmup_steps=options.warmup_steps,
                decay_every=options.decay_every,
                balanced=balanced,
                progress=progress,
                checkpoint=checkpoint,
                checkpoint_every=options.checkpoint_every,
                resume=resume,
                checkpoint_extra={"mean": mean, "var": var},
                checkpoint_config={
                    "detector": dataclasses.asdict(self.config),
                    "fit": dataclasses.asdict(options),
                    "segmenter_fingerprint": fingerprint,
                },
            )
        except FloatingPointError as error:
            raise FloatingPointError(f"{error}{divergence_hint(var, options.lr)}") from None
        ood_scale = self._measure_ood_scale(prepare(next(raw_batches())), mean, var)
        if not torch.isfinite(ood_scale).all():
            raise FloatingPointError(
                "the fitted flow gives non-finite scores on the fit data: training diverged"
                + divergence_hint(var, options.lr)
            )
        self.stats = Stats(mean, var, ood_scale)
        self.config.segmenter_fingerprint = fingerprint
        return self

    @torch.no_grad()
    def _measure_ood_scale(self, batch: LogitBatch, mean: Tensor, var: Tensor) -> Tensor:
        """:attr:`Stats.ood_scale` from the valid pixels of one fit batch (of every
        process's first batch under torch.distributed)."""
        logits, labels, features = batch
        valid, _ = miss_targets(logits, labels, self.config.ignore_index)
        inputs = flow_inputs(logits, mean, var, self.config.inputs)
        terms = [self._log_odds(inputs, features), _energy_of(inputs)]
        return pooled_mean_std([term[valid] for term in terms]).flatten()

    def _estimate_stats(self, batches: Iterator[LogitBatch], progress: bool | None):
        """One pass over the fit data: class statistics and hit / miss counts (all
        processes); the miss rate becomes the mixture's prior weights."""
        cfg = self.config
        measured = fit_statistics(batches, cfg.ignore_index, progress, cfg.void_as_miss)
        miss_rate = torch.tensor([measured.hits, measured.misses], dtype=torch.float32)
        with torch.no_grad():
            self.flow._distribution.log_weights.copy_((miss_rate / miss_rate.sum()).log())
        return measured.stats, measured.num_batches

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score(
        self,
        images: Tensor,
        *,
        scales: Sequence[float] | None = None,
        autocast: torch.dtype | None = None,
    ) -> Scores:
        """IDM, OOD and concurrent maps for ``images`` ``(B, 3, H, W)``, averaged over the
        test-time ``scales`` (default ``(1.0,)``, or the reference's ``(1.0, 0.5, 0.25)``
        when ``config.tta``). With several scales ``pred`` is the argmax of the averaged
        upsampled softmax, as in the reference release; with ``config.tta_maps="ood"``
        only the ``ood`` map is averaged, the other maps and ``pred`` are the first
        scale's. ``autocast`` (``torch.bfloat16`` or ``torch.float16``) runs the segmenter
        under ``torch.autocast`` and the flow's networks in that precision; the maps stay
        float32."""
        self._require_fitted()
        autocast = check_autocast(autocast)
        images = check_images(images)
        scales = self.resolve_scales(scales)
        every_map = self.config.tta_maps == "all"
        averaged = MAPS if every_map else ("ood",)
        size = tuple(images.shape[-2:])
        device = segmenter_device(self.segmenter)
        images = images.to(device)  # test-time rescaling on the segmenter's device too
        result, softmax = None, None
        self._resolve_feature_layer(images[:1].to(device))  # after fit_logits: as fit does
        for scale in scales:
            scaled = images if scale == 1.0 else _rescale(images, scale)
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                logits, features = self._tap(scaled)
            scores = self.score_logits(logits, features, size=size, autocast=autocast)
            if len(scales) > 1 and every_map:
                probs = F.interpolate(  # logits checked by score_logits
                    logits.float(), size=size, mode="bilinear", align_corners=False
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

    def resolve_scales(self, scales: Sequence[float] | None = None) -> tuple[float, ...]:
        """The test-time scales :meth:`score` uses for ``scales``: those given (checked),
        else the reference's ``(1.0, 0.5, 0.25)`` when ``config.tta``, else ``(1.0,)``."""
        if scales is None:
            scales = TTA_SCALES if self.config.tta else (1.0,)
        return check_scales(scales)

    @torch.no_grad()
    def score_logits(
        self,
        logits: Tensor,
        features: Tensor | None = None,
        size: tuple[int, int] | None = None,
        autocast: torch.dtype | None = None,
    ) -> Scores:
        """Scores from ``logits`` ``(B, K, h, w)`` (and ``features`` for FED-C), at ``size``
        (default: the logits' size); ``autocast``: the flow's precision, as in :meth:`score`.
        One scale's maps whatever ``config.tta`` says: test-time scales need the images."""
        self._require_fitted()
        autocast = check_autocast(autocast)
        device = next(self.flow.parameters()).device  # logits from anywhere
        features = None if features is None else features.to(device)
        logits, _, features = self._prepare(logits.to(device), None, features)
        size = check_size(size) if size is not None else tuple(logits.shape[-2:])
        cfg, stats = self.config, self.stats
        inputs = flow_inputs(logits, stats.mean, stats.var, cfg.inputs)
        log_odds = self._log_odds(inputs, features, autocast)
        scale = stats.ood_scale
        standardized = (log_odds - scale[0]) / scale[1]
        energy = (_energy_of(inputs) - scale[2]) / scale[3]
        raw = [
            torch.sigmoid(log_odds),
            torch.sigmoid(standardized + cfg.ood_energy_weight * energy),
            torch.sigmoid(standardized + cfg.concurrent_energy_weight * energy),
        ]
        pred = upsampled_argmax(logits, size)
        if cfg.postprocess == "image-pixels":  # the reference: upsample first
            raw = [resize(m, size) for m in raw]
            maps = postprocess_maps(*raw, pred=pred, config=cfg, stride=1.0)
        else:
            # image pixels per logit pixel: as measured at fit, else as this call's
            measured = cfg.stride or size[-2] / logits.shape[-2]
            stride = 1.0 if cfg.postprocess == "logit-pixels" else measured
            maps = postprocess_maps(*raw, pred=logits.argmax(1), config=cfg, stride=stride)
        # checked before the resize (finite maps resize to finite maps): fewer pixels
        if not all(torch.isfinite(m).all() for m in maps):
            top = logits.abs().max().item()
            raise ValueError(
                f"the maps are not finite for these logits (largest |logit| {top:.3g}): they "
                "are far outside the range the detector was fitted on; check the images' "
                "scale and normalisation"
            )
        maps = [resize(m, size).clamp_(0, 1) for m in maps]
        thresholds = dict(self.calibration.thresholds) if self.calibration else {}
        return Scores(*maps, pred=pred, thresholds=thresholds, num_classes=cfg.num_classes)

    def calibrate(
        self,
        loader: Iterable[Any],
        *,
        target: str | tuple[str, float] = "f1",
        maps: Sequence[str] = MAPS,
        scales: Sequence[float] | None = None,
        bins: int = DEFAULT_BINS,
        progress: bool | None = None,
    ) -> FlowEneDet:
        """Store one reject threshold per map (``score > t``) chosen on ``loader``; returns
        ``self``. Use held-out labelled data, never the fit data.

        ``loader`` yields ``(images, labels)`` like :meth:`fit`'s; ``target`` is ``"f1"``,
        ``("fpr", r)`` or ``("tpr", r)`` (:data:`flowenedet.evaluation.metrics.Target`);
        each map's positives follow the benchmark (:mod:`flowenedet.calibration`): the
        ``ood`` and ``concurrent`` maps need OOD-labelled pixels. :meth:`save` stores the
        thresholds; :meth:`Scores.masks` and :meth:`Scores.open_set_prediction` use them.
        """
        self._require_fitted()
        batches = progress_bar(map(unpack_batch, loader), desc="calibrating", progress=progress)
        self.calibration = calibrate_maps(
            ((self.score(images, scales=scales), labels) for images, labels in batches),
            self.config.num_classes,
            target=target,
            maps=maps,
            ignore_index=self.config.ignore_index,
            bins=bins,
        )
        return self

    def predict(
        self, images: Tensor, *, map: str = "ood", scales: Sequence[float] | None = None
    ) -> Tensor:
        """One map of :meth:`score` for ``images`` ``(B, 3, H, W)``: ``(B, H, W)`` in [0, 1],
        higher = more anomalous (pytorch-ood's ``Detector.predict``). ``map`` is ``"ood"``
        (unknown objects, the default), ``"idm"`` or ``"concurrent"``."""
        if map not in MAPS:
            raise ValueError(f"map must be one of {MAPS}; got {map!r}")
        return getattr(self.score(images, scales=scales), map)

    def __call__(self, images: Tensor, **kwargs: Any) -> Tensor:
        """:meth:`predict`: ``det(images)`` is the ``(B, H, W)`` ``"ood"`` map."""
        return self.predict(images, **kwargs)

    def to(self, device: str | torch.device) -> FlowEneDet:
        """Move the segmenter (in place, as ``nn.Module.to`` does), the flow and the
        statistics to ``device``; returns ``self``. Weights and results are unchanged."""
        device = torch.device(device)
        self.segmenter.to(device)
        if self.flow is not None:
            self.flow.to(device)
        if self.stats is not None:
            self.stats = Stats(**{k: t.to(device) for k, t in vars(self.stats).items()})
        return self

    def _log_odds(
        self, inputs: Tensor, features: Tensor | None, autocast: torch.dtype | None = None
    ) -> Tensor:
        """The posterior's log-odds ``log p(miss | z) - log p(hit | z)`` ``(B, h, w)``:
        the flow's likelihood ratio (by the fused scoring path) plus the prior's log-odds
        (0 for equal priors)."""
        prior = self.flow._distribution.log_prior()
        log_odds = self._scoring.get(self.flow)
        ratio = log_odds(inputs, features, self.config.chunk_pixels, autocast)
        return ratio + (prior[MISS] - prior[HIT])

    # ------------------------------------------------------------------ plumbing
    def _segment(self, images: Tensor, labels: Tensor, device: torch.device) -> LogitBatch:
        images = check_images(images)
        labels = check_labels(
            labels,
            images.shape[-2:],
            images.shape[0],
            self.config.num_classes,
            self.config.ignore_index,
        )
        self._resolve_feature_layer(images.to(device))
        logits, features = self._tap(images.to(device))
        return self._prepare(logits, labels.to(device), features)

    def _resolve_feature_layer(self, images: Tensor) -> None:
        if self.config.variant != "C" or self._tap.feature_layer is not None:
            return
        layer = find_feature_layer(self.segmenter, images[:1])
        tap = SegmenterTap(self.segmenter, layer)
        fitted = self.config.feature_channels  # set when fit_logits got the features
        if fitted is not None and (found := tap(images[:1])[1].shape[1]) != fitted:
            raise ValueError(
                f"the detector was fitted on features with {fitted} channels, but {layer!r} "
                f"(found as fit finds it) gives {found}; pass feature_layer= naming the layer "
                "the fit features came from"
            )
        logger.info("FED-C features: %r", layer)
        self._tap = tap
        self.config.feature_layer = layer

    def _prepare(
        self, logits: Tensor, labels: Tensor | None, features: Tensor | None
    ) -> LogitBatch:
        """Validate and align a batch; builds the flow on the first batch it sees."""
        cfg = self.config
        logits = check_logits(logits)
        self._adopt("num_classes", logits.shape[1], "classes")
        if labels is not None and cfg.stride is None:  # image pixels per logit pixel
            cfg.stride = labels.shape[-2] / logits.shape[-2]
        if cfg.variant == "C":
            if features is None:
                raise ValueError("variant 'C' needs decoder features; pass features=")
            self._adopt("feature_channels", features.shape[1], "feature channels")
            features = pool_feature_channels(features.float(), cfg.pooled_channels)
            if features.shape[-2:] != logits.shape[-2:]:
                features = F.interpolate(
                    features, size=logits.shape[-2:], mode="bilinear", align_corners=False
                )
        else:
            features = None
        if self.flow is None:
            self._build_flow(logits.device)
        return logits.float(), labels, features

    def _adopt(self, field: str, value: int, what: str) -> None:
        """Take a size from the first batch; later batches (and segmenters) must agree."""
        current = getattr(self.config, field)
        if current is None:
            setattr(self.config, field, value)
        elif value != current:
            raise ValueError(
                f"the segmenter gives {value} {what} but the detector is for {field}={current}"
            )

    def _build_flow(self, device: torch.device) -> None:
        cfg = self.config
        pooled = min(cfg.pooled_channels, cfg.feature_channels) if cfg.variant == "C" else 0
        inputs = INPUT_SETS[cfg.inputs][1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            if cfg.coupling == "conv":  # the reference release's convolutional couplings
                self.flow = ConvEnergyFlow(
                    inputs, pooled, num_blocks=cfg.num_blocks, prior=cfg.prior
                ).to(device)
            else:
                self.flow = EnergyFlow(
                    features=inputs,
                    context_channels=cfg.context_channels,
                    feature_channels=pooled,
                    num_blocks=cfg.num_blocks,
                    hidden=cfg.hidden,
                    prior=cfg.prior,
                ).to(device)

    def _require_fitted(self) -> None:
        if self.flow is None or self.stats is None:
            raise RuntimeError("this FlowEneDet is not fitted: call fit(), or load() a saved one")

    # ------------------------------------------------------------------ storage
    def save(self, path: str | Path) -> Path:
        """Write the detector (flow weights, statistics, config, calibrated thresholds) as
        safetensors, atomically."""
        self._require_fitted()
        return write_detector(
            path, self.config, self.flow.state_dict(), self.stats, self.calibration
        )

    @classmethod
    def load(
        cls, path: str | Path, segmenter: nn.Module, *, check_segmenter: bool = True
    ) -> FlowEneDet:
        """Load a detector saved by :meth:`save` for ``segmenter``.

        Refuses a segmenter whose weights differ from the one the detector was fitted on
        (``check_segmenter=False`` skips only that check), a feature layer that does not
        exist or has the wrong shape, and any unreadable, foreign or corrupted file.
        """
        config, flow_state, stats, calibration = read_detector(path)
        detector = cls(segmenter, **dataclasses.asdict(config))
        storage.check_segmenter(config, segmenter, path, weights=check_segmenter)
        detector._build_flow(segmenter_device(segmenter))  # small: the settings are bounded
        expected = detector.flow.state_dict()
        check_tensors(expected, flow_state, f"{path}: flow weights")
        detector.flow.load_state_dict(flow_state)
        detector.flow.eval()
        detector.stats = stats
        detector.calibration = calibration
        return detector

    def __repr__(self) -> str:
        cfg = self.config
        state = "fitted" if self.flow is not None and self.stats is not None else "not fitted"
        if state == "fitted" and self.calibration is not None:
            state += f", calibrated {self.calibration.describe()}"
        elif state == "fitted":
            state += ", uncalibrated"
        return (
            f"FlowEneDet(variant={cfg.variant!r}, num_classes={cfg.num_classes}, "
            f"feature_layer={cfg.feature_layer!r}, {state})"
        )


def _energy_of(inputs: Tensor) -> Tensor:
    """The standardised free energy ``E`` ``(B, h, w)`` from flow inputs ``(B, D, h, w)``
    whose first channels are ``log sigmoid(-E)``, ``log sigmoid(E)``: their difference."""
    return inputs[:, 1] - inputs[:, 0]


def _rescale(images: Tensor, scale: float) -> Tensor:
    size = [max(1, round(s * scale)) for s in images.shape[-2:]]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)
