"""Cost of the street world on CPU: scene generation, segmenter forward, detector fit and score.

Medians over repeats, in one process, after warm-up; the thread count is torch's (set it
with ``--threads``). Run from the repository root::

    python -m benchmarks.street_cost --threads 2

Prints one JSON object: milliseconds per scene (``make_scenes`` per split, clean and
with one corruption), the shipped street segmenter's forward pass per image (batch 1 and
8), FED-C's ``fit_logits`` per training image (flow steps included, so it also gives the
time per step) and its ``score_logits`` per image at 256 x 512.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from flowenedet import FlowEneDet
from flowenedet.evaluation.worlds import street
from flowenedet.hooks import SegmenterTap
from flowenedet.zoo import load_reference_segmenter


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scenes", type=int, default=20, help="scenes per timing")
    parser.add_argument("--steps", type=int, default=100, help="flow steps of the fit")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.scenes
    out: dict[str, float | int | str] = {"threads": args.threads, "size": "256x512"}
    for split in street.SPLITS:
        seconds = _median_seconds(lambda s=split: street.make_scenes(s, n, seed=1), 3)
        out[f"generate_{split}_ms"] = round(1000 * seconds / n, 1)
    seconds = _median_seconds(
        lambda: street.make_scenes("test", n, seed=1, corruption="snow", severity=3), 1
    )
    out["generate_test_snow3_ms"] = round(1000 * seconds / n, 1)
    segmenter = load_reference_segmenter(world="street")
    train = street.make_scenes("train", n, seed=1)
    images = train.to_float()
    with torch.no_grad():
        for batch in (1, 8):
            seconds = _median_seconds(lambda b=batch: segmenter(images[:b]), 5)
            out[f"forward_batch{batch}_ms_per_image"] = round(1000 * seconds / batch, 1)
    logits, features = SegmenterTap(segmenter, "classifier:input")(images)

    def fit() -> FlowEneDet:
        return FlowEneDet(segmenter, variant="C", feature_layer="classifier:input").fit_logits(
            logits, train.labels, features, steps=args.steps, progress=False
        )

    start = time.perf_counter()
    det = fit()
    fit_seconds = time.perf_counter() - start
    out["fit_steps"] = args.steps
    out["fit_s"] = round(fit_seconds, 2)
    out["fit_ms_per_step"] = round(1000 * fit_seconds / args.steps, 1)
    seconds = _median_seconds(
        lambda: det.score_logits(logits[:8], features[:8], size=(256, 512)), 5
    )
    out["score_ms_per_image"] = round(1000 * seconds / 8, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
