"""Deploying a fitted detector: one ONNX or TorchScript graph from the image to the maps.

``det.export("det.onnx", image_size=(512, 1024))`` (:meth:`FlowEneDet.export`) writes the
frozen segmenter, its hooks, the class statistics, the folded flow, the post-processing
and the resizing as one graph whose outputs are named after what they hold (``pred``,
``idm``, ``ood``, ``concurrent``, ``idm_mask``, ...), checked equal to ``det.score``.
:func:`read_metadata` reads the settings, thresholds, segmenter fingerprint and version
stored in the file; :class:`OnnxDetector` runs an ONNX file with onnxruntime and numpy
alone. See docs/deploy.md.
"""

from __future__ import annotations

from .exporter import (
    EXPORTERS,
    FORMATS,
    MAP_TOLERANCE,
    ExportError,
    ExportInfo,
    export_detector,
    read_metadata,
)
from .graph import DetectorGraph, WholeMapLogOdds
from .runtime import OnnxDetector

__all__ = [
    "EXPORTERS",
    "FORMATS",
    "MAP_TOLERANCE",
    "DetectorGraph",
    "ExportError",
    "ExportInfo",
    "OnnxDetector",
    "WholeMapLogOdds",
    "export_detector",
    "read_metadata",
]
