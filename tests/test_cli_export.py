"""``flowenedet export`` and ``flowenedet score --onnx``: the file the command writes runs
in onnxruntime to the files the PyTorch ``score`` writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from flowenedet import FlowEneDet
from flowenedet.calibration import Calibration
from flowenedet.cli import main
from flowenedet.export import read_metadata
from flowenedet.zoo import load_reference_segmenter

pytest.importorskip("onnx", reason="ONNX export needs the export extra (onnx)")
pytest.importorskip("onnxruntime", reason="score --onnx needs the export extra (onnxruntime)")

MAPS = ("idm", "ood", "concurrent")
MEAN, STD = ["0.5", "0.5", "0.5"], ["0.25", "0.25", "0.25"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A calibrated FED-C detector of the digits zoo segmenter (fitted on images that
    ``--mean 0.5 --std 0.25`` normalised, as the CLI feeds them) and a folder of images,
    of two sizes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export_cli")
    torch.manual_seed(0)
    model = load_reference_segmenter()
    images = (torch.rand(2, 3, 64, 96) - 0.5) / 0.25
    labels = torch.randint(0, 11, (2, 64, 96))
    det = FlowEneDet(model).fit([(images, labels)], steps=2, pixels_per_image=64, progress=False)
    scores = det.score((torch.rand(2, 3, 64, 96) - 0.5) / 0.25)
    det.calibration = Calibration("f1", {m: float(getattr(scores, m).median()) for m in MAPS})
    det.save(root / "det.safetensors")
    folder = root / "images"
    folder.mkdir()
    generator = np.random.default_rng(0)
    for i, (h, w) in enumerate([(64, 96), (64, 96), (72, 80)]):
        rgb = generator.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(folder / f"frame{i}.png")
    yield {"root": root, "det": root / "det.safetensors", "images": folder}
    torch.set_num_threads(threads)


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


SEGMENTER = ["--model", "zoo", "--device", "cpu", "--mean", *MEAN, "--std", *STD]


@pytest.fixture(scope="module")
def exported(ws):
    path = ws["root"] / "det.onnx"
    argv = ["export", *SEGMENTER, "--detector", str(ws["det"]), "--size", "64", "96"]
    assert main([*argv, "--out", str(path)]) == 0
    return path


def test_export_writes_a_checked_graph_with_its_metadata(ws, exported, capsys):
    info = read_metadata(exported)
    assert info.outputs == ["pred", *MAPS, *(f"{m}_mask" for m in MAPS)]
    assert info.mean == [0.5] * 3 and info.std == [0.25] * 3 and info.dynamic
    path = ws["root"] / "det.pt"
    argv = ["export", *SEGMENTER, "--detector", str(ws["det"]), "--size", "64", "96"]
    argv += ["--format", "torchscript", "--maps", "ood", "--no-masks", "--static"]
    code, stdout, _ = _run(capsys, [*argv, "--out", str(path)])
    assert code == 0 and "outputs pred, ood" in stdout and "checked equal" in stdout
    info = read_metadata(path)
    assert info.format == "torchscript" and info.outputs == ["pred", "ood"]
    assert not info.dynamic


def test_score_onnx_writes_what_score_writes(ws, exported, capsys):
    pytest.importorskip("matplotlib", reason="PNG heat maps need the bench extra")
    torch_out, onnx_out = ws["root"] / "torch_maps", ws["root"] / "onnx_maps"
    argv = ["score", str(ws["images"]), "--masks", "--batch-size", "2", "--no-progress"]
    code, _, _ = _run(
        capsys, [*argv, *SEGMENTER, "--detector", str(ws["det"]), "--out", str(torch_out)]
    )
    assert code == 0
    code, stdout, _ = _run(capsys, [*argv, "--onnx", str(exported), "--out", str(onnx_out)])
    assert code == 0 and "3 image(s)" in stdout
    names = sorted(p.name for p in torch_out.iterdir())
    assert names == sorted(p.name for p in onnx_out.iterdir()) and len(names) == 3 * 10
    thresholds = read_metadata(exported).thresholds
    for name in names:
        if name.endswith(".npy"):
            a, b = np.load(torch_out / name), np.load(onnx_out / name)
            assert a.dtype == b.dtype == np.float16
            np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=1e-3)
        elif name.endswith("_mask.png"):
            kind = name.split("_")[1]
            scores = np.load(torch_out / name.replace("_mask.png", ".npy")).astype(np.float32)
            with Image.open(torch_out / name) as a, Image.open(onnx_out / name) as b:
                differ = np.asarray(a) != np.asarray(b)
            near = np.abs(scores - thresholds[kind]) < 1e-3  # float16 of the score
            assert not (differ & ~near).any()
        else:  # colour = the score's percentile in its image: near-ties may swap ranks
            with Image.open(torch_out / name) as a, Image.open(onnx_out / name) as b:
                differ = np.abs(np.asarray(a).astype(int) - np.asarray(b))
            assert differ.max() <= 8 and (differ > 2).mean() < 1e-3


def test_score_onnx_refuses_what_the_graph_already_holds(ws, exported, capsys):
    out = str(ws["root"] / "never")
    argv = ["score", str(ws["images"]), "--onnx", str(exported), "--out", out]
    code, _, stderr = _run(capsys, [*argv, "--detector", str(ws["det"]), "--model", "zoo"])
    assert code == 2 and "drop --detector, --model" in stderr
    code, _, stderr = _run(capsys, [*argv, "--mean", *MEAN, "--std", *STD])
    assert code == 2 and "normalises its input itself" in stderr
    code, _, stderr = _run(capsys, [*argv[:3], str(ws["det"]), "--out", out])
    assert code == 2 and "neither an ONNX nor a TorchScript file" in stderr
    code, _, stderr = _run(capsys, ["score", str(ws["images"]), "--out", out, "--model", "zoo"])
    assert code == 2 and "--detector FILE (or an export with --onnx FILE)" in stderr


def test_export_errors_are_one_line(ws, capsys):
    argv = ["export", "--model", "zoo", "--device", "cpu", "--detector", str(ws["det"])]
    code, _, stderr = _run(capsys, [*argv, "--size", "64", "--out", str(ws["root"] / "x.onnx")])
    assert code == 2 and "--size takes the traced image size H W" in stderr
    code, _, stderr = _run(capsys, [*argv, "--size", "8", "8", "--out", str(ws["root"] / "x.onnx")])
    assert code == 1 and "below the smallest side" in stderr
    assert "\n" not in stderr.strip()


def test_export_help_shows_an_example(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "Example" in out and "flowenedet export" in out
    assert "flowenedet score --onnx" in out
