"""Resumable and distributed fitting."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from flowenedet import FlowEneDet
from flowenedet import io as fio
from flowenedet.checkpoint import load_checkpoint
from flowenedet.fit_data import FitBatches, Shapes, TensorSource
from flowenedet.labels import PADDING_INDEX
from flowenedet.training import (
    balanced_pixel_sample,
    hit_miss_loss,
    miss_targets,
    uniform_pixel_sample,
    warmup_step_schedule,
)

from .toy import ToySegmenter, make_scenes


class CrashingLoader:
    """Yields the batches of ``loader``; raises after ``crash_after`` batches in total."""

    def __init__(self, loader, crash_after):
        self.loader, self.left = loader, crash_after

    def __iter__(self):
        for batch in self.loader:
            if self.left == 0:
                raise KeyboardInterrupt("simulated crash")
            self.left -= 1
            yield batch


def test_resumed_fit_ends_with_the_same_weights(segmenter, train_loader, tmp_path):
    checkpoint = tmp_path / "fit.ckpt.safetensors"
    uninterrupted = FlowEneDet(segmenter).fit(train_loader, steps=10, progress=False)
    # statistics, then a crash at the fourth batch of the first training pass: step 6,
    # each batch training two steps (as given and its shifted copy)
    crashing = CrashingLoader(train_loader, crash_after=len(train_loader) + 3)
    with pytest.raises(KeyboardInterrupt):
        FlowEneDet(segmenter).fit(
            crashing, steps=10, checkpoint=checkpoint, checkpoint_every=3, progress=False
        )
    assert load_checkpoint(checkpoint).step == 6
    resumed = FlowEneDet(segmenter).fit(
        train_loader, steps=10, checkpoint=checkpoint, resume=True, progress=False
    )
    expected, got = uninterrupted.flow.state_dict(), resumed.flow.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert torch.equal(uninterrupted.stats.mean, resumed.stats.mean)


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(
    segmenter, train_loader, tmp_path, monkeypatch
):
    checkpoint = tmp_path / "fit.ckpt.safetensors"
    real_save, calls = fio.save_file, []

    def save_then_crash(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            open(filename, "wb").write(b"partial")
            raise OSError("power cut")
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(fio, "save_file", save_then_crash)
    with pytest.raises(OSError, match="power cut"):
        FlowEneDet(segmenter, variant="U").fit(
            train_loader, steps=6, checkpoint=checkpoint, checkpoint_every=2, progress=False
        )
    assert load_checkpoint(checkpoint).step == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.name]


def test_resume_with_other_length_is_refused(segmenter, train_loader, tmp_path):
    checkpoint = tmp_path / "c.safetensors"
    FlowEneDet(segmenter, variant="U").fit(
        train_loader[:2], steps=2, checkpoint=checkpoint, checkpoint_every=1, progress=False
    )
    with pytest.raises(ValueError, match="steps: checkpoint 2, this fit 5"):
        FlowEneDet(segmenter, variant="U").fit(
            train_loader[:2], steps=5, checkpoint=checkpoint, resume=True, progress=False
        )


@pytest.fixture
def checkpoint_of_u(segmenter, train_loader, tmp_path):
    """A finished 4-step FED-U fit's checkpoint."""
    checkpoint = tmp_path / "u.ckpt.safetensors"
    FlowEneDet(segmenter, variant="U").fit(
        train_loader[:2], steps=4, checkpoint=checkpoint, checkpoint_every=2, progress=False
    )
    return checkpoint


@pytest.mark.parametrize(
    ("config", "fit", "match"),
    [
        ({"variant": "C"}, {}, "setting variant: checkpoint 'U', this fit 'C'"),
        ({"variant": "U", "hidden": 16}, {}, "setting hidden: checkpoint 32, this fit 16"),
        ({"variant": "U"}, {"lr": 1e-2}, "fit option lr"),
        ({"variant": "U"}, {"pixels_per_image": 64}, "fit option pixels_per_image"),
    ],
)
def test_resume_refuses_a_checkpoint_of_another_fit(
    segmenter, train_loader, checkpoint_of_u, config, fit, match
):
    with pytest.raises(ValueError, match=match):
        FlowEneDet(segmenter, **config).fit(
            train_loader[:2],
            steps=4,
            checkpoint=checkpoint_of_u,
            resume=True,
            progress=False,
            **fit,
        )


