"""``flowenedet fit``: fit a detector on a segmenter's training data, on one or more devices."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch
from torch.utils.data import DistributedSampler

from ..config import PRESETS
from ..detector import FlowEneDet
from .dataset import build_dataset, fit_augment, make_loader
from .errors import CLIError, json_object, require_output_file
from .options import (
    DATA_OPTIONS,
    MODEL_OPTIONS,
    Command,
    Option,
    non_negative_int,
    number_in,
    positive_int,
    side_or_none,
)
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


FIT_OPTIONS: list[Option] = [
    ("--out", {"required": True, "metavar": "FILE", "help": "the detector .safetensors"}),
    (
        "--preset",
        {
            "choices": tuple(PRESETS),
            "default": "default",
            "help": "named settings and fit options (default: default); options given win",
        },
    ),
    ("--variant", {"choices": ("C", "U"), "help": "default: C"}),
    (
        "--feature-layer",
        {"metavar": "NAME", "help": "FED-C features (default: the classifier's input)"},
    ),
    ("--detector-kwargs", {"metavar": "JSON", "help": "more DetectorConfig fields"}),
    (
        "--steps",
        {
            "type": positive_int,
            "metavar": "N",
            "help": "optimizer steps, cycling through the data (default: 1000)",
        },
    ),
    ("--epochs", {"type": positive_int, "metavar": "N", "help": "passes instead of --steps"}),
    ("--lr", {"type": number_in(1e-8, 1.0), "help": "default: 1e-3"}),
    ("--pixels-per-image", {"type": positive_int, "metavar": "N", "help": "default: 1024"}),
    (
        "--warmup-steps",
        {"type": non_negative_int, "metavar": "N", "help": "default: 5 %% of steps"},
    ),
    ("--decay-every", {"type": positive_int, "metavar": "N", "help": "default: once, at 80 %%"}),
    ("--weight-decay", {"type": number_in(0.0, 1.0), "help": "default: 1e-4"}),
    ("--checkpoint", {"metavar": "FILE", "help": "write training checkpoints here"}),
    ("--checkpoint-every", {"type": positive_int, "metavar": "N", "help": "default: 500"}),
    ("--resume", {"action": "store_true", "help": "continue from --checkpoint if it exists"}),
    (
        "--augment",
        {
            "action": "store_true",
            "help": "random resize, crop and flip (see --crop, --scale-range)",
        },
    ),
    (
        "--crop",
        {
            "type": side_or_none,
            "nargs": "+",
            "metavar": ("H", "W"),
            "help": "--augment crop (default 512 1024; 'none': no crop, needs --batch-size 1)",
        },
    ),
    (
        "--scale-range",
        {
            "type": number_in(1e-3, 1e3),
            "nargs": 2,
            "metavar": ("LOW", "HIGH"),
            "help": "--augment resize factors (default 0.5 2.0)",
        },
    ),
]
COMMAND = Command(
    cmd_fit,
    [
        ("segmenter", MODEL_OPTIONS),
        ("data", DATA_OPTIONS),
        ("detector and training", FIT_OPTIONS),
    ],
    """Example:
  flowenedet fit --model mypkg.models:deeplab --weights deeplab.pth \\
      --dataset cityscapes --root /data/cityscapes --size 512 1024 --steps 20000 \\
      --out deeplab_fed.safetensors --checkpoint fit.ckpt --resume
  torchrun --nproc_per_node=4 -m flowenedet fit ...   # the same on 4 GPUs (DDP)
  flowenedet fit --model zoo --dataset embedded --scenes 2000 --out digits_fed.safetensors""",
    {"batch_size": 8},
)
