"""Memory of fitting and scoring: fit must stream, scoring must stay bounded on big images.

Each measurement runs in a fresh subprocess and reports its peak resident set size
(``ru_maxrss``), so earlier work never hides in the number.

* fit: FED-C on the reference architecture (random weights; memory does not depend on
  them) over 50 and over 400 generated 256x256 images, one epoch, batches of 8. The
  loader makes each batch on the fly, so only the detector can make memory grow.
* score: ``score_logits`` for one 1024x2048 image (19-class logits and 128 feature
  channels at 1/4 resolution), with the default row-band chunking and with chunking off.

    python benchmarks/memory.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch


class GeneratedLoader:
    """Batches of 8 random 256x256 images and labels, made on the fly from a seed."""

    def __init__(self, images: int) -> None:
        self.images = images

    def __len__(self) -> int:
        return -(-self.images // 8)

    def __iter__(self):
        for start in range(0, self.images, 8):
            g = torch.Generator().manual_seed(start)
            labels = torch.randint(0, 11, (8, 256, 256), generator=g)
            yield torch.rand(8, 3, 256, 256, generator=g), labels


def _fit(images: int) -> None:
    from flowenedet import FlowEneDet
    from flowenedet.zoo import build_reference_segmenter

    torch.manual_seed(0)
    segmenter = build_reference_segmenter().eval()
    FlowEneDet(segmenter).fit(GeneratedLoader(images), epochs=1, progress=False)


def _score(chunk_pixels: int) -> None:
    from torch import nn

    from flowenedet import FlowEneDet

    torch.manual_seed(0)
    stub = nn.Conv2d(128, 19, 1)  # only its shape matters for score_logits
    det = FlowEneDet(stub, chunk_pixels=chunk_pixels)
    logits, features = torch.randn(2, 19, 64, 64), torch.randn(2, 128, 64, 64)
    labels = torch.randint(0, 19, (2, 64, 64))
    det.fit_logits(logits, labels, features, steps=2, progress=False)
    big_logits, big_features = torch.randn(1, 19, 256, 512), torch.randn(1, 128, 256, 512)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    det.score_logits(big_logits, big_features, size=(1024, 2048))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"extra_peak_mib": (after - before) / 1024}))


def _child(kind: str, value: int) -> dict:
    code = (
        f"import benchmarks.memory as m, json, resource; m._{kind}({value}); "
        "print(json.dumps({'peak_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = run.stdout.strip().splitlines()
    result = {}
    for line in out:
        result.update(json.loads(line))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = {
        "fit_50_images": _child("fit", 50),
        "fit_400_images": _child("fit", 400),
        "score_1024x2048_chunked": _child("score", 1 << 16),
        "score_1024x2048_unchunked": _child("score", 1 << 26),
    }
    for name, value in results.items():
        print(f"{name:>28}: " + ", ".join(f"{k} {v:.1f}" for k, v in value.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
