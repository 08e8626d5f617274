"""Tests for flowenedet.evaluation.baselines: MSP, MaxLogit, Energy, Entropy, SML and MC dropout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flowenedet.evaluation.baselines import (
    BASELINES,
    MSP,
    SML,
    Baseline,
    Energy,
    Entropy,
    MaxLogit,
    MCDropout,
    energy,
    entropy,
    make_baseline,
    max_logit,
    msp,
    sml,
)
from flowenedet.labels import IGNORE_INDEX

K = 4


class TinySegmenter(nn.Module):
    """Stride-2 conv segmenter: (B, 3, H, W) -> (B, K, ceil(H/2), ceil(W/2))."""

    def __init__(self, dropout: float | None = 0.5, num_classes: int = K) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        ]
        if dropout is not None:
            layers.append(nn.Dropout2d(dropout))
        layers.append(nn.Conv2d(8, num_classes, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class DictSegmenter(TinySegmenter):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"out": self.body(x)}


def make_model(dropout: float | None = 0.5, seed: int = 0) -> TinySegmenter:
    torch.manual_seed(seed)
    model = TinySegmenter(dropout)
    with torch.no_grad():  # non-trivial batch-norm buffers, so eval and train modes differ
        model.body[1].running_mean.uniform_(-0.5, 0.5)
        model.body[1].running_var.uniform_(0.5, 2.0)
        model.body[-1].weight.mul_(4.0)  # confident logits, every class predicted somewhere
        model.body[-1].bias.zero_()
    return model.eval()


def make_loader(model: nn.Module, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two batches of 16x16 images; labels = the model's prediction, 30% changed, 10% void."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(2):
        images = torch.randn(3, 3, 16, 16, generator=gen)
        with torch.no_grad():
            pred = model.eval()(images).argmax(1)
        labels = pred.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
        noise = torch.rand(labels.shape, generator=gen)
        random = torch.randint(0, K, labels.shape, generator=gen)
        labels = torch.where(noise < 0.3, random, labels)
        labels = torch.where(noise > 0.9, torch.full_like(labels, IGNORE_INDEX), labels)
        batches.append((images, labels))
    return batches


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert before["state"].keys() == after["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
    assert all(p.grad is None for p in model.parameters())


@pytest.fixture
def logits() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return 3.0 * torch.randn(2, 5, 6, 7, generator=gen)


# ---------------------------------------------------------------- against pytorch-ood
def test_scores_match_pytorch_ood(logits: torch.Tensor) -> None:
    detector = pytest.importorskip("pytorch_ood.detector")
    ref_msp = detector.MaxSoftmax(None).predict_logits(logits)
    ref_maxlogit = detector.MaxLogit(None).predict_logits(logits)
    ref_energy = detector.EnergyBased(None).predict_logits(logits)
    ref_entropy = detector.Entropy(None).predict_logits(logits)
    assert ref_msp.shape == (2, 6, 7)
    # pytorch-ood scores MSP as -max softmax; ours is 1 - max softmax (same ranking)
    torch.testing.assert_close(msp(logits), 1.0 + ref_msp)
    torch.testing.assert_close(max_logit(logits), ref_maxlogit)
    torch.testing.assert_close(energy(logits), ref_energy)
    # pytorch-ood clips probabilities at 1e-7 before the log: differences below 1e-5 nats
    torch.testing.assert_close(entropy(logits), ref_entropy, atol=1e-5, rtol=0)
    order = torch.argsort(ref_maxlogit.flatten())
    assert torch.equal(torch.argsort(max_logit(logits).flatten()), order)


@pytest.mark.parametrize(
    ("cls", "fn"), [(MSP, msp), (MaxLogit, max_logit), (Energy, energy), (Entropy, entropy)]
)
def test_detector_classes_use_the_score_functions(cls, fn, logits: torch.Tensor) -> None:
    det = cls(make_model())
    torch.testing.assert_close(det.score_logits(logits).ood, fn(logits))


# ---------------------------------------------------------------- hand-computed values
def test_hand_computed_scores_on_two_pixels() -> None:
    # pixel 0: logits (0, 0) -> p = (1/2, 1/2); pixel 1: (log 3, 0) -> p = (3/4, 1/4)
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]]).reshape(1, 2, 1, 2)
    expect = {
        msp: [0.5, 0.25],
        max_logit: [0.0, -math.log(3.0)],
        energy: [-math.log(2.0), -math.log(4.0)],
        entropy: [math.log(2.0), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))],
    }
    for fn, values in expect.items():
        out = fn(logits)
        assert out.shape == (1, 1, 2) and out.dtype == torch.float32
        torch.testing.assert_close(out, torch.tensor(values).reshape(1, 1, 2))


def test_entropy_is_stable_for_huge_logits() -> None:
    logits = torch.tensor([[1e4, 0.0], [-1e4, 0.0]]).reshape(1, 2, 1, 2)
    out = entropy(logits)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.tensor([[[0.0, math.log(2.0)]]]))


def test_sml_standardizes_the_predicted_class() -> None:
    mean = torch.tensor([5.0, 2.0, 1.0])
    var = torch.tensor([4.0, 1.0, 0.25])
    pixels = [
        [3.0, 0.0, 2.9],  # pred 0: -(3 - 5) / 2 = 1 (class 2 would standardize to 3.8)
        [0.0, 5.0, 1.0],  # pred 1: -(5 - 2) / 1 = -3
        [0.0, 0.0, 0.5],  # pred 2: -(0.5 - 1) / 0.5 = 1
    ]
    logits = torch.tensor(pixels).T.reshape(1, 3, 1, 3)
    expected = torch.tensor([[[1.0, -3.0, 1.0]]])
    torch.testing.assert_close(sml(logits, mean, var), expected)
    det = SML(make_model(), mean=mean, var=var, postprocess=False)
    torch.testing.assert_close(det.score_logits(logits).ood, expected)


def test_sml_postprocess_smooths_and_keeps_resolution(logits: torch.Tensor) -> None:
    mean, var = torch.zeros(5), torch.ones(5)
    raw = SML(make_model(), mean, var, postprocess=False).score_logits(logits).ood
    post = SML(make_model(), mean, var).score_logits(logits).ood
    assert post.shape == raw.shape == (2, 6, 7)
    assert not torch.allclose(post, raw)
    assert post.std() < raw.std()  # smoothing lowers the spread of the map
    # smoothing and boundary filling average scores: no value leaves the raw range
    assert raw.min() - 1e-5 <= post.min() and post.max() <= raw.max() + 1e-5


# ---------------------------------------------------------------- SML fitting
def test_sml_fit_matches_hand_computed_class_statistics() -> None:
    model = make_model()
    loader = make_loader(model)
    before = snapshot(model)
    det = SML(model, postprocess=False).fit(loader, progress=False)
    assert_unchanged(model, before)

    values: dict[int, list[float]] = {c: [] for c in range(K)}
    for images, labels in loader:
        with torch.no_grad():
            out = model(images)
        top, pred = out.max(dim=1)
        small = labels[:, ::2, ::2]  # nearest downsampling by 2 picks the even pixels
        for c in range(K):
            values[c] += top[(pred == c) & (small == c)].tolist()
    assert all(len(v) >= 2 for v in values.values()), "fixture must hit every class twice"
    assert det.mean is not None and det.var is not None
    expected_mean = [np.mean(values[c]) for c in range(K)]
    expected_var = [np.var(values[c]) for c in range(K)]
    torch.testing.assert_close(det.mean, torch.tensor(expected_mean, dtype=torch.float32))
    torch.testing.assert_close(
        det.var, torch.tensor(expected_var, dtype=torch.float32), rtol=1e-4, atol=1e-6
    )

    images = loader[0][0]
    with torch.no_grad():
        out = model(images)
    expected = F.interpolate(
        sml(out, det.mean, det.var)[:, None], size=(16, 16), mode="bilinear", align_corners=False
    )[:, 0]
    torch.testing.assert_close(det.predict(images), expected)
    # statistics passed in directly (as from a fitted FlowEneDet) give the same scores
    again = SML(model, mean=det.mean, var=det.var, postprocess=False)
    torch.testing.assert_close(again.predict(images), expected)


def test_sml_fit_accepts_dict_batches() -> None:
    model = make_model()
    loader = make_loader(model)
    ref = SML(model).fit(loader, progress=False)
    dicts = [{"image": x, "label": y} for x, y in loader]
    det = SML(model).fit(dicts, progress=False)
    assert det.mean is not None and ref.mean is not None
    torch.testing.assert_close(det.mean, ref.mean)


# ---------------------------------------------------------------- shape and resolution
@pytest.mark.parametrize("name", sorted(BASELINES))
def test_scores_come_at_image_resolution(name: str) -> None:
    model = make_model()
    det = make_baseline(name, model)
    assert isinstance(det, Baseline) and isinstance(det, BASELINES[name])
    assert det.fit(make_loader(model), progress=False) is det
    images = torch.randn(2, 3, 17, 23, generator=torch.Generator().manual_seed(3))
    scores = det.predict(images)
    assert scores.shape == (2, 17, 23)
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    assert scores.std() > 0


def test_score_upsamples_logit_scores_bilinearly() -> None:
    model = make_model()
    images = torch.randn(2, 3, 17, 23, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = model(images)
    assert out.shape[-2:] == (9, 12)
    small = 1.0 - out.softmax(1).max(1).values
    expected = F.interpolate(small[:, None], size=(17, 23), mode="bilinear", align_corners=False)
    det = MSP(model)
    torch.testing.assert_close(det.predict(images), expected[:, 0])
    torch.testing.assert_close(det(images), expected[:, 0])
    torch.testing.assert_close(det.score_logits(out, size=(17, 23)).ood, expected[:, 0])


def test_segmenters_returning_dicts_work() -> None:
    torch.manual_seed(0)
    model = DictSegmenter().eval()
    images = torch.randn(1, 3, 8, 8)
    assert MaxLogit(model).predict(images).shape == (1, 8, 8)


# ---------------------------------------------------------------- segmenter left alone
@pytest.mark.parametrize("name", sorted(BASELINES))
@pytest.mark.parametrize("train_mode", [True, False])
def test_segmenter_is_left_unchanged(name: str, train_mode: bool) -> None:
    model = make_model()
    loader = make_loader(model)
    model.train(train_mode)
    model.body[0].weight.requires_grad_(False)
    before = snapshot(model)
    det = make_baseline(name, model).fit(loader, progress=False)
    det.predict(loader[0][0])
    assert_unchanged(model, before)


# ---------------------------------------------------------------- MC dropout
def test_mc_dropout_is_the_entropy_of_the_mean_of_dropout_samples() -> None:
    model = make_model()
    images = torch.randn(2, 3, 10, 12, generator=torch.Generator().manual_seed(5))
    det = MCDropout(model, samples=5)
    torch.manual_seed(123)
    scores = det.predict(images)

    # the same passes by hand: dropout on, batch norm in eval mode
    torch.manual_seed(123)
    model.body[3].train()
    with torch.no_grad():
        probs = torch.stack([model(images).softmax(1) for _ in range(5)])
    model.eval()
    mean = probs.mean(0)
    expected = -(mean * mean.log()).sum(1)
    expected = F.interpolate(expected[:, None], size=(10, 12), mode="bilinear")[:, 0]
    torch.testing.assert_close(scores, expected)

    # scores vary with the dropout masks and are not the deterministic entropy
    torch.manual_seed(123)
    torch.testing.assert_close(det.predict(images), scores)
    torch.manual_seed(7)
    assert not torch.allclose(det.predict(images), scores)
    assert not torch.allclose(Entropy(model).predict(images), scores)
    assert not model.body[3].training


def test_mc_dropout_mutual_information_is_between_zero_and_entropy() -> None:
    model = make_model()
    images = torch.randn(2, 3, 10, 12, generator=torch.Generator().manual_seed(6))
    torch.manual_seed(0)
    ent = MCDropout(model, samples=6).predict(images)
    torch.manual_seed(0)
    mi = MCDropout(model, samples=6, measure="mutual_information").predict(images)
    assert (mi >= 0).all() and (mi <= ent + 1e-6).all() and mi.max() > 0


def test_mc_dropout_score_logits_takes_samples() -> None:
    # two samples, one class-0-sure pixel each way: mean (1/2, 1/2), entropy log 2
    sure = torch.tensor([20.0, -20.0]).reshape(1, 2, 1, 1)
    samples = torch.stack([sure, -sure])
    det = MCDropout(make_model())
    torch.testing.assert_close(
        det.score_logits(samples).ood, torch.full((1, 1, 1), math.log(2.0)), atol=1e-6, rtol=0
    )
    mi = MCDropout(make_model(), measure="mutual_information").score_logits(samples).ood
    torch.testing.assert_close(mi, torch.full((1, 1, 1), math.log(2.0)), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"\(S, B, K, h, w\)"):
        det.score_logits(sure)


def test_mc_dropout_without_dropout_raises() -> None:
    with pytest.raises(ValueError, match="no dropout layer"):
        MCDropout(make_model(dropout=None))
    with pytest.raises(ValueError, match="p=0"):
        MCDropout(make_model(dropout=0.0))
    with pytest.raises(ValueError, match="samples"):
        MCDropout(make_model(), samples=1)
    with pytest.raises(ValueError, match="measure"):
        MCDropout(make_model(), measure="variance")


# ---------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_clear_errors() -> None:
    model = make_model()
    with pytest.raises(ValueError, match=r"logits must have shape \(B, K, h, w\); got \(2, 3, 4\)"):
        msp(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="at least 2 classes"):
        energy(torch.randn(1, 1, 4, 4))
    with pytest.raises(ValueError, match="floating"):
        max_logit(torch.ones(1, 3, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="images must be a floating tensor"):
        MSP(model).predict(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"images must have shape \(B, C, H, W\)"):
        Entropy(model).predict(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match=r"mean and var must have shape \(4,\)"):
        sml(torch.randn(1, 4, 2, 2), torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match=r"shape \(K,\).*\(2, 4\)"):
        SML(model, mean=torch.zeros(2, 4), var=torch.ones(2, 4))
    with pytest.raises(ValueError, match="both mean= and var="):
        SML(model, mean=torch.zeros(4))
    with pytest.raises(ValueError, match=r"shape \(4,\) .* got \(5,\) and \(5,\)"):
        SML(model, mean=torch.zeros(5), var=torch.ones(5)).predict(torch.randn(1, 3, 8, 8))
    with pytest.raises(RuntimeError, match="call fit"):
        SML(model).predict(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="labels has shape"):
        SML(model).fit([(torch.randn(1, 3, 8, 8), torch.zeros(1, 4, 4, dtype=torch.long))])
    with pytest.raises(ValueError, match="size"):
        MSP(model).score_logits(torch.randn(1, 4, 2, 2), size=(0, 5))
    with pytest.raises(ValueError, match="known: msp, maxlogit"):
        make_baseline("odin", model)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        MSP(lambda x: x)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["msp", "maxlogit", "energy", "entropy", "sml"])
def test_non_finite_logits_are_refused_as_the_detector_refuses_them(name: str) -> None:
    from flowenedet import FlowEneDet

    logits = torch.randn(1, 4, 3, 3)
    logits[0, 1, 1, 1] = float("nan")
    stats = {"mean": torch.zeros(4), "var": torch.ones(4)} if name == "sml" else {}
    with pytest.raises(ValueError, match="logits contains 1 NaN or infinite"):
        make_baseline(name, make_model(), **stats).score_logits(logits)
    with pytest.raises(ValueError, match="logits contains 1 NaN or infinite"):
        FlowEneDet(make_model(), variant="U").fit_logits(
            logits, torch.zeros(1, 3, 3, dtype=torch.long), progress=False
        )
