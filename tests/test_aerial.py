"""Tests for the aerial world (flowenedet.evaluation.worlds.aerial) and its own shifts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from flowenedet.evaluation.worlds import aerial_shift
from flowenedet.evaluation.worlds import digits as dg
from flowenedet.evaluation.worlds import sources as src
from flowenedet.evaluation.worlds import street as st
from flowenedet.evaluation.worlds.aerial import (
    BUILDING,
    CLASS_NAMES,
    CROPLAND,
    NUM_CLASSES,
    OOD_AREA,
    ROAD,
    SHIFTS,
    SPLITS,
    WATER,
    WOODLAND,
    check_disjoint,
    make_scenes,
    render_scene,
    split_sources,
)
from flowenedet.evaluation.worlds.shift import corruption_names
from flowenedet.labels import IGNORE_INDEX, OOD_INDEX

SMALL = (96, 96)


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Largest per-channel absolute difference of two uint8 (H, W, 3) images."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2)


@pytest.fixture(scope="module")
def full_size() -> dict[str, object]:
    """A few scenes of every split at the default 256 x 256."""
    return {split: make_scenes(split, 10, seed=0) for split in SPLITS}


def test_same_arguments_give_identical_scenes_and_other_seeds_differ():
    a, b = make_scenes("val", 3, seed=5, size=SMALL), make_scenes("val", 3, seed=5, size=SMALL)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    c = make_scenes("val", 3, seed=6, size=SMALL)
    assert not torch.equal(a.images, c.images)
    longer = make_scenes("val", 5, seed=5, size=SMALL)  # scene i does not depend on N
    assert torch.equal(longer.images[:3], a.images) and torch.equal(longer.labels[:3], a.labels)


def test_shapes_dtypes_and_label_values(full_size):
    for split, scenes in full_size.items():
        assert scenes.images.shape == (10, 3, 256, 256) and scenes.images.dtype == torch.uint8
        assert scenes.labels.shape == (10, 256, 256) and scenes.labels.dtype == torch.int64
        values = set(scenes.labels.unique().tolist())
        assert values <= set(range(NUM_CLASSES)) | {OOD_INDEX, IGNORE_INDEX}
        assert (OOD_INDEX in values) == (split != "train")  # OOD in val / test only
        assert (IGNORE_INDEX in values) == (split == "train")  # void in training scenes only
        assert set(range(NUM_CLASSES)) <= values  # every class occurs
    assert len(CLASS_NAMES) == NUM_CLASSES == 5
    assert make_scenes("test", 1, size=(96, 160)).images.shape == (1, 3, 96, 160)
    assert make_scenes("test", 1, size=80).labels.shape == (1, 80, 80)


def test_classes_meet_along_long_boundaries(full_size):
    for label in full_size["test"].labels.numpy():
        shares = np.bincount(label[label < NUM_CLASSES], minlength=NUM_CLASSES) / label.size
        assert (shares > 0.005).sum() >= 3
        assert shares[ROAD] > 0.005
        crop = label == CROPLAND
        edge = crop ^ ndimage.binary_erosion(crop)
        assert edge.sum() > label.shape[1]  # parcel, hedge and road borders: long outlines


def test_things_come_at_several_sizes(full_size):
    areas = {BUILDING: [], WOODLAND: []}
    for label in full_size["test"].labels.numpy():
        for cls in areas:
            parts, _ = ndimage.label(label == cls)
            areas[cls] += np.bincount(parts.ravel())[1:].tolist()
    buildings, woods = np.array(areas[BUILDING]), np.array(areas[WOODLAND])
    assert len(buildings) >= 20 and buildings.min() <= 30 and buildings.max() >= 200
    assert woods.min() <= 20 and woods.max() >= 5000  # single trees ... forest parcels


def test_training_scenes_have_void_with_objects_in_it():
    scenes = make_scenes("train", 20, seed=0)
    shares = (scenes.labels == IGNORE_INDEX).double().mean(dim=(1, 2)).numpy()
    assert (shares > 0).mean() >= 0.9
    assert 0.001 <= shares.mean() <= 0.05
    for i in range(4):  # void pixels are pasted objects: the pixels differ from the scene
        image, label, _ = render_scene("train", i, 0)
        void = label == IGNORE_INDEX
        if void.any():
            assert image[void].std() > 5


def test_ood_objects_are_mostly_small():
    sizes, with_ood = [], 0
    for split in ("val", "test"):
        for i in range(30):
            _, label, objects = render_scene(split, i, 0)
            sizes += objects
            with_ood += bool((label == OOD_INDEX).any())
    shares = np.array(sizes) / 256**2
    assert with_ood >= 0.8 * 60
    assert len(shares) >= 80
    assert (shares < 0.01).mean() >= 0.8
    assert shares.max() <= 1.2 * OOD_AREA[1]


def test_ood_labels_cover_the_pasted_objects_only():
    for split in ("val", "test"):
        for i in range(5):
            image, label, _ = render_scene(split, i, 0)
            bare, bare_label, _ = render_scene(split, i, 0, ood=False)
            ood = label == OOD_INDEX
            assert np.array_equal(label[~ood], bare_label[~ood])
            diff = _changed(image, bare)
            if ood.any():
                assert (diff[ood] > 0).mean() > 0.9
            far = ~ndimage.binary_dilation(ood, iterations=3)
            assert (diff[far] > 8).sum() <= 0.15 * max(ood.sum(), 1)


def test_buildings_and_water_look_unlike_their_surroundings():
    image, label, _ = render_scene("test", 2, 0)
    for cls in (BUILDING, WATER, ROAD):
        mask = label == cls
        if mask.sum() < 50:
            continue
        ring = ndimage.binary_dilation(mask, iterations=3) & ~mask & (label < NUM_CLASSES)
        assert np.abs(image[mask].mean(0) - image[ring].mean(0)).max() > 3, CLASS_NAMES[cls]


def test_splits_use_disjoint_sources_and_none_of_the_other_worlds():
    check_disjoint()
    sources = {split: split_sources(split) for split in SPLITS}
    assert sources["train"].void_objects and not sources["train"].ood_objects
    assert sources["val"].ood_objects and sources["test"].ood_objects
    assert not set(sources["val"].ood_objects) & set(sources["test"].ood_objects)
    assert len({s.font for s in sources.values()}) == 3
    ours = set()
    for split in SPLITS:
        s = sources[split]
        ours |= {*s.texture_blocks, *s.void_objects, *s.ood_objects}
        for name in s.texture_blocks:  # every texture loads from the installed wheels
            assert src.load_picture(name).ndim == 3
    theirs = set()
    for split in SPLITS:
        d, s = dg.split_sources(split), st.split_sources(split)
        theirs |= {*d.backgrounds, *d.ood_objects, *s.texture_blocks}
        theirs |= {*s.void_objects, *s.ood_objects}
    assert not ours & theirs


def test_the_audit_catches_overlapping_blocks(monkeypatch):
    monkeypatch.setitem(src.BLOCKS, "test", (0.7, 1.0))  # overlaps val's 60-80 %
    src.block_box.cache_clear()
    try:
        with pytest.raises(ValueError, match="val and test share pixels"):
            check_disjoint()
    finally:
        monkeypatch.undo()
        src.block_box.cache_clear()


def test_shifts_are_the_worlds_own():
    assert not set(aerial_shift.shift_names()) & set(corruption_names())
    assert set(SHIFTS) == set(aerial_shift.shift_names())
    with pytest.raises(ValueError, match="aerial shift must be one of"):
        make_scenes("test", 1, size=SMALL, corruption="fog", severity=1)


@pytest.mark.parametrize("name", aerial_shift.shift_names())
def test_every_shift_changes_images_keeps_labels_and_grows_with_severity(name):
    clean = make_scenes("test", 2, seed=0, size=SMALL)
    change = []
    for level in (1, 4):
        shifted = make_scenes("test", 2, seed=0, size=SMALL, corruption=name, severity=level)
        assert torch.equal(clean.labels, shifted.labels)
        again = make_scenes("test", 2, seed=0, size=SMALL, corruption=name, severity=level)
        assert torch.equal(shifted.images, again.images)  # seeded per scene
        change.append((shifted.images.float() - clean.images.float()).abs().mean().item())
    assert 0 < change[0] < change[1]


def test_a_sequence_of_shifts_cycles_types_then_severities():
    names, levels = ("haze", "colour_cast"), (1, 3)
    mixed = make_scenes("test", 4, seed=0, size=SMALL, corruption=names, severity=levels)
    for i in range(4):
        one = make_scenes(
            "test", i + 1, seed=0, size=SMALL, corruption=names[i % 2], severity=levels[i // 2]
        )
        assert torch.equal(mixed.images[i], one.images[i])


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="split must be one of"):
        make_scenes("training", 1)
    with pytest.raises(ValueError, match="size must be at least"):
        make_scenes("val", 1, size=(32, 64))
    with pytest.raises(ValueError, match="num_scenes must be"):
        make_scenes("val", -1)
    with pytest.raises(ValueError, match=r"severity must be an int in 1\.\.4"):
        make_scenes("val", 1, size=SMALL, corruption="haze", severity=5)


def test_bench_config_takes_each_worlds_own_shifts_and_a_segmenter_of_the_world():
    from flowenedet.evaluation.config import CORRUPTIONS, BenchConfig

    assert tuple(BenchConfig(world="aerial").shift) == SHIFTS
    assert tuple(BenchConfig(world="street").shift) == CORRUPTIONS
    assert BenchConfig(world="street", shift=()).shift == ()  # no shifted splits, as before
    assert BenchConfig(world="street", segmenter="street-s8").segmenter == "street-s8"
    with pytest.raises(ValueError, match=r"segmenter must be one of \('street', 'street-s8'\)"):
        BenchConfig(world="street", segmenter="aerial")
