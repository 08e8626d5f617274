"""Flow training: hit / miss targets, pixel sampling, the loss, the schedule and the loop.

The recipe that drives them (statistics, the flow, the OOD scale) is
:func:`flowenedet.fitting.fit_detector`; single-process, distributed (torchrun) and
resumed fits share exactly the same arithmetic.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import distributed
from .checkpoint import TrainingState, load_checkpoint, save_checkpoint
from .energy import MIN_VARIANCE
from .labels import PADDING_INDEX
from .postprocess import upsampled_argmax
from .progress import StageTimer, progress_bar, stage

__all__ = [
    "balanced_pixel_sample",
    "divergence_hint",
    "hit_miss_loss",
    "miss_targets",
    "train_flow",
    "uniform_pixel_sample",
    "warmup_step_schedule",
]

logger = logging.getLogger(__name__)

MAX_LOSS = 100.0  # the balanced cross-entropy starts near log 2; past this the fit diverged


def balanced_pixel_sample(
    valid: Tensor, miss: Tensor, per_image: int, generator: torch.Generator
) -> Tensor:
    """Flat indices into ``(B, h, w)`` maps: up to ``per_image // 2`` hits and as many misses
    per image, drawn uniformly without replacement from the valid pixels.

    Sampling a fixed number per image keeps the cost of a step independent of the image
    size; balancing hits and misses keeps rare errors visible to the loss.
    """
    if valid.shape != miss.shape or valid.dim() != 3:
        raise ValueError(f"valid and miss must both be (B, h, w); got {valid.shape}, {miss.shape}")
    half = max(1, per_image // 2)
    pixels = valid.shape[1] * valid.shape[2]
    chosen = []
    for b in range(valid.shape[0]):
        for wanted in (valid[b] & ~miss[b], valid[b] & miss[b]):
            chosen.append(_draw(wanted, half, generator) + b * pixels)
    return torch.cat(chosen)


def uniform_pixel_sample(valid: Tensor, per_image: int, generator: torch.Generator) -> Tensor:
    """Flat indices into ``(B, h, w)`` maps: up to ``per_image`` valid pixels per image,
    uniformly without replacement, so hits and misses keep their natural prevalence."""
    if valid.dim() != 3:
        raise ValueError(f"valid must be (B, h, w); got {tuple(valid.shape)}")
    pixels = valid.shape[1] * valid.shape[2]
    chosen = [_draw(valid[b], per_image, generator) + b * pixels for b in range(valid.shape[0])]
    return torch.cat(chosen)


def _draw(mask: Tensor, limit: int, generator: torch.Generator) -> Tensor:
    """Flat indices of up to ``limit`` of the True pixels of ``mask`` ``(h, w)``, drawn
    uniformly without replacement (all of them when there are no more)."""
    candidates = mask.flatten().nonzero().flatten()
    if candidates.numel() > limit:
        order = torch.randperm(candidates.numel(), generator=generator)[:limit]
        candidates = candidates[order.to(candidates.device)]
    return candidates


def miss_targets(
    logits: Tensor, labels: Tensor, ignore_index: int, void_as_miss: bool = False
) -> tuple[Tensor, Tensor]:
    """Per logit pixel: does it cover valid labels, and which share of them is wrong.

    ``logits`` ``(B, K, h, w)``, ``labels`` ``(B, H, W)`` at any resolution (usually the
    input's). The prediction is the argmax of the bilinearly upsampled logits, exactly as
    it is scored; each logit pixel's target is the fraction of the valid label pixels in
    its cell that this prediction gets wrong. Nearest-neighbour labels would instead teach
    the flow a coarse error map that misses the thin band of errors along every predicted
    boundary, which dominates misclassification at full resolution.

    With ``void_as_miss``, void pixels (``ignore_index``) count as valid and wrong, as in
    the reference release: in training scenes void holds objects of no known class, an
    implicit outlier exposure for the miss component. Padding (``PADDING_INDEX``) is
    never valid.

    Returns ``valid`` ``(B, h, w)`` bool and ``miss`` ``(B, h, w)`` float in [0, 1].
    """
    low = tuple(logits.shape[-2:])
    pred = upsampled_argmax(logits, labels.shape[-2:])
    valid = labels != PADDING_INDEX
    if not void_as_miss:
        valid &= labels != ignore_index
    wrong = (pred != labels) & valid  # a void label never equals a prediction
    if tuple(labels.shape[-2:]) == low:
        return valid, wrong.float()
    valid_share = F.adaptive_avg_pool2d(valid[:, None].float(), low)[:, 0]
    wrong_share = F.adaptive_avg_pool2d(wrong[:, None].float(), low)[:, 0]
    return valid_share > 0, wrong_share / valid_share.clamp_min(1e-12)


def hit_miss_loss(component_log_prob: Tensor, miss: Tensor, balanced: bool = True) -> Tensor:
    """Cross-entropy of ``softmax_m log p(z | m)`` against ``miss``.

    ``component_log_prob`` ``(N, 2)`` (with the log prior added, if any); ``miss``
    ``(N,)``, bool or a share in [0, 1] (soft targets from :func:`miss_targets`).
    ``balanced``: the miss term is averaged with weights ``miss``, the hit term with
    weights ``1 - miss``, and each contributes half of the loss (when both are present),
    whatever their totals; for bool targets this is the mean over misses plus the mean
    over hits, halved. Otherwise the plain mean over pixels (natural prevalence, as in
    the reference release).
    """
    log_posterior = component_log_prob.log_softmax(dim=1)
    weights = torch.stack([1.0 - miss.float(), miss.float()], dim=1)  # (N, 2): hit, miss
    if not balanced:
        return -(weights * log_posterior).sum(1).mean()
    totals = weights.sum(0)
    present = totals > 0
    per_class = -(weights * log_posterior).sum(0)[present] / totals[present]
    return per_class.mean()


def warmup_step_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int | None = None,
    decay_every: int | None = None,
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` (None: 5 % of the fit), then step decay by
    ``gamma`` every ``decay_every`` steps (None: once, at 80 % of the fit).

    The reference release: 4000 warm-up steps, x0.1 every 15k steps, 50k steps.
    """
    warmup = max(1, round(0.05 * total_steps) if warmup_steps is None else warmup_steps)
    first_decay = round(0.8 * total_steps) if decay_every is None else decay_every

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if step < first_decay:
            return 1.0
        return gamma if decay_every is None else gamma ** (step // decay_every)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# (class log-likelihoods (N, 2), miss (N,)) of the pixels picked from one batch
PixelBatch = tuple[Tensor, Tensor]


def train_flow(
    flow: torch.nn.Module,
    batches: Iterator[Any],
    pixels: Callable[[Any, torch.Generator], PixelBatch],
    *,
    total_steps: int,
    lr: float,
    seed: int,
    weight_decay: float = 1e-4,
    warmup_steps: int | None = None,
    decay_every: int | None = None,
    balanced: bool = True,
    progress: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 500,
    resume: bool = False,
    checkpoint_extra: dict[str, Tensor] | None = None,
    checkpoint_config: dict[str, Any] | None = None,
    timer: StageTimer | None = None,
) -> None:
    """Train ``flow`` for ``total_steps`` AdamW steps, one raw batch per step.

    ``batches`` yields raw batches endlessly; ``pixels(batch, generator)`` turns one into
    the class log-likelihoods and targets of its sampled pixels (it runs the segmenter
    and the flow, so batches skipped on resume cost nothing). The loss is
    :func:`hit_miss_loss` (``balanced`` or at natural prevalence), the schedule
    :func:`warmup_step_schedule`.
    Under torch.distributed, parameters start from rank 0's, gradients are averaged and
    only rank 0 writes checkpoints. With ``resume`` and an existing ``checkpoint`` the
    flow, optimizer, schedule and step are restored and the first
    ``step`` batches skipped, so the result equals an uninterrupted run. ``timer`` gets
    the time of reading batches, the backward pass and the optimizer step.
    """
    rank = distributed.rank()
    parameters = list(flow.parameters())  # fused: one kernel for every parameter's update
    fused = all(p.device.type in ("cpu", "cuda") for p in parameters)
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=fused)
    schedule = warmup_step_schedule(optimizer, total_steps, warmup_steps, decay_every)
    start = 0
    if resume and checkpoint is not None and os.path.exists(checkpoint):
        state = load_checkpoint(checkpoint)
        flow.load_state_dict(state.flow)
        optimizer.load_state_dict(state.optimizer)
        schedule.load_state_dict(state.schedule)
        start = state.step
        logger.info("resuming from %s at step %d of %d", checkpoint, start, total_steps)
        for _ in range(start):
            next(batches)
    flow.train()
    bar = progress_bar(
        range(start, total_steps),
        initial=start,
        total=total_steps,
        desc="fitting flow",
        unit="steps",
        progress=progress if rank == 0 else False,
    )
    for step in bar:
        with stage(timer, "data"):
            raw = next(batches)
        # a generator per (seed, rank, step): resumed and distributed runs need no RNG state
        step_seed = seed + 1_000_003 * step + 7_919 * rank
        if step == 0:  # data-dependent ActNorm initialisation, then rank 0's weights for all
            with torch.no_grad():
                pixels(raw, torch.Generator().manual_seed(step_seed))
            if distributed.is_distributed():
                distributed.broadcast_module(flow)
        log_probs, miss = pixels(raw, torch.Generator().manual_seed(step_seed))
        loss = hit_miss_loss(log_probs, miss, balanced)
        value = loss.item()
        if not math.isfinite(value) or value > MAX_LOSS:
            raise FloatingPointError(
                f"the flow's training loss is {value:.4g} at step {step + 1} of {total_steps} "
                f"(it starts near {math.log(2):.2f}): the fit diverged and was stopped"
            )
        with stage(timer, "backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(flow)
        with stage(timer, "optimizer"):
            optimizer.step()
            schedule.step()
        bar.set_postfix(loss=f"{value:.4f}")
        done = step + 1
        if checkpoint is not None and rank == 0 and (done % checkpoint_every == 0):
            save_checkpoint(
                checkpoint,
                TrainingState(
                    step=done,
                    total_steps=total_steps,
                    flow=flow.state_dict(),
                    optimizer=optimizer.state_dict(),
                    schedule=schedule.state_dict(),
                    extra=checkpoint_extra or {},
                    config=checkpoint_config or {},
                ),
            )
    flow.eval()


def divergence_hint(var: Tensor, lr: float) -> str:
    """Likely causes of a diverged fit, for its error message."""
    floored = (var <= MIN_VARIANCE * 1.01).nonzero().flatten().tolist()
    hint = f". Likely causes: the learning rate (lr={lr:g}) is too high"
    if floored:
        hint += (
            f"; or the segmenter's logits barely vary (classes {floored[:10]} have a max-"
            "logit variance at its floor), as with an untrained model"
        )
    return hint
