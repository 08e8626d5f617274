"""``flowenedet fit``: fit a detector on a segmenter's training data, on one or more devices."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch
from torch.utils.data import DistributedSampler

from ..detector import FlowEneDet
from .dataset import build_dataset, fit_augment, make_loader
from .errors import CLIError, json_object, require_output_file
from .segmenter import load_segmenter, select_device

__all__ = ["FIT_FLAGS", "cmd_fit"]

FIT_FLAGS = (
    "steps",
    "epochs",
    "lr",
    "pixels_per_image",
    "warmup_steps",
    "decay_every",
    "weight_decay",
    "checkpoint_every",
)
"""``FitOptions`` fields with a ``fit`` flag; a flag not given leaves the preset's value."""

logger = logging.getLogger(__name__)


def _start_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """Under torchrun (``WORLD_SIZE`` > 1) join the process group; returns rank, size, device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank()
    if rank != 0:
        logging.getLogger("flowenedet").setLevel(logging.WARNING)
    logger.info("distributed fit: rank %d of %d on %s", rank, world, device)
    return rank, world, device


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit a detector on the segmenter's training data and write it as safetensors."""
    if args.resume and not args.checkpoint:
        raise CLIError("--resume needs --checkpoint PATH")
    require_output_file(args.out, "--out")
    require_output_file(args.checkpoint, "--checkpoint")
    options = json_object(args.detector_kwargs, "--detector-kwargs")
    augment = fit_augment(args)
    rank, world, device = _start_distributed(select_device(args.device))
    if rank == 0 and args.resume and not Path(args.checkpoint).is_file():
        logger.warning("--resume: no checkpoint %s yet; starting from scratch", args.checkpoint)
    try:
        dataset = build_dataset(args, args.split or "train", transform=augment)
        if augment is not None:
            logger.info("fit-time augmentation: %r", augment)
        segmenter = load_segmenter(args, device)
        # One seeded shuffle, the same order on every pass: the statistics pass and the
        # training passes agree, so --resume skips exactly the batches already used.
        sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=args.seed)
        loader = make_loader(dataset, args, sampler=sampler, pin_memory=device.type == "cuda")
        given = {"variant": args.variant, "num_classes": args.num_classes}
        given["feature_layer"] = args.feature_layer or None
        options |= {k: v for k, v in given.items() if v is not None} | {"seed": args.seed}
        try:
            detector = FlowEneDet(segmenter, preset=args.preset, **options)
        except (TypeError, ValueError) as error:
            raise CLIError(f"--detector-kwargs: {error}") from None
        fit_options = {name: getattr(args, name) for name in FIT_FLAGS}
        detector.fit(
            loader,
            device=device,
            progress=args.progress if rank == 0 else False,
            checkpoint=args.checkpoint,
            resume=args.resume,
            **{k: v for k, v in fit_options.items() if v is not None},
        )
        if rank == 0:
            path = detector.save(args.out)
            print(f"wrote {path} ({detector!r}, {len(dataset)} training images)")
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()
    return 0
