"""Export: the ONNX and TorchScript graphs of the shipped zoo segmenters with FED-U, FED-C
and the convolutional flow score as ``det.score`` does; metadata round-trips; sizes,
normalisation, test-time scales and refusals behave as documented.

Small on purpose (64 x 96 images, fits of 2 steps on random data): what is compared is
the arithmetic of two paths, not the quality of the maps.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from flowenedet import FlowEneDet, __version__
from flowenedet.calibration import Calibration
from flowenedet.export import DetectorGraph, ExportError, OnnxDetector, read_metadata
from flowenedet.export.metadata import ExportInfo
from flowenedet.zoo import load_reference_segmenter

onnx = pytest.importorskip("onnx", reason="ONNX export needs the export extra (onnx)")
pytest.importorskip("onnxruntime", reason="running ONNX needs the export extra (onnxruntime)")

MAPS = ("idm", "ood", "concurrent")
MAP_TOLERANCE = 1e-4  # the maps: exported vs det.score
MASK_MARGIN = 1e-5  # masks may differ only this close to a threshold
SIZE = (64, 96)


pytestmark = pytest.mark.usefixtures("one_thread")


def fitted(world: str, **settings) -> FlowEneDet:
    """A detector on the shipped ``world`` segmenter, 2 steps on random images, calibrated
    at each map's median on other random images (so every mask has both values)."""
    torch.manual_seed(0)
    model = load_reference_segmenter(world=world)
    images = torch.rand(2, 3, *SIZE)
    labels = torch.randint(0, model.num_classes, (2, *SIZE))
    det = FlowEneDet(model, **settings).fit(
        [(images, labels)], steps=2, pixels_per_image=64, progress=False
    )
    return calibrated_at_medians(det, torch.rand(2, 3, *SIZE))


def calibrated_at_medians(det: FlowEneDet, images: torch.Tensor) -> FlowEneDet:
    scores = det.score(images)
    det.calibration = Calibration("f1", {m: float(getattr(scores, m).median()) for m in MAPS})
    return det


DETECTORS = {
    "digits-U": ("digits", {"variant": "U"}),
    "digits-C": ("digits", {"variant": "C"}),
    "digits-conv": ("digits", {"variant": "C", "coupling": "conv", "num_blocks": 2}),
    "street-U": ("street", {"variant": "U"}),
    "street-C": ("street", {"variant": "C"}),
}


@pytest.fixture(scope="module")
def detectors():
    cache = {}

    def get(name: str) -> FlowEneDet:
        if name not in cache:
            world, settings = DETECTORS[name]
            cache[name] = fitted(world, **settings)
        return cache[name]

    return get


def run_file(path, fmt: str, images: torch.Tensor) -> dict[str, np.ndarray]:
    if fmt == "onnx":
        return OnnxDetector(path)(images.numpy())
    with warnings.catch_warnings():  # torch.jit is deprecated, and still what it is
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path))
    with torch.no_grad():
        return {name: value.numpy() for name, value in module(images).items()}


def assert_scores_equal(got: dict[str, np.ndarray], det: FlowEneDet, images, **score_kwargs):
    """Maps within 1e-4 of det.score's, the same prediction, masks equal except within
    1e-5 of their threshold."""
    expected = det.score(images, **score_kwargs)
    np.testing.assert_array_equal(got["pred"], expected.pred.numpy())
    for name in MAPS:
        want = getattr(expected, name).numpy()
        assert got[name].shape == want.shape and got[name].dtype == np.float32
        assert np.abs(got[name] - want).max() <= MAP_TOLERANCE, name
        t = det.calibration.thresholds[name]
        mask = got[f"{name}_mask"]
        assert mask.dtype == np.bool_ and 0 < mask.mean() < 1  # thresholds at medians
        differ = mask != (want > t)
        assert not (differ & (np.abs(want - t) > MASK_MARGIN)).any(), name


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", list(DETECTORS))
def test_exported_graph_scores_as_the_detector(detectors, name, fmt, tmp_path):
    det = detectors(name)
    path = det.export(tmp_path / f"det.{fmt}", format=fmt, image_size=SIZE, check=False)
    if fmt == "onnx":
        onnx.checker.check_model(str(path))
    torch.manual_seed(3)
    # other images than the traced ones, at the traced size and at another batch and size
    for shape in [(2, 3, *SIZE), (1, 3, 72, 80)]:
        images = torch.rand(shape)
        assert_scores_equal(run_file(path, fmt, images), det, images)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_metadata_round_trips(detectors, fmt, tmp_path):
    det = detectors("digits-C")
    path = det.export(tmp_path / "det.bin", format=fmt, image_size=SIZE, maps=("ood",))
    info = read_metadata(path)
    assert info.format == fmt and info.flowenedet_version == __version__
    assert info.detector_config() == det.config
    assert info.config == json.loads(json.dumps(det.config.to_json()))
    assert info.segmenter_fingerprint == det.config.fitted.segmenter_fingerprint
    assert info.calibration == {"target": "f1", "thresholds": dict(det.calibration.thresholds)}
    assert info.outputs == ["pred", "ood", "ood_mask"] and info.maps == ["ood"]
    assert info.thresholds == {"ood": det.calibration.thresholds["ood"]}
    assert info.scales == [1.0] and info.image_size == list(SIZE) and info.dynamic
    assert info.min_image_side <= min(SIZE)
    assert ExportInfo.from_json(info.to_json(), "again") == info


