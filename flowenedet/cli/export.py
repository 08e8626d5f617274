"""``flowenedet export``: the segmenter and a fitted detector as one ONNX or TorchScript
graph (:meth:`flowenedet.FlowEneDet.export`), checked against the detector before it is
written."""

from __future__ import annotations

import argparse

from ..export import ExportError, read_metadata
from ..scores import MAPS
from .errors import CLIError, require_file, require_output_file
from .options import DETECTOR_OPTIONS, MODEL_OPTIONS, SEED, Command, Option, positive_int
from .segmenter import load_detector, load_segmenter, select_device

__all__ = ["cmd_export"]


def cmd_export(args: argparse.Namespace) -> int:
    """Write the segmenter and the detector as one ONNX or TorchScript graph."""
    require_file(args.detector, "--detector")
    require_output_file(args.out, "--out")
    if len(args.size) != 2:
        raise CLIError(f"--size takes the traced image size H W; got {args.size}")
    if (args.mean is None) != (args.std is None):
        raise CLIError("give both --mean and --std (the graph normalises its input) or neither")
    device = select_device(args.device)
    detector = load_detector(args, load_segmenter(args, device))
    try:
        path = detector.export(
            args.out,
            format=args.format,
            image_size=tuple(args.size),
            maps=tuple(args.maps),
            dynamic=not args.static,
            scales=args.scales,
            masks=not args.no_masks,
            mean=args.mean,
            std=args.std,
            check=not args.no_check,
            exporter=args.exporter,
            opset=args.opset,
        )
    except ImportError as error:  # the export extra is missing
        raise CLIError(str(error)) from None
    except ExportError as error:
        raise CLIError(str(error), 1) from None
    info = read_metadata(path)
    sides = "any batch and size" if info.dynamic else f"batch 1 at {args.size[0]}x{args.size[1]}"
    checked = "not checked" if args.no_check else "checked equal to the detector"
    print(f"wrote {path} ({info.format}): outputs {', '.join(info.outputs)}")
    print(
        f"input {info.input} (B, 3, H, W), {sides}, sides of at least {info.min_image_side} "
        f"px; {checked}"
    )
    return 0


EXPORT_OPTIONS: list[Option] = [
    ("--out", {"required": True, "metavar": "FILE", "help": "the file to write"}),
    (
        "--size",
        {
            "type": positive_int,
            "nargs": "+",
            "required": True,
            "metavar": "N",
            "help": "H W: the image size the graph is traced and checked at",
        },
    ),
    (
        "--format",
        {"choices": ("onnx", "torchscript"), "default": "onnx", "help": "default onnx"},
    ),
    (
        "--maps",
        {"nargs": "+", "choices": MAPS, "default": list(MAPS), "help": "maps to output (all)"},
    ),
    (
        "--static",
        {"action": "store_true", "help": "fix batch 1 and --size (default: both free)"},
    ),
    (
        "--no-masks",
        {"action": "store_true", "help": "leave out the reject masks of a calibrated detector"},
    ),
    (
        "--exporter",
        {
            "choices": ("trace", "dynamo"),
            "default": "trace",
            "help": "ONNX: torch's TorchScript-based exporter (default) or torch.export's",
        },
    ),
    ("--opset", {"type": positive_int, "metavar": "N", "help": "ONNX opset (torch's default)"}),
    (
        "--no-check",
        {"action": "store_true", "help": "write without comparing the file to the detector"},
    ),
    SEED,
]
COMMAND = Command(
    cmd_export,
    [
        ("segmenter", MODEL_OPTIONS),
        ("scoring", DETECTOR_OPTIONS),
        ("export", EXPORT_OPTIONS),
    ],
    """Example:
  flowenedet export --model mypkg.models:deeplab --weights deeplab.pth \\
      --detector deeplab_fed.safetensors --size 512 1024 --out deeplab_fed.onnx \\
      --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225
writes one graph from images (B, 3, H, W) to pred, idm, ood, concurrent and, for a
calibrated detector, idm_mask, ood_mask, concurrent_mask; with --mean / --std it takes
RGB in [0, 1] and normalises inside. The file is run (onnxruntime, or TorchScript) and
written only if its maps equal the detector's within 1e-4. Then:
  flowenedet score --onnx deeplab_fed.onnx images/ --out maps/""",
)
