"""Fit-time augmentation (flowenedet.data.augment): one geometry for image and label,
fixed-size crops with PADDING_INDEX padding, seeded draws, argument checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from flowenedet.data import FitAugment
from flowenedet.labels import PADDING_INDEX

H, W = 20, 30


def _coordinates(height: int = H, width: int = W) -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose channels hold each pixel's (row, column, 1) and the label
    ``row * width + column``: any geometric step must change both alike."""
    rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    cols = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width)
    image = torch.stack([rows, cols, torch.ones(height, width)])
    label = torch.arange(height * width, dtype=torch.int64).view(height, width)
    return image, label


def test_image_and_label_keep_one_geometry_through_resize_crop_and_flip() -> None:
    image, label = _coordinates()
    augment = FitAugment(crop=(16, 24), scale=(0.5, 2.0), seed=1)
    flips = 0
    for _ in range(40):
        draw = augment.draw(H, W)
        out, lab = augment.apply(image, label, draw)
        flips += draw.flip
        inside = lab != PADDING_INDEX
        # nearest-neighbour label and bilinear image sample the same source point: the
        # label's pixel is the one whose centre is nearest, at most half a pixel away
        assert (lab[inside] // W - out[0][inside]).abs().max() <= 0.5 + 1e-4
        assert (lab[inside] % W - out[1][inside]).abs().max() <= 0.5 + 1e-4
        valid_w = int(inside[0].sum())  # padding is on the right, flipped or not
        if valid_w > 1:  # columns run right to left exactly when flipped
            assert bool(out[1, 0, 0] > out[1, 0, valid_w - 1]) == draw.flip
    assert 10 < flips < 30  # flipped with probability 0.5


def test_flip_mirrors_image_and_label_exactly() -> None:
    image, label = _coordinates()
    augment = FitAugment(crop=None, scale=(1.0, 1.0), seed=0)
    seen = set()
    for _ in range(12):
        out, lab = augment(image, label)
        flipped = torch.equal(lab, label.flip(-1))
        assert flipped or torch.equal(lab, label)
        assert torch.equal(out, image.flip(-1) if flipped else image)
        seen.add(flipped)
    assert seen == {True, False}
    never = FitAugment(crop=None, scale=(1.0, 1.0), hflip=False)
    assert all(torch.equal(never(image, label)[1], label) for _ in range(12))


@pytest.mark.parametrize("scale", [(0.25, 0.5), (0.5, 2.0), (2.0, 3.0)])
def test_output_has_the_crop_size_and_label_dtype(scale: tuple[float, float]) -> None:
    image, label = _coordinates()
    augment = FitAugment(crop=(16, 24), scale=scale)
    for _ in range(10):
        out, lab = augment(image, label.int())
        assert out.shape == (3, 16, 24) and lab.shape == (16, 24)
        assert out.dtype == torch.float32 and lab.dtype == torch.int64


def test_without_crop_the_output_is_the_resized_image() -> None:
    image, label = _coordinates()
    augment = FitAugment(crop=None, scale=(0.5, 2.0), seed=4)
    for _ in range(10):
        draw = augment.draw(H, W)
        out, lab = augment.apply(image, label, draw)
        assert draw.size == (round(H * draw.factor), round(W * draw.factor))
        assert tuple(out.shape[1:]) == draw.size and tuple(lab.shape) == draw.size
        assert (lab != PADDING_INDEX).all()


@pytest.mark.parametrize("fill", [-7.0, (-7.0, -8.0, -9.0)])
def test_padding_is_padding_index_and_fill_exactly_where_the_crop_leaves_the_image(
    fill: float | tuple[float, ...],
) -> None:
    image, label = _coordinates()
    crop = (24, 36)
    augment = FitAugment(crop=crop, scale=(0.4, 1.6), seed=2, fill=fill)
    fills = torch.tensor(fill if isinstance(fill, tuple) else (fill,) * 3).view(3, 1, 1)
    padded_draws = clean_draws = 0
    for _ in range(30):
        draw = augment.draw(H, W)
        out, lab = augment.apply(image, label, draw)
        valid_h = min(crop[0], draw.size[0] - draw.top)
        valid_w = min(crop[1], draw.size[1] - draw.left)
        rows, cols = torch.arange(crop[0])[:, None], torch.arange(crop[1])[None, :]
        expected = (rows >= valid_h) | (cols >= valid_w)  # bottom / right, flipped or not
        assert torch.equal(lab == PADDING_INDEX, expected)
        assert torch.equal((out == fills).all(0), expected)  # the image never holds -7 .. -9
        assert (lab[~expected] >= 0).all()
        padded_draws += bool(expected.any())
        clean_draws += not expected.any()
    assert padded_draws > 5 and clean_draws > 5


def test_scale_draws_lie_in_the_range_and_cover_it() -> None:
    augment = FitAugment(crop=(8, 8), scale=(0.5, 2.0), seed=5)
    factors = torch.tensor([augment.draw(100, 200).factor for _ in range(2000)])
    assert factors.min() >= 0.5 and factors.max() <= 2.0
    assert factors.min() < 0.53 and factors.max() > 1.97
    counts = torch.histc(factors, bins=4, min=0.5, max=2.0)
    assert (counts > 400).all() and (counts < 600).all()  # uniform: 500 each
    corners = {(d.top, d.left) for d in (augment.draw(100, 200) for _ in range(200))}
    assert len(corners) > 150  # crops land all over the image
    same = FitAugment(crop=(8, 8), scale=(1.0, 1.0), seed=5)
    corners = {(d.top, d.left) for d in (same.draw(10, 12) for _ in range(200))}
    assert corners == {(top, left) for top in range(3) for left in range(5)}  # every window
    fixed = FitAugment(crop=(8, 8), scale=(1.5, 1.5))
    assert {fixed.draw(10, 10).size for _ in range(5)} == {(15, 15)}


def test_draws_are_deterministic_per_seed_and_call_and_differ_between_items() -> None:
    image, label = _coordinates()
    first, second = FitAugment(crop=(12, 12), seed=7), FitAugment(crop=(12, 12), seed=7)
    a = [first(image, label) for _ in range(8)]
    b = [second(image, label) for _ in range(8)]
    assert all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True)
    )
    assert len({tuple(lab.flatten().tolist()) for _, lab in a}) == 8  # each item its own crop
    seven, eight = FitAugment(seed=7), FitAugment(seed=8)
    assert [seven.draw(H, W) for _ in range(4)] != [eight.draw(H, W) for _ in range(4)]
    # factor and flip of call n depend on (seed, n) only, not on the images' sizes
    small, large = FitAugment(crop=(12, 12), seed=7), FitAugment(crop=(12, 12), seed=7)
    draws = [(small.draw(H, W), large.draw(400, 500)) for _ in range(8)]
    assert all(s.factor == g.factor and s.flip == g.flip for s, g in draws)


