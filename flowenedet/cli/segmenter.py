"""The segmenter and detector of a command: ``--model`` / ``--timm``, ``--weights``,
``--device`` and ``--detector``."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import io
from ..detector import FlowEneDet
from .errors import CLIError, cli_wording, json_object, require_file

__all__ = ["load_detector", "load_segmenter", "select_device"]

logger = logging.getLogger(__name__)


def import_factory(spec: str) -> Callable[..., Any]:
    """``package.module:name`` (or ``path/file.py:name``) -> the callable it names."""
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise CLIError(f"--model must look like 'package.module:factory'; got {spec!r}")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise CLIError(f"--model {spec}: file {path} not found")
    elif os.getcwd() not in sys.path:  # console scripts do not see the working directory
        sys.path.insert(0, os.getcwd())
    try:
        if module_name.endswith(".py"):
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except Exception as error:  # a user's module can fail to import in any way
        raise CLIError(
            f"--model {spec}: cannot import module {module_name!r}: "
            f"{type(error).__name__}: {_first_line(error)}"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        what = "has no attribute" if factory is None else "has a non-callable"
        raise CLIError(f"--model {spec}: module {module_name!r} {what} {attr!r}")
    return factory


def _first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (torch's can run to a page)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` or a weights-only ``torch.load`` (never pickle)."""
    require_file(str(path), "--weights")
    from safetensors.torch import load_file

    try:
        if path.suffix == ".safetensors":
            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors and unpickling errors have many types
        raise CLIError(
            f"--weights {path} cannot be read as a plain state dict (safetensors, or torch.load "
            f"with weights_only=True): {_first_line(error)}"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CLIError(f"--weights {path} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):  # saved from DDP
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def state_dict_differences(
    expected: dict[str, Tensor], found: dict[str, Tensor], shown: int = 5
) -> str:
    """What keeps ``found`` from loading where ``expected`` is: missing and unexpected
    keys, and tensors of another shape, the first ``shown`` of each ("" if none)."""

    def listed(keys: list[str]) -> str:
        more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
        return ", ".join(keys[:shown]) + more

    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{key} {tuple(found[key].shape)} instead of {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(found))
        if found[key].shape != expected[key].shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {listed(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {listed(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} tensor(s) of another shape: {listed(shapes)}")
    return "; ".join(parts)


def zoo_world(args: argparse.Namespace, kwargs: dict[str, Any]) -> str:
    """The shipped segmenter of ``--model zoo``: ``zoo:NAME`` (a world, whose reference it
    is, or a segmenter of the zoo such as ``street-s8``), else ``--model-kwargs
    '{"world": ...}'``, else the world whose reference has the classes of ``--detector`` (so
    the demo's detectors of every world score with ``--model zoo``), else ``--world``
    (``--dataset embedded``), else digits."""
    from ..zoo.segmenter import SEGMENTERS

    unknown = sorted(set(kwargs) - {"world"})
    if unknown:
        raise CLIError(
            f'--model zoo takes no --model-kwargs but the world (\'{{"world": "street"}}\', '
            f"or --model zoo:street); got {unknown}"
        )
    named = args.model.partition(":")[2] or None
    given = kwargs.get("world")
    if named and given and named != given:
        raise CLIError(f"--model {args.model} and --model-kwargs world {given!r} disagree")
    world = named or given or _detector_world(args) or getattr(args, "world", "digits")
    if world not in SEGMENTERS:
        raise CLIError(f"--model zoo:{world}: the zoo's segmenters are {', '.join(SEGMENTERS)}")
    return world


def _detector_world(args: argparse.Namespace) -> str | None:
    """The zoo world whose reference segmenter has as many classes as ``--detector``'s
    fit (None without a readable detector, or when none or several have)."""
    from ..storage import read_detector
    from ..zoo.segmenter import REFERENCES, SEGMENTERS

    path = getattr(args, "detector", None)
    try:
        classes = read_detector(path)[0].fitted.num_classes if path else None
    except (OSError, ValueError):  # reported properly when the detector is loaded
        return None
    matching = [
        world
        for world, name in REFERENCES.items()
        if SEGMENTERS[name].architecture["num_classes"] == classes
    ]
    return matching[0] if len(matching) == 1 else None


def _build(args: argparse.Namespace) -> nn.Module:
    """The (not yet loaded) segmenter of ``--timm``, ``--model zoo`` or ``--model SPEC``."""
    kwargs = json_object(args.model_kwargs, "--model-kwargs")
    if args.timm and args.model:
        raise CLIError("give the segmenter with --model or with --timm, not both")
    if args.timm:
        if args.num_classes is None:
            raise CLIError("--timm needs --num-classes K")
        from ..zoo import DigitSegmenter

        return DigitSegmenter(backbone=args.timm, num_classes=args.num_classes, **kwargs)
    if args.model == "zoo" or (args.model or "").startswith("zoo:"):
        from .. import zoo

        name = zoo_world(args, kwargs)
        if args.weights:
            return zoo.build_reference_segmenter(name=name)
        return zoo.load_reference_segmenter(name=name)
    if not args.model:
        raise CLIError(
            "give the segmenter with --model package.module:factory, --model zoo or --timm"
        )
    factory = import_factory(args.model)
    try:
        return factory(**kwargs)
    except TypeError as error:
        raise CLIError(f"--model {args.model}: calling it with {kwargs} failed: {error}") from None


def load_segmenter(args: argparse.Namespace, device: torch.device) -> nn.Module:
    """Build the segmenter of ``--model`` / ``--timm``, load ``--weights``, eval mode."""
    torch.manual_seed(args.seed)  # a randomly initialised model is the same in every command
    model = _build(args)
    if not isinstance(model, nn.Module):
        raise CLIError(
            f"--model {args.model} returned {type(model).__name__}, not a torch nn.Module"
        )
    if args.weights:
        state = read_state_dict(Path(args.weights))
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            differences = state_dict_differences(model.state_dict(), state)
            raise CLIError(
                f"--weights {args.weights} do not fit the {type(model).__name__} model: "
                f"{differences or _first_line(error)}"
            ) from None
    elif args.timm:
        logger.warning("--timm %s without --weights: the segmenter has random weights", args.timm)
    return model.to(device).eval()


def select_device(name: str | None) -> torch.device:
    """``--device``, default ``cuda`` when available, else ``cpu``."""
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as error:
        raise CLIError(
            f"--device {name!r} is not a device (cpu, cuda, cuda:1, ...): {error}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available on this machine")
    return device


def load_detector(args: argparse.Namespace, segmenter: nn.Module) -> FlowEneDet:
    """The detector of ``--detector``, checked against ``segmenter``."""
    try:
        return FlowEneDet.load(
            args.detector, segmenter, check_segmenter=not args.no_segmenter_check
        )
    except FileNotFoundError:
        raise CLIError(f"--detector {args.detector}: file not found") from None
    except io.FormatError as error:
        raise CLIError(f"--detector: {error}") from None
    except ValueError as error:
        raise CLIError(
            f"--detector {args.detector} does not match the segmenter: {cli_wording(str(error))}",
            1,
        ) from None
