"""benchmarks/gpu.py runs end to end (here on the CPU at a tiny size)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_gpu_benchmark(tmp_path: Path, *models: str) -> list[dict]:
    out = tmp_path / "gpu.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu"]
    command += ["--size", "32", "64", "--repeats", "1", "--fit-steps", "1", "--json", str(out)]
    command += ["--models", *models]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| model | precision |" in done.stdout
    return json.loads(out.read_text())


def check_rows(rows: list[dict], models: tuple[str, ...]) -> None:
    assert [(r["model"], r["precision"]) for r in rows] == [
        (m, p) for m in models for p in ("fp32", "bf16")
    ]
    for row in rows:
        assert row["size"] == [32, 64]
        assert row["segmenter_ms"] > 0 and row["score_ms"] > 0
        assert row["ratio"] == pytest.approx(1 + row["detector_ms"] / row["segmenter_ms"])
        assert row["fit_pixels_per_s"] > 0


def test_gpu_benchmark_runs_both_models_at_a_tiny_size_on_cpu(tmp_path):
    models = ("resnet50-fpn", "segformer-b2")
    check_rows(run_gpu_benchmark(tmp_path, *models), models)
