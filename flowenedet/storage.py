"""A fitted detector's persistent state: its settings, its statistics and its file format.

A detector file is a safetensors file (written by :mod:`flowenedet.io`: atomic, checksummed,
never pickle) holding the flow's weights under ``flow.*``, the :class:`Stats` under
``stats.*`` and the :class:`DetectorConfig` as JSON in the header. Loading checks that the
file fits the segmenter it is loaded for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from . import io

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "DetectorConfig",
    "Stats",
    "check_segmenter",
    "read_detector",
    "segmenter_fingerprint",
    "write_detector",
]

FORMAT = "flowenedet-detector"
FORMAT_VERSION = 2  # 2: input sets, soft targets and the ood map's energy term


@dataclass
class DetectorConfig:
    """Everything needed to rebuild a detector; stored in the safetensors header."""

    variant: str = "C"
    inputs: str = "rich"
    num_classes: int | None = None
    feature_layer: str | None = None
    feature_channels: int | None = None
    ignore_index: int = 255
    pooled_channels: int = 32
    context_channels: int = 32
    num_blocks: int = 8
    hidden: int = 32
    boundary_width: int = 4
    boundary_iterations: int = 4
    ood_dilation: int = 6
    smooth_kernel: int = 7
    ood_smooth_kernel: int | None = None  # None: smooth_kernel (files before it existed)
    ood_smooth_sigma: float = 1.0
    ood_keep_peaks: bool = False
    ood_energy_weight: float = 1.5
    concurrent_energy_weight: float = 0.5
    chunk_pixels: int = 1 << 16
    seed: int = 0
    segmenter_fingerprint: str | None = None


@dataclass(frozen=True)
class Stats:
    """What the detector measured on its fit data besides the flow's weights.

    Attributes:
        mean, var: ``(K,)``, per-class mean and variance of the max logit over correctly
            classified training pixels (SML statistics).
        ood_scale: ``(4,)``, mean and standard deviation of the flow's log-odds, then of the
            standardised free energy, over the fit data's valid pixels; they put the two
            terms of the ``ood`` and ``concurrent`` maps on one scale.
    """

    mean: Tensor
    var: Tensor
    ood_scale: Tensor


def segmenter_fingerprint(segmenter: nn.Module) -> str:
    """SHA-256 of the segmenter's parameter and buffer names, shapes and values."""
    return io.tensor_checksum(segmenter.state_dict())


def write_detector(
    path: str | Path, config: DetectorConfig, flow_state: Mapping[str, Tensor], stats: Stats
) -> Path:
    """Write one detector file atomically; returns its path."""
    tensors = {f"flow.{k}": v for k, v in flow_state.items()}
    tensors |= {f"stats.{name}": value for name, value in vars(stats).items()}
    return io.save_file_atomic(
        path, tensors, kind=FORMAT, version=FORMAT_VERSION, config=dataclasses.asdict(config)
    )


def read_detector(path: str | Path) -> tuple[DetectorConfig, dict[str, Tensor], Stats]:
    """``(config, flow_state, stats)`` from a file written by :func:`write_detector`.

    Raises ``FileNotFoundError`` or :class:`flowenedet.io.FormatError` (unreadable, foreign,
    corrupted or other-version file, unknown settings).
    """
    tensors, settings = io.load_file(path, kind=FORMAT, version=FORMAT_VERSION)
    unknown = set(settings) - {f.name for f in dataclasses.fields(DetectorConfig)}
    if unknown:
        raise io.FormatError(f"{path} has unknown settings {sorted(unknown)}")
    part = {prefix: {} for prefix in ("flow", "stats")}
    for name, value in tensors.items():
        prefix, _, key = name.partition(".")
        if prefix not in part:
            raise io.FormatError(f"{path} holds an unexpected tensor {name!r}")
        part[prefix][key] = value
    stat_names = {f.name for f in dataclasses.fields(Stats)}
    if set(part["stats"]) != stat_names:
        raise io.FormatError(
            f"{path} holds statistics {sorted(part['stats'])}, expected {sorted(stat_names)}"
        )
    return DetectorConfig(**settings), part["flow"], Stats(**part["stats"])


def check_segmenter(
    config: DetectorConfig, segmenter: nn.Module, path: str | Path, *, weights: bool = True
) -> None:
    """Refuse a segmenter the stored detector does not fit: other classes or feature
    channels at a classifier-conv feature layer, or (``weights=True``) other weights."""
    if config.variant == "C" and config.feature_layer and config.feature_layer.endswith(":input"):
        modules = dict(segmenter.named_modules())
        conv = modules.get(config.feature_layer.removesuffix(":input"))
        if isinstance(conv, nn.Conv2d) and (
            conv.out_channels != config.num_classes or conv.in_channels != config.feature_channels
        ):
            raise ValueError(
                f"the detector was fitted for {config.num_classes} classes and "
                f"{config.feature_channels} feature channels, but the segmenter's "
                f"{config.feature_layer} has {conv.out_channels} and {conv.in_channels}"
            )
    stored = config.segmenter_fingerprint
    if weights and stored and stored != segmenter_fingerprint(segmenter):
        raise ValueError(
            f"{path} was fitted on a different segmenter (its weights differ); its class "
            "statistics and flow would be wrong for this one. Refit the detector, or pass "
            "check_segmenter=False if you know the change is harmless."
        )
