"""Train a segmenter of the zoo (``flowenedet.zoo.SEGMENTERS``) and ship its weights.

Trains ``flowenedet.zoo.build_reference_segmenter(name=segmenter)`` from scratch on CPU on
its world's training scenes, evaluates it on the clean test split, on training scenes and
on a few corrupted test sets, and writes its weights file in ``flowenedet/zoo/`` (e.g.
``street.safetensors``, plus a ``.json`` card) atomically, with the architecture, the
training command, the seed and the metrics in the safetensors header. Run from the
repository root::

    python -m benchmarks.train_segmenter --steps 3000 --scenes 4000 --seed 0
    python -m benchmarks.train_segmenter --segmenter street --steps 5000 --scenes 20000 \
        --batch-size 4 --hflip --threads 1 --log /tmp/street_train.log

``--segmenter`` names an entry of the zoo (default ``digits``); ``--world W`` is short for
the reference segmenter of world ``W``. The digits world's scenes are generated up front;
the larger worlds' scenes are generated batch by batch as training reaches them (scene
``i`` is the same whenever it is made), and with ``--checkpoint-every`` the weights so far
are written to ``--checkpoint``. Deterministic for a given seed and thread count
(``--threads``, default 2).
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

from flowenedet import io
from flowenedet.evaluation.worlds import world_module
from flowenedet.evaluation.worlds.scenes import SceneSet
from flowenedet.labels import IGNORE_INDEX
from flowenedet.progress import progress_bar
from flowenedet.zoo import segmenter as zoo

logger = logging.getLogger("train_segmenter")

ZOO_DIR = Path(zoo.__file__).resolve().parent
SHIFTS = (("gaussian_noise", 3), ("motion_blur", 3), ("fog", 3), ("jpeg_compression", 3))
WORLD_SHIFTS = {
    "aerial": (("sensor_noise", 3), ("haze", 3), ("colour_cast", 3), ("resolution_loss", 3))
}
"""The corrupted test sets of the evaluation: :data:`SHIFTS` unless the world has its own."""
UP_FRONT = ("digits", "aerial")
"""Worlds whose training scenes are generated once, up front (small scenes); the others'
are made batch by batch."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--segmenter",
        choices=tuple(zoo.SEGMENTERS),
        default=None,
        help="the zoo entry to train (default: --world's reference, digits without --world)",
    )
    p.add_argument(
        "--world", choices=tuple(zoo.REFERENCES), default=None, help="train this world's reference"
    )
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
    p.add_argument(
        "--rot90",
        action="store_true",
        help="random rotations by multiples of 90 degrees, one per batch (top-down views)",
    )
    p.add_argument(
        "--crop",
        type=int,
        default=0,
        help="after rescaling, a random window of at most this side (0: none)",
    )
    p.add_argument("--eval-scenes", type=int, default=500, help="scenes per evaluation set")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="weights file (default: the zoo's)")
    p.add_argument("--checkpoint", type=Path, default=None, help="partial weights file")
    p.add_argument("--checkpoint-every", type=int, default=0, help="steps (0: never)")
    p.add_argument("--log", type=Path, default=None, help="also log progress to this file")
    p.add_argument(
        "--evaluate",
        type=Path,
        default=None,
        metavar="WEIGHTS",
        help="no training: evaluate these weights again and write them with fresh metrics "
        "to --out (their card's training record is kept)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    name = zoo.reference_name(args.world or "digits", args.segmenter)
    if args.world is not None and zoo.SEGMENTERS[name].world != args.world:
        p.error(f"--segmenter {name} belongs to the {zoo.SEGMENTERS[name].world} world, not to "
                f"--world {args.world}")  # fmt: skip
    args.segmenter, args.world = name, zoo.SEGMENTERS[name].world
    if args.out is None:
        args.out = ZOO_DIR / zoo.SEGMENTERS[name].weights_file
    for name in ("steps", "scenes", "batch_size", "eval_scenes", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.min_scale <= args.max_scale:
        p.error(f"need 0 < --min-scale <= --max-scale, got {args.min_scale}, {args.max_scale}")
    return args


def command_line(args: argparse.Namespace) -> str:
    """The canonical command reproducing this run (every training option spelled out)."""
    parts = ["python -m benchmarks.train_segmenter"]
    if args.segmenter != "digits":
        parts.append(f"--segmenter {args.segmenter}")
    for name in ("steps", "scenes", "seed", "data_seed", "batch_size", "lr", "weight_decay"):
        parts.append(f"--{name.replace('_', '-')} {getattr(args, name)}")
    parts.append(f"--min-scale {args.min_scale} --max-scale {args.max_scale}")
    parts.append(f"--threads {args.threads}")
    if args.crop:
        parts.append(f"--crop {args.crop}")
    for flag in ("hflip", "rot90"):
        if getattr(args, flag):
            parts.append(f"--{flag}")
    return " ".join(parts)


def augment(
    images: Tensor, labels: Tensor, gen: torch.Generator, args: argparse.Namespace
) -> tuple[Tensor, Tensor]:
    """Random rescale of the batch (aspect kept, sides rounded to 8 px), then optionally a
    random window of at most ``args.crop`` x ``args.crop`` px, a rotation by a multiple of
    90 degrees (one per batch) and horizontal flips (per image).

    images float ``(B, 3, H, W)``, labels int64 ``(B, H, W)`` -> the same at the new size.
    """
    scale = args.min_scale + (args.max_scale - args.min_scale) * torch.rand((), generator=gen)
    size = tuple(max(32, 8 * round(side * float(scale) / 8)) for side in images.shape[-2:])
    if size != tuple(images.shape[-2:]):
        images = F.interpolate(
            images, size=size, mode="bilinear", align_corners=False, antialias=True
        )
        labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")
        labels = labels[:, 0].long()
    height, width = images.shape[-2:]
    crop_h, crop_w = min(height, args.crop or height), min(width, args.crop or width)
    if (crop_h, crop_w) != (height, width):  # a random window of at most crop x crop
        top = int(torch.randint(height - crop_h + 1, (), generator=gen))
        left = int(torch.randint(width - crop_w + 1, (), generator=gen))
        images = images[..., top : top + crop_h, left : left + crop_w]
        labels = labels[..., top : top + crop_h, left : left + crop_w]
    if args.rot90:
        turns = int(torch.randint(4, (), generator=gen))
        images, labels = images.rot90(turns, (-2, -1)), labels.rot90(turns, (-2, -1))
        images, labels = images.contiguous(), labels.contiguous()
    if args.hflip:
        flip = torch.rand(images.shape[0], generator=gen) < 0.5
        images[flip] = images[flip].flip(-1)
        labels[flip] = labels[flip].flip(-1)
    return images, labels


def init_classifier_bias(model: nn.Module, labels: Tensor) -> None:
    """Start the classifier at the class log-frequencies of ``labels`` (skips the phase in
    which a randomly initialised head only learns that most pixels are background)."""
    k = model.num_classes
    freq = torch.bincount(labels[labels < k], minlength=k).double() + 1.0
    with torch.no_grad():
        model.classifier.bias.copy_((freq / freq.sum()).log().float())


class Batches:
    """Training batches ``(images uint8 (B, 3, H, W), labels (B, H, W))`` in a seeded order:
    from scenes made up front (``scenes``), or made on demand by index (``make``)."""

    def __init__(self, args: argparse.Namespace, gen: torch.Generator, scenes=None, make=None):
        self.args, self.gen, self.scenes, self.make = args, gen, scenes, make
        self.order = torch.randperm(args.scenes, generator=gen)
        self.cursor = 0

    def next(self) -> tuple[Tensor, Tensor]:
        if self.cursor + self.args.batch_size > len(self.order):
            self.order, self.cursor = torch.randperm(self.args.scenes, generator=self.gen), 0
        idx = self.order[self.cursor : self.cursor + self.args.batch_size]
        self.cursor += self.args.batch_size
        if self.scenes is not None:
            return self.scenes.images[idx], self.scenes.labels[idx]
        parts = [self.make(int(i)) for i in idx]
        return torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])


