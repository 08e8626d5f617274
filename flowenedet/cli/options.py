"""What several ``flowenedet`` commands share: argparse types, the option tables of the
segmenter, the data and the detector, and :class:`Command`, what a command declares."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..evaluation.worlds import WORLDS
from ..thresholds import check_target

__all__ = [
    "DATA_OPTIONS",
    "DETECTOR_OPTIONS",
    "MODEL_OPTIONS",
    "SEED",
    "Command",
    "Option",
    "non_negative_int",
    "number_in",
    "positive_int",
    "side_or_none",
    "target",
]

Option = tuple[str, dict[str, Any]]
"""A flag and its ``add_argument`` keywords."""


@dataclass(frozen=True)
class Command:
    """A subcommand: its ``handler`` (whose docstring's first line is its summary), its
    option ``groups`` ``(title, options)``, the ``example`` of its help's epilog and
    parser ``defaults``."""

    handler: Callable[[argparse.Namespace], int]
    groups: list[tuple[str, list[Option]]]
    example: str
    defaults: dict[str, Any] = field(default_factory=dict)


def _integer_from(low: int, wanted: str) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low`` (``wanted`` names it in the error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {wanted}; got {text!r}")
        return value

    return parse


positive_int = _integer_from(1, "a positive integer")
positive_int.__doc__ = "An argparse type: an integer >= 1."
non_negative_int = _integer_from(0, "an integer >= 0")
non_negative_int.__doc__ = "An argparse type: an integer >= 0."


def number_in(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number in ``[low, high]``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not low <= value <= high:  # NaN fails too
            raise argparse.ArgumentTypeError(
                f"expected a number in [{low:g}, {high:g}]; got {text!r}"
            )
        return value

    parse.__name__ = "number"
    return parse


def side_or_none(text: str) -> int | None:
    """An argparse type for ``--crop``: a positive integer or ``none``."""
    return None if text.strip().lower() == "none" else positive_int(text)


def target(text: str) -> str | tuple[str, float]:
    """An argparse type for ``--target``: ``f1``, ``fpr=R`` or ``tpr=R``."""
    kind, _, rate = text.strip().lower().partition("=")
    try:
        return check_target("f1" if kind == "f1" and not rate else (kind, float(rate)))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected f1, fpr=R (R in [0, 1]) or tpr=R (R in (0, 1]); got {text!r}"
        ) from None


def _rgb(help_: str) -> dict[str, Any]:
    return {"type": float, "nargs": 3, "metavar": ("R", "G", "B"), "help": help_}


SEED: Option = (
    "--seed",
    {"type": int, "default": 0, "metavar": "N", "help": "random seed (default 0)"},
)
MODEL_OPTIONS: list[Option] = [
    (
        "--model",
        {
            "metavar": "SPEC",
            "help": "'package.module:factory', 'file.py:factory', zoo (the reference "
            "segmenter of --detector's world, else of --world) or zoo:WORLD",
        },
    ),
    (
        "--model-kwargs",
        {"metavar": "JSON", "help": "factory arguments, e.g. '{\"num_classes\": 19}'"},
    ),
    ("--timm", {"metavar": "NAME", "help": "the zoo architecture with this timm backbone"}),
    ("--num-classes", {"type": int, "metavar": "K", "help": "classes (needed with --timm)"}),
    ("--weights", {"metavar": "FILE", "help": "state dict, .safetensors or .pt/.pth"}),
    ("--device", {"help": "default: cuda if available, else cpu"}),
    ("--mean", _rgb("subtract from the [0, 1] RGB images")),
    ("--std", _rgb("then divide by this")),
]
DATA_OPTIONS: list[Option] = [
    ("--dataset", {"metavar": "NAME", "help": "a flowenedet.data.DATASETS name, or embedded"}),
    ("--root", {"metavar": "DIR", "help": "dataset root in its official layout"}),
    ("--split", {"help": "default: train (fit), the dataset's default (evaluate)"}),
    ("--image-root", {"metavar": "DIR", "help": "Fishyscapes: root of the base images"}),
    ("--dataset-kwargs", {"metavar": "JSON", "help": "more arguments of the dataset class"}),
    ("--folder", {"metavar": "DIR", "help": "a folder of images instead of --dataset"}),
    ("--labels", {"metavar": "DIR", "help": "label maps <image stem><suffix> for --folder"}),
    ("--label-suffix", {"default": ".png", "metavar": "SUFFIX", "help": "default: .png"}),
    (
        "--world",
        {
            "choices": WORLDS,
            "default": "digits",
            "help": "embedded: the world (default digits); --model zoo is its reference segmenter",
        },
    ),
    (
        "--scenes",
        {
            "type": positive_int,
            "default": 500,
            "metavar": "N",
            "help": "embedded: number of scenes (500)",
        },
    ),
    ("--size", {"type": int, "nargs": "+", "metavar": "N", "help": "resize: H W or shorter side"}),
    (
        "--batch-size",
        {"type": positive_int, "metavar": "N", "help": "default: 8 (fit), 1 (evaluate)"},
    ),
    (
        "--workers",
        {
            "type": non_negative_int,
            "default": 0,
            "metavar": "N",
            "help": "data loading processes (default 0)",
        },
    ),
    SEED,
]
DETECTOR_OPTIONS: list[Option] = [
    ("--detector", {"required": True, "metavar": "FILE", "help": "written by flowenedet fit"}),
    (
        "--scales",
        {
            "type": number_in(0.05, 4.0),
            "nargs": "+",
            "metavar": "S",
            "help": "test-time scales averaged (default: the detector's, 1.0 unless tta)",
        },
    ),
    ("--no-segmenter-check", {"action": "store_true", "help": "accept changed segmenter weights"}),
]
