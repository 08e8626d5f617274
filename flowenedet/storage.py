"""A fitted detector's persistent state: its settings, its statistics and its file format.

A detector file is a safetensors file (written by :mod:`flowenedet.io`: atomic, checksummed,
never pickle) holding the flow's weights under ``flow.*``, the :class:`Stats` under
``stats.*`` and the :class:`DetectorConfig` as JSON in the header (its groups ``"flow"``,
``"scoring"`` and ``"fitted"``), with the :class:`~flowenedet.calibration.Calibration`
(reject thresholds, or ``null``) under its ``"calibration"`` key. Files of every earlier
format version load (their settings were one flat object). Loading checks that the file
fits the segmenter it is loaded for.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from . import io
from .calibration import Calibration
from .config import FILE_DEFAULTS, DetectorConfig
from .hooks import unwrap
from .rules import terms_of

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "DetectorConfig",
    "Stats",
    "check_segmenter",
    "check_tensors",
    "fingerprint_matches",
    "read_detector",
    "segmenter_fingerprint",
    "write_detector",
]

FORMAT = "flowenedet-detector"
FORMAT_VERSION = 5  # 5: settings grouped; 4: calibrated thresholds; 3: checksummed settings
OLDER_VERSIONS = (3, 4)  # flat settings; format 3 read as uncalibrated detectors
LEGACY_VERSIONS = (2,)  # read, uncalibrated, with a warning that their settings are unprotected


CALIBRATION = "calibration"  # the header key of the stored thresholds


@dataclass(frozen=True)
class Stats:
    """What the detector measured on its fit data besides the flow's weights.

    Attributes:
        mean, var: ``(K,)``, per-class mean and variance of the max logit over correctly
            classified training pixels (SML statistics).
        scale: ``(T, 2)``, mean and standard deviation of each standardised term of the
            scoring rules (:data:`flowenedet.rules.STANDARDISED`, as many as the input set
            gives) over the fit data's valid pixels, so that the rules' weights compare.
    """

    mean: Tensor
    var: Tensor
    scale: Tensor


def segmenter_fingerprint(segmenter: nn.Module) -> str:
    """SHA-256 of the segmenter's parameter and buffer names, shapes and values, floating
    values at float16 precision.

    So the fingerprint survives ``model.half()`` (and back to float32), ``.to(device)`` and
    ``torch.compile`` (names are the wrapped model's, :func:`flowenedet.hooks.unwrap`);
    bfloat16 rounds more coarsely than float16, so ``model.bfloat16()`` of a detector
    fitted in float32 does not match.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(unwrap(segmenter).state_dict().items()):
        tensor = tensor.detach()
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        digest.update(io.tensor_checksum({name: tensor}).encode())
    return digest.hexdigest()


def fingerprint_matches(stored: str, segmenter: nn.Module) -> bool:
    """Whether ``stored`` is ``segmenter``'s fingerprint, by the current definition or by
    the one of earlier releases (the exact bytes of the state dict)."""
    if stored == segmenter_fingerprint(segmenter):
        return True
    return stored == io.tensor_checksum(unwrap(segmenter).state_dict())


def write_detector(
    path: str | Path,
    config: DetectorConfig,
    flow_state: Mapping[str, Tensor],
    stats: Stats,
    calibration: Calibration | None = None,
) -> Path:
    """Write one detector file atomically; returns its path."""
    tensors = {f"flow.{k}": v for k, v in flow_state.items()}
    tensors |= {f"stats.{name}": value for name, value in vars(stats).items()}
    header = config.to_json()
    header[CALIBRATION] = calibration.to_json() if calibration is not None else None
    return io.save_file_atomic(path, tensors, kind=FORMAT, version=FORMAT_VERSION, config=header)


def read_detector(
    path: str | Path,
) -> tuple[DetectorConfig, dict[str, Tensor], Stats, Calibration | None]:
    """``(config, flow_state, stats, calibration)`` from a file written by
    :func:`write_detector`; ``calibration`` is ``None`` for an uncalibrated detector
    (every file of format 3 or older).

    The settings are validated by :class:`DetectorConfig`, the thresholds (finite, in
    [0, 1], known maps) by :class:`Calibration` and the statistics checked (shapes,
    dtypes, finite values, positive spreads) before anything is built from them.
    Raises ``FileNotFoundError`` or :class:`flowenedet.io.FormatError` (unreadable, foreign,
    damaged or other-version file, invalid settings or statistics), naming ``path``.
    """
    tensors, settings, version = io.load_file(
        path,
        kind=FORMAT,
        version=FORMAT_VERSION,
        legacy_versions=LEGACY_VERSIONS,
        older_versions=OLDER_VERSIONS,
    )
    calibration = None
    if version < 4:
        logger.info("%s is of format %d, which holds no thresholds: uncalibrated", path, version)
    elif isinstance(settings, dict):
        settings = dict(settings)
        stored = settings.pop(CALIBRATION, None)
        try:
            calibration = None if stored is None else Calibration.from_json(stored, str(path))
        except ValueError as error:
            raise io.FormatError(str(error)) from None
    if version in LEGACY_VERSIONS:
        logger.warning(
            "%s was saved by an older flowenedet (format %d) whose checksum does not cover "
            "its settings; they were validated, but save the detector again to protect them",
            path,
            version,
        )
    try:
        if version == FORMAT_VERSION:
            config = DetectorConfig.from_json(settings, str(path))
        else:  # one flat object; a file older than a setting scores as it did then
            flat = FILE_DEFAULTS | settings if isinstance(settings, dict) else settings
            config = DetectorConfig.from_flat(flat, str(path))
    except (TypeError, ValueError) as error:
        raise io.FormatError(str(error)) from None
    if config.fitted is None:
        raise io.FormatError(f"{path} records no fit: it is not a fitted detector")
    part = {prefix: {} for prefix in ("flow", "stats")}
    for name, value in tensors.items():
        prefix, _, key = name.partition(".")
        if prefix not in part:
            raise io.FormatError(f"{path} holds an unexpected tensor {name!r}")
        part[prefix][key] = value
    k, terms = config.fitted.num_classes, len(terms_of(config.flow.inputs))
    expected = {"mean": torch.empty(k), "var": torch.empty(k)}
    if version == FORMAT_VERSION:
        expected["scale"] = torch.empty(terms, 2)
    else:  # the log-odds' and the energy's scale: the terms of that format's rules
        expected["ood_scale"] = torch.empty(4)
    stats = check_tensors(expected, part["stats"], f"{path}: statistics")
    if version != FORMAT_VERSION:
        scale = torch.tensor([[0.0, 1.0]]).repeat(terms, 1)
        scale[:2] = stats.pop("ood_scale").view(2, 2)
        stats["scale"] = scale
    spreads = torch.cat([stats["var"], stats["scale"][:, 1]])
    if not (spreads > 0).all():
        raise io.FormatError(
            f"{path}: statistics hold a zero or negative variance or spread; the file is "
            "damaged or was not written by flowenedet"
        )
    return config, part["flow"], Stats(**stats), calibration


def check_tensors(
    expected: Mapping[str, Tensor], found: Mapping[str, Tensor], what: str
) -> dict[str, Tensor]:
    """``found`` if it has exactly the names, shapes and dtypes of ``expected`` and only
    finite floating values; else :class:`flowenedet.io.FormatError` starting with ``what``."""
    if set(found) != set(expected):
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        raise io.FormatError(f"{what}: missing tensors {missing}, unexpected tensors {extra}")
    for name, reference in expected.items():
        value = found[name]
        if value.shape != reference.shape or value.dtype != reference.dtype:
            raise io.FormatError(
                f"{what}: tensor {name!r} is {value.dtype} {tuple(value.shape)}; expected "
                f"{reference.dtype} {tuple(reference.shape)}"
            )
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise io.FormatError(f"{what}: tensor {name!r} holds NaN or infinite values")
    return dict(found)


def check_segmenter(
    config: DetectorConfig, segmenter: nn.Module, path: str | Path, *, weights: bool = True
) -> None:
    """Refuse a segmenter the stored detector does not fit: other classes or feature
    channels at a classifier-conv feature layer, or (``weights=True``) other weights."""
    fitted = config.fitted
    stored = fitted.segmenter_fingerprint
    layer_name = fitted.feature_layer or config.flow.feature_layer
    modules = dict(unwrap(segmenter).named_modules())
    model = type(unwrap(segmenter)).__name__
    if config.flow.variant == "C" and layer_name and layer_name.partition(":")[0] not in modules:
        raise ValueError(
            f"{path} was fitted on another model (fingerprint {stored[:12]}; this "
            f"{model}'s is {segmenter_fingerprint(segmenter)[:12]}): its feature layer "
            f"{layer_name!r} is not a submodule of this {model}. Load it with the model it "
            "was fitted on, or fit a detector for this one."
        )
    if config.flow.variant == "C" and layer_name and layer_name.endswith(":input"):
        layer = modules.get(layer_name.removesuffix(":input"))
        widths = None
        if isinstance(layer, nn.Conv2d):
            widths = layer.out_channels, layer.in_channels
        elif isinstance(layer, nn.Linear):
            widths = layer.out_features, layer.in_features
        if widths is not None and widths != (fitted.num_classes, fitted.feature_channels):
            raise ValueError(
                f"the detector was fitted for {fitted.num_classes} classes and "
                f"{fitted.feature_channels} feature channels, but the segmenter's "
                f"{layer_name} has {widths[0]} and {widths[1]}"
            )
    if weights and not fingerprint_matches(stored, segmenter):
        state = unwrap(segmenter).state_dict().values()
        if any(tensor.dtype == torch.bfloat16 for tensor in state):
            raise ValueError(
                f"{path} cannot be checked against a bfloat16 segmenter: the fingerprint "
                "compares weights at float16 precision, which bfloat16 rounds away. Load "
                "the detector with the model in float32 (or float16) and convert the model "
                "afterwards (FlowEneDet.load(path, model); model.bfloat16()), or pass "
                "check_segmenter=False."
            )
        raise ValueError(
            f"{path} was fitted on a different segmenter (fingerprint {stored[:12]}; this "
            f"{model}'s is {segmenter_fingerprint(segmenter)[:12]}): its weights differ, so "
            "its class statistics and flow would be wrong for this one. Refit the detector, "
            "or pass check_segmenter=False if you know the change is harmless."
        )