def train(
    model: nn.Module,
    batches: Batches,
    args: argparse.Namespace,
    bias_labels: Tensor,
    checkpoint=None,
) -> list[float]:
    """AdamW with linear warm-up and cosine decay; cross-entropy ignoring ``IGNORE_INDEX``.

    ``checkpoint(model, step)`` is called every ``args.checkpoint_every`` steps."""
    gen = batches.gen
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
    init_classifier_bias(model, bias_labels)
    model.train()
    losses: list[float] = []
    started = time.perf_counter()
    bar = progress_bar(
        range(args.steps), desc="train", unit="step", progress=False if args.no_progress else None
    )
    for step in bar:
        images, labels = batches.next()
        images, labels = augment(images.float().div_(255.0), labels, gen, args)
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
        if step % 100 == 99 or step == args.steps - 1:
            elapsed = time.perf_counter() - started
            logger.info(
                "step %d/%d loss %.4f lr %.2e %.0f s (%.2f s/step)",
                step + 1, args.steps, np.mean(losses[-100:]), sched.get_last_lr()[0],
                elapsed, elapsed / (step + 1),
            )  # fmt: skip
        if checkpoint and args.checkpoint_every and (step + 1) % args.checkpoint_every == 0:
            model.eval()
            checkpoint(model, step + 1)
            model.train()
    model.eval()
    return losses


