"""``flowenedet demo`` and ``flowenedet bench``: the embedded, offline benchmark
(:mod:`flowenedet.evaluation.runner`) from the shell."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import io
from ..config import DEFAULT_STEPS
from ..evaluation import report, runner
from ..evaluation.config import CORRUPTIONS, FULL_BENCH, WORLDS, BenchConfig
from ..evaluation.worlds.aerial_shift import SHIFTS as AERIAL_SHIFTS
from .errors import (
    BENCH_MODULES,
    missing_extra,
    require_bench_extra,
    require_output_dir,
)
from .options import SEED, Command, Option, positive_int

__all__ = [
    "AERIAL_BENCH",
    "AERIAL_DEMO",
    "AERIAL_QUICK",
    "BENCH",
    "DEMO",
    "PRESETS",
    "QUICK",
    "STREET_BENCH",
    "STREET_DEMO",
    "STREET_QUICK",
    "bench_config",
    "cmd_bench",
    "cmd_demo",
]

DEMO = BenchConfig(val_scenes=40, test_scenes=60, steps=100, mc_samples=2)
"""What ``flowenedet demo`` runs by default, on the digits world: the split structure of
:class:`BenchConfig` (clean and shifted validation and test splits), 40 and 60 scenes per
validation and test split, 100 flow steps instead of the detector's budget of 1000 and 2
MC dropout samples (the demo is a tour, not a measurement; its time is in the README)."""
BENCH = FULL_BENCH
"""What ``flowenedet bench`` runs: the shifted splits, and every corruption at severities
1-4 as a split of its own."""
QUICK = BenchConfig(
    train_scenes=64,
    val_scenes=32,
    test_scenes=32,
    steps=20,
    shift=("snow", "gaussian_noise"),
    corruptions=(("snow", 3),),
)
"""``flowenedet bench --quick``: a smoke test of the whole pipeline, not a measurement."""
STREET_DEMO = BenchConfig(
    world="street",
    train_scenes=16,
    val_scenes=4,
    test_scenes=8,
    steps=40,
    batch_size=4,
    mc_samples=2,
)
"""The demo's street part, reduced towards the demo's time budget (README): 16 training
scenes (and their shifted copies), 4 scenes in each validation split and 8 in each test
split (256 x 512), 40 flow steps of 4 images, 2 MC dropout samples. Exact pooled curves
over ~1 M pixels per split and method are most of its cost. Its clean test split holds
about 5 900 OOD pixels (seed 0), short of the 20 000 of :data:`STREET_BENCH`: the demo's
OOD numbers are rough."""
STREET_BENCH = BenchConfig(
    world="street",
    train_scenes=300,
    val_scenes=100,
    test_scenes=150,
    corruptions=tuple((c, s) for c in CORRUPTIONS for s in (1, 2, 3, 4)),
)
"""``flowenedet bench``'s street part: the full split structure at 256 x 512. At seed 0 the
validation split holds about 71 000 OOD pixels and each test split about 100 000 (the
street world averages ~700 per scene; 20 000 need about 31 validation or 35 test
scenes)."""
STREET_QUICK = dataclasses.replace(
    QUICK, world="street", train_scenes=8, val_scenes=4, test_scenes=4, mc_samples=2
)
"""``flowenedet bench --quick``'s street part."""
AERIAL_DEMO = BenchConfig(
    world="aerial",
    train_scenes=16,
    val_scenes=8,
    test_scenes=16,
    steps=40,
    batch_size=8,
    mc_samples=2,
)
"""The demo's aerial part (256 x 256 scenes, this world's own shifts), no more pixels than
the street one: 16 training scenes (and their shifted copies), 8 validation and 16 test
scenes per split, 40 flow steps, 2 MC dropout samples; its clean test split holds about
4 100 OOD pixels (seed 0)."""
AERIAL_BENCH = BenchConfig(
    world="aerial",
    train_scenes=400,
    val_scenes=150,
    test_scenes=200,
    batch_size=8,
    corruptions=tuple((c, s) for c in AERIAL_SHIFTS for s in (1, 2, 3, 4)),
)
"""``flowenedet bench``'s aerial part: the full split structure at 256 x 256, every aerial
shift at severities 1-4 as a split of its own. The aerial world averages ~280 (val) and
~370 (test) OOD pixels per scene, so 150 validation and 200 test scenes hold about 42 000
and 74 000 (seed 0), over the 20 000 each split should have."""
AERIAL_QUICK = dataclasses.replace(
    QUICK,
    world="aerial",
    train_scenes=16,
    val_scenes=8,
    test_scenes=8,
    mc_samples=2,
    shift=("haze", "sensor_noise"),
    corruptions=(("haze", 3),),
)
"""``flowenedet bench --quick``'s aerial part."""
PRESETS = {
    "demo": {"digits": DEMO, "street": STREET_DEMO, "aerial": AERIAL_DEMO},
    "bench": {"digits": BENCH, "street": STREET_BENCH, "aerial": AERIAL_BENCH},
    "quick": {"digits": QUICK, "street": STREET_QUICK, "aerial": AERIAL_QUICK},
}
"""``{run: {world: preset}}`` of ``flowenedet demo``, ``bench`` and ``bench --quick``."""
DEMO_OUT, BENCH_OUT = "flowenedet-demo", "flowenedet-bench"
SIZE_OPTIONS = ("train_scenes", "val_scenes", "test_scenes", "steps")


