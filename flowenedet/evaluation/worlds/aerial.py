"""The aerial world: top-down land-cover scenes (drone / satellite mapping), from real data.

Deterministic from a seed, offline. Default size 256 x 256. A scene is a patchwork of
field parcels (a stretched Voronoi tessellation: straight borders meeting at angles) of
cropland, woodland and the odd lake, crossed by a river and by roads, with hedgerows
along parcel borders, single trees, and buildings lined up along the roads; trees and
buildings cast shadows away from one sun. Classes: cropland, woodland, water, road and
building, each textured with its own real grey picture or elevation data, tinted per
parcel (:data:`~flowenedet.evaluation.worlds.aerial_objects.TEXTURES`): PyWavelets' aerial
photo (``aero``) for cropland, the hill shading of matplotlib's Jacksboro fault elevation
model for woodland canopies, its topography / bathymetry grid for water, scikit-image's
``microaneurysms`` for roads and PyWavelets' ``ascent`` for roofs; building footprints are
rectangles or DejaVu glyphs. Training scenes carry void clutter (scikit-learn's 8 x 8
handwritten digits in vivid colours, ``IGNORE_INDEX``); validation and test scenes carry OOD
objects from sources never seen in training (val: matplotlib's Grace Hopper photo and its
logo; test: matplotlib's MRI slice and its clip-art present). Shifts are this world's own
(:mod:`~flowenedet.evaluation.worlds.aerial_shift`). Train, val and test use disjoint blocks
of every texture picture, different fonts and disjoint object pictures;
:func:`check_disjoint` audits it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage
from scipy.spatial import cKDTree

from flowenedet.labels import IGNORE_INDEX, OOD_INDEX

from . import aerial_shift
from . import sources as src
from .aerial_objects import (
    BUILDING,
    CLASS_NAMES,
    CROPLAND,
    NUM_CLASSES,
    ROAD,
    TEXTURES,
    WATER,
    WOODLAND,
    class_canvas,
    paste_buildings,
    paste_objects,
    paste_trees,
    tint,
)
from .scenes import SPLITS, SceneSet, check_size, check_split, generate, shared_sources

__all__ = [
    "BUILDING",
    "CLASS_NAMES",
    "CROPLAND",
    "NUM_CLASSES",
    "OOD_AREA",
    "ROAD",
    "SHIFTS",
    "SPLITS",
    "WATER",
    "WOODLAND",
    "AerialSources",
    "check_disjoint",
    "make_scenes",
    "render_scene",
    "split_sources",
]

DEFAULT_SIZE = (256, 256)
MIN_SIZE = (64, 64)
SHIFTS = aerial_shift.SHIFTS
OOD_AREA = (3e-4, 2e-2)
"""Range of an OOD object's box area as a share of the image (log-uniform, 1-3 objects in
90 % of the validation and test scenes)."""
VOID_AREA = (3e-4, 1e-2)
"""Range of a void object's box area as a share of the image (1-4 per training scene)."""
_VOID = ("small_digits",)
_OOD = {"train": (), "val": ("grace_hopper", "mpl_logo"), "test": ("mri", "present")}
_FONTS = {"train": "sans", "val": "serif", "test": "mono"}


@dataclass(frozen=True, eq=False)
class AerialSources:
    """What feeds a split: texture blocks ``{picture: (top, left, h, w)}``, the font of its
    building footprints, void object sources and OOD object sources."""

    texture_blocks: dict[str, tuple[int, int, int, int]]
    font: str
    void_objects: tuple[str, ...]
    ood_objects: tuple[str, ...]


def split_sources(split: str) -> AerialSources:
    """The sources ``split`` draws from (see :func:`check_disjoint`)."""
    check_split(split)
    blocks = {name: src.block_box(name, split) for name in sorted(set(TEXTURES.values()))}
    return AerialSources(blocks, _FONTS[split], _VOID if split == "train" else (), _OOD[split])


