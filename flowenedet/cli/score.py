"""``flowenedet score``: IDM / OOD heat maps, overlays, float16 arrays and reject masks
for image files, batched through a DataLoader and written as they come.

Images of one batch must share a size, so the batches are grouped by size (read from the
file headers): each size's images in batches of ``--batch-size``, sizes in the order they
first occur. An image whose outputs all exist is skipped (``--overwrite`` rewrites it), so
an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..data.files import load_image
from ..detector import MAPS
from ..progress import progress_bar
from .dataset import normalise
from .errors import CLIError, require_file, require_output_dir
from .options import (
    DETECTOR_OPTIONS,
    MODEL_OPTIONS,
    SEED,
    Command,
    Option,
    non_negative_int,
    number_in,
    positive_int,
)
from .outputs import colormap, input_images, pending, size_batches, write_mask, write_outputs
from .segmenter import load_detector, load_segmenter, select_device

__all__ = ["cmd_score"]


class _ImageFiles(Dataset):
    """``(index, RGB uint8 (H, W, 3) or None, error or None)`` per file; errors travel as
    text, so a worker process reports them as cleanly as the main process."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, str | None]:
        try:
            rgb = np.asarray(load_image(self.paths[index], "input").convert("RGB"))
        except ValueError as error:
            return index, None, str(error)
        return index, torch.from_numpy(rgb.copy()), None


def _batches(paths: Sequence[Path], args: argparse.Namespace, pin: bool) -> Iterator[list]:
    """Batches of ``(index, image, error)`` items, read by ``--workers`` processes."""
    if not paths:  # everything was scored already
        return
    loader = DataLoader(
        _ImageFiles(paths),
        batch_sampler=size_batches(paths, args.batch_size),
        num_workers=args.workers,
        collate_fn=list,
        pin_memory=pin,
    )
    yield from progress_bar(loader, desc="scoring", unit="batches", progress=args.progress)


def cmd_score(args: argparse.Namespace) -> int:
    """Write IDM / OOD heat maps, overlays, float16 arrays and reject masks for images."""
    if args.onnx:  # an exported graph in onnxruntime instead of the PyTorch detector
        from .serve import score_onnx

        return score_onnx(args)
    if args.detector is None:
        raise CLIError("give the detector with --detector FILE (or an export with --onnx FILE)")
    require_file(args.detector, "--detector")
    require_output_dir(args.out, "--out")
    items = input_images(args.inputs, args.recursive)
    heat = colormap(args.colormap) if "png" in args.format else None
    device = select_device(args.device)
    detector = load_detector(args, load_segmenter(args, device))
    thresholds = dict(detector.calibration.thresholds) if detector.calibration else {}
    if args.masks and not thresholds:
        raise CLIError(
            f"--masks needs a calibrated detector; {args.detector} holds no thresholds: "
            "run flowenedet calibrate on held-out labelled data first"
        )
    masks = tuple(thresholds) if args.masks else ()
    out = Path(args.out)
    items, skipped = pending(items, out, args.format, masks, args.overwrite)
    unreadable = 0
    for batch in _batches([path for _, path in items], args, device.type == "cuda"):
        for _, _, error in batch:  # one bad file does not stop the others
            if error is not None:
                print(f"flowenedet: error: {error}; skipped", file=sys.stderr, flush=True)
                unreadable += 1
        batch = [item for item in batch if item[2] is None]
        if not batch:
            continue
        images = torch.stack([rgb for _, rgb, _ in batch]).permute(0, 3, 1, 2).float() / 255.0
        images = normalise(images, args.mean, args.std).to(device)
        maps = detector.score(images, scales=args.scales)
        rejected = maps.masks(masks) if masks else {}
        for row, (index, rgb, _) in enumerate(batch):
            arrays = {kind: getattr(maps, kind)[row].float().cpu().numpy() for kind in MAPS}
            write_outputs(out, items[index][0], rgb.numpy(), arrays, args, heat, thresholds)
            for kind, mask in rejected.items():
                write_mask(out, items[index][0], kind, mask[row].cpu().numpy())
    note = f"; skipped {skipped} whose outputs exist" if skipped else ""
    kinds = [*args.format, *(["masks"] if masks else [])]
    written = len(items) - unreadable
    print(f"wrote {'/'.join(kinds)} maps of {written} image(s) to {out}{note}")
    if unreadable:
        raise CLIError(f"{unreadable} of {len(items)} image(s) could not be read (named above)", 1)
    return 0


SCORE_OPTIONS: list[Option] = [
    ("inputs", {"nargs": "+", "metavar": "IMAGE_OR_FOLDER"}),
    ("--out", {"required": True, "metavar": "DIR", "help": "output folder"}),
    ("--format", {"nargs": "+", "choices": ("png", "npy"), "default": ["png", "npy"]}),
    (
        "--colormap",
        {"default": "inferno", "metavar": "NAME", "help": "matplotlib colormap (default inferno)"},
    ),
    (
        "--alpha",
        {
            "type": number_in(0.0, 1.0),
            "default": 0.6,
            "help": "the overlay's highest opacity (default 0.6)",
        },
    ),
    (
        "--overlay-percentile",
        {
            "type": number_in(0.0, 100.0),
            "default": 95.0,
            "metavar": "P",
            "help": "uncalibrated detectors: the overlay is clear below the image's P-th "
            "percentile of the ood map (default 95); calibrated: below the ood threshold",
        },
    ),
    (
        "--masks",
        {"action": "store_true", "help": "also write reject masks at the calibrated thresholds"},
    ),
    ("--recursive", {"action": "store_true", "help": "look for images in subfolders too"}),
    (
        "--onnx",
        {
            "metavar": "FILE",
            "help": "score with an exported ONNX detector in onnxruntime instead of "
            "--detector and the segmenter (flowenedet export)",
        },
    ),
    ("--overwrite", {"action": "store_true", "help": "rescore images whose outputs all exist"}),
    (
        "--batch-size",
        {
            "type": positive_int,
            "default": 1,
            "metavar": "N",
            "help": "images per batch, grouped by size (default 1)",
        },
    ),
    (
        "--workers",
        {
            "type": non_negative_int,
            "default": 0,
            "metavar": "N",
            "help": "image loading processes (default 0)",
        },
    ),
    SEED,
]
COMMAND = Command(
    cmd_score,
    [
        ("segmenter", MODEL_OPTIONS),
        # --detector, or --onnx instead
        ("scoring", [(f, {**kw, "required": False}) for f, kw in DETECTOR_OPTIONS]),
        ("output", SCORE_OPTIONS),
    ],
    """Example:
  flowenedet score --model mypkg.models:deeplab --weights deeplab.pth \\
      --detector deeplab_fed.safetensors --out maps/ street.png more_images/ \\
      --batch-size 8 --workers 4 --masks
writes, for every image NAME (street, and each image of more_images/ by its stem):
  --format png: NAME_idm.png, NAME_ood.png, NAME_concurrent.png (heat maps) and
                NAME_overlay.png (the image tinted where the ood map is high)
  --format npy: NAME_idm.npy, NAME_ood.npy, NAME_concurrent.npy (float16 (H, W) in [0, 1])
  --masks:      NAME_idm_mask.png, NAME_ood_mask.png, NAME_concurrent_mask.png (8-bit,
                255 = rejected) for each map the detector is calibrated for
(default --format png npy). Batches hold images of one size; images whose outputs all
exist are skipped, so a rerun continues an interrupted one (--overwrite rescores).
  flowenedet score --onnx deeplab_fed.onnx street.png --out maps/
writes the same files with a graph of flowenedet export, in onnxruntime.""",
    {},
)