def bench_config(args: argparse.Namespace, preset: BenchConfig, seed: int) -> BenchConfig:
    """``preset`` with the sizes given on the command line, ``seed`` and ``--no-progress``."""
    sizes = {name: getattr(args, name) for name in SIZE_OPTIONS if getattr(args, name) is not None}
    return dataclasses.replace(preset, seed=seed, progress=args.progress, **sizes)


def _signatures(folder: Path) -> dict[Path, tuple[int, int, int]]:
    """``(inode, mtime, size)`` of every file below ``folder``; a rewritten file changes it
    (files are written atomically, as new inodes)."""
    if not folder.is_dir():
        return {}
    stats = ((path, path.stat()) for path in sorted(folder.rglob("*")) if path.is_file())
    return {path: (st.st_ino, st.st_mtime_ns, st.st_size) for path, st in stats}


def _run(
    args: argparse.Namespace,
    what: str,
    run: Callable[[Path, BenchConfig], dict[str, Any]],
    presets: dict[str, BenchConfig],
    notes: dict[str, str] | None = None,
) -> int:
    """Run ``run(out, cfg)`` for each world of ``--world`` (``all``: every world, each in a
    folder of its own below ``--out``) and each of ``--seeds`` seeds from ``--seed`` (more
    than one: each in ``seed-N/``, and a summary over them in ``seeds.md``); print the
    tables, the files written and the time."""
    worlds = WORLDS if args.world == "all" else (args.world,)
    require_output_dir(args.out, "--out")
    require_bench_extra(what)
    started = time.perf_counter()
    seeds = range(args.seed, args.seed + args.seeds)
    for world in worlds:
        world_out = Path(args.out) / world if len(worlds) > 1 else Path(args.out)
        runs = []
        for seed in seeds:
            cfg = bench_config(args, presets[world], seed)
            out = world_out / f"seed-{seed}" if len(seeds) > 1 else world_out
            runs.append(_run_one(run, out, cfg, world, what, (notes or {}).get(world)))
        if len(runs) > 1:
            summary = (
                f"## {world} world over {len(runs)} seeds\n\n{report.seed_summary(runs)}\n\n"
                f"### Single-corruption test splits\n\n{report.corruption_wins(runs)}\n\n"
                f"### FED-C minus FED-U, points\n\n{report.variant_gap(runs)}\n"
            )
            io.atomic_write(world_out / "seeds.md", lambda tmp, text=summary: tmp.write_text(text))
            print(f"{summary}\nwrote {world_out / 'seeds.md'}\n")
    print(f"finished in {time.perf_counter() - started:.1f} s")
    return 0


def _run_one(
    run: Callable[[Path, BenchConfig], dict[str, Any]],
    out: Path,
    cfg: BenchConfig,
    world: str,
    what: str,
    note: str | None,
) -> dict[str, Any]:
    """One world at one seed: run, print its tables and the files it wrote."""
    before = _signatures(out)
    world_started = time.perf_counter()
    try:
        results = run(out, cfg)
    except ImportError as error:
        module = (error.name or "").partition(".")[0]
        if module not in BENCH_MODULES:
            raise
        raise missing_extra(what, [module]) from None
    written = [path for path, sig in _signatures(out).items() if before.get(path) != sig]
    note = f"; {note}" if note else ""
    print(f"## {world} world, seed {cfg.seed} ({_sizes(cfg)}{note})\n")
    print(report.tables(results))
    print(f"{report.report(results)}\n")
    print(f"wrote {len(written)} file(s):")
    for path in written:
        print(f"  {path}")
    detector = out / "fed-c.safetensors"
    if detector in written:
        print(
            f"score images with it: flowenedet score IMAGE --model zoo:{world} "
            f"--detector {detector} --out maps/ --masks"
        )
    print(f"{world} world finished in {time.perf_counter() - world_started:.1f} s\n")
    return results


def _sizes(cfg: BenchConfig) -> str:
    return (
        f"{cfg.train_scenes} training, {cfg.val_scenes} validation, {cfg.test_scenes} test "
        f"scenes, {cfg.steps or f'{DEFAULT_STEPS} (default)'} steps"
    )


