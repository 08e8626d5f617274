"""The fit's choice of scoring rules measures what the maps are judged on."""

from __future__ import annotations

import pytest
import torch

from flowenedet.selection import weighted_ap

metrics = pytest.importorskip("sklearn.metrics")


def test_a_cell_counts_as_its_image_pixels():
    # 200 logit pixels, each the cell of 16 image pixels of which k are wrong: the
    # weighted AP of the cells is the AP of the image pixels, each with its cell's score
    gen = torch.Generator().manual_seed(0)
    wrong = torch.randint(0, 17, (200,), generator=gen)
    scores = (wrong / 16 + torch.rand(200, generator=gen)).round(decimals=1)  # with ties
    pixels = torch.arange(16)[None, :] < wrong[:, None]  # (200, 16)
    expected = metrics.average_precision_score(
        pixels.flatten().numpy(), scores[:, None].expand(-1, 16).flatten().numpy()
    )
    assert weighted_ap(scores, wrong / 16) == pytest.approx(expected, abs=1e-12)
