import torch

from flowenedet.postprocess import boundary_mask, gaussian_smooth, resize, suppress_boundaries


def test_gaussian_smoothing_keeps_constants_and_spreads_a_peak():
    flat = torch.full((1, 12, 12), 0.3)
    assert torch.allclose(gaussian_smooth(flat), flat)
    assert torch.allclose(gaussian_smooth(flat, dilation=6), flat)
    peak = torch.zeros(1, 15, 15)
    peak[0, 7, 7] = 1.0
    smooth = gaussian_smooth(peak)
    assert abs(smooth.sum().item() - 1) < 1e-5
    assert smooth[0, 7, 7] < 1 and smooth[0, 7, 8] > 0 and smooth[0, 7, 11] == 0


def test_boundary_mask_marks_pixels_near_a_class_change():
    pred = torch.zeros(1, 1, 10, dtype=torch.long)
    pred[..., 5:] = 1
    assert boundary_mask(pred, 2)[0, 0].tolist() == [False] * 3 + [True] * 4 + [False] * 3


def test_boundary_suppression_replaces_edge_scores_by_inner_ones():
    pred = torch.zeros(1, 12, 12, dtype=torch.long)
    pred[:, :, 6:] = 1
    scores = torch.full((1, 12, 12), 0.1)
    scores[:, :, 5:7] = 0.9  # a bright seam along the boundary
    out = suppress_boundaries(scores, pred, width=2, iterations=2)
    assert out[:, :, 5:7].max() < 0.2
    assert torch.equal(out[:, :, :3], scores[:, :, :3])


def test_resize_reaches_the_requested_size():
    maps = torch.rand(2, 5, 7)
    assert resize(maps, (10, 14)).shape == (2, 10, 14)
    assert resize(maps, (5, 7)) is maps
