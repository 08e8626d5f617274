"""Sizes and fixed settings of one benchmark run: :class:`BenchConfig` and its presets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .worlds import WORLDS
from .worlds.aerial_shift import SHIFTS as AERIAL_SHIFTS

__all__ = [
    "CORRUPTIONS",
    "FEATURE_LAYER",
    "FULL_BENCH",
    "REFERENCE_SML_SIZES",
    "WORLDS",
    "WORLD_SHIFTS",
    "BenchConfig",
    "sml_postprocess",
]

REFERENCE_SML_SIZES = {"boundary_width": 4, "boundary_iterations": 4, "dilation": 6}
"""SML's post-processing in the reference release, in image pixels at full resolution."""


def sml_postprocess(stride: float) -> dict[str, int]:
    """SML's post-processing sizes converted to logit pixels at ``stride``: each reference
    size divided by the stride, rounded, at least 1 (stride 4: width 1, 1 iteration,
    dilation 2; stride 8: 1, 1, 1)."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return {name: max(1, round(size / stride)) for name, size in REFERENCE_SML_SIZES.items()}


FEATURE_LAYER = "classifier:input"
CORRUPTIONS = (
    "snow",
    "fog",
    "frost",
    "motion_blur",
    "gaussian_noise",
    "brightness",
    "contrast",
    "jpeg_compression",
)
WORLD_SHIFTS: dict[str, tuple[str, ...]] = {
    "digits": CORRUPTIONS,
    "street": CORRUPTIONS,
    "aerial": AERIAL_SHIFTS,
}
"""``{world: shifts of its validation and test splits}``: the digits and street worlds use
``imagecorruptions`` types, the aerial world its own shifts
(:mod:`flowenedet.evaluation.worlds.aerial_shift`), which no other world uses."""


@dataclass
class BenchConfig:
    """Sizes of one benchmark run.

    ``shift``: the corruption types of the shifted validation and test splits
    (``val/shifted``, ``test/shifted``), Cityscapes-C style: each scene gets one type at
    one severity 1-4, every pair once in each run of ``4 * len(shift)`` scenes (empty: no
    shifted splits). ``corruptions``: further test splits of one ``(type, severity)`` each, the
    per-corruption breakdown. ``shift`` left at None is the world's own
    (:data:`WORLD_SHIFTS`). The detectors are fitted as a user fits them: on a loader of
    the clean training scenes, with the library's defaults. ``world``: one of :data:`WORLDS`;
    ``size``: its scene size (None: the world's default, 96, 256 x 512 or 256 x 256);
    ``segmenter``: a name of :data:`flowenedet.zoo.SEGMENTERS` trained on ``world`` (None:
    the world's reference, e.g. ``"street-s8"`` for the street world's stride-8 check).
    """

    train_scenes: int = 300
    val_scenes: int = 80
    test_scenes: int = 120
    steps: int | None = None  # None: the detector's default budget (config.DEFAULT_STEPS)
    batch_size: int = 16
    seed: int = 0
    mc_samples: int = 4
    shift: Sequence[str] | None = None
    corruptions: Sequence[tuple[str, int]] = ()
    progress: bool | None = None  # bars: None = when stderr is a terminal
    world: str = "digits"
    size: int | tuple[int, int] | None = None
    segmenter: str | None = None

    def __post_init__(self) -> None:
        if self.world not in WORLDS:
            raise ValueError(f"world must be one of {WORLDS}, got {self.world!r}")
        if self.shift is None:
            self.shift = WORLD_SHIFTS[self.world]
        if self.segmenter is not None:
            from ..zoo.segmenter import SEGMENTERS

            entry = SEGMENTERS.get(self.segmenter)
            if entry is None or entry.world != self.world:
                names = tuple(n for n, e in SEGMENTERS.items() if e.world == self.world)
                raise ValueError(
                    f"segmenter must be one of {names} (the {self.world} world's), got "
                    f"{self.segmenter!r}"
                )


FULL_BENCH = BenchConfig(
    train_scenes=1000,
    val_scenes=200,
    test_scenes=300,
    corruptions=tuple((c, s) for c in CORRUPTIONS for s in (1, 2, 3, 4)),
)
"""What :func:`run_bench` (``flowenedet bench``) runs: the shifted splits, and every
corruption at severities 1-4 as a split of its own."""
