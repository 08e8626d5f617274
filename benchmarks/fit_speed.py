"""Fit speed: where the default fit's time goes, pixels trained per second, and its floor.

For each workload, ``FlowEneDet(segmenter).fit(loader)`` with the detector's defaults (the
budget of 1000 optimizer steps unless ``--steps``) on a ``DataLoader`` of the training
scenes, as a user fits:

* ``digits``: the shipped digits reference (stride 4) on ``--scenes`` 96 x 96 scenes;
* ``street``: the shipped street reference (stride 4) on 256 x 512 scenes; ``street-s8``
  the stride-8 one, which earlier releases shipped as the street reference;
* ``resnet50``: a ResNet-50 FPN (random weights, 19 classes, stride 4, timm) on random
  512 x 1024 images.

Printed per workload: the wall time of the fit and its split into reading batches, the
segmenter, flow inputs and targets, pixel sampling, the flow's forward pass, its backward
pass and the optimizer (the stages of :class:`flowenedet.progress.StageTimer`); pixels
trained per second of flow time, and the floor: the flow's multiply-adds per trained pixel
(forward and backward) over this machine's measured float32 matmul throughput.

``--quality`` also scores the clean and shifted validation scenes of the embedded world
with FED-C and prints OOD AP / FPR95, IDM AP and CDD AP. The script runs on earlier
releases too (without the stage split), so a fit can be compared before and after::

    python -m benchmarks.fit_speed --workload digits street --quality --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

from flowenedet import FlowEneDet

try:  # releases before the stage timer and the worlds' move
    from flowenedet.progress import StageTimer
except ImportError:
    StageTimer = None
try:
    from flowenedet.evaluation.worlds import digits, street
except ImportError:
    from flowenedet.data import embedded as digits
    from flowenedet.data import street

STAGES = ("data", "segmenter", "targets", "sampling", "flow", "backward", "optimizer")
WORLD_SIZES = {"digits": (300, 80, 16), "street": (100, 24, 4), "street-s8": (100, 24, 4)}
"""workload: (training scenes, validation scenes, batch size)."""


class ResNetFPN(nn.Module):
    """A timm ResNet-50 with an FPN head to stride 4 (19 classes, random weights)."""

    def __init__(self, num_classes: int = 19, width: int = 128) -> None:
        super().__init__()
        import timm

        self.backbone = timm.create_model(
            "resnet50", pretrained=False, features_only=True, out_indices=(1, 2, 3, 4)
        )
        channels = self.backbone.feature_info.channels()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.fuse = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(images)
        top = self.lateral[-1](feats[-1])
        for lateral, feat in zip(self.lateral[-2::-1], feats[-2::-1], strict=True):
            top = lateral(feat) + nn.functional.interpolate(top, size=feat.shape[-2:])
        return self.classifier(self.fuse(top))


def matmul_throughput(seconds: float = 1.0) -> float:
    """Measured float32 multiply-adds per second of a (4096 x 256) @ (256 x 256) matmul,
    the shape of the flow's per-pixel layers, at torch's current thread count."""
    a, b = torch.randn(4096, 256), torch.randn(256, 256)
    for _ in range(3):
        a @ b
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        done += 1
    return done * 4096 * 256 * 256 / (time.perf_counter() - start)


def flow_macs_per_pixel(det: FlowEneDet) -> float:
    """Multiply-adds of one trained pixel: the context at the pixel, every block's
    mixing and coupling network, the base; forward plus a backward of twice as many."""
    cfg = det.config.flow
    d = det.flow.base.features
    p = min(cfg.pooled_channels, det.config.fitted.feature_channels or 0)
    if cfg.variant != "C":
        p = 0
    c, h, k = cfg.context_channels, cfg.hidden, 7
    context = d * k * k * c + p * c + c * c
    half = d // 2
    block = d * d + (half * h + c * h + h * 2 * (d - half))
    forward = context + cfg.num_blocks * block + 2 * d * d
    return 3.0 * forward


def loader_of(world: str, scenes: int, batch: int, seed: int):
    module = digits if world == "digits" else street  # street-s8: the street world
    data = module.make_scenes("train", scenes, seed=seed)
    return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False), module


def segmenter_of(name: str) -> nn.Module:
    if name == "resnet50":
        torch.manual_seed(0)
        return ResNetFPN().eval()
    from flowenedet.zoo import load_reference_segmenter

    if name == "street-s8":
        try:
            return load_reference_segmenter(name=name)
        except TypeError:  # releases whose street reference was the stride-8 one
            return load_reference_segmenter(world="street")
    return load_reference_segmenter(world=name)


def run(name: str, args: argparse.Namespace, seed: int) -> dict:
    segmenter = segmenter_of(name)
    if name == "resnet50":
        g = torch.Generator().manual_seed(seed)
        images = torch.rand(args.resnet_images, 3, 512, 1024, generator=g)
        labels = torch.randint(0, 19, (args.resnet_images, 512, 1024), generator=g)
        loader = [(images[i : i + 2], labels[i : i + 2]) for i in range(0, len(images), 2)]
    else:
        scenes, _, batch = WORLD_SIZES[name]
        loader, _ = loader_of(name, args.scenes or scenes, batch, seed)
    timer = StageTimer() if StageTimer is not None else None
    det = FlowEneDet(segmenter, seed=seed)
    options = {"progress": False} | ({"steps": args.steps} if args.steps else {})
    if timer is not None:
        options["timer"] = timer
    start, cpu = time.perf_counter(), time.process_time()
    det.fit(loader, **options)
    row = {"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu, "det": det}
    row["timer"] = timer
    return row


def validation(det: FlowEneDet, world: str, seed: int) -> dict[str, dict]:
    from flowenedet.evaluation.metrics import PixelEvaluator

    module = digits if world == "digits" else street
    _, scenes, batch = WORLD_SIZES[world]  # street-s8: the street world's scenes
    corruptions = ("snow", "fog", "frost", "motion_blur", "gaussian_noise", "brightness")
    corruptions += ("contrast", "jpeg_compression")
    out = {}
    for name, shift in (("val", {}), ("val/shifted", {"corruption": corruptions})):
        if shift:
            shift["severity"] = (1, 2, 3, 4)
        data = module.make_scenes("val", scenes, seed=seed, **shift)
        evaluators = {m: PixelEvaluator(module.NUM_CLASSES) for m in ("idm", "ood", "concurrent")}
        for start in range(0, scenes, batch):
            images = data.images[start : start + batch].float() / 255
            maps = det.score(images)
            for kind, ev in evaluators.items():
                ev.update(getattr(maps, kind), data.labels[start : start + batch], maps.pred)
        out[name] = {
            "OOD AP": evaluators["ood"].compute()["ood"]["ap"],
            "OOD FPR95": evaluators["ood"].compute()["ood"]["fpr95"],
            "IDM AP": evaluators["idm"].compute()["idm"]["ap"],
            "CDD AP": evaluators["concurrent"].compute()["cdd"]["ap"],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workload",
        nargs="+",
        default=["digits", "street", "resnet50"],
        choices=("digits", "street", "street-s8", "resnet50"),
    )
    parser.add_argument("--steps", type=int, default=None, help="default: the detector's")
    parser.add_argument("--scenes", type=int, default=None, help="training scenes")
    parser.add_argument("--resnet-images", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--quality", action="store_true", help="validation AP / FPR95 too")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    throughput = matmul_throughput()
    print(f"float32 matmul: {throughput / 1e9:.1f} G multiply-adds/s, {args.threads} thread(s)")
    for name in args.workload:
        for seed in args.seeds:
            row = run(name, args, seed)
            print(f"\n## {name}, seed {seed}: fit {row['wall']:.1f} s wall, {row['cpu']:.1f} s CPU")
            timer = row["timer"]
            if timer is not None:
                print("| stage | wall s | CPU s | share |\n| --- | --: | --: | --: |")
                for stage in STAGES:
                    share = timer.wall.get(stage, 0.0) / row["wall"]
                    print(
                        f"| {stage} | {timer.wall.get(stage, 0.0):.2f} | "
                        f"{timer.cpu.get(stage, 0.0):.2f} | {100 * share:.1f} % |"
                    )
                pixels = timer.items["pixels"]
                flow_s = sum(timer.wall.get(s, 0.0) for s in ("flow", "backward", "optimizer"))
                floor = pixels * flow_macs_per_pixel(row["det"]) / throughput
                print(
                    f"trained pixels: {pixels}; {pixels / flow_s:,.0f} per second of flow time "
                    f"(forward, backward, optimizer); floor {floor:.2f} s, "
                    f"{flow_s / max(floor, 1e-9):.1f}x above it"
                )
            if args.quality and name != "resnet50":
                for split, cells in validation(row["det"], name, seed).items():
                    text = ", ".join(f"{k} {100 * v:.2f}" for k, v in cells.items())
                    print(f"{split}: {text}")
            if math.isfinite(row["wall"]):
                print(flush=True)


if __name__ == "__main__":
    main()
