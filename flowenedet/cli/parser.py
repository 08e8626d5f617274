"""The ``flowenedet`` argument parser: every subcommand's options, help and example."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..config import PRESETS
from ..evaluation.baselines import BASELINES
from ..evaluation.config import WORLDS, BenchConfig
from ..evaluation.metrics import check_target
from ..scores import MAPS
from .bench import BENCH_OUT, DEMO_OUT, cmd_bench, cmd_demo
from .bench import PRESETS as BENCH_PRESETS
from .calibrate import cmd_calibrate
from .evaluate import DEFAULT_BASELINES, cmd_evaluate
from .fit import cmd_fit
from .score import cmd_score

__all__ = ["COMMANDS", "build_parser", "non_negative_int", "positive_int"]

Option = tuple[str, dict[str, Any]]


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


def _number_in(low: float, high: float) -> Callable[[str], float]:
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


def _side_or_none(text: str) -> int | None:
    """An argparse type for ``--crop``: a positive integer or ``none``."""
    return None if text.strip().lower() == "none" else positive_int(text)


def _target(text: str) -> str | tuple[str, float]:
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
    ("--model", {"metavar": "SPEC", "help": "'package.module:factory', 'file.py:factory' or zoo"}),
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
            "type": _number_in(0.05, 4.0),
            "nargs": "+",
            "metavar": "S",
            "help": "test-time scales averaged (default: the detector's, 1.0 unless tta)",
        },
    ),
    ("--no-segmenter-check", {"action": "store_true", "help": "accept changed segmenter weights"}),
]
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
    ("--lr", {"type": _number_in(1e-8, 1.0), "help": "default: 1e-3"}),
    ("--pixels-per-image", {"type": positive_int, "metavar": "N", "help": "default: 1024"}),
    (
        "--warmup-steps",
        {"type": non_negative_int, "metavar": "N", "help": "default: 5 %% of steps"},
    ),
    ("--decay-every", {"type": positive_int, "metavar": "N", "help": "default: once, at 80 %%"}),
    ("--weight-decay", {"type": _number_in(0.0, 1.0), "help": "default: 1e-4"}),
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
            "type": _side_or_none,
            "nargs": "+",
            "metavar": ("H", "W"),
            "help": "--augment crop (default 512 1024; 'none': no crop, needs --batch-size 1)",
        },
    ),
    (
        "--scale-range",
        {
            "type": _number_in(1e-3, 1e3),
            "nargs": 2,
            "metavar": ("LOW", "HIGH"),
            "help": "--augment resize factors (default 0.5 2.0)",
        },
    ),
]
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
            "type": _number_in(0.0, 1.0),
            "default": 0.6,
            "help": "the overlay's highest opacity (default 0.6)",
        },
    ),
    (
        "--overlay-percentile",
        {
            "type": _number_in(0.0, 100.0),
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
CALIBRATE_OPTIONS: list[Option] = [
    (
        "--target",
        {
            "type": _target,
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
EVALUATE_OPTIONS: list[Option] = [
    ("--corruption", {"metavar": "NAME", "help": "embedded: an imagecorruptions name"}),
    ("--severity", {"type": int, "default": 0, "metavar": "K", "help": "embedded: 1..4"}),
    (
        "--baselines",
        {
            "nargs": "*",
            "choices": list(BASELINES),
            "default": list(DEFAULT_BASELINES),
            "metavar": "NAME",
            "help": f"of {', '.join(BASELINES)}",
        },
    ),
    (
        "--histogram-bins",
        {"type": positive_int, "metavar": "N", "help": "histogram metrics (see below)"},
    ),
    ("--thresholds-from", {"metavar": "JSON", "help": "evaluate JSON of a validation split"}),
    ("--json", {"metavar": "FILE", "help": "also write the results as JSON"}),
]


def _run_options(
    out: str, presets: dict[str, BenchConfig], quick: dict[str, BenchConfig] | None = None
) -> list[Option]:
    """``demo`` / ``bench``: world, output folder and sizes, whose defaults come from the
    ``presets`` of each world (``{world: preset}``) and, for ``--quick``, ``quick``."""

    def sized(flag: str, what: str) -> Option:
        field = flag[2:].replace("-", "_")

        def shown(cfg: BenchConfig) -> str:
            value = getattr(cfg, field)
            return "the detector's" if value is None else str(value)

        default = "default " + ", ".join(f"{w} {shown(cfg)}" for w, cfg in presets.items())
        if quick is not None:
            default += "; " + " / ".join(shown(cfg) for cfg in quick.values()) + " with --quick"
        return flag, {"type": positive_int, "metavar": "N", "help": f"{what} ({default})"}

    world_help = (
        "the embedded world: digits (96 x 96, logits at stride 4), street (256 x 512, stride "
        "4), aerial (256 x 256, stride 4, a SegFormer-style segmenter and shifts of its own) "
        "or all (default: every world, each in DIR/<world>/)"
    )
    options = [
        ("--world", {"choices": (*WORLDS, "all"), "default": "all", "help": world_help}),
        ("--out", {"default": out, "metavar": "DIR", "help": f"output folder (default {out})"}),
        sized("--steps", "optimizer steps of each detector"),
        sized("--train-scenes", "scenes the detectors are fitted on"),
        sized("--val-scenes", "scenes the thresholds are calibrated on"),
        sized("--test-scenes", "scenes per test split"),
        SEED,
        (
            "--seeds",
            {
                "type": positive_int,
                "default": 1,
                "metavar": "N",
                "help": "run each world N times, seeds --seed .. --seed+N-1 (scenes and fit; "
                "the same segmenter), each in DIR/<world>/seed-K/, with the quality bar's "
                "mean and spread in DIR/<world>/seeds.md (default 1)",
            },
        ),
    ]
    if quick is not None:
        help_ = "fewer scenes, steps and corruptions: a smoke test, not a measurement"
        options.append(("--quick", {"action": "store_true", "help": help_}))
    return options


EXAMPLES = {
    "fit": """Example:
  flowenedet fit --model mypkg.models:deeplab --weights deeplab.pth \\
      --dataset cityscapes --root /data/cityscapes --size 512 1024 --steps 20000 \\
      --out deeplab_fed.safetensors --checkpoint fit.ckpt --resume
  torchrun --nproc_per_node=4 -m flowenedet fit ...   # the same on 4 GPUs (DDP)
  flowenedet fit --model zoo --dataset embedded --scenes 2000 --out digits_fed.safetensors""",
    "score": """Example:
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
exist are skipped, so a rerun continues an interrupted one (--overwrite rescores).""",
    "calibrate": """Example:
  flowenedet calibrate --model mypkg.models:deeplab --weights deeplab.pth \\
      --detector deeplab_fed.safetensors --dataset fishyscapes_laf \\
      --root /data/fs_lostandfound --image-root /data/lost_and_found --target fpr=0.05
