"""What a user loads: the public benchmarks' datasets in their official layouts (users
bring the files), folders of images, and fit-time augmentation.

The embedded benchmark's generated worlds live with the evaluation:
:mod:`flowenedet.evaluation.worlds`.
"""

from __future__ import annotations

from .augment import AugmentDraw, FitAugment
from .datasets import DATASETS, FolderDataset, SegmentationFiles, load_dataset

__all__ = [
    "DATASETS",
    "AugmentDraw",
    "FitAugment",
    "FolderDataset",
    "SegmentationFiles",
    "load_dataset",
]
