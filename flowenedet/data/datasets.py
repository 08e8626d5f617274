"""Loaders for real benchmarks in their official directory layouts (users bring the data).

Every dataset yields ``(image, label)``: ``image`` float32 ``(3, H, W)`` in [0, 1] and
``label`` int64 ``(H, W)`` in the convention of :mod:`flowenedet.labels` (classes
``0..K-1``, ``UNLABELLED_ID`` for unannotated in-distribution pixels, ``OOD_INDEX`` for
anomalies, ``IGNORE_INDEX`` for void). Layouts and label mappings: ``docs/datasets.md``.
Nothing is ever downloaded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from flowenedet.labels import IGNORE_INDEX, OOD_INDEX, UNLABELLED_ID

from .files import (
    IMAGE_EXTENSIONS,
    FolderDataset,
    Item,
    SegmentationFiles,
    Size,
    Transform,
    label_pair,
    natural_key,
    require_dir,
    sorted_items,
    stem_pairs,
)

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
# Cityscapes labelIds of the 19 evaluated classes, in trainId order (cityscapesScripts labels.py).
_CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
_TRAIN_ID_HINT = (
    "; *_gtFine_labelTrainIds.png files are made by cityscapesScripts' createTrainIdLabelImgs "
    "(pip install cityscapesscripts; CITYSCAPES_DATASET=<root> csCreateTrainIdLabelImgs), "
    "or pass label_type='labelIds' to convert the released *_gtFine_labelIds.png on the fly"
)
STREET_HAZARDS_CLASSES = (
    "unlabeled", "building", "fence", "other", "pedestrian", "pole", "road line", "road",
    "sidewalk", "vegetation", "car", "wall", "traffic sign",
)  # fmt: skip


def _lut(mapping: dict[int, int], default: int = IGNORE_INDEX) -> np.ndarray:
    """A 256-entry lookup table for 8-bit label files; values not in ``mapping`` -> default."""
    table = np.full(256, default, dtype=np.int64)
    for raw, ours in mapping.items():
        table[raw] = ours
    return table


_ANOMALY_LUT = _lut({0: UNLABELLED_ID, 1: OOD_INDEX})  # Fishyscapes, SegmentMeIfYouCan


def _cityscapes_style(
    root: Path, split: str, label_dir: str, label_suffix: str, dataset: str, hint: str = ""
) -> list[Item]:
    """``leftImg8bit/<split>/<folder>/<id>_leftImg8bit.png`` with labels in
    ``<label_dir>/<split>/<folder>/<id><label_suffix>`` (Cityscapes, Lost & Found)."""
    image_dir = require_dir(
        root / "leftImg8bit" / split, "one folder per city/scene with *_leftImg8bit.png", dataset
    )
    label_root = require_dir(
        root / label_dir / split, f"one folder per city/scene with *{label_suffix}", dataset
    )
    items = []
    for image in sorted(image_dir.glob("*/*_leftImg8bit.png")):
        frame = image.name[: -len("_leftImg8bit.png")]
        label = label_root / image.parent.name / f"{frame}{label_suffix}"
        items.append(label_pair(dataset, frame, image, label, hint))
    return sorted_items(items)


class Cityscapes(SegmentationFiles):
    """Cityscapes fine annotations: 19 classes (trainIds), void 255 -> ``IGNORE_INDEX``.

    ``label_type="labelTrainIds"`` (default) reads ``*_gtFine_labelTrainIds.png``, written by
    cityscapesScripts' ``createTrainIdLabelImgs``; ``"labelIds"`` reads the released
    ``*_gtFine_labelIds.png`` and converts labelIds to trainIds itself.
    """

    num_classes = 19
    classes = CITYSCAPES_CLASSES
    splits = ("train", "val", "test")
    default_split = "val"

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        *,
        label_type: str = "labelTrainIds",
        size: Size = None,
        transform: Transform | None = None,
    ) -> None:
        if label_type == "labelTrainIds":
            self._label_lut = _lut({i: i for i in range(19)})
        elif label_type == "labelIds":
            self._label_lut = _lut({raw: i for i, raw in enumerate(_CITYSCAPES_LABEL_IDS)})
        else:
            raise ValueError(
                f"label_type must be 'labelTrainIds' or 'labelIds', got {label_type!r}"
            )
        self.label_type = label_type
        super().__init__(root, split, size=size, transform=transform)

    def _discover(self) -> list[Item]:
        hint = _TRAIN_ID_HINT if self.label_type == "labelTrainIds" else ""
        suffix = f"_gtFine_{self.label_type}.png"
        return _cityscapes_style(self.root, self.split, "gtFine", suffix, "Cityscapes", hint)


class LostAndFound(SegmentationFiles):
    """Lost & Found (``gtCoarse_labelIds``): 0 unlabelled -> ``IGNORE_INDEX``, 1 free-space
    road -> ``UNLABELLED_ID``, 2..254 obstacles -> ``OOD_INDEX``, 255 -> ``IGNORE_INDEX``."""

    splits = ("train", "test")
    default_split = "test"
    _label_lut = _lut({1: UNLABELLED_ID, **{v: OOD_INDEX for v in range(2, 255)}})

    def _discover(self) -> list[Item]:
        suffix = "_gtCoarse_labelIds.png"
        return _cityscapes_style(self.root, self.split, "gtCoarse", suffix, "LostAndFound")


class StreetHazards(SegmentationFiles):
    """StreetHazards: PNG values are 1-based; 0 -> ``IGNORE_INDEX``, 1..13 -> classes 0..12
    (class 0 is "unlabeled", trained on as in the official code), 14 and up (anomaly
    class 13 and above) -> ``OOD_INDEX``."""

    num_classes = 13
    classes = STREET_HAZARDS_CLASSES
    splits = ("train", "validation", "test")
    default_split = "test"
    _label_lut = _lut(
        {**{v: v - 1 for v in range(1, 14)}, **{v: OOD_INDEX for v in range(14, 256)}}
    )
    _folders: ClassVar[dict[str, tuple[str, str]]] = {
        "train": ("train", "training"),
        "validation": ("train", "validation"),
        "test": ("test", "test"),
    }

    def _discover(self) -> list[Item]:
        top, sub = self._folders[self.split]
        what = "town folders (t1-3, t4, t5, ...) of *.png"
        image_dir = require_dir(self.root / top / "images" / sub, what, "StreetHazards")
        label_dir = require_dir(self.root / top / "annotations" / sub, what, "StreetHazards")
        images = sorted(image_dir.glob("t*/*.png"))
        names = [p.relative_to(image_dir).with_suffix("").as_posix() for p in images]
        return sorted_items(
            [
                label_pair("StreetHazards", n, p, label_dir / p.relative_to(image_dir))
                for n, p in zip(names, images, strict=True)
            ]
        )


class _SegmentMeIfYouCan(SegmentationFiles):
    """SegmentMeIfYouCan track: ``images/<id>.<ext>`` and ``labels_masks/<id>_labels_semantic.png``
    (0 -> ``UNLABELLED_ID``, 1 -> ``OOD_INDEX``, 255 -> ``IGNORE_INDEX``). Split
    ``"validation"``: the images that have a label file; ``"test"``: those that have none
    (labels hidden on the benchmark server), labelled all ``IGNORE_INDEX``."""

    splits = ("validation", "test")
    default_split = "validation"
    _label_lut = _ANOMALY_LUT
    _suffix = "_labels_semantic.png"

    def _discover(self) -> list[Item]:
        name = type(self).__name__
        image_dir = require_dir(self.root / "images", "the *.jpg / *.webp images", name)
        label_dir = self.root / "labels_masks"
        if self.split == "validation":
            require_dir(label_dir, f"the *{self._suffix} label files", name)
            items = []
            for label in sorted(label_dir.glob(f"*{self._suffix}")):
                frame = label.name[: -len(self._suffix)]
                found = (image_dir / f"{frame}{ext}" for ext in IMAGE_EXTENSIONS)
                image = next((path for path in found if path.is_file()), None)
                if image is None:
                    wanted = f"{image_dir / frame}.(jpg|webp|png)"
                    raise FileNotFoundError(f"{name}: image {wanted} for label {label} not found")
                items.append((frame, image, label))
        else:
            items = [
                (image.stem, image, None)
                for image in sorted(image_dir.iterdir())
                if image.suffix.lower() in IMAGE_EXTENSIONS
                and not (label_dir / f"{image.stem}{self._suffix}").is_file()
            ]
        return sorted_items(items)


class RoadAnomaly21(_SegmentMeIfYouCan):
    """SegmentMeIfYouCan RoadAnomaly21 (unzipped ``dataset_AnomalyTrack``, ``*.jpg``)."""


class RoadObstacle21(_SegmentMeIfYouCan):
    """SegmentMeIfYouCan RoadObstacle21 (unzipped ``dataset_ObstacleTrack``, ``*.webp``)."""


class _Fishyscapes(SegmentationFiles):
    """Fishyscapes validation set; masks 0 -> ``UNLABELLED_ID``, 1 -> ``OOD_INDEX``,
    255 -> ``IGNORE_INDEX``. Two layouts are recognised under ``root``:

    * converted: ``images/<id>.<ext>`` with ``labels_masks/<id>.png``;
    * official release: the unzipped masks ``<NNNN>_<base id>_labels.png`` (and for Static the
      ``<NNNN>_<base id>_rgb.npz`` overlays); the base images are read from ``image_root``
      (default ``root``) in their own official layout.
    """

    splits = ("validation",)
    default_split = "validation"
    _label_lut = _ANOMALY_LUT
    _base_splits: tuple[str, ...] = ()
    _base_name = ""

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        *,
        image_root: str | Path | None = None,
        size: Size = None,
        transform: Transform | None = None,
    ) -> None:
        self.image_root = Path(root if image_root is None else image_root).expanduser()
        self.overlays: list[Path | None] = []
        super().__init__(root, split, size=size, transform=transform)

    def _discover(self) -> list[Item]:
        name = type(self).__name__
        if (self.root / "labels_masks").is_dir():
            image_dir = require_dir(self.root / "images", "images matching labels_masks/", name)
            items = stem_pairs(image_dir, self.root / "labels_masks", ".png", name)
            self.overlays = [None] * len(items)
            return items
        masks = sorted(self.root.glob("*_labels.png"), key=lambda p: natural_key(p.name))
        if not masks:
            raise FileNotFoundError(
                f"{name}: {self.root} holds neither images/ + labels_masks/ (converted layout) "
                "nor *_labels.png masks (official release); see docs/datasets.md"
            )
        items, self.overlays = [], []
        for mask in masks:
            match = re.fullmatch(r"(\d+)_(.+)_labels\.png", mask.name)
            if match is None:
                raise ValueError(f"{name}: mask {mask} is not named <NNNN>_<frame id>_labels.png")
            frame = match.group(2)
            folder = re.sub(r"_\d{6}_\d{6}$", "", frame)
            image = self._base_image(frame, folder)
            items.append((f"{match.group(1)}_{frame}", image, mask))
            self.overlays.append(self._overlay(mask, match.group(1), frame))
        return items

    def _base_image(self, frame: str, folder: str) -> Path:
        base = require_dir(
            self.image_root / "leftImg8bit",
            f"the {self._base_name} images (pass image_root=<{self._base_name} root>)",
            type(self).__name__,
        )
        for split in self._base_splits:
            image = base / split / folder / f"{frame}_leftImg8bit.png"
            if image.is_file():
                return image
        wanted = base / "|".join(self._base_splits) / folder / f"{frame}_leftImg8bit.png"
        raise FileNotFoundError(f"{type(self).__name__}: base image {wanted} not found")

    def _overlay(self, mask: Path, number: str, frame: str) -> Path | None:
        return None


class FishyscapesLostAndFound(_Fishyscapes):
    """Fishyscapes Lost & Found validation (100 frames of Lost & Found ``leftImg8bit/``)."""

    _base_splits = ("train", "test")
    _base_name = "Lost & Found"


class FishyscapesStatic(_Fishyscapes):
    """Fishyscapes Static validation (30 frames: Cityscapes ``leftImg8bit/val`` image plus the
    released ``*_rgb.npz`` overlay, clipped to [0, 255])."""

    _base_splits = ("val",)
    _base_name = "Cityscapes"

    def _overlay(self, mask: Path, number: str, frame: str) -> Path | None:
        overlay = mask.with_name(f"{number}_{frame}_rgb.npz")
        if not overlay.is_file():
            raise FileNotFoundError(
                f"FishyscapesStatic: overlay {overlay} for mask {mask} not found"
            )
        return overlay

    def _read_image(self, index: int) -> np.ndarray:
        image = super()._read_image(index)
        overlay_path = self.overlays[index]
        if overlay_path is None:
            return image
        with np.load(overlay_path, allow_pickle=False) as data:
            overlay = data["rgb"].astype(np.int32)
        if overlay.shape != image.shape:
            raise ValueError(
                f"overlay {overlay_path} has shape {overlay.shape} but its image has {image.shape}"
            )
        return np.clip(image.astype(np.int32) + overlay, 0, 255).astype(np.uint8)


DATASETS: dict[str, type[SegmentationFiles]] = {
    "cityscapes": Cityscapes,
    "fishyscapes_laf": FishyscapesLostAndFound,
    "fishyscapes_static": FishyscapesStatic,
    "road_anomaly21": RoadAnomaly21,
    "road_obstacle21": RoadObstacle21,
    "lost_and_found": LostAndFound,
    "street_hazards": StreetHazards,
    "folder": FolderDataset,
}


def load_dataset(
    name: str, root: str | Path, split: str | None = None, **kw: Any
) -> SegmentationFiles:
    """Build the dataset registered as ``name`` (see ``DATASETS``); ``kw`` go to its class."""
    key = name.strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[key](root, split, **kw)