stores one reject threshold per map (score > t is rejected) in the detector file, chosen
on held-out labelled data: never the data the detector was fitted on. Positives: idm,
misclassified pixels; ood, OOD pixels (label 254); concurrent, either. Then
flowenedet score --masks writes reject masks.""",
    "evaluate": """Example:
  flowenedet evaluate --model mypkg.models:deeplab --weights deeplab.pth \\
      --detector deeplab_fed.safetensors --dataset fishyscapes_laf \\
      --root /data/fs_lostandfound --image-root /data/lost_and_found --json fs_laf.json
Pooled curves are exact unless --histogram-bins N is given: then the bounded scores
(FED idm / ood, MSP, Entropy) use N-bin histograms (constant memory) and the unbounded
baselines (MaxLogit, Energy, SML, MC dropout) stay exact.""",
    "demo": f"""Example:
  flowenedet demo
  flowenedet demo --world digits --out tour --steps 800 --train-scenes 1000
fits FED-U and FED-C (the detector's default settings) to the shipped reference
segmenter of each world, scores clean and shifted (digits, street: 8 corruptions; aerial:
its 6 own shifts; severities 1-4) validation and test scenes with them and every
baseline, prints the tables and the quality bar and writes {DEMO_OUT}/<world>/
scenes.png, curves.png, curves-idm.png, results.json, fed-u.safetensors and
fed-c.safetensors. The street and aerial parts are reduced to fit the demo's time
(street: 16 training, 4 validation, 8 test scenes, 40 steps; aerial: 16, 8, 16, 40).
Needs the bench extra: pip install "flowenedet[bench]".""",
    "bench": f"""Example:
  flowenedet bench --out results/
  flowenedet bench --world street --out results/
  flowenedet bench --world aerial --out results/
  flowenedet bench --quick --no-progress   # a smoke test of the pipeline
writes what demo writes plus results.md (the tables) to {BENCH_OUT}/<world>/; the test
scenes are scored clean, shifted, and under each corruption at each severity 1-4.
Needs the bench extra: pip install "flowenedet[bench]".""",
}
Group = tuple[str, list[Option]]
COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], list[Group], dict[str, Any]]] = {
    "fit": (
        cmd_fit,
        [
            ("segmenter", MODEL_OPTIONS),
            ("data", DATA_OPTIONS),
            ("detector and training", FIT_OPTIONS),
        ],
        {"batch_size": 8},
    ),
    "score": (
        cmd_score,
        [("segmenter", MODEL_OPTIONS), ("scoring", DETECTOR_OPTIONS), ("output", SCORE_OPTIONS)],
        {},
    ),
    "calibrate": (
        cmd_calibrate,
        [
            ("segmenter", MODEL_OPTIONS),
            ("data", DATA_OPTIONS),
            ("scoring", DETECTOR_OPTIONS),
            ("calibration", CALIBRATE_OPTIONS),
        ],
        {"batch_size": 1},
    ),
    "evaluate": (
        cmd_evaluate,
        [
            ("segmenter", MODEL_OPTIONS),
            ("data", DATA_OPTIONS),
            ("scoring", DETECTOR_OPTIONS),
            ("evaluation", EVALUATE_OPTIONS),
        ],
        {"batch_size": 1},
    ),
    "demo": (cmd_demo, [("run", _run_options(DEMO_OUT, BENCH_PRESETS["demo"]))], {}),
    "bench": (
        cmd_bench,
        [("run", _run_options(BENCH_OUT, BENCH_PRESETS["bench"], BENCH_PRESETS["quick"]))],
        {},
    ),
}
"""``name: (handler, [(group title, options)], parser defaults)``; the handler's docstring
gives the command's summary."""


def build_parser() -> argparse.ArgumentParser:
    """The ``flowenedet`` argument parser with its subcommands (see :data:`COMMANDS`)."""
    parser = argparse.ArgumentParser(
        prog="flowenedet", description="Misclassification and OOD maps for frozen segmenters."
    )
    parser.add_argument("--version", action="version", version=f"flowenedet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name, (handler, groups, defaults) in COMMANDS.items():
        summary = handler.__doc__.splitlines()[0]
        command = sub.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.set_defaults(handler=handler, **defaults)
        for title, options in groups:
            group = command.add_argument_group(title)
            for flag, kwargs in options:
                group.add_argument(flag, **kwargs)
        command.add_argument("-v", "--verbose", action="store_true", help="log INFO messages")
        command.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="progress bars (default: on a terminal; elsewhere one line per stage); "
            "--no-progress: neither",
        )
    return parser