def boundary_band(pred: Tensor, width: int = 2) -> Tensor:
    """Pixels within ``width`` px (Chebyshev) of a predicted class boundary: bool ``(B, H, W)``
    for predictions ``(B, H, W)`` (a boundary pixel differs from a 4-neighbour)."""
    edge = torch.zeros_like(pred, dtype=torch.bool)
    edge[:, 1:] |= pred[:, 1:] != pred[:, :-1]
    edge[:, :-1] |= pred[:, 1:] != pred[:, :-1]
    edge[:, :, 1:] |= pred[:, :, 1:] != pred[:, :, :-1]
    edge[:, :, :-1] |= pred[:, :, 1:] != pred[:, :, :-1]
    band = F.max_pool2d(edge[:, None].float(), 2 * width + 1, stride=1, padding=width)
    return band[:, 0] > 0


@torch.no_grad()
def confusion_matrix(
    model: nn.Module, scenes: SceneSet, batch_size: int = 16, progress: bool = True
) -> tuple[np.ndarray, int]:
    """``(K, K)`` counts (rows: truth, columns: prediction) over valid in-distribution
    pixels, and how many of the wrong ones lie within 2 px of a predicted boundary.

    Logits are upsampled bilinearly to the label resolution before the argmax.
    """
    model.eval()
    k = model.num_classes
    counts = torch.zeros(k * k, dtype=torch.int64)
    near_boundary = 0
    for start in progress_bar(
        range(0, len(scenes), batch_size), desc="eval", progress=None if progress else False
    ):
        images = scenes.images[start : start + batch_size].float().div_(255.0)
        labels = scenes.labels[start : start + batch_size]
        logits = model(images)
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        pred = logits.argmax(1)
        valid = labels < k  # drops OOD_INDEX and IGNORE_INDEX
        counts += torch.bincount(labels[valid] * k + pred[valid], minlength=k**2)
        near_boundary += int((valid & (pred != labels) & boundary_band(pred)).sum())
    return counts.view(k, k).numpy(), near_boundary


def summarize(conf: np.ndarray, near_boundary: int, class_names) -> dict[str, Any]:
    """Pixel accuracy, mIoU, error share, the share of errors within 2 px of a predicted
    boundary and per-class IoU from a confusion matrix."""
    hits = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - hits
    iou = np.where(union > 0, hits / np.maximum(union, 1), np.nan)
    accuracy = hits.sum() / conf.sum()
    errors = conf.sum() - hits.sum()
    out = {
        "pixel_accuracy": round(float(accuracy), 6),
        "miou": round(float(np.nanmean(iou)), 6),
        "error_share": round(float(1 - accuracy), 6),
        "errors_near_boundary": round(float(near_boundary / max(errors, 1)), 6),
        "valid_pixels": int(conf.sum()),
        "iou": {name: round(float(v), 4) for name, v in zip(class_names, iou, strict=True)},
    }
    if class_names[0] == "background":  # the digits world: accuracy on the digits alone
        out["digit_pixel_accuracy"] = round(float(hits[1:].sum() / max(conf[1:].sum(), 1)), 6)
    return out


def evaluate(model: nn.Module, args: argparse.Namespace, seen: SceneSet) -> dict[str, Any]:
    """Metrics on the clean test split, training scenes ``seen`` and corrupted test sets."""
    data = world_module(args.world)
    names = data.CLASS_NAMES
    progress = not args.no_progress
    n = args.eval_scenes
    metrics: dict[str, Any] = {}
    test = data.make_scenes("test", n, seed=args.data_seed, progress=progress)
    metrics["clean_test"] = {"scenes": n, **summarize(*confusion_matrix(model, test), names)}
    logger.info("clean test: %s", metrics["clean_test"])
    metrics["train"] = {"scenes": len(seen), **summarize(*confusion_matrix(model, seen), names)}
    shifted = {}
    for name, severity in WORLD_SHIFTS.get(args.world, SHIFTS):
        data_set = data.make_scenes(
            "test", n, seed=args.data_seed, corruption=name, severity=severity, progress=progress
        )
        conf, near = confusion_matrix(model, data_set, progress=False)
        result = summarize(conf, near, names)
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


