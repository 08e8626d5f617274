"""Writing a fitted detector as an ONNX or TorchScript file, checked against ``det.score``.

:func:`export_detector` traces :class:`~flowenedet.export.graph.DetectorGraph` (the
segmenter, its hooks, the flow and the post-processing as one module) on example images,
writes the file atomically with the detector's settings, thresholds, segmenter fingerprint
and the flowenedet version in its metadata (:class:`ExportInfo`, read back by
:func:`read_metadata` without loading the model), then runs the file (onnxruntime, or
TorchScript) on the example images, and for a dynamic export at a second batch and size,
and refuses it unless its maps equal ``det.score``'s within :data:`MAP_TOLERANCE`."""

from __future__ import annotations

import contextlib
import importlib.util
import io as _io
import logging
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from .. import __version__
from ..checks import check_size
from ..hooks import frozen, segmenter_device
from ..io import atomic_write
from ..scores import MAPS
from ..scoring import test_time_scales
from .graph import DetectorGraph
from .metadata import EXTRA_FILE, METADATA_KEY, ExportInfo, read_metadata
from .runtime import session

if TYPE_CHECKING:
    from ..detector import FlowEneDet

__all__ = [
    "EXPORTERS",
    "FORMATS",
    "MAP_TOLERANCE",
    "ExportError",
    "ExportInfo",
    "export_detector",
    "read_metadata",
]

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
EXPORTERS = ("trace", "dynamo")
"""The ONNX exporters: ``"trace"``, torch's TorchScript-based one (seconds); ``"dynamo"``,
its ``torch.export``-based one (needs onnxscript; about ten times slower to export)."""
INPUT_NAME = "images"
MAP_TOLERANCE = 1e-4
"""The largest difference of an exported map from ``det.score``'s that an export accepts."""
PRED_TOLERANCE = 1e-4
"""The largest share of pixels whose exported ``pred`` may differ from ``det.score``'s
(ties of the upsampled logits, broken by rounding)."""


class ExportError(RuntimeError):
    """The detector could not be exported, or the file it gave does not score as
    ``det.score`` does; the message names the blocking operator or the difference."""


