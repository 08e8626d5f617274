"""Things, void objects and OOD obstacles of the street world
(:mod:`flowenedet.evaluation.worlds.street`):
real masks (MNIST glyphs, the horse silhouette, the scikit-image logo, random blobs) with
real fills, pasted at perspective or obstacle sizes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from flowenedet.labels import OOD_INDEX

from . import sources as src
from .scenes import shape_mask

CLASS_NAMES = ("road", "sidewalk", "building", "vegetation", "sky", "vehicle", "person", "pole")
NUM_CLASSES = len(CLASS_NAMES)
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, VEHICLE, PERSON, POLE = range(NUM_CLASSES)
_THING_FILLS = {VEHICLE: ("coins",), PERSON: ("astronaut",), POLE: ("page",)}
_GLYPHS = {VEHICLE: (0, 6, 8, 9), PERSON: (1, 7), POLE: (2, 3, 5)}  # MNIST digits per class
_GREY = frozenset("brick cell coins grass gravel moon page text".split())
_TINTS = {  # RGB ranges of the tint a grey texture gets, per class
    ROAD: ((0.30, 0.50), (0.30, 0.50), (0.30, 0.52)),
    SIDEWALK: ((0.55, 0.80), (0.45, 0.65), (0.40, 0.60)),
    VEGETATION: ((0.20, 0.40), (0.40, 0.65), (0.12, 0.30)),
    SKY: ((0.45, 0.75), (0.60, 0.85), (0.80, 1.00)),
    BUILDING: ((0.40, 0.80), (0.40, 0.75), (0.40, 0.75)),
    VEHICLE: ((0.05, 0.95), (0.05, 0.95), (0.05, 0.95)),
    POLE: ((0.25, 0.60), (0.25, 0.60), (0.25, 0.60)),
}


@dataclass
class Layout:
    """Scene geometry: horizon row, road centre / half width / sidewalk width at the bottom."""

    horizon: int
    vanish_x: float
    bottom_x: float
    road_half: float
    walk: tuple[float, float]  # sidewalk widths at the bottom, left and right (0: none)

    def ground(self, y: np.ndarray | float, height: int) -> np.ndarray | float:
        """Depth factor in [0, 1]: 0 at the horizon, 1 at the bottom row."""
        return np.clip(
            (np.asarray(y, dtype=np.float32) - self.horizon) / (height - self.horizon), 0, 1
        )

    def centre(self, t):
        return self.vanish_x + t * (self.bottom_x - self.vanish_x)


def _colourize(rng: np.random.Generator, tile: np.ndarray, name: str, cls: int) -> np.ndarray:
    """Tint grey textures with the class's colour range; jitter colour ones. ``(T, T, 3)``."""
    if name in _GREY:
        tint = np.array([rng.uniform(*r) for r in _TINTS[cls]], dtype=np.float32)
        lum = tile.mean(axis=2, keepdims=True)
        return lum / max(float(lum.mean()), 1e-3) * tint
    return tile * rng.uniform(0.85, 1.15, size=3).astype(np.float32)


def _glyph(rng, split: str, digits: tuple[int, ...], h: int, w: int, solid: bool = False):
    """A real MNIST glyph of one of ``digits`` cropped to its box, as alpha ``(h, w)``;
    ``solid`` fills its holes."""
    glyphs, pool = src.glyph_pool(split, digits)
    glyph = glyphs[int(pool[int(rng.integers(len(pool)))])]
    ys, xs = np.flatnonzero(glyph.max(1) > 64), np.flatnonzero(glyph.max(0) > 64)
    glyph = glyph[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1]
    if solid:
        filled = ndimage.binary_fill_holes(ndimage.binary_dilation(glyph > 64, iterations=3))
        glyph = np.maximum(glyph, filled.astype(np.uint8) * 255)
    alpha = Image.fromarray(glyph).resize((w, h), Image.BILINEAR)
    return np.asarray(alpha, dtype=np.float32) / 255.0


def _paste(image, label, top: int, left: int, rgb, alpha, cls: int, solid: float = 0.5) -> int:
    """Blend ``rgb`` ``(h, w, 3)`` by ``alpha`` ``(h, w)`` at ``(top, left)`` (clipped to the
    image) and label pixels with ``alpha >= solid`` as ``cls``; returns how many (0: nothing
    pasted, no pixel reached ``solid``)."""
    height, width = label.shape
    h, w = alpha.shape
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, height), min(left + w, width)
    if y0 >= y1 or x0 >= x1:
        return 0
    a = alpha[y0 - top : y1 - top, x0 - left : x1 - left, None]
    hit = a[..., 0] >= solid
    if not hit.any():  # too small to carry a label: leave the image alone too
        return 0
    region = image[y0:y1, x0:x1]
    region *= 1 - a
    region += a * rgb[y0 - top : y1 - top, x0 - left : x1 - left]
    label[y0:y1, x0:x1][hit] = cls
    return int(hit.sum())


