"""``flowenedet evaluate --protocol``: a SegmentMeIfYouCan-layout tree and the embedded digits
world, the printed columns and the JSON, against the library's numbers."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from flowenedet import FlowEneDet
from flowenedet.cli import main
from flowenedet.evaluation.baselines import MSP
from flowenedet.evaluation.components import ComponentEvaluator
from flowenedet.evaluation.smiyc import SmiycPixelCurve
from flowenedet.labels import IGNORE_INDEX, OOD_INDEX, UNLABELLED_ID
from flowenedet.zoo import load_reference_segmenter

from .toy import OOD_COLOUR, OOD_LABEL, make_scenes

HEADER = "| Method | OOD AUROC | OOD AP | OOD FPR95 | sIoU | PPV | mean F1 |"
ROWS = {"FED ood", "MSP", "MaxLogit", "Energy", "Entropy", "SML", "SML+post"}


@pytest.fixture(scope="module")
def toy(tmp_path_factory, segmenter, fitted):
    """The toy segmenter as a factory module and weights file, a detector for it, and a
    RoadAnomaly21-layout tree of 96 x 96 toy scenes, each with a 26 x 26 anomaly."""
    root = tmp_path_factory.mktemp("protocol")
    (root / "cli_protocol_models.py").write_text(
        "from tests.toy import ToySegmenter\n\n\ndef build():\n    return ToySegmenter()\n"
    )
    save_file(
        {k: v.clone() for k, v in segmenter.state_dict().items()}, str(root / "toy.safetensors")
    )
    detector = fitted["C"].save(root / "det.safetensors")
    images, labels = make_scenes(3, size=96, seed=31, ood=True)
    tree = root / "dataset_AnomalyTrack"
    (tree / "images").mkdir(parents=True)
    (tree / "labels_masks").mkdir()
    for i, corner in enumerate((10, 40, 60)):
        images[i, :, corner : corner + 26, 20:46] = OOD_COLOUR[:, None, None]
        labels[i, corner : corner + 26, 20:46] = OOD_LABEL
        mask = np.where(labels[i].numpy() == OOD_LABEL, 1, 0).astype(np.uint8)
        mask[:, :4] = 255  # void strip
        rgb = (images[i].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(rgb).save(tree / "images" / f"frame{i}.png")
        Image.fromarray(mask, mode="L").save(
            tree / "labels_masks" / f"frame{i}_labels_semantic.png"
        )
    folder = root / "folder"  # class labels and OOD: a plain folder
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    images, labels = make_scenes(4, seed=32, ood=True)
    for i in range(4):
        rgb = (images[i].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(rgb).save(folder / "images" / f"f{i}.png")
        Image.fromarray(labels[i].numpy().astype(np.uint8), mode="L").save(
            folder / "labels" / f"f{i}.png"
        )
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        yield {"root": root, "tree": tree, "det": detector, "folder": folder}


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    code = main([*argv, "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return code, out


def test_smiyc_anomaly_on_a_segmentmeifyoucan_tree_gives_the_library_s_numbers(
    toy, segmenter, capsys
):
    out = toy["root"] / "ra21.json"
    argv = ["evaluate", "--detector", str(toy["det"]), "--model", "cli_protocol_models:build"]
    argv += ["--weights", str(toy["root"] / "toy.safetensors"), "--device", "cpu"]
    argv += ["--dataset", "road_anomaly21", "--root", str(toy["tree"])]
    _, stdout = _run(capsys, [*argv, "--protocol", "smiyc-anomaly", "--json", str(out)])
    assert HEADER in stdout and "| FED ood |" in stdout and "| SML+post |" in stdout
    assert "F1-optimal pixel threshold" in stdout
    report = json.loads(out.read_text())
    assert report["protocol"] == "smiyc-anomaly" and report["split"] == "validation"
    assert report["dataset"] == "road_anomaly21" and report["images"] == 3
    assert set(report["methods"]) == ROWS
    # the same numbers from the library: maps of each image, the benchmark's curve, then
    # the components of the float16 maps at its threshold
    det = FlowEneDet.load(toy["det"], segmenter)
    curves = {"FED ood": SmiycPixelCurve(), "MSP": SmiycPixelCurve()}
    frames = []
    for i in range(3):
        image = Image.open(toy["tree"] / "images" / f"frame{i}.png")
        x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float() / 255
        raw = np.asarray(Image.open(toy["tree"] / "labels_masks" / f"frame{i}_labels_semantic.png"))
        label = np.select([raw == 1, raw == 255], [OOD_INDEX, IGNORE_INDEX], UNLABELLED_ID)
        maps = {"FED ood": det.score(x).ood[0].numpy(), "MSP": MSP(segmenter).predict(x)[0].numpy()}
        for name, curve in curves.items():
            curve.update(maps[name], label)
        frames.append((maps, label))
    for name, curve in curves.items():
        row, pixel = report["methods"][name], curve.compute()
        assert row["ood"]["ap"] == pytest.approx(pixel["ap"], abs=1e-6)
        assert row["threshold"] == pytest.approx(pixel["threshold"], abs=1e-6)
        components = ComponentEvaluator(row["threshold"], "anomaly")
        for maps, label in frames:
            components.update(maps[name].astype(np.float16), label)
        assert row["components"] == pytest.approx(components.compute())
        assert row["components"]["components"] == 3  # the 26 x 26 anomalies (>= 100 px)
        line = next(ln for ln in stdout.splitlines() if ln.startswith(f"| {name} |"))
        siou = row["components"]["siou"]
        assert line.split(" | ")[4] == f"{100 * siou:.2f}"


def test_fishyscapes_and_cityscapes_idm_rows_are_the_default_table_s_pooled_numbers(toy, capsys):
    argv = ["evaluate", "--detector", str(toy["det"]), "--model", "cli_protocol_models:build"]
    argv += ["--weights", str(toy["root"] / "toy.safetensors"), "--device", "cpu"]
    argv += ["--folder", str(toy["folder"] / "images"), "--labels", str(toy["folder"] / "labels")]
    default = toy["root"] / "default.json"
    _run(capsys, [*argv, "--json", str(default)])
    default_report = json.loads(default.read_text())
    default = default_report["methods"]
    reports = {}
    for protocol in ("fishyscapes", "cityscapes-idm"):
        path = toy["root"] / f"{protocol}.json"
        _, stdout = _run(capsys, [*argv, "--protocol", protocol, "--json", str(path)])
        reports[protocol] = json.loads(path.read_text())
        assert f"protocol {protocol}:" in stdout
    fishy, idm = reports["fishyscapes"]["methods"], reports["cityscapes-idm"]["methods"]
    assert set(fishy) == ROWS and set(idm) == ROWS - {"FED ood"} | {"FED idm"}
    assert fishy["FED ood"] == {"ood": default["FED ood"]["ood"]}
    assert fishy["MSP"]["ood"] == default["MSP"]["ood"]
    assert idm["FED idm"]["idm"] == default["FED idm"]["idm"]
    assert idm["FED idm"]["idm_per_image"]["images"] == 4
    assert reports["cityscapes-idm"]["miou"] == default_report["miou"]


REFERENCE = importlib.resources.files("flowenedet.zoo") / "digits.safetensors"


@pytest.mark.skipif(not REFERENCE.is_file(), reason="the digits reference weights are missing")
def test_smiyc_anomaly_on_the_embedded_digits_world(tmp_path: Path, capsys):
    det = tmp_path / "digits.safetensors"
    fit = ["fit", "--model", "zoo", "--dataset", "embedded", "--scenes", "6", "--steps", "2"]
    _run(capsys, [*fit, "--pixels-per-image", "64", "--out", str(det), "--device", "cpu"])
    out = tmp_path / "digits.json"
    argv = ["evaluate", "--model", "zoo", "--detector", str(det), "--dataset", "embedded"]
    argv += ["--scenes", "4", "--baselines", "msp", "--device", "cpu", "--json", str(out)]
    _, stdout = _run(capsys, [*argv, "--protocol", "smiyc-anomaly"])
    assert "protocol smiyc-anomaly: SegmentMeIfYouCan's anomaly track" in stdout
    assert HEADER in stdout
    report = json.loads(out.read_text())
    assert report["split"] == "test" and report["images"] == 4
    assert set(report["methods"]) == {"FED ood", "MSP"}
    for row in report["methods"].values():
        assert 0 < row["ood"]["ap"] < 1 and set(row["components"]) >= {"siou", "ppv", "f1_mean"}
    _, default = _run(capsys, argv[:-2])  # without --protocol: today's table
    assert "| FED concurrent |" in default and "sIoU" not in default


STREET = importlib.resources.files("flowenedet.zoo") / "street.safetensors"


@pytest.mark.skipif(not STREET.is_file(), reason="the street reference weights are missing")
def test_smiyc_obstacle_on_the_embedded_street_world(tmp_path: Path, capsys):
    det = tmp_path / "street.safetensors"
    world = ["--model", "zoo", "--dataset", "embedded", "--world", "street", "--scenes", "2"]
    world += ["--size", "128", "--device", "cpu"]
    fit = ["fit", *world, "--steps", "2", "--pixels-per-image", "64", "--out", str(det)]
    _run(capsys, fit)
    street = load_reference_segmenter(world="street")
    assert FlowEneDet.load(det, street).config.fitted.num_classes == 8  # fitted for that segmenter
    out = tmp_path / "street.json"
    argv = ["evaluate", *world, "--detector", str(det), "--baselines", "energy"]
    _, stdout = _run(capsys, [*argv, "--protocol", "smiyc-obstacle", "--json", str(out)])
    assert HEADER in stdout and "| Energy |" in stdout
    report = json.loads(out.read_text())
    assert report["images"] == 2 and report["num_classes"] == 8
    assert report["methods"]["FED ood"]["components"]["components"] >= 1
