"""Reference segmenters with shipped weights (no download, no pickle).

``load_reference_segmenter()`` returns the trained :class:`DigitSegmenter` for the embedded
benchmark (:mod:`flowenedet.data.embedded`): images ``(B, 3, H, W)`` in [0, 1] -> logits
``(B, 11, H/4, W/4)``. See ``docs/zoo.md`` for its architecture, training and metrics.
"""

from __future__ import annotations

from .segmenter import (
    REFERENCE_ARCHITECTURE,
    DigitSegmenter,
    build_reference_segmenter,
    load_reference_segmenter,
    reference_card,
)

__all__ = [
    "REFERENCE_ARCHITECTURE",
    "DigitSegmenter",
    "build_reference_segmenter",
    "load_reference_segmenter",
    "reference_card",
]
