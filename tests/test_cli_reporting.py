"""What the ``flowenedet`` command tells its user: CLI flags (not Python arguments) in
errors, a warning once per run, one rank's logs under torchrun, a missing extra in one line,
and the split an ``evaluate`` JSON records. On the embedded digits world and the shipped
reference segmenter (``--model zoo``), a few scenes of 96 x 96."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from flowenedet.cli import main
from flowenedet.evaluation.worlds.digits import make_scenes
from flowenedet.zoo import load_reference_segmenter

pytest.importorskip("skimage")  # the embedded world needs the bench extra

SMALL = json.dumps({"num_blocks": 2, "hidden": 16, "boundary_width": 1, "ood_dilation": 1})
FIT = ["fit", "--dataset", "embedded", "--model", "zoo", "--scenes", "4", "--steps", "2"]
FIT += ["--pixels-per-image", "64", "--detector-kwargs", SMALL, "--no-progress"]
FIT += ["--device", "cpu"]


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A detector fitted by the command on 4 training scenes (2 steps: its quality is not
    what these tests look at)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("reporting") / "det.safetensors"
    assert main([*FIT, "--out", str(path)]) == 0
    yield path
    torch.set_num_threads(threads)


def _evaluate(detector, *extra: str) -> list[str]:
    argv = ["evaluate", "--detector", str(detector), "--dataset", "embedded", "--model", "zoo"]
    return [*argv, "--scenes", "2", "--device", "cpu", "--no-progress", *extra]


def _write_scenes(images: Path, labels: Path, image_suffix: str, label_suffix: str) -> None:
    """Two training scenes of the digits world (no OOD pixels, as in Cityscapes) as PNG
    images ``f<i><image_suffix>`` and label maps ``f<i><label_suffix>`` (train ids)."""
    scenes = make_scenes("train", 2, seed=3, size=96)
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for i in range(len(scenes)):
        rgb = scenes.images[i].permute(1, 2, 0).numpy()
        Image.fromarray(rgb).save(images / f"f{i}{image_suffix}")
        label = scenes.labels[i].numpy().astype(np.uint8)
        Image.fromarray(label, mode="L").save(labels / f"f{i}{label_suffix}")


def _cityscapes(root: Path, split: str = "val") -> Path:
    """The scenes in the official Cityscapes layout."""
    images, labels = (root / top / split / "city" for top in ("leftImg8bit", "gtFine"))
    _write_scenes(images, labels, "_leftImg8bit.png", "_gtFine_labelTrainIds.png")
    return root


def test_cityscapes_without_ood_pixels_warns_once_and_records_its_default_split(
    detector, tmp_path, caplog
):
    root, out = _cityscapes(tmp_path / "cityscapes"), tmp_path / "val.json"
    argv = ["evaluate", "--detector", str(detector), "--model", "zoo", "--device", "cpu"]
    argv += ["--dataset", "cityscapes", "--root", str(root), "--no-progress"]
    with caplog.at_level(logging.WARNING):
        assert main([*argv, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert len(report["methods"]) == 9  # three maps and six baselines, ...
    assert all(row["ood"] is None for row in report["methods"].values())
    warned = [r for r in caplog.records if "not computed" in r.getMessage()]
    assert len(warned) == 1 and "'ood'" in warned[0].getMessage()  # ... one warning
    assert report["split"] == "val"  # Cityscapes' default, though --split was not given


def test_the_evaluate_json_of_a_folder_records_all_its_images(detector, tmp_path):
    _write_scenes(tmp_path / "images", tmp_path / "labels", ".png", ".png")
    argv = ["evaluate", "--detector", str(detector), "--model", "zoo", "--device", "cpu"]
    argv += ["--folder", str(tmp_path / "images"), "--labels", str(tmp_path / "labels")]
    out = tmp_path / "folder.json"
    assert main([*argv, "--no-progress", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["dataset"] == "folder" and report["split"] == "all"


def test_a_changed_segmenter_is_refused_naming_the_cli_flag(detector, tmp_path, capsys):
    state = {k: v.clone() for k, v in load_reference_segmenter().state_dict().items()}
    state["head.weight" if "head.weight" in state else next(iter(state))] += 0.01
    changed = tmp_path / "changed.safetensors"
    save_file(state, str(changed))
    code = main(_evaluate(detector, "--weights", str(changed)))
    err = capsys.readouterr().err
    assert code == 1 and "different segmenter" in err
    assert "--no-segmenter-check" in err and "check_segmenter" not in err
    assert main(_evaluate(detector, "--weights", str(changed), "--no-segmenter-check")) == 0


@pytest.mark.parametrize("rank, logs_info", [("0", True), ("1", False)])
def test_under_torchrun_only_rank_0_logs(tmp_path, monkeypatch, caplog, rank, logs_info):
    monkeypatch.setenv("RANK", rank)  # set by torchrun before any process group exists
    with caplog.at_level(logging.DEBUG):
        assert main([*FIT, "-v", "--steps", "1", "--out", str(tmp_path / "d.safetensors")]) == 0
    info = [r for r in caplog.records if r.name.startswith("flowenedet") and r.levelno < 30]
    assert bool(info) is logs_info


def test_fit_on_the_embedded_world_without_the_bench_extra_is_one_line(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "skimage", None)  # as if scikit-image were not installed
    code = main([*FIT, "--out", str(tmp_path / "d.safetensors")])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("flowenedet: error: --dataset embedded")
    assert 'pip install "flowenedet[bench]"' in err and "skimage" in err
    assert not (tmp_path / "d.safetensors").exists()
