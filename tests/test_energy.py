import math

import pytest
import torch

from flowenedet.energy import ClassStats, energy_inputs, flow_inputs, rich_inputs


def test_energy_inputs_match_hand_computation():
    logits = torch.tensor([2.0, 0.0, -1.0]).view(1, 3, 1, 1)
    mean = torch.tensor([1.0, 0.0, 0.0])
    var = torch.tensor([4.0, 1.0, 0.25])
    standardized = [(2 - 1) / 2, 0.0, -1 / 0.5]
    energy = -math.log(sum(math.exp(v) for v in standardized))
    p_in = 1 / (1 + math.exp(energy))
    z = energy_inputs(logits, mean, var)
    assert z.shape == (1, 2, 1, 1)
    assert z[0, 0, 0, 0].item() == pytest.approx(math.log(p_in), rel=1e-6)
    assert z[0, 1, 0, 0].item() == pytest.approx(math.log(1 - p_in), rel=1e-6)


@pytest.mark.parametrize("magnitude", [1e3, -1e3])
def test_energy_inputs_are_finite_for_huge_logits(magnitude):
    logits = torch.full((2, 4, 3, 3), magnitude)
    logits[:, 0] = -magnitude
    z = energy_inputs(logits, torch.zeros(4), torch.ones(4))
    assert torch.isfinite(z).all()
    # log p_in + log p_out are log-probabilities of complementary events
    assert torch.allclose(torch.logaddexp(z[:, 0], z[:, 1]), torch.zeros(2, 3, 3), atol=1e-5)


def test_energy_inputs_reject_wrong_statistics_shape():
    with pytest.raises(ValueError, match="mean and var must have shape"):
        energy_inputs(torch.zeros(1, 3, 2, 2), torch.zeros(4), torch.ones(4))


def test_rich_inputs_match_hand_computation():
    logits = torch.tensor([2.0, 0.0, -1.0]).view(1, 3, 1, 1)
    mean = torch.tensor([1.0, 0.0, 0.0])
    var = torch.tensor([4.0, 1.0, 0.25])
    probs = [math.exp(v) / sum(math.exp(u) for u in (2.0, 0.0, -1.0)) for v in (2.0, 0.0, -1.0)]
    z = rich_inputs(logits, mean, var)[0, :, 0, 0]
    assert z.shape == (6,)
    assert torch.equal(z[:2], energy_inputs(logits, mean, var)[0, :, 0, 0])
    assert z[2].item() == pytest.approx((2 - 1) / 2)  # standardised logit of class 0
    assert z[3].item() == pytest.approx(-sum(p * math.log(p) for p in probs), rel=1e-6)
    assert z[4].item() == pytest.approx(math.log(probs[0]), rel=1e-6)
    assert z[5].item() == pytest.approx(2.0)  # margin to the runner-up


def test_rich_inputs_are_finite_for_huge_logits():
    logits = torch.full((2, 4, 3, 3), 1e3)
    logits[:, 0] = -1e3
    assert torch.isfinite(rich_inputs(logits, torch.zeros(4), torch.ones(4))).all()


def test_unknown_input_set_is_refused():
    with pytest.raises(ValueError, match="unknown input set 'logits'"):
        flow_inputs(torch.zeros(1, 3, 2, 2), torch.zeros(3), torch.ones(3), "logits")


def test_class_stats_stream_equals_one_pass():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, 5, 5, generator=g) * 3
    labels = torch.randint(0, 3, (6, 5, 5), generator=g)
    labels[0, 0] = 255
    whole, stream = ClassStats(3), ClassStats(3)
    whole.update(logits, labels)
    for i in range(0, 6, 2):
        stream.update(logits[i : i + 2], labels[i : i + 2])
    mean, var = stream.finalize()
    max_logit, pred = logits.max(1)
    for c in range(3):
        values = max_logit[(pred == c) & (labels == c)].double()
        assert mean[c].item() == pytest.approx(values.mean().item(), rel=1e-5)
        assert var[c].item() == pytest.approx(values.var(unbiased=False).item(), rel=1e-4)
    assert torch.equal(whole.finalize()[0], mean)


def test_class_stats_fall_back_to_pooled_for_unseen_class(caplog):
    logits = torch.tensor([[3.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 2.0, 0.0]]).T.reshape(1, 3, 1, 3)
    labels = torch.tensor([[[0, 0, 1]]])
    stats = ClassStats(3)
    stats.update(logits, labels)
    mean, var = stats.finalize()
    assert "fewer than 2" in caplog.text
    assert mean[0].item() == pytest.approx(4.0)
    assert mean[2].item() == pytest.approx((3 + 5 + 2) / 3)  # pooled
    assert (var > 0).all()