def make_card(args: argparse.Namespace, model: nn.Module) -> dict[str, Any]:
    """The header of the weights file, without training record and metrics."""
    data = world_module(args.world)
    entry = zoo.SEGMENTERS[args.segmenter]
    architecture = entry.architecture
    stride = model.stride
    title = f"{architecture['backbone']} + {model.decoder_name}, stride {stride}"
    return {
        "architecture_name": f"{entry.model}({title})",
        "architecture": dict(architecture),
        "parameters": sum(p.numel() for p in model.parameters()),
        "class_names": list(data.CLASS_NAMES),
        "input": "float RGB (B, 3, H, W) in [0, 1], ImageNet normalisation inside",
        "output": f"logits (B, {data.NUM_CLASSES}, H/{stride}, W/{stride}), not upsampled",
        "training_command": command_line(args),
        "seed": args.seed,
        "data_seed": args.data_seed,
    }


def evaluate_again(args: argparse.Namespace) -> dict[str, Any]:
    """``--evaluate``: fresh metrics for trained weights (e.g. after the world changed)."""
    tensors, card, _ = io.load_file(
        args.evaluate,
        kind=zoo.FORMAT,
        version=zoo.FORMAT_VERSION,
        legacy_versions=zoo.LEGACY_VERSIONS,
    )
    model = zoo.model_class(zoo.SEGMENTERS[args.segmenter].model)(**card["architecture"])
    model.load_state_dict(tensors, strict=True)
    model.eval()
    data = world_module(args.world)
    seen = data.make_scenes("train", args.eval_scenes, seed=card["data_seed"])
    args.data_seed = card["data_seed"]
    card["metrics"] = evaluate(model, args, seen)
    card.pop("partial", None)
    save(model, card, args.out)
    logger.info("wrote %s with fresh metrics", args.out)
    print(json.dumps(card["metrics"], indent=2))
    return card


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.log is not None:
        handler = logging.FileHandler(args.log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    torch.set_num_threads(args.threads)
    if args.evaluate is not None:
        return evaluate_again(args)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    data = world_module(args.world)
    progress = not args.no_progress
    model = zoo.build_reference_segmenter(name=args.segmenter)
    gen = torch.Generator().manual_seed(args.seed)
    if args.world in UP_FRONT:  # small scenes: all of them up front
        train_set = data.make_scenes("train", args.scenes, seed=args.data_seed, progress=progress)
        batches = Batches(args, gen, scenes=train_set)
        bias_labels = train_set.labels
        seen = SceneSet(*(t[: args.eval_scenes] for t in (train_set.images, train_set.labels)),
                        "train", args.data_seed)  # fmt: skip
    else:

        def make(index: int) -> tuple[Tensor, Tensor]:
            image, label, _ = data.render_scene("train", index, args.data_seed)
            return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(label)

        batches = Batches(args, gen, make=make)
        seen = data.make_scenes("train", min(args.eval_scenes, args.scenes), seed=args.data_seed)
        bias_labels = seen.labels
    card = make_card(args, model)
    logger.info("training %s (%d parameters) on %s", card["architecture_name"],
                card["parameters"], f"{args.scenes} {args.world} scenes")  # fmt: skip
    checkpoint_path = args.checkpoint or args.out.with_name(args.out.stem + ".partial.safetensors")

    def checkpoint(model: nn.Module, step: int) -> None:
        save(model, {**card, "partial": {"steps": step, "of": args.steps}}, checkpoint_path)
        logger.info("checkpoint at step %d: %s", step, checkpoint_path)

    t0 = time.perf_counter()
    losses = train(model, batches, args, bias_labels, checkpoint)
    train_seconds = time.perf_counter() - t0
    metrics = evaluate(model, args, seen)
    card["training"] = {
        "scenes": args.scenes,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "final_loss": round(float(np.mean(losses[-50:])), 5),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "threads": args.threads,
        "torch": torch.__version__,
        "timm": timm.__version__,
    }
    card["metrics"] = metrics
    save(model, card, args.out)
    logger.info("wrote %s (%.2f MB)", args.out, args.out.stat().st_size / 2**20)
    print(json.dumps({"training": card["training"], "metrics": metrics}, indent=2))
    return card


if __name__ == "__main__":
    main(sys.argv[1:])
