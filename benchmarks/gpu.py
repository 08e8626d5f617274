"""Cost of FlowEneDet next to a segmenter on one accelerator: time, memory, fit throughput.

Two random-weight segmenters (cost does not depend on the weights), 19 classes:

* ``resnet50-fpn``: the ResNet-50 FPN of ``benchmarks/overhead.py``, logits at 1/4;
* ``segformer-b2``: SegFormer-B2 (``transformers``' ``SegformerForSemanticSegmentation``
  with the MiT-B2 sizes when it is installed; otherwise timm's PVTv2-B2 encoder, the same
  stage widths 64/128/320/512, depths 3/4/6/3 and 25 M parameters, under SegFormer's
  all-MLP decoder of width 768), logits at 1/4.

For each model and precision (``fp32``; ``bf16``: the segmenter under ``torch.autocast``
and the flow's networks in bf16, see ``FlowEneDet.score(autocast=)``): the segmenter's
time (forward and its prediction at input size), the detector's own time (``score_logits``
on the segmenter's outputs minus the prediction it includes), their ratio, the time of
``score`` end to end, the peak memory above the model's weights of the segmenter alone
and of ``score``, and the fit throughput: image pixels per second of one training step
(segmenter forward, flow inputs, flow step), from two short fits of different length.
FED-C (decoder features), one image per batch. Medians over ``--repeats``.

    python benchmarks/gpu.py                           # 1024x2048 on cuda, < 5 minutes
    python benchmarks/gpu.py --device cpu --size 64 128 --repeats 1   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from overhead import FPNSegmenter, measure
from torch import nn

from flowenedet import FlowEneDet
from flowenedet.postprocess import upsampled_argmax

NUM_CLASSES = 19
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


class MLPDecoderSegmenter(nn.Module):
    """A four-stage encoder (strides 4..32) under SegFormer's all-MLP decoder."""

    def __init__(self, encoder: str = "pvt_v2_b2", width: int = 768) -> None:
        super().__init__()
        self.encoder = timm.create_model(encoder, pretrained=False, features_only=True)
        channels = self.encoder.feature_info.channels()
        self.project = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(len(channels) * width, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.classifier = nn.Conv2d(width, NUM_CLASSES, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.encoder(images)
        size = features[0].shape[-2:]
        merged = [
            F.interpolate(project(f), size=size, mode="bilinear", align_corners=False)
            for project, f in zip(self.project, features, strict=True)
        ]
        return self.classifier(self.fuse(torch.cat(merged, 1)))


def segformer_b2() -> tuple[nn.Module, str]:
    """SegFormer-B2 from transformers if installed, else the timm stand-in; and its name."""
    try:
        from transformers import SegformerConfig, SegformerForSemanticSegmentation
    except ImportError:
        return MLPDecoderSegmenter(), "timm pvt_v2_b2 + all-MLP decoder"
    config = SegformerConfig(
        depths=[3, 4, 6, 3],
        hidden_sizes=[64, 128, 320, 512],
        decoder_hidden_size=768,
        num_labels=NUM_CLASSES,
    )
    return SegformerForSemanticSegmentation(config), "transformers SegFormer (MiT-B2)"


def build(name: str) -> tuple[nn.Module, str]:
    if name == "resnet50-fpn":
        return FPNSegmenter(num_classes=NUM_CLASSES), "timm resnet50 + FPN"
    return segformer_b2()


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    return statistics.median(measure(fn, device)[0] for _ in range(repeats))


def fit_step_seconds(
    segmenter: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int
) -> tuple[float, FlowEneDet]:
    """Seconds per training step, from two fits of ``steps`` and ``2 * steps`` steps (the
    statistics pass and set-up cancel in the difference), and the longer fit's detector."""
    times = []
    for total in (steps, 2 * steps):
        det = FlowEneDet(segmenter, variant="C")
        if images.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        det.fit([(images, labels)], steps=total, progress=False)
        if images.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return max(times[1] - times[0], 1e-9) / steps, det


def run_model(name: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    segmenter, description = build(name)
    segmenter = segmenter.to(device).eval()
    h, w = args.size
    images = torch.rand(1, 3, h, w, device=device)
    labels = torch.randint(0, NUM_CLASSES, (1, h, w), device=device)
    fit_s, det = fit_step_seconds(segmenter, images, labels, args.fit_steps)
    common = {"model": name, "implementation": description, "fit_pixels_per_s": h * w / fit_s}
    return [
        common | measure_precision(det, images, precision, args.repeats, device)
        for precision in args.precisions
    ]


def measure_precision(
    det: FlowEneDet,
    images: torch.Tensor,
    precision: str,
    repeats: int,
    device: torch.device,
) -> dict:
    """One row of the table: ``det`` (fitted) on ``images`` at ``precision``."""
    h, w = images.shape[-2:]
    dtype = PRECISIONS[precision]

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    @torch.no_grad()
    def segment() -> object:
        with autocast():
            return upsampled_argmax(det.segment(images)[0], (h, w))

    def score() -> object:
        return det.score(images, autocast=dtype)

    with torch.no_grad(), autocast():
        logits, features = det.segment(images)

    def detector_only() -> object:
        return det.score_logits(logits, features, size=(h, w), autocast=dtype)

    def predict_only() -> object:
        return upsampled_argmax(logits, (h, w))

    for fn in (segment, score, detector_only, predict_only):  # warm-up
        fn()
    seg_s = median_seconds(segment, device, repeats)
    score_s = median_seconds(score, device, repeats)
    own_s = median_seconds(detector_only, device, repeats) - median_seconds(
        predict_only, device, repeats
    )
    return {
        "precision": precision,
        "size": [h, w],
        "segmenter_ms": 1e3 * seg_s,
        "detector_ms": 1e3 * own_s,
        "ratio": 1 + own_s / seg_s,
        "score_ms": 1e3 * score_s,
        "segmenter_peak_mib": measure(segment, device)[1] / 2**20,
        "score_peak_mib": measure(score, device)[1] / 2**20,
    }


def table(rows: list[dict]) -> str:
    head = (
        "| model | precision | segmenter ms | detector ms | ratio | score ms "
        "| segmenter peak MiB | score peak MiB | fit Mpixel/s |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    lines = [
        f"| {r['model']} | {r['precision']} | {r['segmenter_ms']:.1f} | {r['detector_ms']:.1f} "
        f"| {r['ratio']:.3f} | {r['score_ms']:.1f} | {r['segmenter_peak_mib']:.0f} "
        f"| {r['score_peak_mib']:.0f} | {r['fit_pixels_per_s'] / 1e6:.3g} |"
        for r in rows
    ]
    return "\n".join([head, *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 2048), metavar=("H", "W"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--fit-steps", type=int, default=10)
    parser.add_argument(
        "--models",
        nargs="+",
        default=["resnet50-fpn", "segformer-b2"],
        choices=["resnet50-fpn", "segformer-b2"],
    )
    parser.add_argument(
        "--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS)
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    rows = [row for name in args.models for row in run_model(name, args, device)]
    print(table(rows))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
