"""``flowenedet calibrate``: store reject thresholds, chosen on held-out labelled data, in
the detector file."""

from __future__ import annotations

import argparse
import re

from ..scores import MAPS
from .dataset import build_dataset, make_loader
from .errors import CLIError, require_file, require_output_file
from .options import DATA_OPTIONS, DETECTOR_OPTIONS, MODEL_OPTIONS, Command, Option, target
from .segmenter import load_detector, load_segmenter, select_device

__all__ = ["cmd_calibrate"]


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Store one reject threshold per map, chosen on held-out labelled data, in the detector."""
    require_file(args.detector, "--detector")
    out = args.out or args.detector
    require_output_file(out, "--out")
    device = select_device(args.device)
    split = args.split or ("val" if args.dataset == "embedded" else None)
    dataset = build_dataset(args, split)
    detector = load_detector(args, load_segmenter(args, device))
    try:
        detector.calibrate(
            make_loader(dataset, args),
            target=args.target,
            maps=args.maps,
            scales=args.scales,
            progress=args.progress,
        )
    except ValueError as error:  # maps=('idm',) in the library's words is --maps idm here
        message = re.sub(
            r"maps=\(([^)]*)\)",
            lambda found: "--maps " + " ".join(re.findall(r"'(\w+)'", found.group(1))),
            str(error),
        )
        raise CLIError(message, 1) from None
    path = detector.save(out)
    print(f"calibrated on {len(dataset)} image(s): {detector.calibration.describe()}")
    print(f"wrote {path}")
    return 0


CALIBRATE_OPTIONS: list[Option] = [
    (
        "--target",
        {
            "type": target,
            "default": "f1",
            "metavar": "TARGET",
            "help": "f1 (default), fpr=R (false-positive rate at most R) or tpr=R (true-"
            "positive rate at least R)",
        },
    ),
    (
        "--maps",
        {
            "nargs": "+",
            "choices": MAPS,
            "default": list(MAPS),
            "help": "maps to calibrate (default all; ood and concurrent need OOD labels)",
        },
    ),
    (
        "--out",
        {"metavar": "FILE", "help": "the calibrated detector (default: rewrite --detector)"},
    ),
]
COMMAND = Command(
    cmd_calibrate,
    [
        ("segmenter", MODEL_OPTIONS),
        ("data", DATA_OPTIONS),
        ("scoring", DETECTOR_OPTIONS),
        ("calibration", CALIBRATE_OPTIONS),
    ],
    """Example:
  flowenedet calibrate --model mypkg.models:deeplab --weights deeplab.pth \\
      --detector deeplab_fed.safetensors --dataset fishyscapes_laf \\
      --root /data/fs_lostandfound --image-root /data/lost_and_found --target fpr=0.05
stores one reject threshold per map (score > t is rejected) in the detector file, chosen
on held-out labelled data: never the data the detector was fitted on. Positives: idm,
misclassified pixels; ood, OOD pixels (label 254); concurrent, either. Then
flowenedet score --masks writes reject masks.""",
    {"batch_size": 1},
)
