"""Running an exported ONNX detector with onnxruntime and numpy: no torch on this path.

``OnnxDetector("det.onnx")(images)`` gives ``{"pred": (B, H, W) int64, "ood": (B, H, W)
float32, ..., "ood_mask": (B, H, W) bool}`` for ``images`` ``(B, 3, H, W)`` float32, the
outputs the file was exported with (:attr:`OnnxDetector.outputs`). This module imports
numpy, onnxruntime and :mod:`flowenedet.export.metadata` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .metadata import ExportInfo, read_metadata

__all__ = ["OnnxDetector", "rgb_batch", "session"]


def session(
    source: str | bytes,
    providers: Sequence[str] | None = None,
    threads: int = 0,
    quiet: bool = False,
) -> Any:
    """An onnxruntime ``InferenceSession`` of an ONNX file or its bytes (CPU provider
    unless ``providers`` says otherwise; ``threads`` intra-op threads, 0: onnxruntime's
    default). ``quiet``: onnxruntime logs nothing, not even the errors it raises."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "running an ONNX detector needs onnxruntime: pip install 'flowenedet[export]'"
        ) from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4 if quiet else 3
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(
        source, options, providers=list(providers or ["CPUExecutionProvider"])
    )


def rgb_batch(pictures: Sequence[np.ndarray]) -> np.ndarray:
    """Images ``(B, 3, H, W)`` float32 in [0, 1] from RGB ``uint8`` pictures ``(H, W, 3)``
    of one size (what ``flowenedet score`` reads from files)."""
    stacked = np.stack([np.asarray(p) for p in pictures])
    return np.ascontiguousarray(stacked.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


class OnnxDetector:
    """An exported ONNX detector (:meth:`flowenedet.FlowEneDet.export`) in onnxruntime.

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers (default the CPU's).
        threads: intra-op threads (0: onnxruntime's default, all cores).

    Attributes: ``info`` (the file's :class:`~flowenedet.export.metadata.ExportInfo`:
    settings, thresholds, fingerprint, version), ``outputs`` (names, in order),
    ``thresholds`` (of the masks in the graph).
    """

    def __init__(
        self, path: str | Path, *, providers: Sequence[str] | None = None, threads: int = 0
    ) -> None:
        self.path = Path(path)
        self.info: ExportInfo = read_metadata(self.path)
        if self.info.format != "onnx":
            raise ValueError(f"{self.path} is a {self.info.format} export, not ONNX")
        self.session = session(str(self.path), providers, threads)
        self.outputs = list(self.info.outputs)
        self.thresholds = dict(self.info.thresholds)

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The outputs ``{name: (B, H, W)}`` for ``images`` ``(B, 3, H, W)`` (float32; as
        ``det.score`` takes them, or RGB in [0, 1] when the graph normalises,
        ``info.mean``). Raises ``ValueError`` for another shape, or a size the graph does
        not hold (smaller than ``info.min_image_side``, or another size than the traced
        one for a static export)."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W); got {images.shape}")
        size = list(images.shape[-2:])
        if min(size) < self.info.min_image_side:
            raise ValueError(
                f"images of size {size[0]}x{size[1]} are smaller than this graph holds "
                f"(sides of at least {self.info.min_image_side} pixels)"
            )
        if not self.info.dynamic and size != list(self.info.image_size):
            h, w = self.info.image_size
            raise ValueError(f"this export takes images of {h}x{w} only; got {size[0]}x{size[1]}")
        values = self.session.run(self.outputs, {self.info.input: images})
        return dict(zip(self.outputs, values, strict=True))
