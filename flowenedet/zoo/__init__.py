"""Reference segmenters with shipped weights (no download, no pickle).

``load_reference_segmenter()`` returns the trained :class:`DigitSegmenter` for the embedded
benchmark (:mod:`flowenedet.evaluation.worlds.digits`): images ``(B, 3, H, W)`` in [0, 1] -> logits
``(B, 11, H/4, W/4)``; ``load_reference_segmenter(world="street")`` the stride-8 one for
the street world (:mod:`flowenedet.evaluation.worlds.street`): ``(B, 3, H, W)`` ->
``(B, 8, H/8, W/8)``.
See ``docs/zoo.md`` for their architectures, training and metrics.
"""

from __future__ import annotations

from .segmenter import (
    REFERENCE_ARCHITECTURE,
    STREET_ARCHITECTURE,
    DigitSegmenter,
    build_reference_segmenter,
    load_reference_segmenter,
    reference_card,
)

__all__ = [
    "REFERENCE_ARCHITECTURE",
    "STREET_ARCHITECTURE",
    "DigitSegmenter",
    "build_reference_segmenter",
    "load_reference_segmenter",
    "reference_card",
]
