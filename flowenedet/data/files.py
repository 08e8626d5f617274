"""Image / label file pairs on disk: the base dataset every loader builds on, the helpers
that find and check the pairs, and :class:`FolderDataset` for any plain folder.

Items are ``(image, label)``: ``image`` float32 ``(3, H, W)`` in [0, 1] and ``label``
int64 ``(H, W)`` in the convention of :mod:`flowenedet.labels`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from flowenedet.labels import IGNORE_INDEX

__all__ = [
    "IMAGE_EXTENSIONS",
    "FolderDataset",
    "Item",
    "SegmentationFiles",
    "Size",
    "Transform",
    "load_image",
]

log = logging.getLogger(__name__)

Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Size = int | tuple[int, int] | None
Item = tuple[str, Path, Path | None]  # (name, image file, label file or None)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def natural_key(text: str) -> list[int | str]:
    """Sort key that orders ``t1/2.png`` before ``t1/10.png`` (deterministic, human order)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def require_dir(path: Path, what: str, dataset: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{dataset}: folder {path} not found; expected {what} there")
    return path


def label_pair(dataset: str, name: str, image: Path, label: Path, hint: str = "") -> Item:
    if not label.is_file():
        raise FileNotFoundError(f"{dataset}: label file {label} for image {image} not found{hint}")
    return name, image, label


def sorted_items(items: list[Item]) -> list[Item]:
    return sorted(items, key=lambda item: natural_key(item[0]))


def stem_pairs(
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
            items.append(label_pair(dataset, rel.as_posix(), image, label))
    return sorted_items(items)


def load_image(path: str | Path, what: str = "image") -> Image.Image:
    """The decoded image file at ``path``; ``ValueError`` naming it when it is not a readable
    image (truncated, corrupt, of an unknown format, or a decompression bomb larger than
    PIL's ``Image.MAX_IMAGE_PIXELS``)."""
    try:
        with Image.open(path) as img:
            img.load()
            return img
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{what} {path} is not a readable image: {error}") from None


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
        require_dir(self.root, "the dataset root", type(self).__name__)
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
        return np.asarray(load_image(self.files[index]).convert("RGB"))

    def _read_label(self, path: Path) -> np.ndarray:
        img = load_image(path, "label file")
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
            require_dir(self.labels, f"label maps named <image stem>{self.label_suffix}", "folder")
        return stem_pairs(self.root, self.labels, self.label_suffix, "folder", self.recursive)

    def _map_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if not self.label_map:
            return raw
        out = raw.copy()
        for value, ours in self.label_map.items():
            out[raw == value] = ours
        return out
