"""The fit recipe: from batches of segmenter outputs to what a fitted detector stores.

:func:`fit_detector` runs it in four steps:

1. one pass over the data for the class statistics (SML) and the hit / miss rates, which
   also measures the shapes the detector is for (:class:`~flowenedet.config.FitRecord`);
2. the flow, built for those shapes (:func:`build_flow`), its mixture prior at the
   measured rates;
3. training on sampled pixels for a budget of optimizer steps
   (:func:`~flowenedet.training.train_flow`);
4. the scale of the two terms of the ``ood`` and ``concurrent`` maps, measured on the
   fit data (:attr:`~flowenedet.storage.Stats.ood_scale`).

A :class:`~flowenedet.fit_data.FitSource` says where the batches come from.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import distributed
from .checkpoint import check_resumable, load_checkpoint
from .config import DEFAULT_STEPS, FitOptions, FitRecord, FlowSettings
from .conv_flow import ConvEnergyFlow
from .energy import INPUT_SETS, MIN_VARIANCE, ClassStats
from .fit_data import FitBatches, FitSource, Key, LoaderSource, LogitBatch, StatsBatch
from .flow import EnergyFlow
from .inference import log_odds, sampled_log_odds
from .postprocess import resize_labels
from .progress import StageTimer, progress_bar, stage
from .rules import AUTO, term_maps
from .selection import Choice, HeldOut, choose_rules
from .storage import Stats
from .training import (
    balanced_pixel_sample,
    divergence_hint,
    train_flow,
    uniform_pixel_sample,
)

__all__ = [
    "FitResult",
    "FitStatistics",
    "build_flow",
    "fit_detector",
    "fit_statistics",
    "pooled_mean_std",
]

logger = logging.getLogger(__name__)

Flow = EnergyFlow | ConvEnergyFlow


def build_flow(settings: FlowSettings, feature_channels: int | None, device: Any) -> Flow:
    """The flow of ``settings`` for ``feature_channels`` decoder channels (FED-C), with
    its initial weights from ``settings.seed``."""
    pooled = min(settings.pooled_channels, feature_channels) if settings.variant == "C" else 0
    inputs = INPUT_SETS[settings.inputs][1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        if settings.coupling == "conv":  # the reference release's convolutional couplings
            flow = ConvEnergyFlow(
                inputs, pooled, num_blocks=settings.num_blocks, prior=settings.prior
            )
        else:
            flow = EnergyFlow(
                features=inputs,
                context_channels=settings.context_channels,
                feature_channels=pooled,
                num_blocks=settings.num_blocks,
                hidden=settings.hidden,
                prior=settings.prior,
            )
    return flow.to(device)


# ------------------------------------------------------------------ statistics
@dataclass
class FitStatistics:
    """What one pass over the fit data measured (summed over all processes)."""

    stats: ClassStats  # per-class max-logit sums over correctly classified pixels
    hits: float  # valid pixels the segmenter gets right (soft: shares of label pixels)
    misses: float  # ... and wrong
    num_batches: int  # batches per process (the mean shard length)


def fit_statistics(
    batches: Iterable[StatsBatch], ignore_index: int, progress: bool | None = None
) -> FitStatistics:
    """One pass over ``(logits (B, K, h, w), labels (B, H, W), valid, miss (B, h, w))``
    batches (:func:`~flowenedet.training.miss_targets`' targets); empty batches
    (``B = 0``) count towards ``num_batches`` only.

    Raises ``ValueError`` for no batches, or for data without correct or without wrong
    pixels: the flow learns from both.
    """
    stats, counts = None, torch.zeros(3, dtype=torch.float64)  # hits, misses, batches
    show = progress if distributed.rank() == 0 else False
    for logits, labels, valid, miss in progress_bar(
        batches, desc="class statistics", unit="batches", progress=show
    ):
        counts[2] += 1
        if logits.shape[0] == 0:  # a batch that only trains the flow
            continue
        if stats is None:
            stats = ClassStats(logits.shape[1])
        stats.update(logits, resize_labels(labels, logits.shape[-2:]), ignore_index)
        wrong = float(miss[valid].sum())
        counts[:2] += torch.tensor([float(valid.sum()) - wrong, wrong], dtype=torch.float64)
    if stats is None:
        raise ValueError("loader is empty: fit needs at least one batch")
    for total in (stats.count, stats.total, stats.total_sq, counts):
        total.copy_(distributed.all_reduce_sum(total))
    hits, misses = float(counts[0]), float(counts[1])
    if hits == 0 or misses == 0:
        raise ValueError(
            f"fit data has {hits:.0f} correctly and {misses:.0f} wrongly classified valid "
            "pixels; the detector learns from both, so it needs some of each"
        )
    logger.info("fit data: %.0f correct, %.0f misclassified valid pixels", hits, misses)
    # every process must run the same number of steps: the mean shard length
    num_batches = math.ceil(counts[2].item() / distributed.world_size())
    return FitStatistics(stats, hits, misses, num_batches)


def pooled_mean_std(values: list[Tensor]) -> Tensor:
    """``(len(values), 2)``: mean and standard deviation of each tensor's elements, pooled
    over all processes under torch.distributed (float64 sums, float32 result)."""
    sums = []
    for value in values:
        value = value.double()
        sums += [value.new_tensor(value.numel()), value.sum(), value.square().sum()]
    sums = distributed.all_reduce_sum(torch.stack(sums).cpu()).reshape(-1, 3)
    count = sums[:, 0].clamp_min(1)
    mean = sums[:, 1] / count
    std = (sums[:, 2] / count - mean.square()).clamp_min(1e-12).sqrt()
    return torch.stack([mean, std], dim=1).float()


# ------------------------------------------------------------------ the recipe
@dataclass
class FitResult:
    """What a fit gives the detector: the trained ``flow`` (eval mode), its ``stats``, the
    ``record`` of what it measured and the ``choice`` of its maps' rules."""

    flow: Flow
    stats: Stats
    record: FitRecord
    choice: Choice


def fit_detector(
    source: FitSource,
    settings: FlowSettings,
    options: FitOptions,
    device: torch.device,
    fingerprint: str,
    *,
    progress: bool | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    timer: StageTimer | None = None,
    rules: dict[str, str] | None = None,
) -> FitResult:
    """Fit a detector's flow and statistics on ``source`` (see the module docstring).

    ``fingerprint`` is the segmenter's (:func:`flowenedet.storage.segmenter_fingerprint`).
    With ``checkpoint`` the training state is saved every ``options.checkpoint_every``
    steps; ``resume=True`` continues from it when it exists (refusing a checkpoint of
    other settings, options or segmenter), skipping the statistics pass. ``timer``
    receives the time of each stage (:class:`~flowenedet.progress.StageTimer`).
    ``rules``: the maps' rules asked for (``{"idm_rule": "auto", ...}``, the default);
    the ``"auto"`` ones are chosen on the held-out images (:mod:`flowenedet.selection`).
    """
    rules = rules or {name: AUTO for name in ("idm_rule", "ood_rule", "concurrent_rule")}
    shapes = source.shapes
    batches = FitBatches(source, settings, options.cache_bytes, options.shifted_copies, timer)
    if isinstance(source, LoaderSource):
        source.timer = timer
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint)
        record = check_resumable(state, checkpoint, settings, options, fingerprint)
        shapes.num_classes = record.num_classes
        shapes.feature_channels, shapes.stride = record.feature_channels, record.stride
        mean, var = state.extra["mean"], state.extra["var"]
        flow = build_flow(settings, record.feature_channels, device)
        total = state.total_steps
    else:
        stats_pass = batches.statistics()
        first = next(stats_pass, None)  # the shapes: what the flow is built for
        if first is None:
            raise ValueError("loader is empty: fit needs at least one batch")
        flow = build_flow(settings, shapes.feature_channels, first[0].device)
        measured = fit_statistics(_chain(first, stats_pass), settings.ignore_index, progress)
        rates = torch.tensor([measured.hits, measured.misses], dtype=torch.float32)
        with torch.no_grad():
            flow.base.log_weights.copy_((rates / rates.sum()).log())
        mean, var = measured.stats.finalize()
        _warn_if_degenerate(var)
        per_pass = measured.num_batches * (1 + batches.copies)
        total = options.steps or options.epochs * per_pass
        if options.steps is None and total < DEFAULT_STEPS:  # steps= given: chosen, not said
            _warn_once(
                f"epochs={options.epochs} gives {total} optimizer steps ({per_pass} batches a "
                f"pass, shifted copies included); the default budget is {DEFAULT_STEPS} steps, "
                "whatever the loader's length (validation AP rose up to about that on the "
                f"embedded worlds, docs/benchmarks.md): pass steps={DEFAULT_STEPS}, or steps=N "
                "to choose the length"
            )
        record = FitRecord(
            num_classes=shapes.num_classes,
            segmenter_fingerprint=fingerprint,
            feature_layer=source.feature_layer,
            feature_channels=shapes.feature_channels,
            stride=shapes.stride,
        )
    batches.use_statistics(mean, var)
    flow.to(device)
    balanced = settings.loss_weighting == "balanced"

    def pixels(key: Key, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        batch = batches.batch(key)
        with stage(timer, "sampling"):
            valid = batch.valid & ~batch.held_out[:, None, None]  # never trained on
            if balanced:
                picked = balanced_pixel_sample(
                    valid, batch.miss > 0, options.pixels_per_image, generator
                )
            else:
                picked = uniform_pixel_sample(valid, options.pixels_per_image, generator)
            picked = picked.to(device)
        if timer is not None:
            timer.items["pixels"] += picked.numel()
        with stage(timer, "flow"):  # the class scores up to a shared per-pixel constant
            odds = sampled_log_odds(flow, batch.inputs, batch.features, picked)
            scores = torch.stack([torch.zeros_like(odds), odds], 1) + flow.base.log_prior()
            return scores, batch.miss.flatten()[picked]

    try:
        train_flow(
            flow,
            batches.passes(),
            pixels,
            total_steps=total,
            lr=options.lr,
            seed=settings.seed,
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
                "settings": dataclasses.asdict(settings),
                "record": dataclasses.asdict(record),
                "fit": dataclasses.asdict(options),
            },
            timer=timer,
        )
    except FloatingPointError as error:
        raise FloatingPointError(f"{error}{divergence_hint(var, options.lr)}") from None
    with stage(timer, "selection"):
        scale, held_out = _scale_and_held_out(flow, batches, settings)
        if not torch.isfinite(scale).all():
            raise FloatingPointError(
                "the fitted flow gives non-finite scores on the fit data: training diverged"
                + divergence_hint(var, options.lr)
            )
        choice = choose_rules(held_out, scale, settings.inputs, rules)
    return FitResult(flow, Stats(mean, var, scale), record, choice)


