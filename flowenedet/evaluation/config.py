"""Sizes and fixed settings of one benchmark run: :class:`BenchConfig` and its presets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CORRUPTIONS", "FEATURE_LAYER", "FIT_CORRUPTIONS", "FULL_BENCH", "BenchConfig"]

# Chosen on the validation splits (docs/benchmarks.md). The reference segmenter's logits
# are 24x24: the reference release's sizes (boundary width 4, dilation 6, made for
# 256x512 maps) wipe out whole objects, and even width 1 or plain 3x3 smoothing lowers
# FlowEneDet's AP there. So no boundary suppression, idm and concurrent unsmoothed, and
# the ood map smoothed (5x5, sigma 1.5) with its peaks kept: small objects keep their
# score, and their weak pixels borrow from strong neighbours.
SMALL_MAP_POSTPROCESS = {
    "boundary_width": 0,
    "boundary_iterations": 1,
    "ood_dilation": 1,
    "smooth_kernel": 1,
    "ood_smooth_kernel": 5,
    "ood_smooth_sigma": 1.5,
    "ood_keep_peaks": True,
}
# SML's own post-processing, the smallest that still does something on 24x24 maps.
SML_POSTPROCESS = {"boundary_width": 1, "boundary_iterations": 1, "dilation": 1}
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
# Shifts the detectors are also fitted on (a corrupted copy of every training scene, each
# type at severities 1-4 in turn): imagecorruptions types that no test split uses, so the
# test shifts stay unseen. Chosen on validation (docs/benchmarks.md); glass_blur is left
# out only for its run time.
FIT_CORRUPTIONS = (
    "shot_noise",
    "impulse_noise",
    "speckle_noise",
    "defocus_blur",
    "zoom_blur",
    "gaussian_blur",
    "spatter",
    "saturate",
    "elastic_transform",
    "pixelate",
)


@dataclass
class BenchConfig:
    """Sizes of one benchmark run.

    ``shift``: the corruption types of the shifted validation and test splits
    (``val/shifted``, ``test/shifted``), Cityscapes-C style: each scene gets one type at
    one severity 1-4, every pair once in each run of ``4 * len(shift)`` scenes (empty: no
    shifted splits). ``corruptions``: further test splits of one ``(type, severity)`` each, the
    per-corruption breakdown. ``fit_corruptions``: the shifts of the detectors' extra
    training copies, which no test split may use.
    """

    train_scenes: int = 300
    val_scenes: int = 80
    test_scenes: int = 120
    steps: int = 400
    batch_size: int = 16
    pixels_per_image: int = 256
    seed: int = 0
    mc_samples: int = 4
    shift: Sequence[str] = CORRUPTIONS
    corruptions: Sequence[tuple[str, int]] = ()
    fit_corruptions: Sequence[str] = FIT_CORRUPTIONS
    progress: bool = True

    def __post_init__(self) -> None:
        tested = {name for name, _ in self.corruptions} | set(self.shift)
        tested &= set(self.fit_corruptions)
        if tested:
            raise ValueError(
                f"fit_corruptions {sorted(tested)} are also test corruptions: the detectors "
                "would be fitted on the very shift they are tested on"
            )


FULL_BENCH = BenchConfig(
    train_scenes=1000,
    val_scenes=200,
    test_scenes=300,
    steps=800,
    corruptions=tuple((c, s) for c in CORRUPTIONS for s in (1, 2, 3, 4)),
)
"""What :func:`run_bench` (``flowenedet bench``) runs: the shifted splits, and every
corruption at severities 1-4 as a split of its own."""
