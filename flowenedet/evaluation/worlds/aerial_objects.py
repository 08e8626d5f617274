"""Textures, trees, buildings, void clutter and OOD objects of the aerial world
(:mod:`flowenedet.evaluation.worlds.aerial`): real grey pictures and elevation data tinted
per class, DejaVu glyph footprints, scikit-learn's handwritten digits as clutter, and
photo / MRI / clip-art objects, all pasted with soft alpha masks."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from flowenedet.labels import IGNORE_INDEX, OOD_INDEX

from . import sources as src
from .scenes import shape_mask

__all__ = [
    "BUILDING",
    "CLASS_NAMES",
    "CROPLAND",
    "NUM_CLASSES",
    "ROAD",
    "TEXTURES",
    "WATER",
    "WOODLAND",
    "class_canvas",
    "paste",
    "paste_buildings",
    "paste_objects",
    "paste_trees",
]

CLASS_NAMES = ("cropland", "woodland", "water", "road", "building")
NUM_CLASSES = len(CLASS_NAMES)
CROPLAND, WOODLAND, WATER, ROAD, BUILDING = range(NUM_CLASSES)
TEXTURES = {
    CROPLAND: "aero",
    WOODLAND: "jacksboro_relief",
    WATER: "topobathy",
    ROAD: "microaneurysms",
    BUILDING: "ascent",
}
"""The grey picture each class is textured with (its split's block of it)."""
_SOURCE_SIDE = {CROPLAND: 96, WOODLAND: 64, WATER: 20, ROAD: 18, BUILDING: 48}
"""Side of a texture tile in source pixels: the same in every split, so that a class keeps
its texture scale (it fits in the smallest block, the 20 % ones)."""
_CONTRAST = {CROPLAND: (0.5, 1.0), WOODLAND: (0.4, 1.0), WATER: (0.2, 0.5), ROAD: (0.3, 0.7)}
_TINTS = {  # RGB ranges; families of different classes overlap, so texture has to decide
    CROPLAND: (
        ((0.28, 0.45), (0.42, 0.62), (0.16, 0.32)),  # green crop
        ((0.58, 0.78), (0.52, 0.68), (0.28, 0.42)),  # ripe grain
        ((0.42, 0.6), (0.33, 0.46), (0.24, 0.34)),  # bare soil
        ((0.15, 0.3), (0.28, 0.45), (0.1, 0.22)),  # dark crop, like woodland
    ),
    WOODLAND: (((0.1, 0.26), (0.2, 0.4), (0.08, 0.22)),),
    WATER: (
        ((0.08, 0.24), (0.16, 0.34), (0.22, 0.42)),  # clear
        ((0.14, 0.3), (0.24, 0.4), (0.14, 0.28)),  # green, with algae
    ),
    ROAD: (
        ((0.4, 0.62), (0.4, 0.62), (0.4, 0.64)),  # paved
        ((0.45, 0.6), (0.4, 0.52), (0.32, 0.45)),  # dirt track, like bare soil
    ),
    BUILDING: (
        ((0.55, 0.75), (0.2, 0.35), (0.15, 0.28)),
        ((0.45, 0.75), (0.45, 0.75), (0.45, 0.78)),
        ((0.38, 0.55), (0.28, 0.4), (0.2, 0.3)),
    ),
}
_FOOTPRINT_CHARS = "LTUHEFCI"
_FONTS = {"train": "sans", "val": "serif", "test": "mono"}


def tint(rng: np.random.Generator, cls: int) -> np.ndarray:
    """A random RGB colour float32 ``(3,)`` from one of class ``cls``'s tint families."""
    families = _TINTS[cls]
    family = families[int(rng.integers(len(families)))]
    return np.array([rng.uniform(*r) for r in family], dtype=np.float32)


def _tile(rng: np.random.Generator, cls: int, split: str, side: int) -> np.ndarray:
    """A grey texture tile float32 ``(side, side)`` around 1 (``lum / mean``): a square of
    ``_SOURCE_SIDE`` source pixels of ``split``'s block, resized, rotated by a multiple of
    90 degrees and maybe mirrored."""
    name = TEXTURES[cls]
    top, left, h, w = src.block_box(name, split)
    crop_side = min(_SOURCE_SIDE[cls], h, w)
    y = top + int(rng.integers(0, h - crop_side + 1))
    x = left + int(rng.integers(0, w - crop_side + 1))
    crop = src.load_picture(name)[y : y + crop_side, x : x + crop_side, 0]
    tile = np.asarray(Image.fromarray(crop).resize((side, side), Image.BILINEAR), np.float32)
    tile = np.rot90(tile, int(rng.integers(4)))
    if rng.random() < 0.5:
        tile = tile[:, ::-1]
    return tile / max(float(tile.mean()), 1.0)


def class_canvas(
    rng: np.random.Generator, cls: int, split: str, height: int, width: int, scale: float
) -> np.ndarray:
    """A grey texture canvas float32 ``(height, width)`` around 1 for class ``cls``: tiles of
    one orientation family, contrast drawn from the class's range. ``scale``: scene pixels
    per pixel of a 256-pixel scene."""
    side = max(round(64 * scale), round(_SOURCE_SIDE[cls] * rng.uniform(1.0, 1.6) * scale))
    rows, cols = height // side + 2, width // side + 2
    tiles = [_tile(rng, cls, split, side) for _ in range(3)]
    picks = rng.integers(len(tiles), size=(rows, cols))
    canvas = np.empty((rows * side, cols * side), dtype=np.float32)
    for r in range(rows):
        for c in range(cols):
            canvas[r * side : (r + 1) * side, c * side : (c + 1) * side] = tiles[picks[r, c]]
    dy, dx = int(rng.integers(side)), int(rng.integers(side))
    out = canvas[dy : dy + height, dx : dx + width]
    low, high = _CONTRAST.get(cls, (0.5, 0.9))
    return 1 + np.float32(rng.uniform(low, high)) * (out - 1)


def paste(image, label, top: int, left: int, rgb, alpha, cls: int, solid: float = 0.5) -> int:
    """Blend ``rgb`` ``(h, w, 3)`` by ``alpha`` ``(h, w)`` into ``image`` at ``(top, left)``
    (clipped) and set ``label`` to ``cls`` where ``alpha >= solid``; returns how many pixels
    were labelled (0: nothing pasted)."""
    height, width = label.shape
    h, w = alpha.shape
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, height), min(left + w, width)
    if y0 >= y1 or x0 >= x1:
        return 0
    a = alpha[y0 - top : y1 - top, x0 - left : x1 - left, None]
    hit = a[..., 0] >= solid
    if not hit.any():
        return 0
    region = image[y0:y1, x0:x1]
    region *= 1 - a
    region += a * rgb[y0 - top : y1 - top, x0 - left : x1 - left]
    label[y0:y1, x0:x1][hit] = cls
    return int(hit.sum())