def _thing(rng, cls: int, split: str, ppu: float) -> tuple[np.ndarray, np.ndarray]:
    """A thing of class ``cls`` at ``ppu`` pixels per ground unit: ``(rgb, alpha)``."""
    if cls == VEHICLE:  # the glyph with its holes filled: a solid body
        h = max(3, round(ppu * rng.uniform(0.35, 0.55)))
        w = max(4, round(h * rng.uniform(1.3, 2.2)))
        alpha = _glyph(rng, split, _GLYPHS[cls], h, w, solid=True)
    elif cls == PERSON:
        h = max(4, round(ppu * rng.uniform(0.5, 0.8)))
        w = max(2, round(h * rng.uniform(0.3, 0.45)))
        alpha = _glyph(rng, split, _GLYPHS[cls], h, w)
    else:  # a pole with a glyph-shaped sign on top
        h = max(6, round(ppu * rng.uniform(1.0, 1.6)))
        pole = max(1, round(h * rng.uniform(0.03, 0.06)))
        sign = max(3, round(h * rng.uniform(0.2, 0.3)))
        w = max(sign, pole)
        alpha = np.zeros((h, w), dtype=np.float32)
        alpha[:, (w - pole) // 2 : (w - pole) // 2 + pole] = 1.0
        alpha[:sign] = np.maximum(alpha[:sign], _glyph(rng, split, _GLYPHS[cls], sign, w))
    name = _THING_FILLS[cls][0]
    tile = src.texture_crop(rng, name, split, max(h, w))[:h, :w]
    rgb = _colourize(rng, tile, name, cls) if cls in _TINTS else tile
    return np.ascontiguousarray(rgb), alpha


def _paste_things(rng, image, label, lay: Layout, split: str) -> None:
    """Vehicles on the road, persons on the sidewalks, poles at their outer edge; far first."""
    height = label.shape[0]
    items = []
    for cls, mean in ((VEHICLE, 4.0), (PERSON, 4.0), (POLE, 3.0)):
        for _ in range(int(rng.poisson(mean))):
            t = float(rng.uniform(0.05, 1.0) ** 1.3)
            half = t * lay.road_half
            side = 1 if rng.random() < 0.5 else -1
            walk = lay.walk[side > 0]
            if cls == VEHICLE:
                x = lay.centre(t) + rng.uniform(-0.8, 0.8) * half
            elif walk == 0:
                continue
            elif cls == PERSON:
                x = lay.centre(t) + side * (half + rng.uniform(0.1, 0.9) * t * walk)
            else:
                x = lay.centre(t) + side * (half + 0.95 * t * walk)
            items.append((t, cls, x))
    for t, cls, x in sorted(items):
        y = lay.horizon + t * (height - lay.horizon)
        rgb, alpha = _thing(rng, cls, split, ppu=t * (height - lay.horizon))
        h, w = alpha.shape
        _paste(image, label, round(y) - h, round(x - w / 2), rgb, alpha, cls)


def _object(rng, kind: str, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A void or OOD object of box ``h`` x ``w``: ``(rgb (h, w, 3), alpha (h, w))``."""
    if kind in ("lfw_faces", "lfw_nonfaces"):
        row = int(rng.integers(100)) + (100 if kind == "lfw_nonfaces" else 0)
        face = np.asarray(Image.fromarray(src.lfw()[row]).resize((w, h), Image.BILINEAR))
        rgb = np.clip(face, 0, 1)[..., None] * rng.uniform(0.75, 1.1, size=3).astype(np.float32)
        return rgb.astype(np.float32), shape_mask(rng, h, w)
    if kind in ("horse", "logo"):
        if kind == "horse":
            mask = src.load_picture("horse")[..., 0] < 128
            fill = "hubble_deep_field"
        else:
            mask = src.load_picture("logo", rgba=True)[..., 3] > 128
            fill = "logo"
        ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        crop = mask[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1].astype(np.float32)
        alpha = np.asarray(Image.fromarray(crop, mode="F").resize((w, h), Image.BILINEAR))
        if fill == "logo":
            pic = src.load_picture("logo")[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1]
            rgb = np.asarray(Image.fromarray(pic).resize((w, h), Image.BILINEAR), np.float32) / 255
        else:
            rgb = _photo_crop(rng, fill, h, w)
        return rgb, np.clip(alpha, 0, 1).astype(np.float32)
    return _photo_crop(rng, kind, h, w), shape_mask(rng, h, w)


def _photo_crop(rng, name: str, h: int, w: int) -> np.ndarray:
    """A random crop (20-60 % of the shorter side) of a whole picture, float ``(h, w, 3)``."""
    pic = src.load_picture(name)
    side = max(8, int(min(pic.shape[:2]) * rng.uniform(0.2, 0.6)))
    y, x = int(rng.integers(pic.shape[0] - side + 1)), int(rng.integers(pic.shape[1] - side + 1))
    crop = Image.fromarray(pic[y : y + side, x : x + side]).resize((w, h), Image.BILINEAR)
    return np.asarray(crop, dtype=np.float32) / 255


def _paste_objects(rng, image, label, lay: Layout, kinds, count, area, cls, solid) -> list[int]:
    """Paste ``count`` objects of log-uniform ``area`` (share of the image); returns their
    labelled pixel counts. OOD obstacles stand on the road; void objects anywhere low."""
    height, width = label.shape
    sizes = []
    for _ in range(count):
        share = float(np.exp(rng.uniform(np.log(area[0]), np.log(area[1]))))
        aspect = float(rng.uniform(0.6, 1.6))  # width / height
        h = max(3, round(np.sqrt(share * height * width / aspect)))
        w = max(3, round(h * aspect))
        rgb, alpha = _object(rng, kinds[int(rng.integers(len(kinds)))], h, w)
        if cls == OOD_INDEX:
            t = float(rng.uniform(0.15, 1.0))
            y = lay.horizon + t * (height - lay.horizon)
            x = lay.centre(t) + rng.uniform(-0.7, 0.7) * t * lay.road_half
            top, left = round(y) - h, round(x - w / 2)
        else:
            top = int(rng.integers(round(0.25 * height), max(round(0.25 * height) + 1, height - h)))
            left = int(rng.integers(0, max(1, width - w)))
        pasted = _paste(image, label, top, left, rgb, alpha, cls, solid)
        if pasted:
            sizes.append(pasted)
    return sizes
