import copy
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from flowenedet import FlowEneDet, FormatError
from flowenedet import io as fio
from flowenedet.storage import FORMAT, FORMAT_VERSION

from .toy import NUM_CLASSES, ToySegmenter, make_scenes


@pytest.mark.parametrize("variant", ["U", "C"])
def test_round_trip_gives_bit_identical_scores(fitted, segmenter, tmp_path, variant):
    path = fitted[variant].save(tmp_path / "det.safetensors")
    loaded = FlowEneDet.load(path, segmenter)
    images, _ = make_scenes(3, seed=11)
    before, after = fitted[variant].score(images), loaded.score(images)
    assert torch.equal(before.idm, after.idm) and torch.equal(before.ood, after.ood)
    assert loaded.config == fitted[variant].config


def test_file_is_plain_safetensors_with_a_header(fitted, tmp_path):
    from safetensors import safe_open

    path = fitted["C"].save(tmp_path / "det.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        assert meta["format"] == FORMAT and meta["format_version"] == str(FORMAT_VERSION)
        assert '"variant": "C"' in meta["config"]
        assert f.get_tensor("stats.mean").shape == (NUM_CLASSES,)
        assert f.get_tensor("stats.scale").shape == (8, 2)  # eight terms' mean and spread


FIXTURES = Path(__file__).parent / "fixtures"


def _write_legacy(path, tensors, config, version):
    """A file as flowenedet 0.1 wrote it: the checksum covers the tensors only."""
    metadata = {
        "format": FORMAT,
        "format_version": str(version),
        "config": json.dumps(config),
        "sha256": fio.tensor_checksum(tensors),
    }
    save_file(tensors, str(path), metadata=metadata)


def test_detector_of_the_oldest_format_loads_and_says_so(tmp_path, caplog):
    """Format 2 (tests/fixtures): its checksum covers the tensors only, so its settings
    are unprotected; it loads with a warning and saves as today's format."""
    from flowenedet.zoo import load_reference_segmenter

    with caplog.at_level(logging.WARNING, logger="flowenedet"):
        loaded = FlowEneDet.load(FIXTURES / "detector-v2.safetensors", load_reference_segmenter())
    assert "save the detector again" in caplog.text
    resaved = loaded.save(tmp_path / "resaved.safetensors")
    assert fio.load_file(resaved, kind=FORMAT, version=FORMAT_VERSION)[2] == FORMAT_VERSION


def test_detector_of_an_older_format_is_refused(fitted, segmenter, tmp_path):
    path = fitted["U"].save(tmp_path / "det.safetensors")
    tensors, config, _ = fio.load_file(path, kind=FORMAT, version=FORMAT_VERSION)
    _write_legacy(path, tensors, config, version=1)
    with pytest.raises(FormatError, match="version '1'"):
        FlowEneDet.load(path, segmenter)


def test_file_from_before_the_ood_smoothing_options_scores_as_it_did(tmp_path):
    """A format-4 file without the ``ood`` map's own smoothing options smooths it with
    ``smooth_kernel``, as flowenedet did before they existed."""
    from flowenedet.zoo import load_reference_segmenter

    segmenter = load_reference_segmenter()
    tensors, config, _ = fio.load_file(FIXTURES / "detector-v4.safetensors", kind=FORMAT, version=4)
    config["smooth_kernel"] = 3
    for name in ("ood_smooth_kernel", "ood_smooth_sigma", "ood_keep_peaks"):
        del config[name]
    path = fio.save_file_atomic(
        tmp_path / "old.safetensors", tensors, kind=FORMAT, version=4, config=config
    )
    loaded = FlowEneDet.load(path, segmenter)
    expected = FlowEneDet.load(FIXTURES / "detector-v4.safetensors", segmenter).with_options(
        smooth_kernel=3, ood_smooth_kernel=3, ood_smooth_sigma=1.0, ood_keep_peaks=False
    )
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    assert torch.equal(loaded.score(images).ood, expected.score(images).ood)


def test_segmenter_with_other_classes_is_refused(fitted, tmp_path):
    path = fitted["C"].save(tmp_path / "det.safetensors")
    with pytest.raises(ValueError, match="fitted for 4 classes"):
        FlowEneDet.load(path, ToySegmenter(num_classes=5))


def test_segmenter_with_other_weights_is_refused_unless_overridden(fitted, segmenter, tmp_path):
    path = fitted["U"].save(tmp_path / "det.safetensors")
    changed = copy.deepcopy(segmenter)
    with torch.no_grad():
        changed.classifier.bias += 0.1
    with pytest.raises(ValueError, match="different segmenter"):
        FlowEneDet.load(path, changed)
    assert FlowEneDet.load(path, changed, check_segmenter=False).stats is not None


def test_truncated_corrupted_and_foreign_files_are_refused(fitted, segmenter, tmp_path):
    path = fitted["U"].save(tmp_path / "det.safetensors")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    corrupted = tmp_path / "corrupted.safetensors"
    corrupted.write_bytes(bytes(flipped))
    foreign = tmp_path / "notes.safetensors"
    foreign.write_text("not a tensor file")
    for bad, match in [
        (truncated, "not a readable"),
        (corrupted, "damaged"),
        (foreign, "not a readable"),
    ]:
        with pytest.raises(FormatError, match=match):
            FlowEneDet.load(bad, segmenter)
    with pytest.raises(FileNotFoundError):
        FlowEneDet.load(tmp_path / "missing.safetensors", segmenter)


def test_unknown_format_version_and_kind_are_refused(segmenter, tmp_path):
    tensors = {"x": torch.zeros(2)}
    newer = fio.save_file_atomic(
        tmp_path / "v9.safetensors", tensors, kind=FORMAT, version=9, config={}
    )
    with pytest.raises(FormatError, match="format version '9'"):
        FlowEneDet.load(newer, segmenter)
    other = fio.save_file_atomic(
        tmp_path / "o.safetensors", tensors, kind="other", version=1, config={}
    )
    with pytest.raises(FormatError, match="not a flowenedet-detector file"):
        FlowEneDet.load(other, segmenter)


def test_failed_write_keeps_the_previous_file(fitted, tmp_path, monkeypatch):
    path = fitted["U"].save(tmp_path / "det.safetensors")
    original = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(fio, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        fitted["C"].save(path)
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["det.safetensors"]


def test_saving_an_unfitted_detector_is_refused(segmenter, tmp_path):
    with pytest.raises(RuntimeError, match="not fitted"):
        FlowEneDet(segmenter).save(tmp_path / "x.safetensors")


def test_fed_u_with_a_named_feature_layer_round_trips(segmenter, train_loader, tmp_path):
    det = FlowEneDet(segmenter, variant="U", feature_layer="classifier:input")
    path = det.fit(train_loader[:2], steps=2, progress=False).save(tmp_path / "u.safetensors")
    assert FlowEneDet.load(path, segmenter).config.flow.variant == "U"


def test_temporaries_of_killed_writes_are_removed_by_the_next_save(fitted, tmp_path):
    path = fitted["U"].save(tmp_path / "det.safetensors")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    host = socket.gethostname()
    stale = tmp_path / f".det.safetensors.{host}.{dead}.abc123.tmp"  # a kill -9 mid-write
    stale.write_bytes(b"half a file")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    ours = tmp_path / f".det.safetensors.{host}.{os.getpid()}.live.tmp"  # a write in progress
    ours.write_bytes(b"being written")
    fresh_dead = tmp_path / f".det.safetensors.{host}.{dead}.new.tmp"  # too recent to judge
    fresh_dead.write_bytes(b"x")
    other = tmp_path / ".other.safetensors.x.1.tmp"  # another file's: not ours to touch
    other.write_bytes(b"x")
    os.utime(other, (old, old))
    fitted["U"].save(path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert stale.name not in left
    assert {ours.name, fresh_dead.name, other.name, path.name} == set(left)


def test_a_full_disk_is_an_os_error_naming_the_path(fitted, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    def full(tensors, filename, metadata=None):
        raise SafetensorError("No space left on device (os error 28)")

    monkeypatch.setattr(fio, "save_file", full)
    target = tmp_path / "det.safetensors"
    with pytest.raises(OSError, match=f"cannot write {target}.*No space left"):
        fitted["U"].save(target)
    assert list(tmp_path.iterdir()) == []


def test_saving_onto_a_folder_is_an_os_error(fitted, tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        fitted["U"].save(tmp_path)


@pytest.mark.parametrize("preset", ["default", "paper-deeplabv3plus", "paper-segformer"])
@pytest.mark.parametrize("variant", ["U", "C"])
def test_every_preset_round_trips_bit_identically(
    segmenter, train_loader, tmp_path, preset, variant
):
    det = FlowEneDet(segmenter, preset=preset, variant=variant)
    det.fit(train_loader[:2], steps=3, progress=False)
    path = det.save(tmp_path / "det.safetensors")
    loaded = FlowEneDet.load(path, segmenter)
    assert loaded.config == det.config  # the resolved settings, not the preset's name
    images, _ = make_scenes(2, seed=5)
    before, after = det.score(images), loaded.score(images)
    for kind in ("idm", "ood", "concurrent", "pred"):
        assert torch.equal(getattr(before, kind), getattr(after, kind)), kind
    assert torch.isfinite(before.ood).all()