def export_detector(
    detector: FlowEneDet,
    path: str | Path,
    *,
    format: str = "onnx",
    image_size: Sequence[int],
    maps: Sequence[str] = MAPS,
    dynamic: bool = True,
    scales: Sequence[float] | None = None,
    masks: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    example: Tensor | None = None,
    check: bool = True,
    exporter: str = "trace",
    opset: int | None = None,
) -> Path:
    """Write ``detector`` and its segmenter as one graph (see :meth:`FlowEneDet.export`,
    which calls this); returns the path."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}; got {format!r}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {list(EXPORTERS)}; got {exporter!r}")
    size = check_size(image_size)
    _require_extra(format, check, exporter)
    device = segmenter_device(detector.segmenter)
    if example is None:
        generator = torch.Generator().manual_seed(0)
        example = torch.rand(2 if dynamic else 1, 3, *size, generator=generator).to(device)
    if tuple(example.shape[-2:]) != size or example.dim() != 4:
        raise ValueError(
            f"example must be (B, 3, {size[0]}, {size[1]}); got {tuple(example.shape)}"
        )
    # scored first: that also finds the FED-C layer of a detector fitted from logits
    expected = _expected(detector, example, scales, mean, std) if check else None
    stride = None
    if detector.config.fitted.stride is None or expected is None:
        logits, _ = detector.segment(example[:1])  # finds the layer if check did not
        stride = _stride_of_old_file(detector, scales, size[0] / logits.shape[-2])
    graph = DetectorGraph(
        detector, maps, scales=scales, masks=masks, mean=mean, std=std, stride=stride
    )
    if min(size) < graph.min_image_side():
        raise ValueError(
            f"image_size {size} is below the smallest side this detector's graph holds, "
            f"{graph.min_image_side()} pixels (its padding is traced for larger maps)"
        )
    info = ExportInfo(
        format=format,
        flowenedet_version=__version__,
        config=detector.config.to_json(),
        calibration=None
        if detector.calibration is None
        else {
            "target": detector.calibration.target,
            "thresholds": dict(detector.calibration.thresholds),
        },
        segmenter_fingerprint=detector.config.fitted.segmenter_fingerprint,
        input=INPUT_NAME,
        outputs=graph.output_names,
        maps=list(graph.maps),
        thresholds=dict(graph.thresholds),
        scales=list(graph.scales),
        image_size=list(size),
        dynamic=dynamic,
        min_image_side=graph.min_image_side(),
        mean=None if mean is None else [float(v) for v in mean],
        std=None if std is None else [float(v) for v in std],
        exporter=exporter if format == "onnx" else None,
        opset=None,
    )
    with frozen(graph), _quiet():
        if format == "onnx":
            data, opset_used = _to_onnx(graph, example, info, exporter, opset)
            info = ExportInfo(**{**asdict(info), "opset": opset_used})
            data = _with_onnx_metadata(data, info)
            run = _onnx_runner(data, info)
        else:
            data = _to_torchscript(graph, example, info)
            run = _torchscript_runner(data, info, device)
    if check:
        _compare(run(example), expected, info, f"at {tuple(example.shape)}")
        if dynamic:
            _check_other_size(detector, run, example, info, scales, mean, std)
    path = atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))
    logger.info("exported %s (%s, %.1f MB)", path, format, len(data) / 2**20)
    return path


def _require_extra(format: str, check: bool, exporter: str) -> None:
    """``ImportError`` naming the extra, before any tracing, for a missing module that this
    export needs: onnx (ONNX files), onnxruntime (checking them), onnxscript (dynamo)."""
    needed = []
    if format == "onnx":
        needed = ["onnx", *(["onnxruntime"] if check else [])]
        needed += ["onnxscript"] if exporter == "dynamo" else []
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"{format} export needs the export extra: pip install 'flowenedet[export]' "
            f"(missing module {', '.join(missing)})"
        )


def _stride_of_old_file(detector, scales, measured: float) -> float | None:
    """The stride ``det.score`` measures per call for a detector file older than the fit's
    measurement of it (None for others): fixed in the graph at the traced size's value,
    which test-time scales would each need their own of."""
    if detector.config.fitted.stride is not None:
        return None
    several = len(test_time_scales(detector.config.scoring, scales)) > 1
    if several and detector.config.scoring.postprocess != "logit-pixels":
        raise ExportError(
            "this detector file predates the fit's stride measurement, which post-processing "
            "at several test-time scales needs per scale: export it with scales=(1.0,), or "
            "fit it again"
        )
    return measured


def _expected(detector, example, scales, mean, std):
    """``det.score``'s outputs for the graph's input ``example``."""
    images = example
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(shape)
        std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(shape)
        images = (images - mean_t) / std_t
    return detector.score(images, scales=scales)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Tracing warnings that are expected: size comparisons fixed at trace time (the
    padding modes, checked by ``min_image_side``), the exporters' deprecation notes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*(constant|Constant).*")
        yield


@contextlib.contextmanager
def _native_stdout_silenced() -> Iterator[None]:
    """Nothing printed to file descriptor 1 while in the block: torch's TorchScript-based
    exporter prints its whole graph there from C++ when an operator fails, which the
    one-line :class:`ExportError` replaces."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def _first_line(error: BaseException, limit: int = 300) -> str:
    """``Type: message`` of an error on one line: the line naming an operator if any
    (the exporters' messages run to pages), cut at ``limit`` characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    line = next((text for text in lines if "operator" in text.lower()), None)
    line = line or (lines[0] if lines else "")
    line = line if len(line) <= limit else line[: limit - 3] + "..."
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def _blocked(error: BaseException, what: str) -> ExportError:
    """One line naming what blocks the export, from an exporter's error."""
    return ExportError(f"{what} failed: {_first_line(error)}")


def _to_onnx(graph, example, info, exporter, opset) -> tuple[bytes, int]:
    """The ONNX bytes of ``graph`` traced on ``example``, and the opset used."""
    names = info.outputs
    try:
        if exporter == "dynamo":
            dim = torch.export.Dim.AUTO
            shapes = {"images": {0: dim, 2: dim, 3: dim}} if info.dynamic else None
            program = torch.onnx.export(
                graph,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_shapes=shapes,
                opset_version=opset,
                verbose=False,
            )
            model = program.model_proto
            data = model.SerializeToString()
        else:
            buffer = _io.BytesIO()
            dynamic_axes = None
            if info.dynamic:
                spatial = {0: "batch", 1: "height", 2: "width"}
                dynamic_axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
                dynamic_axes.update({name: spatial for name in names})
            with _native_stdout_silenced():
                torch.onnx.export(
                    graph,
                    (example,),
                    buffer,
                    dynamo=False,
                    input_names=[INPUT_NAME],
                    output_names=names,
                    dynamic_axes=dynamic_axes,
                    opset_version=opset,
                )
            data = buffer.getvalue()
    except Exception as error:  # the exporters raise many types
        raise _blocked(error, f"ONNX export ({exporter})") from error
    return data, _opset(data)


