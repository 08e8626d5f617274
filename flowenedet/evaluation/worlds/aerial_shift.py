"""The aerial world's own distribution shifts: degradations of airborne and satellite
imagery, written in NumPy / PIL (no ``imagecorruptions``), so that none of them is one of
the 19 corruptions the digits and street worlds test or fit on.

Every shift maps a uint8 image ``(H, W, 3)`` at a severity 1-4 and a random generator to a
uint8 image of the same shape; labels never change. :data:`SHIFTS` are the validation /
test shifts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageFilter

from .shift import MAX_SEVERITY, pick_in_turn

__all__ = [
    "MAX_SEVERITY",
    "SHIFTS",
    "apply_shift",
    "check_shifts",
    "shift_in_turn",
    "shift_names",
]

Shift = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """A smooth random field ``(H, W)`` scaled to [0, 1]: ``cells`` x ``cells`` Gaussian
    values upsampled bicubically (features about ``1 / cells`` of the image wide)."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.BICUBIC))
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / max(hi - lo, 1e-6)


def _haze(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Atmospheric scattering ``J t + A (1 - t)`` with an uneven haze layer: transmission
    ``t = exp(-beta d)``, ``d`` a smooth field in [0.4, 1.6], bluish-white airlight ``A``."""
    beta = (0.35, 0.6, 0.9, 1.25)[severity - 1]
    h, w = image.shape[:2]
    depth = 0.4 + 1.2 * _smooth_field(rng, h, w, 4)
    t = np.exp(-beta * depth)[..., None]
    airlight = np.array([rng.uniform(0.72, 0.85), rng.uniform(0.78, 0.9), rng.uniform(0.85, 0.97)])
    return image / 255.0 * t + airlight * (1 - t)


def _sensor_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Signal-dependent shot noise (Poisson, ``full_well`` electrons at white), Gaussian read
    noise and the column offsets of a push-broom sensor (vertical stripes)."""
    full_well = (80.0, 35.0, 15.0, 7.0)[severity - 1]
    read, stripes = (0.01, 0.02, 0.03, 0.045)[severity - 1], (0.01, 0.02, 0.03, 0.045)[severity - 1]
    x = image / 255.0
    out = rng.poisson(x * full_well) / full_well
    out = out + rng.normal(0.0, read, size=x.shape)
    return out + rng.normal(0.0, stripes, size=(1, x.shape[1], 1))


def _colour_cast(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A wrong white balance: per-channel gains along a random direction of the colour
    plane (warm / cool, green / magenta), and a gamma off by the same amount."""
    strength = (0.12, 0.22, 0.32, 0.45)[severity - 1]
    angle = rng.uniform(0, 2 * np.pi)
    warm, green = np.cos(angle), np.sin(angle)
    gains = np.exp(strength * np.array([warm - 0.5 * green, green, -warm - 0.5 * green]))
    gamma = np.exp(rng.uniform(-1, 1) * strength)
    return (image / 255.0 * gains) ** gamma


def _resolution_loss(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A coarser ground sampling distance: area-downsampled by 1.5-4 and bicubically
    upsampled back."""
    factor = (1.5, 2.0, 3.0, 4.0)[severity - 1] * rng.uniform(0.95, 1.05)
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize(
        (max(2, round(w / factor)), max(2, round(h / factor))), Image.BOX
    )
    return np.asarray(small.resize((w, h), Image.BICUBIC), dtype=np.float64) / 255.0


def _cloud_shadow(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Shadows of scattered clouds: soft-edged blobs covering about a third of the scene,
    darkened by 30-75 % and slightly blue (skylight only)."""
    depth = (0.3, 0.45, 0.6, 0.75)[severity - 1]
    h, w = image.shape[:2]
    field = _smooth_field(rng, h, w, 5)
    cut = np.quantile(field, 0.65)
    mask = np.clip((field - cut) / 0.08, 0, 1)[..., None]
    tint = np.array([1.0 - depth, 1.0 - 0.9 * depth, 1.0 - 0.75 * depth])
    return image / 255.0 * (1 - mask + mask * tint)


def _band_misregistration(image: np.ndarray, severity: int, rng: np.random.Generator):
    """Spectral bands out of register: red and blue shifted by 1-4 px in random directions
    against green (edges replicated)."""
    step = (1, 2, 3, 4)[severity - 1]
    out = image.astype(np.float64) / 255.0
    h, w = image.shape[:2]
    for channel in (0, 2):
        angle = rng.uniform(0, 2 * np.pi)
        dy, dx = round(step * np.sin(angle)), round(step * np.cos(angle))
        rows = np.clip(np.arange(h) - dy, 0, h - 1)
        cols = np.clip(np.arange(w) - dx, 0, w - 1)
        out[..., channel] = out[rows][:, cols][..., channel]
    return out


def _vignetting(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Radial light fall-off of a wide lens, off-centre, a little stronger in blue."""
    strength = (0.2, 0.35, 0.5, 0.65)[severity - 1]
    h, w = image.shape[:2]
    cy, cx = rng.uniform(0.4, 0.6) * h, rng.uniform(0.4, 0.6) * w
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (0.5 * h) ** 2 / 2
    gain = np.clip(1 - strength * r2, 0.05, 1)[..., None] ** np.array([1.0, 1.05, 1.15])
    return image / 255.0 * gain


def _overexposure(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Too long an exposure: gain 1.3-2.2 with clipping highlights, shadows lifted."""
    gain = (1.3, 1.55, 1.85, 2.2)[severity - 1] * rng.uniform(0.95, 1.05)
    return 0.03 * severity / 4 + image / 255.0 * gain


def _oversharpening(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """An aggressive unsharp mask (bright and dark halos along every edge)."""
    amount = (150, 250, 350, 500)[severity - 1]
    radius = rng.uniform(1.5, 2.5)
    pic = Image.fromarray(image).filter(
        ImageFilter.UnsharpMask(radius=radius, percent=amount, threshold=0)
    )
    return np.asarray(pic, dtype=np.float64) / 255.0


_SHIFTS: dict[str, Shift] = {
    "haze": _haze,
    "sensor_noise": _sensor_noise,
    "colour_cast": _colour_cast,
    "resolution_loss": _resolution_loss,
    "cloud_shadow": _cloud_shadow,
    "band_misregistration": _band_misregistration,
    "vignetting": _vignetting,
    "overexposure": _overexposure,
    "oversharpening": _oversharpening,
}
SHIFTS = (
    "haze",
    "sensor_noise",
    "colour_cast",
    "resolution_loss",
    "cloud_shadow",
    "band_misregistration",
    "vignetting",
    "overexposure",
    "oversharpening",
)
"""The shifts of the aerial world's validation and test splits."""


def shift_names() -> tuple[str, ...]:
    """Every shift of the aerial world, in a fixed order."""
    return tuple(_SHIFTS)


def check_shifts(
    shift: str | Sequence[str] | None, severity: int | Sequence[int]
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Validated ``(names, severities)``, both empty without a shift (as
    :func:`flowenedet.evaluation.worlds.shift.check_corruptions` for this world's shifts)."""
    from .shift import check_corruptions

    return check_corruptions(shift, severity, known=shift_names(), what="aerial shift")


def apply_shift(image: np.ndarray, name: str, severity: int, rng: np.random.Generator):
    """Shift ``name`` at ``severity`` 1-4 applied to uint8 ``(H, W, 3)``; uint8 back."""
    if name not in _SHIFTS:
        raise ValueError(f"shift must be one of {shift_names()}, got {name!r}")
    if not 1 <= severity <= MAX_SEVERITY:
        raise ValueError(f"severity must be an int in 1..{MAX_SEVERITY}, got {severity!r}")
    out = _SHIFTS[name](image, int(severity), rng)
    return np.round(np.clip(out, 0.0, 1.0) * 255).astype(np.uint8)


def shift_in_turn(
    image: np.ndarray,
    index: int,
    names: Sequence[str],
    severities: Sequence[int],
    key: Sequence[int],
) -> np.ndarray:
    """Scene ``index`` of a shifted run: the shifts in turn, each at the severities in turn
    (every pair equally often), random state from ``key`` (the scene's seed words), the
    shift's number and its severity."""
    name, level = pick_in_turn(index, names, severities)
    seed = np.random.SeedSequence([*key, 1 + shift_names().index(name), level, 3])
    return apply_shift(image, name, level, np.random.default_rng(seed))
