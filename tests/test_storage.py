"""Detector files as a hostile user would write them: every crafted header or tensor is
refused with a clear error naming the file, or loads and scores finite maps."""

import copy
import json
import random
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from flowenedet import FlowEneDet, FormatError
from flowenedet import io as fio
from flowenedet.storage import FORMAT, FORMAT_VERSION

from .headers import edited, group_of
from .toy import make_scenes


@pytest.fixture(scope="module")
def saved(fitted, tmp_path_factory):
    return fitted["C"].save(tmp_path_factory.mktemp("det") / "det.safetensors")


def read(path):
    tensors, config, _ = fio.load_file(path, kind=FORMAT, version=FORMAT_VERSION)
    return tensors, config


def craft(path, out, config=None, tensors=None):
    """Re-save ``path`` with edits and a *valid* checksum: what someone who knows the format
    can always do, so only validation can stop it."""
    original_tensors, original_config = read(path)
    tensors = {**original_tensors, **(tensors or {})}
    tensors = {k: v for k, v in tensors.items() if v is not None}
    body = edited(original_config, config or {})
    fio.save_file_atomic(out, tensors, kind=FORMAT, version=FORMAT_VERSION, config=body)
    return out


def rewrite_header(path, out, edit):
    """Re-save with ``edit(metadata)`` applied and the stored checksum left as it was."""
    with safe_open(str(path), "pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    edit(metadata)
    save_file(tensors, str(out), metadata=metadata)
    return out


# ------------------------------------------------------------------ the header
@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("hidden", 10**9, "hidden"),
        ("context_channels", 10**8, "context_channels"),
        ("num_blocks", 10**6, "num_blocks"),
        ("smooth_kernel", 40001, "smooth_kernel"),
        ("smooth_kernel", 6, "odd"),
        ("ood_dilation", 10**4, "ood_dilation"),
        ("boundary_iterations", 10**9, "boundary_iterations"),
        ("ood_smooth_sigma", 0, "ood_smooth_sigma"),
        ("ood_keep_peaks", "false", "ood_keep_peaks"),
        ("num_blocks", "8", "num_blocks"),
        ("num_blocks", 8.0, "num_blocks"),
        ("segmenter_fingerprint", None, "fingerprint"),
        ("segmenter_fingerprint", ..., "fingerprint"),  # removed from the header
        ("num_classes", None, "num_classes"),
        ("nonsense", 1, "unknown settings"),
    ],
)
def test_crafted_header_values_are_refused_before_anything_is_built(
    saved, segmenter, tmp_path, monkeypatch, field, value, match
):
    bad = craft(saved, tmp_path / "bad.safetensors", config={field: value})
    built = []
    monkeypatch.setattr("flowenedet.detector.build_flow", lambda *a: built.append(a))
    with pytest.raises(FormatError, match=match) as info:
        FlowEneDet.load(bad, segmenter)
    assert str(bad) in str(info.value)
    assert not built


def test_non_finite_header_numbers_are_refused(saved, segmenter, tmp_path):
    tensors = read(saved)[0]
    for field in ("ood_smooth_sigma", "chunk_pixels"):
        for text in ("NaN", "Infinity"):

            def edit(meta, field=field, text=text):
                config = edited(json.loads(meta["config"]), {field: 0.0})
                meta["config"] = json.dumps(config).replace(f'"{field}": 0.0', f'"{field}": {text}')
                meta["sha256"] = fio._file_checksum(tensors, meta)

            bad = rewrite_header(saved, tmp_path / "nan.safetensors", edit)
            with pytest.raises(FormatError, match="finite"):
                FlowEneDet.load(bad, segmenter)


@pytest.mark.parametrize("config", ["null", "3", '"text"', "[1, 2]"])
def test_a_header_config_that_is_not_an_object_is_refused(saved, segmenter, tmp_path, config):
    tensors = read(saved)[0]

    def edit(meta):
        meta["config"] = config
        meta["sha256"] = fio._file_checksum(tensors, meta)

    bad = rewrite_header(saved, tmp_path / "bad.safetensors", edit)
    with pytest.raises(FormatError, match="JSON object"):
        FlowEneDet.load(bad, segmenter)


def test_any_edit_of_the_settings_is_a_damaged_file(saved, segmenter, tmp_path):
    original = read(saved)[1]
    for field in ("ood_smooth_sigma", "smooth_kernel", "boundary_width", "ood_dilation"):

        def edit(meta, field=field):
            config = json.loads(meta["config"])
            group = group_of(config, field)
            value = group[field]
            group[field] = value + 2 if isinstance(value, int) else value * 1.0000001
            meta["config"] = json.dumps(config, sort_keys=True)

        bad = rewrite_header(saved, tmp_path / f"{field}.safetensors", edit)
        with pytest.raises(FormatError, match="damaged") as info:
            FlowEneDet.load(bad, segmenter)
        assert str(bad) in str(info.value)

    def flip_fingerprint(meta):
        config = json.loads(meta["config"])
        fingerprint = config["fitted"]["segmenter_fingerprint"]
        flipped = ("0" if fingerprint[0] != "0" else "1") + fingerprint[1:]
        config["fitted"]["segmenter_fingerprint"] = flipped
        meta["config"] = json.dumps(config, sort_keys=True)

    bad = rewrite_header(saved, tmp_path / "fp.safetensors", flip_fingerprint)
    with pytest.raises(FormatError, match="damaged"):  # not "a different segmenter"
        FlowEneDet.load(bad, segmenter)
    assert read(saved)[1] == original