def test_resume_refuses_a_checkpoint_of_another_segmenter(train_loader, checkpoint_of_u, segmenter):
    other = ToySegmenter()  # same architecture, other weights
    other.load_state_dict(segmenter.state_dict())
    with torch.no_grad():
        other.classifier.bias += 0.5
    with pytest.raises(ValueError, match="the segmenter"):
        FlowEneDet(other, variant="U").fit(
            train_loader[:2], steps=4, checkpoint=checkpoint_of_u, resume=True, progress=False
        )


def test_resume_with_the_same_fit_is_accepted(segmenter, train_loader, checkpoint_of_u):
    det = FlowEneDet(segmenter, variant="U").fit(
        train_loader[:2], steps=4, checkpoint=checkpoint_of_u, resume=True, progress=False
    )
    assert det.stats is not None and det.config.flow.variant == "U"


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ({"step": 100, "total_steps": 6}, "step 100 of 6"),
        ({"step": -1}, "step -1 of 4"),
        ({"step": "2"}, "not an integer"),
        ({"total_steps": 10**12}, "of 1000000000000"),
        ({"param_groups": "x"}, "param_groups"),
    ],
)
def test_a_checkpoint_claiming_impossible_progress_is_refused(checkpoint_of_u, header, match):
    from flowenedet.checkpoint import KIND, VERSION

    tensors, config, _ = fio.load_file(checkpoint_of_u, kind=KIND, version=VERSION)
    fio.save_file_atomic(
        checkpoint_of_u, tensors, kind=KIND, version=VERSION, config={**config, **header}
    )
    with pytest.raises(fio.FormatError, match=match):
        load_checkpoint(checkpoint_of_u)


def test_pixel_sampling_is_balanced_and_within_valid_pixels():
    g = torch.Generator().manual_seed(0)
    valid = torch.rand(2, 20, 20, generator=g) > 0.2
    miss = torch.rand(2, 20, 20, generator=g) > 0.9
    picked = balanced_pixel_sample(valid, miss, 40, g)
    assert valid.flatten()[picked].all()
    assert picked.unique().numel() == picked.numel()
    assert (miss.flatten()[picked]).sum() == 40  # 20 misses per image are available
    loss = hit_miss_loss(torch.tensor([[0.0, -5.0], [-5.0, 0.0]]), torch.tensor([False, True]))
    assert loss.item() < 0.01


def test_miss_targets_are_the_wrong_share_of_each_cells_valid_labels():
    # one class-0 logit pixel and one class-1 logit pixel; bilinear upsampling of a 1x2 map
    # to 2x4 keeps each class on its own half
    logits = torch.tensor([[5.0, -5.0], [-5.0, 5.0]]).view(1, 2, 1, 2)
    labels = torch.tensor([[[0, 1, 1, 1], [255, 0, 255, 255]]])
    valid, miss = miss_targets(logits, labels, ignore_index=255)
    assert valid.tolist() == [[[True, True]]]
    # left cell: valid labels 0, 1, 0 -> 1 of 3 wrong; right cell: two valid labels, both right
    assert miss[0, 0].tolist() == pytest.approx([1 / 3, 0.0])


def test_miss_targets_at_logit_resolution_are_hard():
    logits = torch.tensor([[5.0, -5.0], [-5.0, 5.0]]).view(1, 2, 1, 2)
    valid, miss = miss_targets(logits, torch.tensor([[[1, 255]]]), ignore_index=255)
    assert valid.tolist() == [[[True, False]]] and miss.tolist() == [[[1.0, 0.0]]]


def test_soft_loss_weights_each_pixel_by_its_miss_share():
    log_probs = torch.tensor([[0.0, -1.0], [-2.0, 0.5], [0.3, 0.1]])
    log_post = log_probs.log_softmax(1)
    hard = torch.tensor([False, True, False])
    # 0/1 targets: mean over misses plus mean over hits, halved
    expected = 0.5 * (-log_post[1, 1] - (log_post[0, 0] + log_post[2, 0]) / 2)
    assert hit_miss_loss(log_probs, hard).item() == pytest.approx(expected.item(), rel=1e-6)
    assert hit_miss_loss(log_probs, hard.float()).item() == pytest.approx(expected.item(), rel=1e-6)
    share = torch.tensor([0.0, 0.75, 0.25])
    miss_term = -(0.75 * log_post[1, 1] + 0.25 * log_post[2, 1]) / 1.0
    hit_term = -(log_post[0, 0] + 0.25 * log_post[1, 0] + 0.75 * log_post[2, 0]) / 2.0
    soft = hit_miss_loss(log_probs, share).item()
    assert soft == pytest.approx(0.5 * (miss_term + hit_term).item(), rel=1e-6)


