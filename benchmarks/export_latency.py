"""Deployed cost: onnxruntime (CPU provider) against PyTorch (CPU), with and without the
detector in the graph, per 512x1024 image.

For each segmenter (the street world's shipped reference, and the random-weight ResNet-50
FPN of ``benchmarks/overhead.py``) a FED-C detector is fitted for a few steps on random
data (cost does not depend on the weights), then four ways of scoring one image are timed,
interleaved in this process so that drifting machine load hits them alike (median of
``--repeats`` after two warm-ups each):

* PyTorch, segmenter alone: its forward and its prediction at image resolution
  (``upsampled_argmax``), as in ``benchmarks/overhead.py``;
* PyTorch, segmenter + detector: ``det.score``;
* onnxruntime, segmenter alone: the forward and the prediction exported as one graph;
* onnxruntime, segmenter + detector: ``det.export``'s graph (checked equal to
  ``det.score`` by the export).

The detector's share is ``(with - without) / with`` in each runtime. Peak memory is the
peak resident set size of a fresh process that loads one variant and scores one image
(``VmHWM``): the onnxruntime processes import onnxruntime and numpy only, not torch.
``--threads`` sets torch's and onnxruntime's intra-op threads alike.

    OMP_NUM_THREADS=1 python benchmarks/export_latency.py                  # 1 thread
    python benchmarks/export_latency.py --segmenter street --repeats 9 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.overhead import FPNSegmenter
from flowenedet import FlowEneDet
from flowenedet.export.runtime import session
from flowenedet.hooks import logits_of
from flowenedet.postprocess import upsampled_argmax

VARIANTS = (
    "pytorch segmenter",
    "pytorch segmenter + detector",
    "onnxruntime segmenter",
    "onnxruntime segmenter + detector",
)


class SegmentOnly(nn.Module):
    """The segmenter and its prediction at image resolution: what a deployment runs
    without the detector."""

    def __init__(self, segmenter: nn.Module) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = logits_of(self.segmenter(images)).float()
        return upsampled_argmax(logits, images.shape[-2:])


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "street":
        from flowenedet.zoo import load_reference_segmenter

        return load_reference_segmenter(world="street")
    return FPNSegmenter().eval()


def export_segmenter(segmenter: nn.Module, path: Path, images: torch.Tensor) -> None:
    """The segmenter and its prediction as one ONNX graph (dynamic batch and size)."""
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "pred": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            SegmentOnly(segmenter).eval(),
            (images,),
            str(path),
            dynamo=False,
            input_names=["images"],
            output_names=["pred"],
            dynamic_axes=axes,
        )


def timed(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each variant, interleaved, after two warm-ups each."""
    for fn in variants.values():
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


CHILD = {
    "pytorch segmenter": """
import torch
from benchmarks.export_latency import build
from flowenedet.postprocess import upsampled_argmax
torch.set_num_threads({threads})
segmenter = build({name!r})
images = torch.rand(1, 3, {h}, {w})
with torch.no_grad():
    upsampled_argmax(segmenter(images), ({h}, {w}))
""",
    "pytorch segmenter + detector": """
import torch
from benchmarks.export_latency import build
from flowenedet import FlowEneDet
torch.set_num_threads({threads})
det = FlowEneDet.load({detector!r}, build({name!r}))
det.score(torch.rand(1, 3, {h}, {w}))
""",
    "onnxruntime segmenter": """
import numpy as np
import onnxruntime
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = {threads}
s = onnxruntime.InferenceSession({segmenter_onnx!r}, options, providers=["CPUExecutionProvider"])
s.run(None, {{"images": np.random.rand(1, 3, {h}, {w}).astype(np.float32)}})
""",
    "onnxruntime segmenter + detector": """
import numpy as np
import onnxruntime
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = {threads}
s = onnxruntime.InferenceSession({detector_onnx!r}, options, providers=["CPUExecutionProvider"])
s.run(None, {{"images": np.random.rand(1, 3, {h}, {w}).astype(np.float32)}})
""",
}
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec
PEAK = """
with open("/proc/self/status") as status:
    print([line.split()[1] for line in status if line.startswith("VmHWM:")][0])
"""


