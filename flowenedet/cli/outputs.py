"""What ``flowenedet score`` reads and writes, whichever detector scores: the input
images, their batches by size, and per image the float16 maps, heat maps, the overlay and
the reject masks, each file written atomically. Shared by the PyTorch path
(:mod:`flowenedet.cli.score`) and the onnxruntime one (:mod:`flowenedet.cli.serve`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .. import io
from ..data.files import IMAGE_EXTENSIONS
from ..scores import MAPS
from .errors import CLIError

__all__ = [
    "colormap",
    "input_images",
    "output_files",
    "overlay_opacity",
    "pending",
    "size_batches",
    "write_mask",
    "write_outputs",
    "write_png",
]


def input_images(inputs: Sequence[str], recursive: bool) -> list[tuple[str, Path]]:
    """``(name, path)`` of every image file given or found in a given folder."""
    items: list[tuple[str, Path]] = []
    for given in map(Path, inputs):
        if given.is_dir():
            found = sorted(given.glob("**/*" if recursive else "*"))
            found = [p for p in found if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
            if not found:
                raise CLIError(
                    f"input folder {given} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
                )
            items += [(p.relative_to(given).with_suffix("").as_posix(), p) for p in found]
        elif given.is_file():
            items.append((given.stem, given))
        else:
            raise CLIError(f"input {given}: no such file or folder")
    names = [name for name, _ in items]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise CLIError(
            f"several inputs are named {clashes}; their outputs would overwrite each other"
        )
    return items


def colormap(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """Scores ``(H, W)`` -> uint8 RGB ``(H, W, 3)``: each score's percentile within the
    image (:func:`flowenedet.evaluation.plots.percentile_scale`) through the matplotlib
    colormap, so an image's highest-ranked pixels are the brightest whatever its range."""
    try:
        import matplotlib
    except ImportError:
        raise CLIError(
            "PNG heat maps need matplotlib (pip install flowenedet[bench]) or --format npy"
        ) from None
    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise CLIError(f"--colormap {name!r} is not a matplotlib colormap") from None
    from ..evaluation.plots import percentile_scale

    return lambda scores: (cmap(percentile_scale(scores))[..., :3] * 255).round().astype(np.uint8)


def write_png(path: Path, rgb: np.ndarray) -> None:
    io.atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"))


def write_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array.astype(np.float16))

    io.atomic_write(path, write)


def write_mask(out: Path, name: str, kind: str, mask: np.ndarray) -> None:
    """The reject mask ``(H, W)`` bool of map ``kind`` of image ``name``, 8-bit (255:
    rejected)."""
    write_png(out / _mask_file(name, kind), mask.astype(np.uint8) * 255)


def _mask_file(name: str, kind: str) -> str:
    return f"{name}_{kind}_mask.png"


def output_files(name: str, formats: Sequence[str], masks: Sequence[str]) -> list[str]:
    """File names ``score`` writes for the image ``name``: heat maps and the overlay (png),
    float16 maps (npy), reject masks of the calibrated ``masks`` maps."""
    files = []
    if "png" in formats:
        files += [f"{name}_{kind}.png" for kind in (*MAPS, "overlay")]
    if "npy" in formats:
        files += [f"{name}_{kind}.npy" for kind in MAPS]
    return files + [_mask_file(name, kind) for kind in masks]


def pending(
    items: list[tuple[str, Path]],
    out: Path,
    formats: Sequence[str],
    masks: Sequence[str],
    overwrite: bool,
) -> tuple[list[tuple[str, Path]], int]:
    """The ``(name, path)`` items still to score, and how many were skipped because all
    their outputs exist (none with ``overwrite``)."""
    if overwrite:
        return items, 0
    done = [all((out / f).exists() for f in output_files(n, formats, masks)) for n, _ in items]
    return [item for item, finished in zip(items, done, strict=True) if not finished], sum(done)


def overlay_opacity(ood: np.ndarray, threshold: float | None, percentile: float) -> np.ndarray:
    """Opacity ``(H, W)``, 0 or 1, of the ood tint: 1 where the map is above the calibrated
    ``threshold`` (the pixels ``--masks`` rejects), else above the image's
    ``percentile``-th percentile of the map; so a normal image stays untinted (with a
    threshold) or is tinted only at its few highest scores (without one), and what is
    tinted is tinted at full ``--alpha``, not faintly."""
    ood = np.clip(ood, 0.0, 1.0)
    low = threshold if threshold is not None else float(np.percentile(ood, percentile))
    return (ood > low).astype(np.float64)


def size_batches(paths: Sequence[Path], batch_size: int) -> list[list[int]]:
    """Indices in batches of one image size each (sizes from the file headers, in the
    order they first occur); an unreadable header gets a batch of its own."""
    if batch_size == 1:
        return [[i] for i in range(len(paths))]
    groups: dict[Any, list[int]] = {}
    for index, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                size: Any = image.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            size = ("unreadable", index)
        groups.setdefault(size, []).append(index)
    return [
        group[start : start + batch_size]
        for group in groups.values()
        for start in range(0, len(group), batch_size)
    ]


def write_outputs(
    out: Path,
    name: str,
    rgb: np.ndarray,
    arrays: dict[str, np.ndarray],
    args: argparse.Namespace,
    heat: Callable[[np.ndarray], np.ndarray] | None,
    thresholds: dict[str, float],
) -> None:
    """The float16 maps, heat maps and the overlay of one image."""
    if "npy" in args.format:
        for kind, scores in arrays.items():
            write_npy(out / f"{name}_{kind}.npy", scores)
    if heat is not None:
        pictures = {kind: heat(scores) for kind, scores in arrays.items()}
        opacity = overlay_opacity(arrays["ood"], thresholds.get("ood"), args.overlay_percentile)
        alpha = args.alpha * opacity[..., None]
        blend = (1.0 - alpha) * rgb + alpha * pictures["ood"]
        pictures["overlay"] = blend.round().astype(np.uint8)
        for kind, picture in pictures.items():
            write_png(out / f"{name}_{kind}.png", picture)