def check_disjoint() -> None:
    """Raise ``ValueError`` if two splits share a texture pixel, a font or an object source,
    or if an object source is also a texture."""
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
            if sa.font == sb.font:
                problems.append(f"{a} and {b} share the font {sa.font}")
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
    """Generate ``num_scenes`` aerial scenes of ``split``: a :class:`SceneSet` with images
    uint8 ``(N, 3, H, W)`` and labels int64 ``(N, H, W)``; ``size`` is ``(H, W)`` or one
    number for a square, default 256 x 256.

    ``corruption`` names this world's shifts (:data:`SHIFTS`), not
    ``imagecorruptions`` types; a sequence (and a sequence of severities 1-4) takes turns
    as in :func:`flowenedet.evaluation.worlds.digits.make_scenes`. Scene ``i`` depends only
    on ``(split, i, seed, size)`` plus the shift settings; labels never depend on the shift.
    """
    shifts, severities = aerial_shift.check_shifts(corruption, severity)

    def shifted(image: np.ndarray, i: int, key: tuple[int, int, int]) -> np.ndarray:
        return aerial_shift.shift_in_turn(image, i, shifts, severities, key)

    return generate(
        "aerial",
        split,
        num_scenes,
        seed,
        check_size(size, MIN_SIZE),
        render_scene,
        shifted if shifts else None,
        (corruption, severity),
        (shifts, severities),
        progress,
    )


# ----------------------------------------------------------------------------- layout


def _curve(rng: np.random.Generator, height: int, width: int, bend: float) -> np.ndarray:
    """A gently bent line across the scene: points ``(n, 2)`` as ``(y, x)``, from one border
    region to the opposite one, through a random point."""
    angle = rng.uniform(0, np.pi)
    centre = np.array([rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width])
    direction = np.array([np.sin(angle), np.cos(angle)])
    normal = np.array([direction[1], -direction[0]])
    reach = 0.75 * np.hypot(height, width)
    t = np.linspace(-1, 1, 24)
    wave = bend * reach * np.sin(np.pi * t * rng.uniform(0.5, 1.5) + rng.uniform(0, 2 * np.pi))
    return centre + t[:, None] * reach * direction + wave[:, None] * normal


def _band(points: np.ndarray, band_width: float, height: int, width: int) -> np.ndarray:
    """Bool ``(H, W)``: the pixels of the polyline ``points`` drawn ``band_width`` wide."""
    canvas = Image.new("1", (width, height), 0)
    xy = [(float(x), float(y)) for y, x in points]
    ImageDraw.Draw(canvas).line(xy, fill=1, width=max(1, round(band_width)), joint="curve")
    return np.asarray(canvas, dtype=bool)