def test_read_metadata_refuses_other_files(tmp_path):
    plain = tmp_path / "plain.onnx"
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
    )
    onnx.save(model, str(plain))
    with pytest.raises(ValueError, match="not a flowenedet export"):
        read_metadata(plain)
    (tmp_path / "text.onnx").write_text("hello")
    with pytest.raises(ValueError, match=r"text\.onnx"):
        read_metadata(tmp_path / "text.onnx")


def test_static_export_and_small_images_are_refused_with_the_sizes(detectors, tmp_path):
    det = detectors("digits-U")
    path = det.export(tmp_path / "static.onnx", image_size=SIZE, dynamic=False)
    runner = OnnxDetector(path)
    assert not runner.info.dynamic
    images = torch.rand(1, 3, *SIZE)
    assert_scores_equal(runner(images.numpy()), det, images)
    with pytest.raises(ValueError, match="64x96 only"):
        runner(np.zeros((1, 3, 72, 80), np.float32))
    dynamic = OnnxDetector(det.export(tmp_path / "dynamic.onnx", image_size=SIZE, check=False))
    side = dynamic.info.min_image_side
    with pytest.raises(ValueError, match=f"at least {side} pixels"):
        dynamic(np.zeros((1, 3, side - 1, 64), np.float32))
    with pytest.raises(ValueError, match="smallest side"):
        det.export(tmp_path / "tiny.onnx", image_size=(side - 1, 64))


def test_test_time_scales_normalisation_and_reference_postprocessing(detectors, tmp_path):
    """The paper's scoring (scales 1, 0.5, 0.25 averaged with the softmax; boundary
    suppression and dilated smoothing at image resolution) and a graph that normalises
    RGB input itself."""
    det = detectors("digits-C").with_options(
        tta=True,
        postprocess="image-pixels",
        boundary_width=4,
        boundary_iterations=4,
        ood_dilation=6,
    )
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    rgb = torch.rand(2, 3, 100, 112)
    normalised = (rgb - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    calibrated_at_medians(det, normalised)
    path = det.export(tmp_path / "tta.onnx", image_size=(96, 96), mean=mean, std=std)
    info = read_metadata(path)
    assert info.scales == [1.0, 0.5, 0.25] and info.mean == list(mean)
    assert_scores_equal(OnnxDetector(path)(rgb.numpy()), det, normalised)


def test_graph_module_in_pytorch_equals_score(detectors):
    """The module itself (what both formats trace), eagerly, on the street segmenter."""
    det = detectors("street-C")
    graph = DetectorGraph(det, masks=True).eval()
    images = torch.rand(2, 3, 72, 136)
    with torch.no_grad():
        got = {k: v.numpy() for k, v in graph(images).items()}
    assert list(got) == graph.output_names
    assert_scores_equal(got, det, images)


def test_an_export_that_does_not_score_as_the_detector_is_refused(detectors, tmp_path, monkeypatch):
    det = detectors("digits-U")
    original = DetectorGraph.forward

    def off_by_a_bit(self, images):
        outputs = original(self, images)
        return {**outputs, "ood": outputs["ood"] + 1e-3}

    monkeypatch.setattr(DetectorGraph, "forward", off_by_a_bit)
    path = tmp_path / "wrong.onnx"
    with pytest.raises(ExportError, match=r"'ood' map differs from det\.score's by 0\.001"):
        det.export(path, image_size=SIZE)
    assert not path.exists()


def test_export_arguments_are_checked(detectors, tmp_path):
    det = detectors("digits-U")
    with pytest.raises(ValueError, match="format must be one of"):
        det.export(tmp_path / "x", format="tflite", image_size=SIZE)
    with pytest.raises(ValueError, match="maps must be distinct names"):
        det.export(tmp_path / "x", image_size=SIZE, maps=("ood", "novelty"))
    with pytest.raises(ValueError, match="size must be"):
        det.export(tmp_path / "x", image_size=64)
    det2 = det.with_options(smooth_kernel=5)  # other options: thresholds dropped
    info = read_metadata(det2.export(tmp_path / "u.onnx", image_size=SIZE, check=False))
    assert info.outputs == ["pred", "idm", "ood", "concurrent"] and info.calibration is None
    with pytest.raises(RuntimeError, match="not fitted"):
        FlowEneDet(det.segmenter).export(tmp_path / "x", image_size=SIZE)


def test_a_missing_extra_is_named_before_any_tracing(detectors, monkeypatch, tmp_path):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else find_spec(name)
    )
    det = detectors("digits-U")
    with pytest.raises(ImportError, match=r"flowenedet\[export\]' \(missing module onnx\)"):
        det.export(tmp_path / "x.onnx", image_size=SIZE)
    det.export(tmp_path / "x.pt", format="torchscript", image_size=SIZE)  # needs neither