class _Items(Dataset):
    def __init__(self, n: int, transform: FitAugment) -> None:
        self.n, self.transform = n, transform

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(*_coordinates())


def _crops(loader: DataLoader) -> list[tuple[int, ...]]:
    return [tuple(lab.flatten().tolist()) for _, lab in loader]


def test_dataloader_workers_and_passes_get_different_reproducible_crops() -> None:
    def loader(seed: int) -> DataLoader:
        items = _Items(8, FitAugment(crop=(12, 12), seed=0))
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(items, batch_size=1, num_workers=2, generator=generator)

    first = loader(0)
    pass_1, pass_2 = _crops(first), _crops(first)
    assert len(set(pass_1)) == 8  # the two workers do not repeat each other
    assert pass_1 != pass_2  # nor does the next pass repeat this one
    again = loader(0)
    assert _crops(again) == pass_1 and _crops(again) == pass_2  # seeded loader: reproducible


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"crop": (0, 4)}, "crop must be"),
        ({"crop": (4,)}, "crop must be"),
        ({"crop": (4.5, 4)}, "crop must be"),
        ({"crop": 512}, "crop must be"),
        ({"scale": (0.0, 1.0)}, "scale must satisfy"),
        ({"scale": (-1.0, 1.0)}, "scale must satisfy"),
        ({"scale": (2.0, 1.0)}, "scale must satisfy"),
        ({"scale": (1.0, math.inf)}, "scale must satisfy"),
        ({"scale": (1.0,)}, "scale must be a pair"),
        ({"hflip": "yes"}, "hflip must be"),
        ({"seed": -1}, "seed must be"),
        ({"fill": math.nan}, "fill must be"),
        ({"fill": ()}, "fill must be"),
        ({"fill": "black"}, "fill must be"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        FitAugment(**kwargs)


def test_bad_inputs_are_refused_with_their_shapes() -> None:
    image, label = _coordinates()
    augment = FitAugment(crop=(8, 8))
    with pytest.raises(ValueError, match="label has shape"):
        augment(image, label[:-1])
    with pytest.raises(ValueError, match=r"image must be a float tensor \(C, H, W\)"):
        augment(image[0], label)
    with pytest.raises(ValueError, match="label must be an integer tensor"):
        augment(image, label.float())
    two_fills = FitAugment(crop=(64, 64), fill=(0.0, 1.0))
    with pytest.raises(ValueError, match="fill has 2 values but the image has 3 channels"):
        two_fills(image, label)
