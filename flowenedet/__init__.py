"""flowenedet: per-pixel misclassification and OOD detection for frozen segmenters.

Three lines::

    from flowenedet import FlowEneDet
    det = FlowEneDet(model).fit(train_loader)
    maps = det.score(images)  # maps.idm / .ood / .concurrent: (B, H, W) in [0, 1]; maps.pred
"""

from __future__ import annotations

import sys

from .detector import DetectorConfig, FlowEneDet, Scores, Stats
from .energy import ClassStats, energy_inputs, flow_inputs
from .evaluation import baselines, metrics
from .evaluation.metrics import PixelEvaluator
from .io import FormatError
from .labels import IGNORE_INDEX, OOD_INDEX, UNLABELLED_ID

# ``flowenedet.metrics`` and ``flowenedet.baselines`` stay importable under their old names
# (``import flowenedet.metrics``, ``from flowenedet.baselines import MSP``): the very module
# objects of :mod:`flowenedet.evaluation`, so monkeypatching one patches the other.
sys.modules[f"{__name__}.metrics"] = metrics
sys.modules[f"{__name__}.baselines"] = baselines

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
