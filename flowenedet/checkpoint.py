"""Training checkpoints: flow, optimizer, schedule and step, as safetensors.

Tensors go in the file body; the JSON header holds the scalar state (step, optimizer
hyper-parameters, schedule counters), so a resumed fit continues exactly where the
interrupted one stopped. Writes are atomic: a crash mid-write keeps the previous file.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from . import io
from .config import FitOptions, FitRecord, FlowSettings, config_from_dict, differences

__all__ = ["TrainingState", "check_resumable", "load_checkpoint", "save_checkpoint"]

KIND = "flowenedet-checkpoint"
VERSION = 3  # 3: settings grouped; 2: the checksum covers the header
MAX_STEPS = 10**8


@dataclass
class TrainingState:
    """What a resumed fit needs besides the detector's own configuration."""

    step: int
    total_steps: int
    flow: dict[str, Tensor]
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    extra: dict[str, Tensor]  # e.g. class statistics
    config: dict[str, Any]  # the fit: its flow settings, what it measured, its options


def save_checkpoint(path: str | os.PathLike[str], state: TrainingState) -> Path:
    """Write ``state`` to ``path`` atomically."""
    tensors = {f"flow.{k}": v for k, v in state.flow.items()}
    tensors |= {f"extra.{k}": v for k, v in state.extra.items()}
    for index, slots in state.optimizer["state"].items():
        tensors |= {f"optim.{index}.{name}": value for name, value in slots.items()}
    header = {
        "step": state.step,
        "total_steps": state.total_steps,
        "param_groups": state.optimizer["param_groups"],
        "schedule": {k: v for k, v in state.schedule.items() if k != "lr_lambdas"},
        "detector": state.config,
    }
    return io.save_file_atomic(path, tensors, kind=KIND, version=VERSION, config=header)


def load_checkpoint(path: str | os.PathLike[str]) -> TrainingState:
    """Read a checkpoint written by :func:`save_checkpoint` (validated, no pickle).

    Raises :class:`flowenedet.io.FormatError` for a damaged or foreign file and for a
    header whose step counts or state are not those of a real fit.
    """
    tensors, header, _ = io.load_file(path, kind=KIND, version=VERSION)
    _check_header(header, path)
    optimizer_state: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, slot = name.split(".", 2)
            optimizer_state.setdefault(int(index), {})[slot] = value
    groups = header["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return TrainingState(
        step=header["step"],
        total_steps=header["total_steps"],
        flow={k.removeprefix("flow."): v for k, v in tensors.items() if k.startswith("flow.")},
        optimizer={"state": optimizer_state, "param_groups": groups},
        schedule={**header["schedule"], "lr_lambdas": [None]},
        extra={k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")},
        config=header["detector"],
    )


def _check_header(header: Any, path: str | os.PathLike[str]) -> None:
    """The header's scalar state must be of the types and ranges a real fit writes."""

    def fail(what: str) -> None:
        raise io.FormatError(f"checkpoint {path} is not valid: {what}")

    if not isinstance(header, dict):
        fail("its header is not a JSON object")
    step, total = header.get("step"), header.get("total_steps")
    for name, value in (("step", step), ("total_steps", total)):
        if not isinstance(value, int) or isinstance(value, bool):
            fail(f"{name} is {value!r}, not an integer")
    if not (1 <= total <= MAX_STEPS and 0 <= step <= total):
        fail(f"it claims step {step} of {total}")
    groups = header.get("param_groups")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        fail("param_groups is not a list of objects")
    if not isinstance(header.get("schedule"), dict) or not isinstance(header.get("detector"), dict):
        fail("it has no schedule or detector settings")


def check_resumable(
    state: TrainingState,
    path: str | os.PathLike[str],
    settings: FlowSettings,
    options: FitOptions,
    fingerprint: str,
) -> FitRecord:
    """What the checkpoint's fit measured (validated), if it is of the fit being resumed;
    refuses other flow settings, other fit options or another segmenter (``ValueError``
    listing what differs); one that does not record its fit is a
    :class:`flowenedet.io.FormatError`."""
    stored = state.config
    if not all(isinstance(stored.get(key), dict) for key in ("settings", "record", "fit")):
        raise io.FormatError(
            f"checkpoint {path} does not record the fit it belongs to (or was written by "
            "an older flowenedet): delete it to start afresh"
        )
    try:
        record = config_from_dict(FitRecord, stored["record"], str(path))
    except ValueError as error:
        raise io.FormatError(str(error)) from None
    found = []
    if record.segmenter_fingerprint != fingerprint:
        found.append("the segmenter (its weights differ)")
    found += differences(stored["settings"], dataclasses.asdict(settings), "setting")
    fit = dataclasses.asdict(options)
    for name in ("checkpoint_every", "cache_bytes"):  # they do not change the result
        fit.pop(name)
    found += differences(stored["fit"], fit, "fit option")
    if found:
        raise ValueError(
            f"checkpoint {path} is not of this fit: {'; '.join(found)}. Resume with the "
            "same segmenter and arguments, or delete the checkpoint to start afresh."
        )
    return record