def cmd_demo(args: argparse.Namespace) -> int:
    """Fit FED-U / FED-C on the embedded benchmark and compare them with every baseline."""
    rough = "reduced to fit the demo's time: few scenes, numbers are rough"
    notes = {"street": rough, "aerial": rough}
    return _run(args, "the demo", runner.run_demo, PRESETS["demo"], notes)


def cmd_bench(args: argparse.Namespace) -> int:
    """The full embedded benchmark: every corruption at severities 1-4, tables as Markdown."""
    presets = PRESETS["quick"] if args.quick else PRESETS["bench"]
    return _run(args, "the benchmark", runner.run_bench, presets)


def run_options(
    out: str,
    presets: dict[str, BenchConfig],
    quick: dict[str, BenchConfig] | None = None,
    world: str = "all",
) -> list[Option]:
    """``demo`` / ``bench``: world (default ``world``), output folder and sizes, whose
    defaults come from the ``presets`` of each world (``{world: preset}``) and, for
    ``--quick``, ``quick``."""

    def sized(flag: str, what: str) -> Option:
        field = flag[2:].replace("-", "_")

        def shown(cfg: BenchConfig) -> str:
            value = getattr(cfg, field)
            return "the detector's" if value is None else str(value)

        default = "default " + ", ".join(f"{w} {shown(cfg)}" for w, cfg in presets.items())
        if quick is not None:
            default += "; " + " / ".join(shown(cfg) for cfg in quick.values()) + " with --quick"
        return flag, {"type": positive_int, "metavar": "N", "help": f"{what} ({default})"}

    world_help = (
        "the embedded world: digits (96 x 96, logits at stride 4), street (256 x 512, stride "
        "4), aerial (256 x 256, stride 4, a SegFormer-style segmenter and shifts of its own) "
        f"or all (every world, each in DIR/<world>/; default {world})"
    )
    options = [
        ("--world", {"choices": (*WORLDS, "all"), "default": world, "help": world_help}),
        ("--out", {"default": out, "metavar": "DIR", "help": f"output folder (default {out})"}),
        sized("--steps", "optimizer steps of each detector"),
        sized("--train-scenes", "scenes the detectors are fitted on"),
        sized("--val-scenes", "scenes the thresholds are calibrated on"),
        sized("--test-scenes", "scenes per test split"),
        SEED,
        (
            "--seeds",
            {
                "type": positive_int,
                "default": 1,
                "metavar": "N",
                "help": "run each world N times, seeds --seed .. --seed+N-1 (scenes and fit; "
                "the same segmenter), each in DIR/<world>/seed-K/, with the quality bar's "
                "mean and spread in DIR/<world>/seeds.md (default 1)",
            },
        ),
    ]
    if quick is not None:
        help_ = "fewer scenes, steps and corruptions: a smoke test, not a measurement"
        options.append(("--quick", {"action": "store_true", "help": help_}))
    return options


DEMO_COMMAND = Command(
    cmd_demo,
    [("run", run_options(DEMO_OUT, PRESETS["demo"], world="digits"))],
    f"""Example:
  flowenedet demo
  flowenedet demo --world all
  flowenedet demo --world digits --out tour --steps 800 --train-scenes 1000
fits FED-U and FED-C (the detector's default settings) to the shipped reference
segmenter of the digits world (--world all: of each world, each in {DEMO_OUT}/<world>/),
scores clean and shifted (digits, street: 8 corruptions; aerial:
its 9 own shifts; severities 1-4) validation and test scenes with them and every
baseline, prints the tables and the quality bar and writes to {DEMO_OUT}/
scenes.png, curves.png, curves-idm.png, results.json, fed-u.safetensors and
fed-c.safetensors (thresholds calibrated on the clean validation split, so they score
with --masks). The street and aerial parts are reduced to fit the demo's time (street:
{_sizes(STREET_DEMO)}; aerial: {_sizes(AERIAL_DEMO)}).
Then, for any world:
  flowenedet score IMAGE --model zoo --detector {DEMO_OUT}/fed-c.safetensors \\
      --out maps/ --masks
(--model zoo is the reference segmenter of the detector's world).
Needs the bench extra: pip install "flowenedet[bench]".""",
)
BENCH_COMMAND = Command(
    cmd_bench,
    [("run", run_options(BENCH_OUT, PRESETS["bench"], PRESETS["quick"]))],
    f"""Example:
  flowenedet bench --out results/
  flowenedet bench --world street --out results/
  flowenedet bench --world aerial --out results/
  flowenedet bench --quick --no-progress   # a smoke test of the pipeline
writes what demo writes plus results.md (the tables) to {BENCH_OUT}/<world>/; the test
scenes are scored clean, shifted, and under each corruption at each severity 1-4.
Needs the bench extra: pip install "flowenedet[bench]".""",
)