def _shadow(image, top: int, left: int, alpha, offset, depth: float) -> None:
    """Darken ``image`` under ``alpha`` shifted by ``offset`` ``(dy, dx)`` (labels keep the
    ground's class, as in real aerial annotations)."""
    height, width = image.shape[:2]
    h, w = alpha.shape
    top, left = top + round(offset[0]), left + round(offset[1])
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, height), min(left + w, width)
    if y0 < y1 and x0 < x1:
        a = alpha[y0 - top : y1 - top, x0 - left : x1 - left, None]
        image[y0:y1, x0:x1] *= 1 - depth * a


def paste_trees(rng, image, label, canopy: np.ndarray, sun, count: int, scale: float) -> None:
    """Single trees (woodland) on open cropland: round soft crowns of 2-7 px radius (at 256 px)
    textured with ``canopy`` ``(H, W, 3)``, each with its shadow away from the ``sun``."""
    height, width = label.shape
    for _ in range(count):
        radius = max(1.5, rng.uniform(2.0, 7.0) * scale)
        side = max(3, round(2 * radius))
        y, x = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
        if label[y + side // 2, x + side // 2] != CROPLAND:
            continue
        alpha = shape_mask(rng, side, side)
        _shadow(image, y, x, alpha, sun * radius * 1.2, 0.45)
        paste(image, label, y, x, canopy[y : y + side, x : x + side], alpha, WOODLAND)


def _footprint(rng, split: str, long_side: int) -> np.ndarray:
    """A building footprint alpha: a rectangle, or (a third of them) a glyph of the split's
    DejaVu font (L, T, U, H ... shaped houses)."""
    if rng.random() < 0.65:
        short = max(3, round(long_side * rng.uniform(0.45, 0.8)))
        return np.ones((short, long_side), dtype=np.float32)
    glyph = src.font_glyph(
        _FONTS[split], _FOOTPRINT_CHARS[int(rng.integers(len(_FOOTPRINT_CHARS)))]
    )
    h = max(4, round(long_side * glyph.shape[0] / max(glyph.shape)))
    w = max(4, round(long_side * glyph.shape[1] / max(glyph.shape)))
    return np.asarray(Image.fromarray(glyph, mode="F").resize((w, h), Image.BILINEAR))


def paste_buildings(rng, image, label, roads, sun, split: str, count: int, scale: float) -> None:
    """Buildings along the roads (``roads``: ``[(points (n, 2), width)]``), aligned with the
    road, with a gabled roof (two halves lit differently) and a cast shadow."""
    height, width = label.shape
    for _ in range(count):
        points, road_width = roads[int(rng.integers(len(roads)))]
        i = int(rng.integers(len(points) - 1))
        (y0, x0), (y1, x1) = points[i], points[i + 1]
        angle = np.degrees(np.arctan2(y1 - y0, x1 - x0))
        t = rng.uniform()
        cy, cx = y0 + t * (y1 - y0), x0 + t * (x1 - x0)
        long_side = max(4, round(np.exp(rng.uniform(np.log(6), np.log(36))) * scale))
        footprint = _footprint(rng, split, long_side)
        side = 1 if rng.random() < 0.5 else -1
        gap = road_width / 2 + rng.uniform(2, 10) * scale + footprint.shape[0] / 2
        normal = np.array([x1 - x0, -(y1 - y0)]) / max(np.hypot(y1 - y0, x1 - x0), 1e-6)
        cy, cx = cy + side * gap * normal[0], cx + side * gap * normal[1]
        alpha = np.asarray(
            Image.fromarray(footprint, mode="F").rotate(-angle, Image.BILINEAR, expand=True)
        )
        alpha = np.clip(alpha, 0, 1)
        h, w = alpha.shape
        top, left = round(cy - h / 2), round(cx - w / 2)
        if top < -h // 2 or left < -w // 2 or top > height - h // 2 or left > width - w // 2:
            continue
        under = label[max(top, 0) : top + h, max(left, 0) : left + w]
        if under.size == 0 or np.isin(under, (ROAD, WATER, BUILDING)).mean() > 0.15:
            continue
        roof_colour = tint(rng, BUILDING)
        texture = np.stack([_tile(rng, BUILDING, split, max(h, w))[:h, :w]] * 3, axis=2)
        texture = 1 + rng.uniform(0.3, 0.7) * (texture - 1)
        yy, xx = np.mgrid[0:h, 0:w]
        ridge = np.sign(
            (yy - h / 2) * np.cos(np.radians(angle)) - (xx - w / 2) * np.sin(np.radians(angle))
        )
        lit = 1 + rng.uniform(0.08, 0.2) * ridge[..., None]
        rgb = (roof_colour * texture * lit).astype(np.float32)
        _shadow(image, top, left, alpha, sun * long_side * rng.uniform(0.25, 0.5), 0.5)
        paste(image, label, top, left, rgb, alpha, BUILDING)


def _object(rng, kind: str, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A void or OOD object of box ``h`` x ``w``: ``(rgb (h, w, 3), alpha (h, w))``."""
    if kind == "small_digits":  # clutter: a handwritten 8 x 8 digit in one vivid colour
        glyph = src.small_digits()[int(rng.integers(len(src.small_digits())))]
        alpha = np.asarray(Image.fromarray(glyph).resize((w, h), Image.BILINEAR), np.float32) / 255
        colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        colour[int(rng.integers(3))] = rng.uniform(0.8, 1.0)  # vivid
        shade = 0.75 + 0.25 * alpha[..., None]
        return (colour * shade).astype(np.float32), alpha
    if kind in ("present", "mpl_logo"):  # clip art with its own alpha, a random part of it
        pic = src.load_picture(kind, rgba=True)
        ys, xs = np.flatnonzero(pic[..., 3].max(1) > 128), np.flatnonzero(pic[..., 3].max(0) > 128)
        pic = pic[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1]
        if kind == "mpl_logo":  # one piece of the long logo
            span = max(8, int(pic.shape[1] * rng.uniform(0.15, 0.4)))
            start = int(rng.integers(0, pic.shape[1] - span + 1))
            pic = pic[:, start : start + span]
        out = np.asarray(Image.fromarray(pic).resize((w, h), Image.BILINEAR), np.float32) / 255
        return np.ascontiguousarray(out[..., :3]), np.ascontiguousarray(out[..., 3])
    if kind == "mri" and rng.random() < 0.5:  # the whole head, with its own outline
        pic = src.load_picture("mri")[..., 0]
        head = ndimage.binary_fill_holes(pic > 40)
        ys, xs = np.flatnonzero(head.any(1)), np.flatnonzero(head.any(0))
        crop = pic[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1]
        mask = head[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1].astype(np.float32)
        grey = np.asarray(Image.fromarray(crop).resize((w, h), Image.BILINEAR), np.float32) / 255
        alpha = np.asarray(Image.fromarray(mask, mode="F").resize((w, h), Image.BILINEAR))
        return np.repeat(grey[..., None], 3, axis=2), np.clip(alpha, 0, 1)
    pic = src.load_picture(kind)  # a photo crop in a random soft blob
    side = max(8, int(min(pic.shape[:2]) * rng.uniform(0.2, 0.6)))
    y, x = int(rng.integers(pic.shape[0] - side + 1)), int(rng.integers(pic.shape[1] - side + 1))
    crop = Image.fromarray(pic[y : y + side, x : x + side]).resize((w, h), Image.BILINEAR)
    return np.asarray(crop, dtype=np.float32) / 255, shape_mask(rng, h, w)


def paste_objects(rng, image, label, kinds, count: int, area, cls: int) -> list[int]:
    """Paste ``count`` objects of ``kinds`` with log-uniform box ``area`` (share of the image)
    anywhere; void objects (``IGNORE_INDEX``) label ``alpha > 0.3``, OOD objects ``>= 0.5``.
    Returns the labelled pixel count of each object pasted."""
    height, width = label.shape
    if cls not in (OOD_INDEX, IGNORE_INDEX):
        raise ValueError(f"cls must be OOD_INDEX or IGNORE_INDEX, got {cls}")
    solid = 0.5 if cls == OOD_INDEX else 0.3 + 1e-6  # void: alpha above 0.3
    sizes = []
    for _ in range(count):
        share = float(np.exp(rng.uniform(np.log(area[0]), np.log(area[1]))))
        aspect = float(rng.uniform(0.6, 1.6))
        h = max(3, round(np.sqrt(share * height * width / aspect)))
        w = max(3, round(h * aspect))
        rgb, alpha = _object(rng, kinds[int(rng.integers(len(kinds)))], h, w)
        top = int(rng.integers(-h // 4, height - 3 * h // 4))
        left = int(rng.integers(-w // 4, width - 3 * w // 4))
        pasted = paste(image, label, top, left, rgb, alpha, cls, solid)
        if pasted:
            sizes.append(pasted)
    return sizes