def _distributed_fit(rank: int, world: int, init_file: str, weights: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    segmenter = ToySegmenter().eval()
    segmenter.load_state_dict(load_file(weights))
    images, labels = make_scenes(64, seed=5)
    shard = [(images[i : i + 8], labels[i : i + 8]) for i in range(8 * rank, 64, 8 * world)]
    det = FlowEneDet(segmenter).fit(shard, steps=4, progress=False)
    if rank == 0:
        det.save(out)
    dist.barrier()
    dist.destroy_process_group()


def test_two_process_fit_matches_single_process_statistics(segmenter, tmp_path):
    out, weights = tmp_path / "ddp.safetensors", tmp_path / "segmenter.safetensors"
    save_file(segmenter.state_dict(), str(weights))
    args = (2, str(tmp_path / "pg"), str(weights), str(out))
    mp.spawn(_distributed_fit, args=args, nprocs=2, join=True)
    images, labels = make_scenes(64, seed=5)
    single = FlowEneDet(segmenter, variant="U").fit(
        [(images[i : i + 8], labels[i : i + 8]) for i in range(0, 64, 8)],
        steps=1,
        progress=False,
    )
    loaded = FlowEneDet.load(out, segmenter)
    assert torch.allclose(loaded.stats.mean, single.stats.mean, atol=1e-5)
    assert torch.allclose(loaded.stats.var, single.stats.var, atol=1e-5)
    scores = loaded.score(images[:2])
    assert scores.idm.shape == (2, 32, 32) and torch.isfinite(scores.ood).all()


def test_void_trains_the_miss_component_only_with_void_as_miss():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 0] = 5.0  # predicts class 0 everywhere
    labels = torch.tensor([[[0, 255], [PADDING_INDEX, 1]]])
    valid, miss = miss_targets(logits, labels, 255)
    assert valid.tolist() == [[[True, False], [False, True]]]
    valid, miss = miss_targets(logits, labels, 255, void_as_miss=True)
    assert valid.tolist() == [[[True, True], [False, True]]]  # padding never counts
    assert miss[valid].tolist() == [0.0, 1.0, 1.0]  # void is a miss


def test_uniform_sampling_keeps_the_natural_prevalence():
    g = torch.Generator().manual_seed(0)
    valid = torch.ones(2, 40, 40, dtype=torch.bool)
    valid[1, :10] = False
    picked = uniform_pixel_sample(valid, 300, g)
    assert picked.numel() == 600 and picked.unique().numel() == 600
    assert valid.flatten()[picked].all()
    miss = torch.zeros(2, 40, 40, dtype=torch.bool)
    miss[:, :, :4] = True  # 10 % of the pixels
    share = miss.flatten()[uniform_pixel_sample(torch.ones_like(miss), 800, g)].float().mean()
    assert 0.07 < share < 0.13


def test_the_prevalence_loss_is_the_plain_mean_cross_entropy():
    log_probs = torch.tensor([[0.0, -1.0], [-2.0, 0.5], [1.0, 1.0]])
    miss = torch.tensor([0.0, 1.0, 0.25])
    posterior = log_probs.log_softmax(1)
    expected = (
        -(posterior[0, 0] + posterior[1, 1] + 0.75 * posterior[2, 0] + 0.25 * posterior[2, 1]) / 3
    )
    assert torch.allclose(hit_miss_loss(log_probs, miss, balanced=False), expected)
    assert not torch.allclose(hit_miss_loss(log_probs, miss), expected)


def test_the_release_schedule_warms_up_then_decays_every_15k_steps():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_step_schedule(optimizer, 50_000, warmup_steps=4000, decay_every=15_000)
    factor = schedule.lr_lambdas[0]
    assert factor(0) == pytest.approx(1 / 4000)
    assert factor(3999) == 1.0 and factor(14_999) == 1.0
    assert factor(15_000) == pytest.approx(0.1) and factor(30_000) == pytest.approx(0.01)
    default = warmup_step_schedule(optimizer, 100).lr_lambdas[0]  # 5 % warm-up, one decay at 80 %
    assert default(4) == 1.0 and default(3) < 1.0 and default(79) == 1.0
    assert default(80) == pytest.approx(0.1) and default(99) == pytest.approx(0.1)


