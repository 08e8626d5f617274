"""The fused scoring path equals the nflows flow it is built from, on every device."""

import pytest
import torch

from flowenedet.config import ScoringOptions
from flowenedet.conv_flow import ConvEnergyFlow
from flowenedet.energy import flow_inputs
from flowenedet.flow import EnergyFlow, align_features
from flowenedet.inference import FusedEnergyFlow, ScoringCache, check_autocast, sampled_log_odds
from flowenedet.postprocess import postprocess_maps, upsampled_argmax
from flowenedet.scoring import Scorer
from flowenedet.training import hit_miss_loss

from .toy import make_scenes


def trained_looking_flow(features: int, feature_channels: int, seed: int = 0) -> EnergyFlow:
    """A flow with non-trivial weights: ActNorm initialised on data, then every parameter
    (the zero-initialised coupling output layers included) moved off its start."""
    torch.manual_seed(seed)
    flow = EnergyFlow(
        features=features,
        context_channels=8,
        feature_channels=feature_channels,
        num_blocks=5,
        hidden=16,
    )
    flow.train()
    feats = torch.randn(2, feature_channels, 9, 11) if feature_channels else None
    flow.map_component_log_prob(torch.randn(2, features, 9, 11), feats)  # ActNorm init
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return flow.eval()


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    """Equal within ``tol`` relative to the larger values' scale (float32 rounding)."""
    return bool(((a - b).abs() <= tol * (1 + b.abs())).all())


@pytest.mark.parametrize("features,feature_channels", [(2, 0), (6, 4), (3, 5)])
def test_fused_log_odds_equal_the_nflows_flow(features, feature_channels):
    flow = trained_looking_flow(features, feature_channels)
    torch.manual_seed(1)
    z = torch.randn(2, features, 13, 17)
    feats = torch.randn(2, feature_channels, 13, 17) if feature_channels else None
    expected = flow.log_odds_map(z, feats)
    assert expected.std() > 1  # not a trivial (near-identity) flow
    fused = FusedEnergyFlow(flow)
    for chunk in (1 << 16, 40, 1):  # whole map, bands of 2 rows, single rows
        got = fused(z, feats, chunk_pixels=chunk)
        assert got.shape == (2, 13, 17)
        assert close(got, expected)


def test_fused_path_refuses_missing_or_extra_features():
    fused = FusedEnergyFlow(trained_looking_flow(2, 3))
    with pytest.raises(ValueError, match="needs decoder features"):
        fused(torch.randn(1, 2, 4, 4), None)
    with pytest.raises(ValueError, match="takes no decoder features"):
        FusedEnergyFlow(trained_looking_flow(2, 0))(
            torch.randn(1, 2, 4, 4), torch.randn(1, 3, 4, 4)
        )


def test_scoring_cache_follows_weight_changes_and_new_flows():
    flow = trained_looking_flow(2, 0)
    z = torch.randn(1, 2, 8, 8)
    cache = ScoringCache()
    first = cache.get(flow)
    assert cache.get(flow) is first  # unchanged weights: built once
    with torch.no_grad():
        flow.base.means.add_(0.5)  # an in-place update, like an optimizer step
    assert close(cache.get(flow)(z), flow.log_odds_map(z, None))
    other = trained_looking_flow(2, 0, seed=3)
    flow.load_state_dict(other.state_dict())
    assert close(cache.get(flow)(z), other.log_odds_map(z, None))


def test_conv_couplings_keep_their_own_path():
    torch.manual_seed(0)
    flow = ConvEnergyFlow(2, 3, num_blocks=2, kernel_size=3).eval()
    z, feats = torch.randn(1, 2, 10, 12), torch.randn(1, 3, 10, 12)
    assert torch.equal(ScoringCache().get(flow)(z, feats, 1 << 16), flow.log_odds_map(z, feats))