def _parcels(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Parcel ids int64 ``(H, W)``: a Voronoi tessellation stretched along a random axis."""
    count = max(4, round(rng.uniform(8, 18) * height * width / 256**2))
    seeds = rng.uniform(0, 1, size=(count, 2)) * (height, width)
    angle, stretch = rng.uniform(0, np.pi), rng.uniform(1.0, 2.2)
    rotate = np.array(
        [[np.sin(angle), np.cos(angle) * stretch], [np.cos(angle), -np.sin(angle) * stretch]]
    )
    pixels = np.stack(np.mgrid[0:height, 0:width], axis=-1).reshape(-1, 2).astype(np.float64)
    _, ids = cKDTree(seeds @ rotate).query(pixels @ rotate)
    return ids.reshape(height, width).astype(np.int64)


def _layout(rng: np.random.Generator, height: int, width: int):
    """The label map int64 ``(H, W)`` of parcels and river, the parcel ids ``(H, W)``, each
    parcel's class and whether it has a hedgerow, and the roads ``[(points, width)]``
    (drawn later): ``(label, ids, kinds, hedges, roads)``."""
    scale = np.sqrt(height * width) / 256
    ids = _parcels(rng, height, width)
    count = int(ids.max()) + 1
    kinds = rng.choice([CROPLAND, WOODLAND, WATER], size=count, p=[0.66, 0.28, 0.06])
    hedges = rng.random(count) < 0.2
    label = kinds[ids]
    if rng.random() < 0.4:  # a river
        river = _curve(rng, height, width, bend=rng.uniform(0.03, 0.1))
        label[_band(river, rng.uniform(6, 18) * scale, height, width)] = WATER
    roads = []
    for k in range(int(rng.integers(1, 4))):
        points = _curve(rng, height, width, bend=rng.uniform(0.0, 0.04))
        road_width = (rng.uniform(5, 9) if k == 0 else rng.uniform(2.5, 5)) * scale
        roads.append((points, road_width))
    return label, ids, kinds, hedges, roads


def render_scene(
    split: str, index: int, seed: int, size: tuple[int, int] = DEFAULT_SIZE, *, ood: bool = True
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Scene ``index``: uint8 image ``(H, W, 3)``, int64 labels ``(H, W)`` and the labelled
    pixel counts of its OOD (val, test) or void (train) objects.

    Layout, textures, trees and buildings, and objects draw from separate random streams:
    ``ood=False`` leaves the rest of the scene unchanged.
    """
    height, width = size
    scale = float(np.sqrt(height * width) / 256)
    key = np.random.SeedSequence([seed, SPLITS.index(split), index, 11])
    lay_rng, fill_rng, thing_rng, obj_rng = (np.random.default_rng(s) for s in key.spawn(4))
    label, ids, kinds, hedges, roads = _layout(lay_rng, height, width)
    canvases = {
        cls: [class_canvas(fill_rng, cls, split, height, width, scale) for _ in range(n)]
        for cls, n in ((CROPLAND, 3), (WOODLAND, 1), (WATER, 1), (ROAD, 1))
    }
    count = len(kinds)  # every parcel: one tint and (cropland) one of three textures
    colours = np.stack([tint(fill_rng, int(kind)) for kind in kinds])
    picks = fill_rng.integers(3, size=count)
    stack = np.stack([*canvases[CROPLAND], canvases[WOODLAND][0], canvases[WATER][0]])
    which = np.where(kinds == CROPLAND, picks, np.where(kinds == WOODLAND, 3, 4))[ids]
    image = np.take_along_axis(stack, which[None], axis=0)[0][..., None] * colours[ids]
    river = (label == WATER) & (kinds[ids] != WATER)
    image[river] = canvases[WATER][0][river, None] * tint(fill_rng, WATER)
    woodland_rgb = canvases[WOODLAND][0][..., None] * tint(fill_rng, WOODLAND)
    hedge_width = fill_rng.uniform(1.5, 3.5) * scale
    edge = ndimage.distance_transform_edt(ids == ndimage.grey_erosion(ids, size=3)) < hedge_width
    hedge = edge & hedges[ids] & (label == CROPLAND)
    image[hedge], label[hedge] = woodland_rgb[hedge], WOODLAND
    road_rgb = canvases[ROAD][0][..., None] * tint(fill_rng, ROAD)
    for points, road_width in roads:
        on_road = _band(points, road_width, height, width)
        image[on_road], label[on_road] = road_rgb[on_road], ROAD
    sun = np.array([np.sin(a := thing_rng.uniform(0, 2 * np.pi)), np.cos(a)])
    paste_trees(thing_rng, image, label, woodland_rgb, sun, int(thing_rng.poisson(8)), scale)
    if thing_rng.random() < 0.8:
        count = int(thing_rng.poisson(14))
        paste_buildings(thing_rng, image, label, roads, sun, split, count, scale)
    sizes: list[int] = []
    if split == "train":
        count = int(obj_rng.integers(1, 5))
        sizes = paste_objects(obj_rng, image, label, _VOID, count, VOID_AREA, IGNORE_INDEX)
    elif ood and obj_rng.random() < 0.9:
        count = int(obj_rng.integers(1, 4))
        sizes = paste_objects(obj_rng, image, label, _OOD[split], count, OOD_AREA, OOD_INDEX)
    out = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
    out = out.filter(ImageFilter.GaussianBlur(radius=0.5))  # soft edges, as optics give
    return np.array(out), label, sizes
