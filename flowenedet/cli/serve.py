"""``flowenedet score --onnx FILE``: score image files with an exported ONNX detector in
onnxruntime, writing what ``flowenedet score`` writes with the PyTorch detector.

The per-image path is PIL, numpy and onnxruntime (:class:`flowenedet.export.OnnxDetector`):
no segmenter is built and no torch operation runs. The file names, heat maps, overlays,
float16 arrays and masks come from the writers of :mod:`flowenedet.cli.outputs`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from ..data.files import load_image
from ..export import OnnxDetector
from ..export.runtime import rgb_batch
from ..progress import progress_bar
from ..scores import MAPS
from .errors import CLIError, require_file, require_output_dir
from .outputs import colormap, input_images, pending, size_batches, write_mask, write_outputs

__all__ = ["score_onnx"]

logger = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],  # onnxruntime-gpu
}


def score_onnx(args: argparse.Namespace) -> int:
    """``flowenedet score`` with ``--onnx``: the exported graph instead of the detector."""
    require_file(args.onnx, "--onnx")
    require_output_dir(args.out, "--out")
    unused = [
        flag
        for flag, value in (
            ("--detector", args.detector),
            ("--model", args.model),
            ("--timm", args.timm),
            ("--weights", args.weights),
            ("--scales", args.scales),
        )
        if value
    ]
    if unused:
        raise CLIError(
            f"--onnx scores with the exported graph alone (its segmenter, detector and "
            f"test-time scales are inside it): drop {', '.join(unused)}"
        )
    device = (args.device or "cpu").split(":")[0]
    if device not in PROVIDERS:
        raise CLIError(f"--device {args.device}: --onnx runs on cpu or cuda")
    try:
        detector = OnnxDetector(args.onnx, providers=PROVIDERS[device])
    except ImportError as error:
        raise CLIError(str(error)) from None
    except ValueError as error:  # not a flowenedet export, or TorchScript
        raise CLIError(f"--onnx {error}") from None
    info = detector.info
    missing = [m for m in MAPS if m not in info.maps]
    if missing:
        raise CLIError(
            f"--onnx {args.onnx} has no {', '.join(missing)} map: score writes all three; "
            "export it with every map (the default)"
        )
    if info.mean is not None and (args.mean is not None or args.std is not None):
        raise CLIError(f"--onnx {args.onnx} normalises its input itself: drop --mean / --std")
    calibration = info.calibration or {}
    thresholds = dict(calibration.get("thresholds", {}))
    if args.masks and not thresholds:
        raise CLIError(
            f"--masks needs a calibrated detector; {args.onnx} was exported from one without "
            "thresholds: calibrate it, then export again"
        )
    masks = tuple(thresholds) if args.masks else ()
    items = input_images(args.inputs, args.recursive)
    heat = colormap(args.colormap) if "png" in args.format else None
    out = Path(args.out)
    items, skipped = pending(items, out, args.format, masks, args.overwrite)
    unreadable = []
    batches = size_batches([path for _, path in items], args.batch_size)
    for batch in progress_bar(batches, desc="scoring", unit="batches", progress=args.progress):
        rows = []
        for index in batch:
            try:
                picture = np.asarray(load_image(items[index][1], "input").convert("RGB"))
            except ValueError as error:
                logger.warning("%s; skipped", error)
                unreadable.append(items[index][0])
                continue
            rows.append((index, picture))
        if not rows:
            continue
        images = _normalised(rgb_batch([picture for _, picture in rows]), args.mean, args.std)
        try:
            outputs = detector(images)
        except ValueError as error:  # a size the graph does not take
            raise CLIError(f"{items[rows[0][0]][1]}: {error}", 1) from None
        for row, (index, picture) in enumerate(rows):
            name = items[index][0]
            arrays = {kind: outputs[kind][row] for kind in MAPS}
            write_outputs(out, name, picture, arrays, args, heat, thresholds)
            for kind in masks:
                mask = outputs.get(f"{kind}_mask")
                mask = arrays[kind] > thresholds[kind] if mask is None else mask[row]
                write_mask(out, name, kind, mask)
    done = len(items) - len(unreadable)
    note = f"; skipped {skipped} whose outputs exist" if skipped else ""
    if unreadable:
        note += f"; {len(unreadable)} unreadable: {', '.join(unreadable)}"
    kinds = [*args.format, *(["masks"] if masks else [])]
    print(f"wrote {'/'.join(kinds)} maps of {done} image(s) to {out} with {args.onnx}{note}")
    return 0


def _normalised(images: np.ndarray, mean, std) -> np.ndarray:
    """``(images - mean) / std`` per RGB channel, as ``flowenedet score`` normalises."""
    if mean is not None:
        images = images - np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    if std is not None:
        images = images / np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return images.astype(np.float32, copy=False)
