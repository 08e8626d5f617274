"""Train the reference segmenter of the embedded benchmark and ship its weights.

Trains ``flowenedet.zoo.build_reference_segmenter()`` from scratch on CPU on
``make_scenes("train", N)``, evaluates it on the clean test split, on the training scenes
and on a few corrupted test sets, and writes ``flowenedet/zoo/digits.safetensors`` (plus a
``digits.json`` card) atomically, with the architecture, the training command, the seed
and the metrics in the safetensors header. Run from the repository root::

    python -m benchmarks.train_segmenter --steps 3000 --scenes 4000 --seed 0

Deterministic for a given seed and thread count (``--threads``, default 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from flowenedet import io
from flowenedet.data.embedded import CLASS_NAMES, NUM_CLASSES, SceneSet, make_scenes
from flowenedet.labels import IGNORE_INDEX
from flowenedet.zoo import segmenter as zoo

logger = logging.getLogger("train_segmenter")

DEFAULT_OUT = Path(zoo.__file__).resolve().parent / zoo.WEIGHTS_FILE
SHIFTS = (("gaussian_noise", 3), ("motion_blur", 3), ("fog", 3), ("jpeg_compression", 3))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps")
    p.add_argument("--scenes", type=int, default=4000, help="training scenes")
    p.add_argument("--seed", type=int, default=0, help="init / batch order / augmentation")
    p.add_argument("--data-seed", type=int, default=0, help="seed of make_scenes")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--min-scale", type=float, default=0.75, help="random rescale range")
    p.add_argument("--max-scale", type=float, default=1.25)
    p.add_argument(
        "--hflip",
        action="store_true",
        help="random horizontal flips (off by default: a mirrored digit is not a digit)",
    )
    p.add_argument("--eval-scenes", type=int, default=500, help="scenes per evaluation set")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="weights file to write")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    for name in ("steps", "scenes", "batch_size", "eval_scenes", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.min_scale <= args.max_scale:
        p.error(f"need 0 < --min-scale <= --max-scale, got {args.min_scale}, {args.max_scale}")
    return args


def command_line(args: argparse.Namespace) -> str:
    """The canonical command reproducing this run (every training option spelled out)."""
    parts = ["python -m benchmarks.train_segmenter"]
    for name in ("steps", "scenes", "seed", "data_seed", "batch_size", "lr", "weight_decay"):
        parts.append(f"--{name.replace('_', '-')} {getattr(args, name)}")
    parts.append(f"--min-scale {args.min_scale} --max-scale {args.max_scale}")
    parts.append(f"--threads {args.threads}")
    if args.hflip:
        parts.append("--hflip")
    return " ".join(parts)


def augment(
    images: Tensor, labels: Tensor, gen: torch.Generator, args: argparse.Namespace
) -> tuple[Tensor, Tensor]:
    """Random rescale of the batch (side rounded to 8 px) and optional horizontal flips.

    images float ``(B, 3, S, S)``, labels int64 ``(B, S, S)`` -> the same at the new size.
    """
    scale = args.min_scale + (args.max_scale - args.min_scale) * torch.rand((), generator=gen)
    side = max(32, 8 * round(images.shape[-1] * float(scale) / 8))
    if side != images.shape[-1]:
        images = F.interpolate(
            images, size=(side, side), mode="bilinear", align_corners=False, antialias=True
        )
        labels = F.interpolate(labels[:, None].float(), size=(side, side), mode="nearest")
        labels = labels[:, 0].long()
    if args.hflip:
        flip = torch.rand(images.shape[0], generator=gen) < 0.5
        images[flip] = images[flip].flip(-1)
        labels[flip] = labels[flip].flip(-1)
    return images, labels


def init_classifier_bias(model: nn.Module, scenes: SceneSet) -> None:
    """Start the classifier at the class log-frequencies of ``scenes`` (skips the phase in
    which a randomly initialised head only learns that most pixels are background)."""
    labels = scenes.labels[scenes.labels < NUM_CLASSES]
    freq = torch.bincount(labels, minlength=NUM_CLASSES).double() + 1.0
    with torch.no_grad():
        model.classifier.bias.copy_((freq / freq.sum()).log().float())


def train(model: nn.Module, scenes: SceneSet, args: argparse.Namespace) -> list[float]:
    """AdamW with linear warm-up and cosine decay; cross-entropy ignoring ``IGNORE_INDEX``."""
    gen = torch.Generator().manual_seed(args.seed)
    decay = [p for p in model.parameters() if p.dim() > 1]  # conv weights; not norms, biases
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay}],
        lr=args.lr,
        weight_decay=0.0,
    )
    warmup = max(1, args.steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    init_classifier_bias(model, scenes)
    model.train()
    order = torch.randperm(len(scenes), generator=gen)
    cursor, losses = 0, []
    bar = tqdm(range(args.steps), desc="train", unit="step", disable=args.no_progress)
    for step in bar:
        if cursor + args.batch_size > len(order):
            order, cursor = torch.randperm(len(scenes), generator=gen), 0
        idx = order[cursor : cursor + args.batch_size]
        cursor += args.batch_size
        images = scenes.images[idx].float().div_(255.0)
        images, labels = augment(images, scenes.labels[idx], gen, args)
        logits = model(images)
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    model.eval()
    return losses


@torch.no_grad()
def confusion_matrix(
    model: nn.Module, scenes: SceneSet, batch_size: int = 64, progress: bool = True
) -> np.ndarray:
    """``(K, K)`` counts (rows: truth, columns: prediction) over valid in-distribution pixels.

    Logits are upsampled bilinearly to the label resolution before the argmax.
    """
    model.eval()
    counts = torch.zeros(NUM_CLASSES * NUM_CLASSES, dtype=torch.int64)
    for start in tqdm(range(0, len(scenes), batch_size), desc="eval", disable=not progress):
        images = scenes.images[start : start + batch_size].float().div_(255.0)
        labels = scenes.labels[start : start + batch_size]
        logits = model(images)
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        pred = logits.argmax(1)
        valid = labels < NUM_CLASSES  # drops OOD_INDEX and IGNORE_INDEX
        counts += torch.bincount(
            labels[valid] * NUM_CLASSES + pred[valid], minlength=NUM_CLASSES**2
        )
    return counts.view(NUM_CLASSES, NUM_CLASSES).numpy()


def summarize(conf: np.ndarray) -> dict[str, Any]:
    """Pixel accuracy, mIoU, error share and per-class IoU from a confusion matrix."""
    hits = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - hits
    iou = np.where(union > 0, hits / np.maximum(union, 1), np.nan)
    accuracy = hits.sum() / conf.sum()
    digits = conf[1:].sum()
    return {
        "pixel_accuracy": round(float(accuracy), 6),
        "miou": round(float(np.nanmean(iou)), 6),
        "error_share": round(float(1 - accuracy), 6),
        "digit_pixel_accuracy": round(float(hits[1:].sum() / max(digits, 1)), 6),
        "valid_pixels": int(conf.sum()),
        "iou": {name: round(float(v), 4) for name, v in zip(CLASS_NAMES, iou, strict=True)},
    }


def evaluate(model: nn.Module, args: argparse.Namespace, train_set: SceneSet) -> dict[str, Any]:
    """Metrics on the clean test split, the first training scenes and corrupted test sets."""
    progress = not args.no_progress
    n = args.eval_scenes
    metrics: dict[str, Any] = {}
    test = make_scenes("test", n, seed=args.data_seed, progress=progress)
    metrics["clean_test"] = {"scenes": n, **summarize(confusion_matrix(model, test))}
    seen = SceneSet(train_set.images[:n], train_set.labels[:n], "train", args.data_seed)
    metrics["train"] = {"scenes": len(seen), **summarize(confusion_matrix(model, seen))}
    shifted = {}
    for name, severity in SHIFTS:
        data = make_scenes(
            "test", n, seed=args.data_seed, corruption=name, severity=severity, progress=progress
        )
        result = summarize(confusion_matrix(model, data, progress=False))
        shifted[f"{name}-{severity}"] = {k: result[k] for k in ("pixel_accuracy", "miou")}
        shifted[f"{name}-{severity}"]["error_share"] = result["error_share"]
    metrics["corrupted_test"] = {"scenes": n, **shifted}
    return metrics


def save(model: nn.Module, card: dict[str, Any], out: Path) -> None:
    """Write the weights (safetensors, header = ``card``) and a JSON card, both atomically."""
    tensors = {name: value.detach() for name, value in model.state_dict().items()}
    io.save_file_atomic(out, tensors, kind=zoo.FORMAT, version=zoo.FORMAT_VERSION, config=card)
    text = json.dumps(card, indent=2, sort_keys=True) + "\n"
    io.atomic_write(out.with_suffix(".json"), lambda tmp: tmp.write_text(text))
    for path in (out, out.with_suffix(".json")):
        path.chmod(0o644)  # mkstemp creates 0600 files; package data must be world-readable


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    train_set = make_scenes(
        "train", args.scenes, seed=args.data_seed, progress=not args.no_progress
    )
    model = zoo.build_reference_segmenter()
    params = sum(p.numel() for p in model.parameters())
    logger.info(
        "training %s (%d parameters) on %d scenes", type(model).__name__, params, len(train_set)
    )
    t0 = time.perf_counter()
    losses = train(model, train_set, args)
    train_seconds = time.perf_counter() - t0
    metrics = evaluate(model, args, train_set)
    card = {
        "architecture_name": f"DigitSegmenter({zoo.REFERENCE_ARCHITECTURE['backbone']} + FPN)",
        "architecture": dict(zoo.REFERENCE_ARCHITECTURE),
        "parameters": params,
        "class_names": list(CLASS_NAMES),
        "input": "float RGB (B, 3, H, W) in [0, 1], ImageNet normalisation inside",
        "output": "logits (B, 11, H/4, W/4), not upsampled",
        "training_command": command_line(args),
        "seed": args.seed,
        "data_seed": args.data_seed,
        "training": {
            "scenes": args.scenes,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "final_loss": round(float(np.mean(losses[-50:])), 5),
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(time.perf_counter() - started, 1),
            "threads": args.threads,
            "torch": torch.__version__,
            "timm": timm.__version__,
        },
        "metrics": metrics,
    }
    save(model, card, args.out)
    logger.info("wrote %s (%.2f MB)", args.out, args.out.stat().st_size / 2**20)
    print(json.dumps({"training": card["training"], "metrics": metrics}, indent=2))
    return card


if __name__ == "__main__":
    main(sys.argv[1:])
