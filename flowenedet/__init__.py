"""flowenedet: per-pixel misclassification and OOD detection for frozen segmenters.

Three lines::

    from flowenedet import FlowEneDet
    det = FlowEneDet(model).fit(train_loader)
    maps = det.score(images)  # maps.idm / .ood / .concurrent: (B, H, W) in [0, 1]; maps.pred
"""

from __future__ import annotations

from . import baselines, metrics
from .detector import DetectorConfig, FlowEneDet, Scores, Stats
from .energy import ClassStats, energy_inputs, flow_inputs
from .io import FormatError
from .labels import IGNORE_INDEX, OOD_INDEX, UNLABELLED_ID
from .metrics import PixelEvaluator

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
    "baselines",
    "energy_inputs",
    "flow_inputs",
    "metrics",
]
