"""Cost of the detector: segmenter alone vs segmenter + FlowEneDet scoring, in one process.

A realistic segmenter (timm ResNet-50 backbone, FPN-style head, 19 classes, logits at
1/4 resolution) with random weights (cost does not depend on the weights). The detector
is fitted for a few steps on random data, which does not change its cost either.
The segmenter's own cost is its forward pass plus its prediction at input resolution
(``upsampled_argmax``, the cheapest exact way), since a deployed segmenter has to produce
labels and ``det.score`` returns them as ``Scores.pred``; the ratio to the forward pass
alone is reported too. Median wall time over repeats after warm-up, and the peak memory
each call adds above the memory in use before it (CPU: resident set size sampled every
millisecond; GPU: ``torch.cuda.max_memory_allocated``).

On a noisy machine the end-to-end ratio moves by more than the detector costs, so the
detector's own work is also timed on its own, many times: ``score_logits`` on the
segmenter's outputs minus the prediction it includes, over the segmenter's time
(``component_time_ratio``).

    python benchmarks/overhead.py                      # 512x1024 on CPU
    python benchmarks/overhead.py --device cuda --size 1024 2048
    python benchmarks/overhead.py --segmenter street --size 256 512

``--nflows-reference`` also times ``score_logits`` with nflows' own flow instead of the
fused scoring path (``flowenedet.inference``), interleaved with the rest, so the two paths
meet the same machine load (``component_time_ratio_nflows``).

``--breakdown`` also times each stage of ``score_logits`` on its own, interleaved
(``breakdown_ms``): the alignment and checks, the flow's inputs, the flow, the energy
blends, the post-processing, the finiteness check, the three resizes and the prediction,
and the logits' argmax that only boundary suppression needs (skipped otherwise).

``--segmenter street`` measures the street world's shipped reference instead (half-width
ResNet-10-T + FPN, four stages, logits at stride 4, 8 classes, trained weights; FED-C
reads its classifier's input).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from flowenedet import FlowEneDet
from flowenedet.energy import energy_of_inputs, flow_inputs
from flowenedet.flow import align_features
from flowenedet.inference import log_odds
from flowenedet.postprocess import postprocess_maps, resize, upsampled_argmax
from flowenedet.scoring import Scorer


class FPNSegmenter(nn.Module):
    """timm backbone (strides 4..32) with an FPN-style decoder; logits at 1/4 resolution."""

    def __init__(self, backbone: str = "resnet50", num_classes: int = 19, width: int = 128):
        super().__init__()
        self.backbone = timm.create_model(backbone, pretrained=False, features_only=True)
        channels = self.backbone.feature_info.channels()[1:]  # strides 4, 8, 16, 32
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)[1:]
        merged = self.lateral[-1](features[-1])
        for lateral, feature in zip(self.lateral[-2::-1], features[-2::-1], strict=True):
            merged = lateral(feature) + F.interpolate(merged, size=feature.shape[-2:])
        return self.classifier(self.fuse(merged))


class NflowsScoring:
    """Stands in for a ``ScoringCache``: scores with nflows' own flow."""

    @staticmethod
    def get(flow):
        return lambda inputs, features, chunk_pixels, dtype=None: flow.log_odds_map(
            inputs, features, chunk_pixels
        )


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def measure(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Seconds and peak extra bytes of one call of ``fn()``."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base, peak, running = _rss_bytes(), [0], [True]

        def sample() -> None:
            while running[0]:
                peak[0] = max(peak[0], _rss_bytes())
                time.sleep(0.001)

        sampler = threading.Thread(target=sample)
        sampler.start()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        return seconds, torch.cuda.max_memory_allocated() - base
    running[0] = False
    sampler.join()
    return seconds, max(peak[0], _rss_bytes()) - base


def breakdown(det: FlowEneDet, logits, features, size, repeats: int) -> dict[str, float]:
    """Median milliseconds of each stage of ``det.score_logits`` (``Scorer.logits``),
    timed on its own and interleaved with the others, ``repeats`` times."""
    cfg, stats = det.config, det.stats
    opts, scale = cfg.scoring, stats.ood_scale
    aligned, pooled = det._align(logits, features)
    inputs = flow_inputs(aligned, stats.mean, stats.var, cfg.flow.inputs)
    odds = log_odds(det.flow, inputs, pooled, opts.chunk_pixels, None, det._cache)

    def blends() -> list[torch.Tensor]:
        standardized = (odds - scale[0]) / scale[1]
        energy = (energy_of_inputs(inputs) - scale[2]) / scale[3]
        weights = (opts.ood_energy_weight, opts.concurrent_energy_weight)
        return [torch.sigmoid(odds), *(torch.sigmoid(standardized + w * energy) for w in weights)]

    raw = blends()
    stride = 1.0 if opts.postprocess == "logit-pixels" else cfg.fitted.stride
    low_pred = aligned.argmax(1)
    maps = postprocess_maps(*raw, pred=low_pred, config=opts, stride=stride)
    stages = {
        "score_logits (all)": lambda: det.score_logits(logits, features, size=size),
        "align and check": lambda: det._align(logits, features),
        "flow inputs": lambda: flow_inputs(aligned, stats.mean, stats.var, cfg.flow.inputs),
        "flow (fused)": lambda: log_odds(
            det.flow, inputs, pooled, opts.chunk_pixels, None, det._cache
        ),
        "energy blends": blends,
        "post-processing": lambda: postprocess_maps(
            *raw, pred=low_pred, config=opts, stride=stride
        ),
        "logit argmax (boundary suppression only)": lambda: aligned.argmax(1),
        "finiteness check": lambda: all(torch.isfinite(m).all() for m in maps),
        "three resizes": lambda: [resize(m, size).clamp_(0, 1) for m in maps],
        "prediction (upsampled argmax)": lambda: upsampled_argmax(aligned, size),
    }
    times: dict[str, list[float]] = {name: [] for name in stages}
    with torch.no_grad():
        for stage in stages.values():  # warm-up
            stage()
        for _ in range(repeats):
            for name, stage in stages.items():
                start = time.perf_counter()
                stage()
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variant", default="C", choices=("C", "U"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--nflows-reference",
        action="store_true",
        help="also time score_logits with the nflows flow instead of the fused scoring path, "
        "interleaved with the rest (component_time_ratio_nflows)",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also time each stage of score_logits on its own, interleaved (breakdown_ms)",
    )
    parser.add_argument(
        "--segmenter",
        choices=("resnet50", "street"),
        default="resnet50",
        help="a random-weight ResNet-50 FPN (19 classes, stride 4) or the street reference",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.segmenter == "street":
        from flowenedet.zoo import load_reference_segmenter

        segmenter = load_reference_segmenter(device, world="street")
    else:
        segmenter = FPNSegmenter().to(device).eval()
    num_classes = segmenter.classifier.out_channels
    h, w = args.size
    fit_images = torch.rand(2, 3, 256, 512, device=device)
    fit_labels = torch.randint(0, num_classes, (2, 256, 512), device=device)
    det = FlowEneDet(segmenter, variant=args.variant).fit(
        [(fit_images, fit_labels)], steps=3, progress=False
    )
    images = torch.rand(1, 3, h, w, device=device)

    def forward_only() -> object:
        with torch.no_grad():
            return segmenter(images)

    def segment_only() -> object:
        with torch.no_grad():
            return upsampled_argmax(segmenter(images), (h, w))

    def segment_and_score() -> object:
        return det.score(images)

    for fn in (forward_only, segment_only, segment_and_score):  # warm-up
        fn()
    # interleave the three so drifting machine load hits them alike
    fwd_t, seg_t, seg_m, det_t, det_m = [], [], [], [], []
    for _ in range(args.repeats):
        fwd_t.append(measure(forward_only, device)[0])
        t, m = measure(segment_only, device)
        seg_t.append(t), seg_m.append(m)
        t, m = measure(segment_and_score, device)
        det_t.append(t), det_m.append(m)
    logits, features = det.segment(images)
    cfg = det.config
    nflows = Scorer(det.flow, det.stats, cfg.flow, cfg.fitted, cfg.scoring, NflowsScoring())

    def score_only() -> object:
        return det.score_logits(logits, features, size=(h, w))

    def predict_only() -> object:
        return upsampled_argmax(logits, (h, w))

    def score_nflows() -> object:  # the pre-fusion path: nflows' own log_odds_map
        aligned = align_features(features, logits, det.config.flow.pooled_channels)
        return nflows.logits(logits, aligned, (h, w))

    parts = (score_only, predict_only) + ((score_nflows,) if args.nflows_reference else ())
    part_t = {fn: [] for fn in parts}
    for _ in range(4 * args.repeats):
        for fn, times in part_t.items():
            times.append(measure(fn, device)[0])
    score_s, predict_s = (statistics.median(part_t[fn]) for fn in (score_only, predict_only))
    seg_params = sum(p.numel() for p in segmenter.parameters())
    det_params = sum(p.numel() for p in det.flow.parameters())
    result = {
        "device": str(device),
        "segmenter": args.segmenter,
        "size": [h, w],
        "variant": args.variant,
        "repeats": args.repeats,
        "forward_seconds": statistics.median(fwd_t),
        "segmenter_seconds": statistics.median(seg_t),
        "with_detector_seconds": statistics.median(det_t),
        "time_ratio": statistics.median(det_t) / statistics.median(seg_t),
        "time_ratio_to_forward": statistics.median(det_t) / statistics.median(fwd_t),
        "score_logits_seconds": score_s,
        "prediction_seconds": predict_s,
        "component_time_ratio": 1 + (score_s - predict_s) / statistics.median(seg_t),
        **(
            {
                "score_logits_nflows_seconds": statistics.median(part_t[score_nflows]),
                "component_time_ratio_nflows": 1
                + (statistics.median(part_t[score_nflows]) - predict_s) / statistics.median(seg_t),
            }
            if args.nflows_reference
            else {}
        ),
        "segmenter_peak_mib": statistics.median(seg_m) / 2**20,
        "with_detector_peak_mib": statistics.median(det_m) / 2**20,
        "memory_ratio": statistics.median(det_m) / max(1, statistics.median(seg_m)),
        "segmenter_params": seg_params,
        "detector_params": det_params,
        "param_ratio": det_params / seg_params,
        "torch_threads": torch.get_num_threads(),
    }
    if args.breakdown:
        result["breakdown_ms"] = breakdown(det, logits, features, (h, w), 4 * args.repeats)
    for key, value in result.items():
        if isinstance(value, dict):
            print(f"{key:>24}:")
            for name, ms in value.items():
                print(f"{name:>44}: {ms:8.2f}")
            continue
        print(f"{key:>24}: {value:.4f}" if isinstance(value, float) else f"{key:>24}: {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
