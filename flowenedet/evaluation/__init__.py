"""Measuring detectors: metrics, baselines, the embedded benchmark runner, reports, plots.

Modules, in the order data flows through them:

- :mod:`~flowenedet.evaluation.metrics`: pixel-pooled AUROC / AP / FPR95 / open-mIoU
  (``flowenedet.metrics`` is its deprecated spelling);
- :mod:`~flowenedet.evaluation.baselines`: MSP, MaxLogit, Energy, Entropy, SML, MC
  dropout (``flowenedet.baselines`` is its deprecated spelling);
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

Import the modules you need (``from flowenedet.evaluation import baselines, metrics``);
the runner and the worlds need the ``bench`` extra.
"""

from __future__ import annotations
