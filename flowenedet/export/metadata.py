"""What an exported file says about itself: :class:`ExportInfo`, read by
:func:`read_metadata` without loading the graph.

ONNX files hold it as JSON in the ``metadata_props`` entry ``"flowenedet"``; TorchScript
files (zip archives) as the extra file ``flowenedet.json``. This module needs neither
torch nor onnx (onnxruntime reads an ONNX file's metadata when onnx is not installed), so
a deployment can read it beside :mod:`flowenedet.export.runtime`.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["EXTRA_FILE", "KIND", "METADATA_KEY", "VERSION", "ExportInfo", "read_metadata"]

KIND = "flowenedet-export"
VERSION = 1
METADATA_KEY = "flowenedet"  # the ONNX metadata_props key
EXTRA_FILE = f"{METADATA_KEY}.json"  # the TorchScript extra file


@dataclass(frozen=True)
class ExportInfo:
    """What an exported file's metadata holds.

    ``format`` (``"onnx"`` / ``"torchscript"``); ``flowenedet_version``, the version that
    wrote it; ``config``, the detector's settings as
    :meth:`~flowenedet.config.DetectorConfig.to_json` gives them (flow settings, scoring
    options, what the fit measured); ``calibration``, ``{"target", "thresholds"}`` of the
    detector or None; ``segmenter_fingerprint``
    (:func:`flowenedet.storage.segmenter_fingerprint` of the segmenter in the graph);
    ``input``, the input's name; ``outputs``, the outputs' names in order; ``maps``;
    ``thresholds``, those of the masks in the graph (``score > t``); ``scales``, the
    test-time scales in the graph; ``image_size``, the size it was traced and checked at;
    ``dynamic``, whether batch, height and width are free; ``min_image_side``, the
    smallest image side the graph holds; ``mean`` / ``std``, the input normalisation
    inside the graph (None: the input is what ``det.score`` takes); ``exporter`` and
    ``opset`` (ONNX); ``kind`` and ``version`` of this record.
    """

    format: str
    flowenedet_version: str
    config: dict[str, Any]
    calibration: dict[str, Any] | None
    segmenter_fingerprint: str
    input: str
    outputs: list[str]
    maps: list[str]
    thresholds: dict[str, float]
    scales: list[float]
    image_size: list[int]
    dynamic: bool
    min_image_side: int
    mean: list[float] | None = None
    std: list[float] | None = None
    exporter: str | None = None
    opset: int | None = None
    kind: str = KIND
    version: int = VERSION

    def detector_config(self) -> Any:
        """The settings as a :class:`~flowenedet.config.DetectorConfig` (imports torch)."""
        from ..config import DetectorConfig

        return DetectorConfig.from_json(self.config, "the exported file's metadata")

    def to_json(self) -> str:
        """The record as the JSON stored in the file."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> ExportInfo:
        """The record stored by :meth:`to_json`; ``ValueError`` naming ``source`` for
        anything else."""
        try:
            values = json.loads(text)
            if not isinstance(values, dict) or values.get("kind") != KIND:
                raise ValueError("no flowenedet export record")
            if values.get("version") != VERSION:
                raise ValueError(f"record version {values.get('version')!r}; this reads {VERSION}")
            return cls(**values)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{source}: not a flowenedet export ({error})") from None


def read_metadata(path: str | Path) -> ExportInfo:
    """The :class:`ExportInfo` of an exported ONNX or TorchScript file, without loading its
    graph. Raises ``FileNotFoundError``, or ``ValueError`` naming the file when it holds no
    flowenedet metadata."""
    path = Path(path)
    with open(path, "rb") as handle:
        magic = handle.read(2)
    if magic == b"PK":  # TorchScript: a zip archive with extra files
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{EXTRA_FILE}")]
            text = archive.read(names[0]).decode() if names else ""
    else:
        text = onnx_metadata(path).get(METADATA_KEY, "")
    return ExportInfo.from_json(text, str(path))


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """An ONNX file's ``metadata_props`` (with the onnx package, else onnxruntime)."""
    try:
        import onnx
    except ImportError:
        from .runtime import session

        return dict(session(str(path)).get_modelmeta().custom_metadata_map)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's decode errors have several types
        raise ValueError(f"{path}: neither an ONNX nor a TorchScript file ({error})") from None
    return {entry.key: entry.value for entry in model.metadata_props}
