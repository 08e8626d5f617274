"""Tests for the street world generator (flowenedet.evaluation.worlds.street)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from flowenedet.evaluation.worlds import sources as src
from flowenedet.evaluation.worlds import street as st
from flowenedet.evaluation.worlds.street import (
    CLASS_NAMES,
    NUM_CLASSES,
    OOD_AREA,
    SPLITS,
    check_disjoint,
    make_scenes,
    render_scene,
    split_sources,
)
from flowenedet.labels import IGNORE_INDEX, OOD_INDEX

SMALL = (64, 128)


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Largest per-channel absolute difference of two uint8 (H, W, 3) images."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2)


@pytest.fixture(scope="module")
def full_size() -> dict[str, st.SceneSet]:
    """A few scenes of every split at the default 256 x 512."""
    return {split: make_scenes(split, 12, seed=0) for split in SPLITS}


def test_same_arguments_give_identical_scenes_and_other_seeds_differ():
    a, b = make_scenes("val", 3, seed=5, size=SMALL), make_scenes("val", 3, seed=5, size=SMALL)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    c = make_scenes("val", 3, seed=6, size=SMALL)
    assert not torch.equal(a.images, c.images)
    longer = make_scenes("val", 5, seed=5, size=SMALL)  # scene i does not depend on N
    assert torch.equal(longer.images[:3], a.images) and torch.equal(longer.labels[:3], a.labels)


def test_shapes_dtypes_and_label_values(full_size):
    for split, scenes in full_size.items():
        assert scenes.images.shape == (12, 3, 256, 512) and scenes.images.dtype == torch.uint8
        assert scenes.labels.shape == (12, 256, 512) and scenes.labels.dtype == torch.int64
        values = set(scenes.labels.unique().tolist())
        assert values <= set(range(NUM_CLASSES)) | {OOD_INDEX, IGNORE_INDEX}
        assert (OOD_INDEX in values) == (split != "train")
        assert (IGNORE_INDEX in values) == (split == "train")
    assert len(CLASS_NAMES) == NUM_CLASSES == 8
    assert make_scenes("test", 1, size=(96, 160)).images.shape == (1, 3, 96, 160)
    assert make_scenes("test", 1, size=80).labels.shape == (1, 80, 160)


def test_stuff_classes_cover_large_regions_and_meet_along_long_boundaries(full_size):
    labels = full_size["test"].labels.numpy()
    for label in labels:
        shares = np.bincount(label[label < NUM_CLASSES], minlength=NUM_CLASSES) / label.size
        assert shares[st.ROAD] > 0.08 and shares[st.SKY] > 0.03
        assert (shares[: st.SKY + 1] > 0.01).sum() >= 4
        road = label == st.ROAD
        edge = road ^ ndimage.binary_erosion(road)
        assert edge.sum() > 0.5 * label.shape[1]  # the road's outline: hundreds of pixels


def test_things_come_at_many_sizes(full_size):
    areas = []
    for label in full_size["test"].labels.numpy():
        for cls in (st.VEHICLE, st.PERSON, st.POLE):
            parts, _ = ndimage.label(label == cls)
            areas += np.bincount(parts.ravel())[1:].tolist()
    areas = np.array(areas) / (256 * 512)
    assert len(areas) >= 40
    assert areas.min() < 2e-4 and areas.max() > 5e-3  # far and small ... near and large


def test_training_scenes_have_a_few_percent_void_with_objects_in_it():
    scenes = make_scenes("train", 30, seed=0)
    shares = (scenes.labels == IGNORE_INDEX).double().mean(dim=(1, 2)).numpy()
    assert (shares > 0).all()
    assert 0.01 <= shares.mean() <= 0.08
    for i in range(4):  # void pixels are pasted objects: the pixels differ from the scene
        image, label, _ = render_scene("train", i, 0)
        void = label == IGNORE_INDEX
        assert void.any() and image[void].std() > 5


def test_ood_objects_are_mostly_small_and_some_tiny():
    sizes, with_ood = [], 0
    pixels = 256 * 512
    for split in ("val", "test"):
        for i in range(40):
            _, label, objects = render_scene(split, i, 0)
            sizes += objects
            with_ood += bool((label == OOD_INDEX).any())
    shares = np.array(sizes) / pixels
    assert with_ood >= 0.8 * 80
    assert len(shares) >= 100
    assert (shares < 0.01).mean() >= 0.7  # most under 1 % of the image (Lost & Found style)
    assert (shares < 1e-3).mean() >= 0.15  # some tiny
    assert shares.max() <= 1.2 * OOD_AREA[1]


def test_ood_labels_cover_the_pasted_objects_only():
    for split in ("val", "test"):
        for i in range(6):
            image, label, _ = render_scene(split, i, 0)
            bare, bare_label, _ = render_scene(split, i, 0, ood=False)
            ood = label == OOD_INDEX
            assert np.array_equal(label[~ood], bare_label[~ood])
            diff = _changed(image, bare)
            if ood.any():
                assert (diff[ood] > 0).mean() > 0.95  # labels sit on changed pixels
            far = ~ndimage.binary_dilation(ood, iterations=3)
            # away from the labels only the faint rims of soft masks (alpha < 0.5) and the
            # lens blur change pixels
            assert (diff[far] > 8).sum() <= 0.15 * ood.sum()


def test_thing_labels_sit_on_their_pixels():
    """A thing's labelled pixels look like its fill, not like the stuff around it."""
    image, label, _ = render_scene("test", 3, 0)
    for cls in (st.VEHICLE, st.PERSON, st.POLE):
        mask = label == cls
        if mask.sum() < 50:
            continue
        ring = ndimage.binary_dilation(mask, iterations=3) & ~mask & (label < st.VEHICLE)
        inside, around = image[mask].mean(0), image[ring].mean(0)
        assert np.abs(inside - around).max() > 3, CLASS_NAMES[cls]


def test_splits_use_disjoint_sources():
    check_disjoint()
    sources = {split: split_sources(split) for split in SPLITS}
    assert sources["train"].void_objects and not sources["train"].ood_objects
    assert sources["val"].ood_objects and sources["test"].ood_objects
    assert not set(sources["val"].ood_objects) & set(sources["test"].ood_objects)
    assert not set(sources["train"].void_objects) & set(sources["test"].ood_objects)
    for split in SPLITS:  # every source loads from the installed wheels
        for name in sources[split].texture_blocks:
            assert src.load_picture(name).ndim == 3


def test_the_audit_catches_overlapping_blocks(monkeypatch):
    monkeypatch.setitem(src.BLOCKS, "val", (0.5, 0.8))  # overlaps train's first 60 %
    src.block_box.cache_clear()
    try:
        with pytest.raises(ValueError, match="train and val share pixels"):
            check_disjoint()
    finally:
        monkeypatch.undo()
        src.block_box.cache_clear()


def test_shift_split_corrupts_images_and_keeps_labels():
    clean = make_scenes("test", 8, seed=0, size=SMALL)
    shifted = make_scenes(
        "test", 8, seed=0, size=SMALL, corruption=("fog", "gaussian_noise"), severity=(1, 4)
    )
    assert torch.equal(clean.labels, shifted.labels)
    assert shifted.images.shape == clean.images.shape
    assert (shifted.images != clean.images).float().mean() > 0.3


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="split must be one of"):
        make_scenes("training", 1)
    with pytest.raises(ValueError, match="size must be at least"):
        make_scenes("val", 1, size=(32, 64))
    with pytest.raises(ValueError, match="num_scenes must be"):
        make_scenes("val", -1)
