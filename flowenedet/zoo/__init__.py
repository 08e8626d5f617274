"""Reference segmenters with shipped weights (no download, no pickle).

``load_reference_segmenter()`` returns the trained :class:`DigitSegmenter` for the embedded
benchmark (:mod:`flowenedet.evaluation.worlds.digits`): images ``(B, 3, H, W)`` in [0, 1] -> logits
``(B, 11, H/4, W/4)``; ``load_reference_segmenter(world="street")`` the stride-4 one for
the street world (:mod:`flowenedet.evaluation.worlds.street`): ``(B, 3, H, W)`` ->
``(B, 8, H/4, W/4)``; ``load_reference_segmenter(name="street-s8")`` its stride-8
secondary; ``load_reference_segmenter(world="aerial")`` the SegFormer-style
:class:`MixSegmenter` of the aerial world (:mod:`flowenedet.evaluation.worlds.aerial`):
``(B, 3, H, W)`` -> ``(B, 5, H/4, W/4)``. :data:`SEGMENTERS` lists every shipped
segmenter, :data:`REFERENCES` the one each world is benchmarked with. See ``docs/zoo.md``
for their architectures, training and metrics.
"""

from __future__ import annotations

from .mix import MixSegmenter
from .segmenter import (
    AERIAL_ARCHITECTURE,
    REFERENCE_ARCHITECTURE,
    REFERENCES,
    SEGMENTERS,
    STREET_ARCHITECTURE,
    STREET_S8_ARCHITECTURE,
    DigitSegmenter,
    ZooEntry,
    build_reference_segmenter,
    load_reference_segmenter,
    reference_card,
    reference_name,
)

__all__ = [
    "AERIAL_ARCHITECTURE",
    "REFERENCES",
    "REFERENCE_ARCHITECTURE",
    "SEGMENTERS",
    "STREET_ARCHITECTURE",
    "STREET_S8_ARCHITECTURE",
    "DigitSegmenter",
    "MixSegmenter",
    "ZooEntry",
    "build_reference_segmenter",
    "load_reference_segmenter",
    "reference_card",
    "reference_name",
]