def peak_mib(variant: str, **values: object) -> float:
    """Peak resident set size (MiB) of a fresh process that scores one image."""
    code = CHILD[variant].format(**values) + PEAK
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, check=True, capture_output=True, text=True
    )
    return int(out.stdout.split()[-1]) / 1024


def measure(name: str, size: tuple[int, int], repeats: int, threads: int, work: Path) -> dict:
    segmenter = build(name)
    classes = logits_of(segmenter(torch.rand(1, 3, 64, 64))).shape[1]
    fit_images = torch.rand(2, 3, 256, 512)
    fit_labels = torch.randint(0, classes, (2, 256, 512))
    det = FlowEneDet(segmenter).fit([(fit_images, fit_labels)], steps=3, progress=False)
    h, w = size
    images = torch.rand(1, 3, h, w)
    detector_file, detector_onnx = work / f"{name}.safetensors", work / f"{name}_det.onnx"
    segmenter_onnx = work / f"{name}_seg.onnx"
    det.save(detector_file)
    start = time.perf_counter()
    det.export(detector_onnx, image_size=size)  # checked equal to det.score here
    export_seconds = time.perf_counter() - start
    export_segmenter(segmenter, segmenter_onnx, images)
    with_detector = session(str(detector_onnx), threads=threads)
    segmenter_only = session(str(segmenter_onnx), threads=threads)
    feed = {"images": images.numpy()}

    def pytorch_segmenter() -> object:
        with torch.no_grad():
            return upsampled_argmax(segmenter(images), (h, w))

    latency = timed(
        {
            VARIANTS[0]: pytorch_segmenter,
            VARIANTS[1]: lambda: det.score(images),
            VARIANTS[2]: lambda: segmenter_only.run(None, feed),
            VARIANTS[3]: lambda: with_detector.run(None, feed),
        },
        repeats,
    )
    values = {
        "name": name,
        "h": h,
        "w": w,
        "threads": threads,
        "detector": str(detector_file),
        "detector_onnx": str(detector_onnx),
        "segmenter_onnx": str(segmenter_onnx),
    }
    memory = {variant: peak_mib(variant, **values) for variant in VARIANTS}
    share = {
        runtime: 1 - latency[f"{runtime} segmenter"] / latency[f"{runtime} segmenter + detector"]
        for runtime in ("pytorch", "onnxruntime")
    }
    return {
        "segmenter": name,
        "size": [h, w],
        "latency_ms": {k: 1000 * v for k, v in latency.items()},
        "detector_share": share,
        "peak_rss_mib": memory,
        "onnx_mib": {
            "segmenter": segmenter_onnx.stat().st_size / 2**20,
            "segmenter + detector": detector_onnx.stat().st_size / 2**20,
        },
        "export_seconds": export_seconds,
    }


def table(results: list[dict]) -> str:
    rows = [
        "| segmenter | runtime | segmenter alone | + detector | detector's share | "
        "peak RSS alone | peak RSS + detector |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for result in results:
        lat, mem = result["latency_ms"], result["peak_rss_mib"]
        for runtime in ("pytorch", "onnxruntime"):
            alone, both = f"{runtime} segmenter", f"{runtime} segmenter + detector"
            rows.append(
                f"| {result['segmenter']} | {runtime} | {lat[alone]:.1f} ms | {lat[both]:.1f} ms"
                f" | {100 * result['detector_share'][runtime]:.1f} % | {mem[alone]:.0f} MiB |"
                f" {mem[both]:.0f} MiB |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument(
        "--segmenter", nargs="+", choices=("street", "resnet50"), default=["street", "resnet50"]
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.suppress(KeyboardInterrupt):
        for name in args.segmenter:
            results.append(measure(name, tuple(args.size), args.repeats, args.threads, Path(tmp)))
            print(json.dumps(results[-1], indent=2), flush=True)
    print(table(results))
    print(f"threads: {args.threads} (torch and onnxruntime); numpy {np.__version__}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
