"""The data of ``fit`` and ``evaluate``: ``--dataset`` / ``--root``, ``--folder`` /
``--labels`` or the embedded benchmark, resized, normalised and batched."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .errors import BENCH_MODULES, CLIError, json_object, missing_extra, require_bench_extra

__all__ = ["build_dataset", "fit_augment", "make_loader", "normalise"]

DEFAULT_CROP = (512, 1024)
DEFAULT_SCALE_RANGE = (0.5, 2.0)


def normalise(images: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> Tensor:
    """``(images - mean) / std`` per RGB channel of ``(B, 3, H, W)``; ``None`` skips a step."""
    if mean is not None:
        images = images - torch.tensor(mean, dtype=images.dtype).view(1, 3, 1, 1)
    if std is not None:
        images = images / torch.tensor(std, dtype=images.dtype).view(1, 3, 1, 1)
    return images


def _collate(
    batch: list[tuple[Tensor, Tensor]], mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[Tensor, Tensor]:
    """Stack ``(image (3, H, W), label (H, W))`` items; a clear error for mixed sizes."""
    sizes = sorted({tuple(image.shape[-2:]) for image, _ in batch})
    if len(sizes) > 1:
        raise CLIError(
            f"images of one batch have different sizes {sizes}; resize them with --size "
            "or use --batch-size 1"
        )
    images = torch.stack([image for image, _ in batch])
    return normalise(images, mean, std), torch.stack([label for _, label in batch])


def _size(args: argparse.Namespace) -> int | tuple[int, int] | None:
    if not args.size:
        return None
    if len(args.size) > 2:
        raise CLIError(f"--size takes H W or one shorter side; got {args.size}")
    return args.size[0] if len(args.size) == 1 else (args.size[0], args.size[1])


def fit_augment(args: argparse.Namespace) -> Any:
    """The ``FitAugment`` of ``--augment`` / ``--crop`` / ``--scale-range``, or ``None``."""
    from ..data import FitAugment

    crop, scale = getattr(args, "crop", None), getattr(args, "scale_range", None)
    if not getattr(args, "augment", False):
        if crop is not None or scale is not None:
            given = "--crop" if crop is not None else "--scale-range"
            raise CLIError(f"{given} needs --augment")
        return None
    if crop is None:
        crop = list(DEFAULT_CROP)
    if crop == [None]:
        crop = None
        if args.batch_size != 1:
            raise CLIError(
                "--augment --crop none gives every image its own random size, so they cannot "
                f"be batched: use --batch-size 1 (got {args.batch_size}) or give --crop H W"
            )
    elif len(crop) != 2 or None in crop:
        shown = " ".join("none" if side is None else str(side) for side in crop)
        raise CLIError(f"--crop takes H W (positive integers) or none; got {shown}")
    low, high = scale if scale is not None else DEFAULT_SCALE_RANGE
    if low > high:
        raise CLIError(f"--scale-range LOW HIGH needs LOW <= HIGH; got {low:g} {high:g}")
    # pad images with the --mean colour, so padding is 0 after normalisation as in
    # mmsegmentation's pipelines (whose label padding is 255; ours is PADDING_INDEX)
    fill = tuple(args.mean) if args.mean else 0.0
    return FitAugment(
        crop=None if crop is None else (crop[0], crop[1]),
        scale=(low, high),
        hflip=True,
        seed=args.seed,
        fill=fill,
    )


def _embedded(args: argparse.Namespace, split: str | None, size: Any, transform: Any) -> Dataset:
    world = getattr(args, "world", "digits")
    if world == "digits" and isinstance(size, tuple) and size[0] != size[1]:
        raise CLIError(f"--dataset embedded makes square scenes; got --size {size}")
    require_bench_extra("--dataset embedded")
    kw = {"corruption": getattr(args, "corruption", None)}
    kw["severity"] = getattr(args, "severity", 0) or 0
    try:
        from ..evaluation.worlds import world_module

        if world == "digits":
            size = size if isinstance(size, int) or size is None else size[0]
        scenes = world_module(world).make_scenes(
            split, args.scenes, seed=args.seed, **kw, **({} if size is None else {"size": size})
        )
        scenes.transform = transform
        return scenes
    except ImportError as error:  # as the demo does: the extra named, a real bug not hidden
        module = (error.name or "").partition(".")[0]
        if module not in BENCH_MODULES:
            raise
        raise missing_extra("--dataset embedded", [module]) from None


def build_dataset(args: argparse.Namespace, split: str | None, transform: Any = None) -> Dataset:
    """The dataset of ``--dataset`` / ``--root`` or ``--folder`` / ``--labels``; ``transform``
    (e.g. :func:`fit_augment`'s) is applied to every item."""
    from ..data import DATASETS, load_dataset

    size = _size(args)
    if args.dataset == "embedded":
        return _embedded(args, split, size, transform)
    extra = json_object(args.dataset_kwargs, "--dataset-kwargs")
    if isinstance(extra.get("label_map"), dict):  # JSON keys are strings
        extra["label_map"] = {int(raw): int(ours) for raw, ours in extra["label_map"].items()}
    if size is not None:
        extra["size"] = size
    if transform is not None:
        extra["transform"] = transform
    if args.folder:
        if not args.labels:
            raise CLIError("--folder needs --labels DIR: fit and evaluate need label maps")
        extra |= {"labels": args.labels, "label_suffix": args.label_suffix}
        name, root, split = "folder", args.folder, None
    elif args.dataset:
        if args.dataset not in DATASETS or args.dataset == "folder":
            known = ", ".join(n for n in DATASETS if n != "folder")
            raise CLIError(f"--dataset {args.dataset!r} is unknown; known: {known}, embedded")
        if not args.root:
            raise CLIError(f"--dataset {args.dataset} needs --root DIR")
        if args.image_root:
            extra["image_root"] = args.image_root
        name, root = args.dataset, args.root
    else:
        raise CLIError("give the data with --dataset NAME --root DIR or --folder DIR")
    if not Path(root).is_dir():
        raise CLIError(f"{'--folder' if args.folder else '--root'} {root}: folder not found")
    return load_dataset(name, root, split, **extra)


def make_loader(dataset: Dataset, args: argparse.Namespace, **kw: Any) -> DataLoader:
    """Batches of ``--batch-size`` normalised images ``(B, 3, H, W)`` and labels ``(B, H, W)``."""
    collate = functools.partial(_collate, mean=args.mean, std=args.std)
    return DataLoader(
        dataset, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate, **kw
    )