def _opset(data: bytes) -> int:
    import onnx

    model = onnx.load_from_string(data)
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _with_onnx_metadata(data: bytes, info: ExportInfo) -> bytes:
    """``data`` with ``info`` in its ``metadata_props``, checked by ``onnx.checker``."""
    import onnx

    model = onnx.load_from_string(data)
    kept = [entry for entry in model.metadata_props if entry.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=METADATA_KEY, value=info.to_json())
    model.doc_string = (
        f"flowenedet {__version__}: {', '.join(info.outputs)} for images (B, 3, H, W)"
    )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        raise _blocked(error, "onnx.checker") from error
    return model.SerializeToString()


def _to_torchscript(graph, example, info) -> bytes:
    try:
        traced = torch.jit.trace(graph, (example,), strict=False, check_trace=False)
    except Exception as error:  # tracing raises many types
        raise _blocked(error, "TorchScript tracing") from error
    buffer = _io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={EXTRA_FILE: info.to_json()})
    return buffer.getvalue()


Runner = Callable[[Tensor], dict[str, np.ndarray]]


def _onnx_runner(data: bytes, info: ExportInfo) -> Runner:
    onnx_session = session(data, quiet=True)  # its failures become an ExportError

    def run(images: Tensor) -> dict[str, np.ndarray]:
        feed = {INPUT_NAME: images.detach().float().cpu().numpy()}
        return dict(zip(info.outputs, onnx_session.run(info.outputs, feed), strict=True))

    return run


def _torchscript_runner(data: bytes, info: ExportInfo, device: torch.device) -> Runner:
    module = torch.jit.load(_io.BytesIO(data), map_location=device)

    def run(images: Tensor) -> dict[str, np.ndarray]:
        with torch.no_grad():
            outputs = module(images)
        return {name: outputs[name].cpu().numpy() for name in info.outputs}

    return run


def _compare(got: Mapping[str, np.ndarray], expected, info: ExportInfo, where: str) -> None:
    """Refuse outputs that differ from ``det.score``'s ``expected`` :class:`Scores`."""
    for name in info.maps:
        want = getattr(expected, name).float().cpu().numpy()
        diff = float(np.abs(got[name] - want).max()) if want.size else 0.0
        if not diff <= MAP_TOLERANCE:
            raise ExportError(
                f"the exported {name!r} map differs from det.score's by {diff:.3g} {where} "
                f"(tolerance {MAP_TOLERANCE:g})"
            )
        if name in info.thresholds:
            mask = got[f"{name}_mask"]
            off = (mask != (want > info.thresholds[name])) & (
                np.abs(want - info.thresholds[name]) > MAP_TOLERANCE
            )
            if off.any():
                raise ExportError(f"the exported {name}_mask differs {where} at {off.sum()} pixels")
    pred = expected.pred.cpu().numpy()
    share = float((got["pred"] != pred).mean())
    if share > PRED_TOLERANCE:
        raise ExportError(f"the exported pred differs from det.score's {where} at {share:.2%}")


def _check_other_size(detector, run, example, info, scales, mean, std) -> None:
    """Score one image of another size (and aspect): what a dynamic graph promises."""
    h, w = example.shape[-2:]
    side = info.min_image_side
    size = (max(side, math.ceil(3 * h / 4)), max(side, math.ceil(5 * w / 4)))
    generator = torch.Generator().manual_seed(1)
    other = torch.rand(1, 3, *size, generator=generator).to(example.device)
    try:
        expected = _expected(detector, other, scales, mean, std)
    except Exception as error:  # a segmenter that takes one size only: any type
        raise ExportError(
            f"the segmenter itself fails on images of size {size} ({_first_line(error)}): "
            "it takes one size only; export with dynamic=False"
        ) from None
    try:
        got = run(other)
    except Exception as error:  # onnxruntime and TorchScript raise their own types
        raise ExportError(
            f"the exported graph fails on images of size {size} although det.score scores "
            f"them: the segmenter's graph depends on the traced size {tuple(info.image_size)};"
            f" export with dynamic=False (running it: {_first_line(error)})"
        ) from None
    try:
        _compare(got, expected, info, f"at another size, {tuple(other.shape)}")
    except ExportError as error:
        raise ExportError(
            f"{error}: the segmenter's graph depends on the traced size; export with dynamic=False"
        ) from None