def test_a_missing_onnxruntime_is_one_clear_error(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    from flowenedet.export.runtime import session

    with pytest.raises(ImportError, match=r"pip install 'flowenedet\[export\]'"):
        session(str(tmp_path / "any.onnx"))


@pytest.mark.slow
def test_the_dynamo_exporter_gives_a_graph_that_scores_as_the_detector(tmp_path):
    """torch.export's ONNX exporter (about 30 s even for a toy segmenter, hence slow)."""
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    from .toy import ToySegmenter

    torch.manual_seed(0)
    images, labels = torch.rand(2, 3, 32, 48), torch.randint(0, 4, (2, 32, 48))
    det = FlowEneDet(ToySegmenter().eval(), num_blocks=2).fit(
        [(images, labels)], steps=2, pixels_per_image=64, progress=False
    )
    calibrated_at_medians(det, torch.rand(2, 3, 32, 48))
    path = det.export(tmp_path / "dynamo.onnx", image_size=(32, 48), exporter="dynamo")
    assert read_metadata(path).exporter == "dynamo"
    images = torch.rand(3, 3, 40, 36)
    assert_scores_equal(OnnxDetector(path)(images.numpy()), det, images)


def test_files_of_older_formats_export_and_score_as_their_release_did(tmp_path):
    """The stored fixtures (tests/fixtures): format 5's graph gives the maps its release
    scored; format 2 predates the fit's stride (measured at export) and post-processes in
    logit pixels with a reach (6 x 3) that needs larger images than the stored scene."""
    from pathlib import Path

    from safetensors.torch import load_file

    fixtures = Path(__file__).parent / "fixtures"
    segmenter = load_reference_segmenter()
    det = FlowEneDet.load(fixtures / "detector-v5.safetensors", segmenter)
    expected = load_file(fixtures / "detector-v5-maps.safetensors")
    image = expected["image"].float() / 255
    path = det.export(tmp_path / "v5.onnx", image_size=tuple(image.shape[-2:]))
    got = OnnxDetector(path)(image.numpy())
    for name in MAPS:
        assert np.abs(got[name] - expected[name].numpy()).max() <= 2e-5, name
    assert (got["pred"] == expected["pred"].numpy()).all()
    assert read_metadata(path).calibration["thresholds"] == dict(det.calibration.thresholds)
    old = FlowEneDet.load(fixtures / "detector-v2.safetensors", segmenter)
    assert old.config.fitted.stride is None and old.config.scoring.postprocess == "logit-pixels"
    path = old.export(tmp_path / "v2.onnx", image_size=(80, 96))
    info = read_metadata(path)
    assert info.min_image_side == 76 and info.calibration is None
    images = torch.rand(2, 3, 88, 100)
    got, want = OnnxDetector(path)(images.numpy()), old.score(images)
    for name in MAPS:
        assert np.abs(got[name] - getattr(want, name).numpy()).max() <= MAP_TOLERANCE, name