def test_weight_decay_reaches_the_optimizer(segmenter, train_loader, tmp_path):
    checkpoint = tmp_path / "c.safetensors"
    FlowEneDet(segmenter, variant="U").fit(
        train_loader[:1],
        steps=2,
        weight_decay=0.01,
        checkpoint=checkpoint,
        checkpoint_every=2,
        progress=False,
    )
    assert load_checkpoint(checkpoint).optimizer["param_groups"][0]["weight_decay"] == 0.01


# ------------------------------------------------------------------ the batch cache
class CountingSegmenter(torch.nn.Module):
    """Wraps a segmenter and counts its forward passes."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, images):
        self.calls += 1
        return self.inner(images)


class FlippingLoader:
    """``loader``'s batches, each image mirrored on every other pass: an augmenting loader."""

    def __init__(self, loader):
        self.loader, self.passes = loader, 0

    def __iter__(self):
        self.passes += 1
        for images, labels in self.loader:
            if self.passes % 2 == 0:
                images, labels = images.flip(-1), labels.flip(-1)
            yield images, labels


def _weights(det):
    return det.flow.state_dict()


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_a_repeating_loader_runs_the_segmenter_once_per_batch_and_fits_the_same(
    segmenter, train_loader
):
    counted = CountingSegmenter(segmenter)
    plain_fit = {"steps": 12, "shifted_copies": 0, "progress": False}
    cached = FlowEneDet(counted, variant="U").fit(train_loader[:3], **plain_fit)
    # the statistics pass, and the first batch again for the OOD scale: 4 passes of
    # training over 3 batches cost no forward
    assert counted.calls == 3  # the statistics pass: training and the rules from memory
    plain = FlowEneDet(segmenter, variant="U")
    plain.fit(train_loader[:3], cache_bytes=0, **plain_fit)
    assert _same(_weights(cached), _weights(plain))
    assert torch.equal(cached.stats.scale, plain.stats.scale)


def test_an_augmenting_loader_is_read_afresh_every_pass(segmenter, train_loader, caplog):
    counted = CountingSegmenter(segmenter)
    with caplog.at_level(logging.INFO, logger="flowenedet"):
        flipped = FlowEneDet(counted, variant="U").fit(
            FlippingLoader(train_loader[:2]), steps=6, shifted_copies=0, progress=False
        )
    assert "gives other data on another pass" in caplog.text
    # statistics, every step (the first twice: it initialises ActNorm), the pass that
    # chooses the rules
    assert counted.calls == 2 + 6 + 1 + 2
    plain = FlowEneDet(segmenter, variant="U").fit(
        FlippingLoader(train_loader[:2]), steps=6, cache_bytes=0, shifted_copies=0, progress=False
    )
    assert _same(_weights(flipped), _weights(plain))


def test_the_cache_stays_within_its_budget_and_the_rest_is_recomputed(segmenter, train_loader):
    counted = CountingSegmenter(segmenter)
    budget = 200_000  # one of the toy's batches (16 x 16 x 16 logit pixels, 152 kB) but not two
    det = FlowEneDet(counted, variant="U")
    det.fit(train_loader[:3], steps=9, cache_bytes=budget, shifted_copies=0, progress=False)
    assert 3 < counted.calls < 3 + 9 + 3  # some batches kept, the others recomputed
    plain = FlowEneDet(segmenter, variant="U").fit(
        train_loader[:3], steps=9, cache_bytes=0, shifted_copies=0, progress=False
    )
    assert _same(_weights(det), _weights(plain))
    shapes = Shapes(det.config.flow)
    source = TensorSource(*_toy_logits(segmenter, train_loader[:3]), None, shapes, 16)
    batches = FitBatches(source, det.config.flow, budget)
    list(batches.statistics())
    batches.use_statistics(det.stats.mean, det.stats.var)
    for key in itertools.islice(batches.passes(), 6):
        batches.batch(key)
    kept = sum(batch.nbytes() for batch in batches.kept.values())
    assert 0 < kept <= budget and len(batches.kept) < 3


def _toy_logits(segmenter, loader):
    images = torch.cat([images for images, _ in loader])
    with torch.no_grad():
        return segmenter(images), torch.cat([labels for _, labels in loader])