@pytest.mark.parametrize("features,feature_channels", [(2, 0), (6, 4)])
@pytest.mark.parametrize("picked_share", [0.2, 0.9])  # gathered neighbourhoods / whole map
def test_the_training_log_odds_and_their_gradients_are_the_flows(
    features, feature_channels, picked_share
):
    """The fit trains through the folded log-odds at the sampled pixels: the same values
    and the same gradients as nflows' class log-likelihoods (whose shared log-det cancels
    in the posterior)."""
    flow = trained_looking_flow(features, feature_channels).train()
    torch.manual_seed(2)
    z = torch.randn(3, features, 10, 12)
    feats = torch.randn(3, feature_channels, 10, 12) if feature_channels else None
    picked = torch.randperm(3 * 10 * 12)[: int(picked_share * 360)]
    miss = (torch.rand(len(picked)) < 0.3).float()

    def loss_and_odds(odds):
        scores = torch.stack([torch.zeros_like(odds), odds], 1)
        return hit_miss_loss(scores, miss), odds

    log_probs = flow.sampled_component_log_prob(z, feats, picked)
    reference, expected = loss_and_odds(log_probs[:, 1] - log_probs[:, 0])
    fused, odds = loss_and_odds(sampled_log_odds(flow, z, feats, picked))
    assert close(odds, expected, 1e-4)
    params = [p for p in flow.parameters() if p.requires_grad]
    grads = torch.autograd.grad(fused, params), torch.autograd.grad(reference, params)
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("variant", "UC")
def test_fitted_detector_scores_equal_the_nflows_path(fitted, variant):
    det = fitted[variant]
    images, _ = make_scenes(2, seed=21, ood=True)
    fused = det.score(images)

    class NflowsPath:  # a ScoringCache giving nflows' own log-odds
        @staticmethod
        def get(flow):
            return lambda inputs, features, chunk, dtype=None: flow.log_odds_map(inputs, features)

    cfg = det.config
    nflows = Scorer(det.flow, det.stats, cfg.flow, cfg.fitted, cfg.scoring, NflowsPath())
    logits, features = det.segment(images)
    if features is not None:
        features = align_features(features, logits, cfg.flow.pooled_channels)
    reference = nflows.logits(logits, features, images.shape[-2:])
    for kind in ("idm", "ood", "concurrent"):
        assert close(getattr(fused, kind), getattr(reference, kind))
    assert torch.equal(fused.pred, reference.pred)


def test_bf16_scores_agree_with_float32(fitted):
    """Reduced precision on CPU. The flow's networks in bf16 move the maps (in [0, 1]) by
    about 1e-3; the segmenter under bf16 autocast moves its logits by ~0.5 % and so the
    maps by up to ~0.13 where its prediction flips (run with ``-s`` for the numbers)."""
    det = fitted["C"]
    images, _ = make_scenes(4, seed=22, ood=True)
    logits, features = det.segment(images)
    full = det.score_logits(logits, features, size=(32, 32))
    flow_only = det.score_logits(logits, features, size=(32, 32), autocast=torch.bfloat16)
    both = det.score(images, autocast=torch.bfloat16)
    assert torch.equal(flow_only.pred, full.pred)
    assert (both.pred == full.pred).float().mean() > 0.99
    for kind in ("idm", "ood", "concurrent"):
        reference = getattr(full, kind)
        flow_gap = (getattr(flow_only, kind) - reference).abs()
        gap = (getattr(both, kind) - reference).abs()
        assert getattr(both, kind).dtype == torch.float32
        print(
            f"bf16 {kind}: flow only max {flow_gap.max():.4f}; with the segmenter max "
            f"{gap.max():.4f}, mean {gap.mean():.5f}"
        )
        assert flow_gap.max() < 5e-3
        assert gap.mean() < 0.01
    with pytest.raises(ValueError, match="autocast must be"):
        check_autocast(torch.float64)


def test_fused_path_stays_on_the_flows_device():
    """On the meta device every tensor the path creates must follow the inputs: a tensor
    made on the CPU would make an op fail."""
    flow = trained_looking_flow(6, 4).to("meta")
    fused = FusedEnergyFlow(flow)
    assert {b.device.type for b in fused.buffers()} == {"meta"}
    z, feats = torch.randn(2, 6, 13, 17, device="meta"), torch.randn(2, 4, 13, 17, device="meta")
    out = fused(z, feats, chunk_pixels=40)
    assert out.device.type == "meta" and out.shape == (2, 13, 17)
    logits = torch.randn(2, 5, 13, 17, device="meta")
    inputs = flow_inputs(logits, torch.zeros(5), torch.ones(5))  # statistics kept on the CPU
    assert inputs.device.type == "meta" and inputs.shape == (2, 6, 13, 17)
    maps = postprocess_maps(
        out, out, out, pred=logits.argmax(1), config=ScoringOptions(), stride=4.0
    )
    assert {m.device.type for m in maps} == {"meta"}
    assert upsampled_argmax(logits, (52, 68)).device.type == "meta"


def test_fused_path_traces_without_graph_breaks():
    flow = trained_looking_flow(6, 4)
    fused = FusedEnergyFlow(flow)
    z, feats = torch.randn(1, 6, 8, 16), torch.randn(1, 4, 8, 16)
    explanation = torch._dynamo.explain(fused)(z, feats)
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1
