"""``flowenedet calibrate``: store reject thresholds, chosen on held-out labelled data, in
the detector file."""

from __future__ import annotations

import argparse

from .dataset import build_dataset, make_loader
from .errors import CLIError, require_file, require_output_file
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
    except ValueError as error:
        raise CLIError(str(error), 1) from None
    path = detector.save(out)
    print(f"calibrated on {len(dataset)} image(s): {detector.calibration.describe()}")
    print(f"wrote {path}")
    return 0
