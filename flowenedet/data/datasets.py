"""Loaders for real benchmarks in their official directory layouts (users bring the data).

Every dataset yields ``(image, label)``: ``image`` float32 ``(3, H, W)`` in [0, 1] and
``label`` int64 ``(H, W)`` in the convention of :mod:`flowenedet.labels` (classes
``0..K-1``, ``UNLABELLED_ID`` for unannotated in-distribution pixels, ``OOD_INDEX`` for
anomalies, ``IGNORE_INDEX`` for void). Layouts and label mappings: ``docs/datasets.md``.
Nothing is ever downloaded.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from flowenedet.labels import IGNORE_INDEX, OOD_INDEX, UNLABELLED_ID

log = logging.getLogger(__name__)

Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Size = int | tuple[int, int] | None
Item = tuple[str, Path, Path | None]  # (name, image file, label file or None)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

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


def _natural_key(text: str) -> list[int | str]:
    """Sort key that orders ``t1/2.png`` before ``t1/10.png`` (deterministic, human order)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _require_dir(path: Path, what: str, dataset: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{dataset}: folder {path} not found; expected {what} there")
    return path


def _pair(dataset: str, name: str, image: Path, label: Path, hint: str = "") -> Item:
    if not label.is_file():
        raise FileNotFoundError(f"{dataset}: label file {label} for image {image} not found{hint}")
    return name, image, label


def _sorted(items: list[Item]) -> list[Item]:
    return sorted(items, key=lambda item: _natural_key(item[0]))


def _stem_pairs(
    image_dir: Path, label_dir: Path | None, suffix: str, dataset: str, recursive: bool = False
) -> list[Item]:
    """Images under ``image_dir`` with labels ``label_dir/<relative folder>/<stem><suffix>``."""
    beside = label_dir is not None and label_dir.resolve() == image_dir.resolve()
    if beside and suffix.startswith("."):
        raise ValueError(
            f"label_suffix must extend the stem (e.g. '_mask.png') when labels share the "
            f"image folder {image_dir}, got {suffix!r}"
        )
    items = []
    for image in sorted(image_dir.glob("**/*" if recursive else "*")):
        if not image.is_file() or image.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if beside and image.name.endswith(suffix):
            continue  # a label file stored next to its image
        rel = image.relative_to(image_dir).with_suffix("")
        if label_dir is None:
            items.append((rel.as_posix(), image, None))
        else:
            label = label_dir / rel.parent / f"{rel.name}{suffix}"
            items.append(_pair(dataset, rel.as_posix(), image, label))
    return _sorted(items)


class SegmentationFiles(Dataset):
    """Base class: a sorted list of image files with their label files.

    Attributes: ``files`` (image paths), ``label_files`` (label paths, ``None`` where the
    split has no labels: those items are labelled all ``IGNORE_INDEX``), ``names`` (frame
    ids), ``num_classes`` (``None`` for anomaly-only datasets) and ``split``.

    Args:
        root: dataset root folder (official layout, see ``docs/datasets.md``).
        split: one of ``splits``; ``None`` takes ``default_split``.
        size: resize to ``(H, W)``, or an int for the shorter side (aspect kept); images
            bilinear, labels nearest. ``None`` keeps the file size.
        transform: called as ``transform(image, label)`` on the tensors, returns the pair.
    """

    num_classes: int | None = None
    splits: tuple[str, ...] = ()
    default_split: str | None = None
    _label_lut: np.ndarray | None = None  # raw 8-bit label value -> our convention

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        *,
        size: Size = None,
        transform: Transform | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.split = self.default_split if split is None else split
        if self.splits and self.split not in self.splits:
            raise ValueError(
                f"split must be one of {list(self.splits)} for {type(self).__name__}, "
                f"got {self.split!r}"
            )
        sides = [size] if isinstance(size, int) else [1, 1] if size is None else list(size)
        if len(sides) != (1 if isinstance(size, int) else 2) or min(sides) <= 0:
            raise ValueError(f"size must be an int or a pair (H, W) of positive ints, got {size}")
        self.size = size
        self.transform = transform
        _require_dir(self.root, "the dataset root", type(self).__name__)
        items = self._discover()
        if not items:
            raise FileNotFoundError(
                f"{type(self).__name__}: no images found for split {self.split!r} under "
                f"{self.root}; see docs/datasets.md for the expected layout"
            )
        self.names: list[str] = [name for name, _, _ in items]
        self.files: list[Path] = [image for _, image, _ in items]
        self.label_files: list[Path | None] = [label for _, _, label in items]
        log.info("%s (%s): %d images in %s", type(self).__name__, self.split, len(self), self.root)

    def _discover(self) -> list[Item]:
        """Return sorted ``(name, image_path, label_path | None)`` triples."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.files)

    def _read_image(self, index: int) -> np.ndarray:
        """The image as uint8 ``(H, W, 3)``."""
        with Image.open(self.files[index]) as img:
            return np.asarray(img.convert("RGB"))

    def _read_label(self, path: Path) -> np.ndarray:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
                raise ValueError(
                    f"label file {path} has image mode {img.mode} but a single-channel label map "
                    "(mode L, P or I) was expected; colour visualisations cannot be used as labels"
                )
            return np.asarray(img).astype(np.int64)

    def _map_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Map the raw label values of one file to our convention, ``(H, W)`` int64."""
        if self._label_lut is None:
            return raw
        if raw.min() < 0 or raw.max() >= len(self._label_lut):
            raise ValueError(
                f"label file {path} holds values in [{raw.min()}, {raw.max()}] but "
                f"{type(self).__name__} expects 8-bit labels in [0, 255]"
            )
        return self._label_lut[raw]

    def _output_size(self, height: int, width: int) -> tuple[int, int] | None:
        if self.size is None:
            return None
        if isinstance(self.size, int):
            scale = self.size / min(height, width)
            return max(1, round(height * scale)), max(1, round(width * scale))
        return int(self.size[0]), int(self.size[1])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``image`` float32 ``(3, H, W)`` in [0, 1] and ``label`` int64 ``(H, W)``."""
        image = self._read_image(index)
        height, width = image.shape[:2]
        label_path = self.label_files[index]
        if label_path is None:
            raw = np.full((height, width), IGNORE_INDEX, dtype=np.int64)
        else:
            raw = self._read_label(label_path)
            if raw.shape != (height, width):
                raise ValueError(
                    f"label file {label_path} is {raw.shape[1]}x{raw.shape[0]} (WxH) but image "
                    f"{self.files[index]} is {width}x{height}"
                )
        out = self._output_size(height, width)
        if out is not None and out != (height, width):
            image = np.asarray(Image.fromarray(image).resize(out[::-1], Image.BILINEAR))
            raw_img = Image.fromarray(raw.astype(np.int32))
            raw = np.asarray(raw_img.resize(out[::-1], Image.NEAREST)).astype(np.int64)
        label = raw if label_path is None else self._map_labels(raw, label_path)
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0
        label_t = torch.from_numpy(np.ascontiguousarray(label)).long()
        if self.transform is not None:
            image_t, label_t = self.transform(image_t, label_t)
        return image_t, label_t

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"
        )


def _cityscapes_style(
    root: Path, split: str, label_dir: str, label_suffix: str, dataset: str, hint: str = ""
) -> list[Item]:
    """``leftImg8bit/<split>/<folder>/<id>_leftImg8bit.png`` with labels in
    ``<label_dir>/<split>/<folder>/<id><label_suffix>`` (Cityscapes, Lost & Found)."""
    image_dir = _require_dir(
        root / "leftImg8bit" / split, "one folder per city/scene with *_leftImg8bit.png", dataset
    )
    label_root = _require_dir(
        root / label_dir / split, f"one folder per city/scene with *{label_suffix}", dataset
    )
    items = []
    for image in sorted(image_dir.glob("*/*_leftImg8bit.png")):
        frame = image.name[: -len("_leftImg8bit.png")]
        label = label_root / image.parent.name / f"{frame}{label_suffix}"
        items.append(_pair(dataset, frame, image, label, hint))
    return _sorted(items)


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
        image_dir = _require_dir(self.root / top / "images" / sub, what, "StreetHazards")
        label_dir = _require_dir(self.root / top / "annotations" / sub, what, "StreetHazards")
        images = sorted(image_dir.glob("t*/*.png"))
        names = [p.relative_to(image_dir).with_suffix("").as_posix() for p in images]
        return _sorted(
            [
                _pair("StreetHazards", n, p, label_dir / p.relative_to(image_dir))
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
        image_dir = _require_dir(self.root / "images", "the *.jpg / *.webp images", name)
        label_dir = self.root / "labels_masks"
        if self.split == "validation":
            _require_dir(label_dir, f"the *{self._suffix} label files", name)
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
        return _sorted(items)


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
            image_dir = _require_dir(self.root / "images", "images matching labels_masks/", name)
            items = _stem_pairs(image_dir, self.root / "labels_masks", ".png", name)
            self.overlays = [None] * len(items)
            return items
        masks = sorted(self.root.glob("*_labels.png"), key=lambda p: _natural_key(p.name))
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
        base = _require_dir(
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


class FolderDataset(SegmentationFiles):
    """Any folder of images, with optional label maps matched by relative path and stem.

    ``labels=None``: every pixel is ``IGNORE_INDEX`` (score-only use). Otherwise the label
    of ``<root>/a/x.jpg`` is ``<labels>/a/x<label_suffix>``, read as-is (already in our
    convention) or through ``label_map`` (raw value -> ours; unlisted values kept). A
    ``split`` names a subfolder of both ``root`` and ``labels``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        *,
        labels: str | Path | None = None,
        label_suffix: str = ".png",
        label_map: dict[int, int] | None = None,
        num_classes: int | None = None,
        recursive: bool = False,
        size: Size = None,
        transform: Transform | None = None,
    ) -> None:
        self.labels = None if labels is None else Path(labels).expanduser()
        self.label_suffix = label_suffix
        self.label_map = dict(label_map) if label_map else None
        self.num_classes = num_classes
        self.recursive = recursive
        root = Path(root) if split is None else Path(root) / split
        if self.labels is not None and split is not None:
            self.labels = self.labels / split
        super().__init__(root, split, size=size, transform=transform)

    def _discover(self) -> list[Item]:
        if self.labels is not None:
            _require_dir(self.labels, f"label maps named <image stem>{self.label_suffix}", "folder")
        return _stem_pairs(self.root, self.labels, self.label_suffix, "folder", self.recursive)

    def _map_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if not self.label_map:
            return raw
        out = raw.copy()
        for value, ours in self.label_map.items():
            out[raw == value] = ours
        return out


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
