"""Distribution shift for the embedded benchmark: ``imagecorruptions`` (the maintained
``imagecorruptions-imaug`` fork) applied to finished scenes, seeded per scene, at a scale
that makes the pixel-sized corruptions cover the same share of a small scene as of an
ImageNet-sized image. Needs the ``bench`` extra.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from PIL import Image

__all__ = [
    "MAX_SEVERITY",
    "check_corruptions",
    "corrupt",
    "corrupt_in_turn",
    "corruption_names",
    "pick_in_turn",
]

MAX_SEVERITY = 4
CORRUPTION_RESOLUTION = 224  # spatial corruptions run at >= this side (ImageNet-C scale)
_SCALE_FREE = frozenset(
    "gaussian_noise shot_noise impulse_noise speckle_noise brightness contrast saturate "
    "jpeg_compression pixelate zoom_blur".split()
)  # no pixel-sized parameters: applied at the scene's own size
_SEEDED = frozenset({"glass_blur", "impulse_noise"})  # take an explicit seed argument


def check_corruptions(
    corruption: str | Sequence[str] | None,
    severity: int | Sequence[int],
    *,
    known: Sequence[str] | None = None,
    what: str = "corruption",
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Validated ``(names, severities)``, both empty without a corruption; ``known``: the
    names allowed (default: :func:`corruption_names`), ``what`` names them in errors."""
    if corruption is None:
        if severity != 0:
            raise ValueError(f"severity={severity!r} was given without a {what}")
        return (), ()
    corruptions = (corruption,) if isinstance(corruption, str) else tuple(corruption)
    severities = (severity,) if isinstance(severity, int | np.integer) else tuple(severity)
    known = tuple(corruption_names() if known is None else known)
    for name in corruptions:
        if name not in known:
            raise ValueError(f"{what} must be one of {known}, got {name!r}")
    for level in severities:
        if isinstance(level, bool) or not isinstance(level, int | np.integer):
            raise ValueError(f"severity must be an int in 1..{MAX_SEVERITY}, got {level!r}")
        if not 1 <= level <= MAX_SEVERITY:
            raise ValueError(f"severity must be an int in 1..{MAX_SEVERITY}, got {level!r}")
    if not corruptions or not severities:
        raise ValueError(f"{what} and severity sequences must not be empty")
    return corruptions, tuple(int(level) for level in severities)


@functools.cache
def corruption_names() -> tuple[str, ...]:
    """The names ``imagecorruptions`` knows (all 19), in its order."""
    import imagecorruptions

    return tuple(imagecorruptions.get_corruption_names("all"))


@contextmanager
def _global_numpy_seed(seed: int) -> Iterator[None]:
    """Seed NumPy's global RNG (imagecorruptions uses it) and restore it afterwards."""
    state = np.random.get_state()  # noqa: NPY002
    np.random.seed(seed)  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def corrupt(image: np.ndarray, name: str, severity: int, key: np.random.SeedSequence):
    """Apply corruption ``name`` to uint8 ``(H, W, 3)``; returns uint8 ``(H, W, 3)``.

    Corruptions with pixel-sized parameters (blurs, snow, frost, fog, spatter, elastic) were
    tuned for >= 224 px images: small scenes are upsampled so that their shorter side is
    ``CORRUPTION_RESOLUTION``,
    corrupted and area-downsampled back, so e.g. a frost crop or a motion blur covers the
    same fraction of the scene at every ``size``.
    """
    import imagecorruptions

    height, width = image.shape[:2]
    work = image
    if name not in _SCALE_FREE and min(height, width) < CORRUPTION_RESOLUTION:
        scale = CORRUPTION_RESOLUTION / min(height, width)  # the shorter side becomes 224
        shape = (round(width * scale), round(height * scale))
        work = np.asarray(Image.fromarray(image).resize(shape, Image.BILINEAR))
    seed = int(key.generate_state(1)[0])
    kwargs = {"seed": seed} if name in _SEEDED else {}
    with _global_numpy_seed(seed):
        out = imagecorruptions.corrupt(work, severity=severity, corruption_name=name, **kwargs)
    out = np.asarray(out, dtype=np.uint8)
    if out.shape != work.shape:
        raise RuntimeError(f"corruption {name} returned shape {out.shape}, expected {work.shape}")
    if work is not image:
        out = np.asarray(Image.fromarray(out).resize((width, height), Image.BOX))
    return out


def pick_in_turn(index: int, names: Sequence[str], severities: Sequence[int]) -> tuple[str, int]:
    """``(name, severity)`` of scene ``index`` when the names take turns, each at the
    severities in turn: ``names[index % n]`` at ``severities[(index // n) % len(severities)]``,
    so every pair occurs equally often."""
    return names[index % len(names)], severities[(index // len(names)) % len(severities)]


def corrupt_in_turn(
    image: np.ndarray,
    index: int,
    corruptions: Sequence[str],
    severities: Sequence[int],
    key: Sequence[int],
    salt: Sequence[int] = (),
) -> np.ndarray:
    """Scene ``index`` of a run shifted Cityscapes-C style: the corruptions in turn, each
    at the severities in turn, so every (type, severity) pair occurs equally often. The
    random state comes from ``key`` (the scene's seed words), the corruption's number and
    severity, then ``salt`` (which keeps another world's draws apart)."""
    name, level = pick_in_turn(index, corruptions, severities)
    number = 1 + corruption_names().index(name)
    seed = np.random.SeedSequence([*key, number, level, *salt])
    return corrupt(image, name, level, seed)
