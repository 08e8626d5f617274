"""flowenedet: per-pixel misclassification and OOD detection for frozen segmenters.

Three lines::

    from flowenedet import FlowEneDet
    det = FlowEneDet(model).fit(train_loader)
    maps = det.score(images)  # maps.idm / .ood / .concurrent: (B, H, W) in [0, 1]; maps.pred

The detector is the core (image -> hooks -> energy -> flow -> post-processing -> maps);
measuring it (metrics, baselines, the embedded benchmark) lives in
:mod:`flowenedet.evaluation` and is imported from there (``from flowenedet.evaluation
import baselines, metrics``); ``flowenedet.PixelEvaluator`` loads it on first use.
``flowenedet.metrics`` and ``flowenedet.baselines`` are deprecated spellings.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import DetectorConfig
from .detector import FlowEneDet, Scores, Stats
from .energy import ClassStats, energy_inputs, flow_inputs
from .io import FormatError
from .labels import IGNORE_INDEX, OOD_INDEX, UNLABELLED_ID

__version__ = "0.1.0"

__all__ = [
    "IGNORE_INDEX",
    "OOD_INDEX",
    "UNLABELLED_ID",
    "ClassStats",
    "DetectorConfig",
    "FlowEneDet",
    "FormatError",
    "PixelEvaluator",
    "Scores",
    "Stats",
    "__version__",
    "energy_inputs",
    "flow_inputs",
]

_LAZY = {
    "baselines": ("flowenedet.baselines", None),  # deprecated shims, with a warning
    "metrics": ("flowenedet.metrics", None),
    "PixelEvaluator": ("flowenedet.evaluation.metrics", "PixelEvaluator"),
}


def __getattr__(name: str) -> Any:
    """The evaluation side's names, imported on first use: the core never needs them."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = importlib.import_module(module)
    return value if attribute is None else getattr(value, attribute)
