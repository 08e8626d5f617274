"""``flowenedet score``: IDM / OOD heat maps, overlays and float16 arrays for image files."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .. import io
from ..data.files import load_image
from ..detector import MAPS
from .dataset import normalise
from .errors import CLIError, require_file, require_output_dir
from .segmenter import load_detector, load_segmenter, select_device

__all__ = ["IMAGE_EXTENSIONS", "cmd_score"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _input_images(inputs: Sequence[str], recursive: bool) -> list[tuple[str, Path]]:
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


def _colormap(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """Scores ``(H, W)`` in [0, 1] -> uint8 RGB ``(H, W, 3)`` with the matplotlib colormap."""
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
    return lambda scores: (cmap(np.clip(scores, 0.0, 1.0))[..., :3] * 255).round().astype(np.uint8)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    io.atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"))


def _write_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array.astype(np.float16))

    io.atomic_write(path, write)


def cmd_score(args: argparse.Namespace) -> int:
    """Write IDM / OOD heat maps, overlays and float16 arrays for images."""
    require_file(args.detector, "--detector")
    require_output_dir(args.out, "--out")
    items = _input_images(args.inputs, args.recursive)
    heat = _colormap(args.colormap) if "png" in args.format else None
    device = select_device(args.device)
    detector = load_detector(args, load_segmenter(args, device))
    out = Path(args.out)
    for name, path in tqdm(items, desc="scoring", unit="image", disable=not args.progress):
        try:
            rgb = np.asarray(load_image(path, "input").convert("RGB"))
        except ValueError as error:
            raise CLIError(str(error)) from None
        image = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255.0
        maps = detector.score(normalise(image, args.mean, args.std).to(device), scales=args.scales)
        arrays = {kind: getattr(maps, kind)[0].float().cpu().numpy() for kind in MAPS}
        if "npy" in args.format:
            for kind, scores in arrays.items():
                _write_npy(out / f"{name}_{kind}.npy", scores)
        if heat is not None:
            pictures = {kind: heat(scores) for kind, scores in arrays.items()}
            alpha = args.alpha * np.clip(arrays["ood"], 0.0, 1.0)[..., None]
            blend = (1.0 - alpha) * rgb + alpha * pictures["ood"]
            pictures["overlay"] = blend.round().astype(np.uint8)
            for kind, picture in pictures.items():
                _write_png(out / f"{name}_{kind}.png", picture)
    print(f"wrote {'/'.join(args.format)} maps of {len(items)} image(s) to {out}")
    return 0