_WARNED: set[str] = set()


def _warn_if_degenerate(var: Tensor) -> None:
    """Warn when class statistics show (nearly) constant logits: an untrained or broken
    segmenter, whose maps would carry no information (a constant ``ood`` map)."""
    floored = (var <= MIN_VARIANCE * 1.01).nonzero().flatten().tolist()
    if floored:
        which = "every class" if len(floored) == len(var) else f"classes {floored[:10]}"
        logger.warning(
            "the segmenter's max logit does not vary over the correctly classified pixels of "
            "%s (variance at its floor, %g): its logits are (nearly) constant, as those of an "
            "untrained or broken model are, and the detector's maps will not tell pixels "
            "apart; check the model's weights and its input normalisation",
            which,
            MIN_VARIANCE,
        )


def _warn_once(message: str) -> None:
    """Log ``message`` as a warning the first time only (fits of several detectors)."""
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


def _chain(first: LogitBatch, rest: Iterator[LogitBatch]) -> Iterator[LogitBatch]:
    yield first
    yield from rest


@torch.no_grad()
def _scale_and_held_out(
    flow: Flow, batches: FitBatches, settings: FlowSettings
) -> tuple[Tensor, HeldOut]:
    """:attr:`Stats.scale` from the valid pixels of the first fit batch (of every
    process's under torch.distributed), and the held-out images' pixels of one pass."""
    held_out, scale = HeldOut(settings.seed), None
    for key in batches.one_pass():
        batch = batches.batch(key)
        if scale is None:
            odds = log_odds(flow, batch.inputs, batch.features)
            terms = term_maps(batch.inputs, odds, batch.raw)
            valid = batch.valid
            scale = pooled_mean_std([terms[:, k][valid] for k in range(terms.shape[1])])
        held = batch.held_out
        if held.any():
            features = None if batch.features is None else batch.features[held]
            odds = log_odds(flow, batch.inputs[held], features)
            held_out.add(
                odds,
                batch.inputs[held],
                batch.raw[held],
                batch.valid[held],
                batch.miss[held],
                shifted=key[1] > 0,
            )
    return scale, held_out
