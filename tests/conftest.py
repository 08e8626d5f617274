"""Shared, seeded fixtures: a tiny trained toy segmenter and detectors fitted on it."""

from __future__ import annotations

import pytest
import torch

from flowenedet import FlowEneDet

from .toy import make_scenes, train_toy_segmenter

FIT_STEPS = 120


@pytest.fixture(scope="session")
def segmenter():
    return train_toy_segmenter()


@pytest.fixture(scope="session")
def train_loader():
    images, labels = make_scenes(128, seed=5)
    return [(images[i : i + 16], labels[i : i + 16]) for i in range(0, 128, 16)]


@pytest.fixture(scope="session")
def test_scenes():
    return make_scenes(64, seed=9, ood=True)


@pytest.fixture(scope="session")
def fitted(segmenter, train_loader):
    """FED-U and FED-C fitted on the toy world with the default settings (fewer steps)."""
    torch.manual_seed(0)
    return {
        variant: FlowEneDet(segmenter, variant=variant).fit(
            train_loader, steps=FIT_STEPS, progress=False
        )
        for variant in "UC"
    }


@pytest.fixture(scope="module")
def one_thread():
    """Tensors here are tiny: extra threads only add contention on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
