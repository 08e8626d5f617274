"""Measuring detectors: metrics, baselines, the embedded benchmark runner, reports, plots.

Modules, in the order data flows through them:

- :mod:`~flowenedet.evaluation.metrics`: pixel-pooled AUROC / AP / FPR95 / open-mIoU
  (also importable as ``flowenedet.metrics``);
- :mod:`~flowenedet.evaluation.baselines`: MSP, MaxLogit, Energy, Entropy, SML, MC
  dropout (also importable as ``flowenedet.baselines``);
- :mod:`~flowenedet.evaluation.components`, :mod:`~flowenedet.evaluation.smiyc`:
  SegmentMeIfYouCan's component metrics and binned pixel curve;
- :mod:`~flowenedet.evaluation.protocols`: the leaderboards' protocols
  (``flowenedet evaluate --protocol``);
- :mod:`~flowenedet.evaluation.config`: :class:`BenchConfig` and its presets;
- :mod:`~flowenedet.evaluation.splits`: generated scenes with the segmenter's outputs;
- :mod:`~flowenedet.evaluation.runner`: ``run_demo`` / ``run_bench`` (``flowenedet demo`` /
  ``bench``);
- :mod:`~flowenedet.evaluation.report`: Markdown tables and the quality bar;
- :mod:`~flowenedet.evaluation.plots`: scene panels and ROC / PR curves.

Only ``metrics`` and ``baselines`` are imported with the package; ``components``,
``smiyc`` and ``protocols`` need no extra; the runner and the rest need the ``bench``
extra and load on first use.
"""

from __future__ import annotations

from . import baselines, metrics

__all__ = ["baselines", "metrics"]