def test_oversized_settings_never_allocate(saved, tmp_path):
    """Under a 1.5 GiB address-space budget above the interpreter's, a header asking for a
    billion-wide flow is refused; built, it would need gigabytes."""
    bad = craft(saved, tmp_path / "huge.safetensors", config={"hidden": 10**9})
    script = textwrap.dedent(
        f"""
        import resource
        from flowenedet import FlowEneDet, FormatError
        from tests.toy import ToySegmenter
        segmenter = ToySegmenter()
        used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + (3 << 29), resource.RLIM_INFINITY))
        try:
            FlowEneDet.load({str(bad)!r}, segmenter, check_segmenter=False)
        except FormatError as error:
            print("refused:", error)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout and "hidden" in done.stdout


# ------------------------------------------------------------------ the tensors
def _stats(saved, name):
    return read(saved)[0][f"stats.{name}"]


@pytest.mark.parametrize(
    ("name", "make", "match"),
    [
        ("stats.var", lambda s: -s["stats.var"], "variance or spread"),
        ("stats.var", lambda s: s["stats.var"].double(), "float64"),
        ("stats.mean", lambda s: s["stats.mean"][:-1], "expected"),
        ("stats.mean", lambda s: s["stats.mean"].int(), "int32"),
        ("stats.mean", lambda s: s["stats.mean"] * torch.nan, "NaN"),
        ("stats.scale", lambda s: s["stats.scale"][:3], "expected"),
        ("stats.scale", lambda s: s["stats.scale"] * torch.tensor([1.0, 0.0]), "spread"),
        ("stats.var", lambda s: None, "missing"),
        (
            "flow.context_encoder.mix.weight",
            lambda s: s["flow.context_encoder.mix.weight"] * torch.inf,
            "infinite",
        ),
        (
            "flow.context_encoder.mix.weight",
            lambda s: s["flow.context_encoder.mix.weight"].long(),
            "int64",
        ),
        (
            "flow.context_encoder.mix.weight",
            lambda s: s["flow.context_encoder.mix.weight"][:1],
            "expected",
        ),
        ("flow.extra", lambda s: torch.zeros(2), "unexpected"),
    ],
)
def test_crafted_tensors_are_refused(saved, segmenter, tmp_path, name, make, match):
    tensors = read(saved)[0]
    bad = craft(saved, tmp_path / "bad.safetensors", tensors={name: make(tensors)})
    with pytest.raises(FormatError, match=match) as info:
        FlowEneDet.load(bad, segmenter)
    assert str(bad) in str(info.value)


# ------------------------------------------------------------------ fuzz
def _mutate_value(value, rng):
    choices = [
        None,
        "x",
        True,
        -1,
        0,
        10**12,
        1.5,
        float("inf"),
        [1],
        {"a": 1},
    ]
    if isinstance(value, bool):
        choices.append(not value)
    elif isinstance(value, int):
        choices += [value + rng.choice([-3, -1, 1, 2, 64]), value * 1000]
    elif isinstance(value, float):
        choices += [value * rng.uniform(-10, 10), value + 1e-3]
    return rng.choice(choices)


def _mutate_tensor(tensor, rng):
    kind = rng.randrange(5)
    if kind == 0 and tensor.is_floating_point() and tensor.numel():
        out = tensor.clone().flatten()
        out[rng.randrange(out.numel())] = rng.choice([float("nan"), float("inf"), 1e30, -1e30])
        return out.view_as(tensor)
    if kind == 1:
        return tensor.double() if tensor.is_floating_point() else tensor.float()
    if kind == 2 and tensor.dim() and tensor.shape[0] > 1:
        return tensor[:-1]
    if kind == 3:
        return torch.cat([tensor.flatten(), tensor.flatten()[:1]]) if tensor.numel() else tensor
    return tensor * rng.choice([0.0, -1.0, 1e6])


def test_fuzzed_files_are_refused_or_give_finite_maps(saved, segmenter, tmp_path):
    rng = random.Random(20261201)
    tensors, config = read(saved)
    images, _ = make_scenes(2, seed=1)
    outcomes = {"refused": 0, "finite": 0}
    for case in range(60):
        edited_config, edited_tensors = edited(config, {}), dict(tensors)
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.5:
                group = rng.choice(["flow", "scoring", "fitted"])
                key = rng.choice(sorted(edited_config[group]))
                edited_config[group][key] = _mutate_value(edited_config[group][key], rng)
            else:
                key = rng.choice(sorted(edited_tensors))
                edited_tensors[key] = _mutate_tensor(edited_tensors[key], rng)
        path = tmp_path / f"fuzz{case}.safetensors"
        try:
            fio.save_file_atomic(
                path, edited_tensors, kind=FORMAT, version=FORMAT_VERSION, config=edited_config
            )
        except (ValueError, TypeError):  # not even JSON (infinity): nobody can write it
            continue
        result = {}

        def attempt(path=path, result=result):
            try:
                maps = FlowEneDet.load(path, segmenter).score(images)
                result["finite"] = all(
                    torch.isfinite(getattr(maps, k)).all() for k in ("idm", "ood", "concurrent")
                )
            except (FormatError, ValueError, TypeError) as error:
                result["refused"] = str(error)
            except Exception as error:  # anything else is a defect: report it
                result["unexpected"] = repr(error)

        worker = threading.Thread(target=attempt, daemon=True)
        worker.start()
        worker.join(timeout=30)
        assert not worker.is_alive(), f"case {case} did not finish in 30 s"
        assert "unexpected" not in result, f"case {case}: {result.get('unexpected')}"
        if "refused" in result:
            assert result["refused"].strip(), f"case {case}: an empty error message"
            outcomes["refused"] += 1
        else:
            assert result["finite"], f"case {case} gave non-finite maps"
            outcomes["finite"] += 1
    assert outcomes["refused"] > 30  # the mutations are mostly harmful, and caught


def test_a_file_older_than_the_postprocess_setting_scores_as_it_did(tmp_path):
    """A file without ``postprocess`` predates it and ran post-processing in logit pixels:
    it must load with that, not with today's default, and score as such a detector did."""
    from flowenedet.zoo import load_reference_segmenter

    segmenter = load_reference_segmenter()
    genuine = FIXTURES / "detector-v4.safetensors"
    tensors, header, _ = fio.load_file(genuine, kind=FORMAT, version=4)
    assert header.pop("postprocess") == "image-pixels-at-logits"
    old = fio.save_file_atomic(
        tmp_path / "old.safetensors", tensors, kind=FORMAT, version=4, config=header
    )
    loaded = FlowEneDet.load(old, segmenter)
    assert loaded.config.scoring.postprocess == "logit-pixels"
    images = load_file(FIXTURES / "detector-v4-maps.safetensors")["image"].float() / 255
    current = FlowEneDet.load(genuine, segmenter).with_options(
        boundary_width=4, boundary_iterations=1
    )
    loaded = loaded.with_options(boundary_width=4, boundary_iterations=1)  # a size to convert
    assert not torch.equal(loaded.score(images).ood, current.score(images).ood)
    current = current.with_options(postprocess="logit-pixels")
    assert torch.equal(loaded.score(images).ood, current.score(images).ood)


# ------------------------------------------------------------------ every format
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("version", [2, 3, 4, 5])
def test_files_of_every_format_load_and_score_as_their_release_did(version):
    """``tests/fixtures``: a detector written by the release of each format and the maps
    that release scored for one scene (``make_fixtures.py`` says how they were made)."""
    from flowenedet.zoo import load_reference_segmenter

    det = FlowEneDet.load(FIXTURES / f"detector-v{version}.safetensors", load_reference_segmenter())
    expected = load_file(FIXTURES / f"detector-v{version}-maps.safetensors")
    maps = det.score(expected["image"].float() / 255)
    for kind in ("idm", "ood", "concurrent"):
        assert torch.allclose(getattr(maps, kind), expected[kind], atol=1e-5), kind
    assert torch.equal(maps.pred, expected["pred"].long())
    assert (det.calibration is not None) == (version >= 4)  # format 4 added thresholds
    assert det.config.fitted.feature_layer == "classifier:input"


# ------------------------------------------------------------------ wrong segmenter, wrong path
def test_a_detector_loaded_on_another_architecture_says_so(saved, segmenter):
    """Not "feature_layer ... is not a submodule" nor "its weights differ": another model,
    with both fingerprints, also when the weights check is skipped."""

    class Other(torch.nn.Module):  # no "classifier": the layer FED-C was fitted on
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Conv2d(3, 4, 1)

        def forward(self, images):
            return self.head(images)

    for check in (True, False):
        with pytest.raises(
            ValueError, match=r"fitted on another model \(fingerprint \w{12}; "
        ) as e:
            FlowEneDet.load(saved, Other(), check_segmenter=check)
        assert "'classifier:input' is not a submodule of this Other" in str(e.value)


def test_a_bfloat16_segmenter_is_told_why_the_check_cannot_pass(saved, segmenter):
    model = copy.deepcopy(segmenter).bfloat16()
    with pytest.raises(ValueError, match=r"bfloat16 segmenter.*float16 precision") as e:
        FlowEneDet.load(saved, model)
    assert "weights differ" not in str(e.value)
    det = FlowEneDet.load(saved, copy.deepcopy(segmenter))  # as the message advises
    det.segmenter.bfloat16()
    assert torch.isfinite(det.score(make_scenes(2, seed=4)[0]).ood).all()


def test_loading_a_folder_says_it_is_a_folder(segmenter, tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder; give the flowenedet-detector"):
        FlowEneDet.load(tmp_path, segmenter)
