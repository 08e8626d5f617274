import pytest
import torch

from flowenedet.conv_flow import ConvAffineCoupling, ConvEnergyFlow, MapComposite
from flowenedet.flow import HIT, MISS, EnergyFlow, pixels
from flowenedet.training import hit_miss_loss


def make_flow(features=2, feature_channels=0, num_blocks=4, kernel_size=7, seed=0, noise=0.3):
    """A flow initialised on data and then moved away from its identity start, in eval."""
    torch.manual_seed(seed)
    flow = ConvEnergyFlow(features, feature_channels, num_blocks, kernel_size)
    flow.train()
    z = torch.randn(2, features, 9, 8)
    feats = torch.randn(2, feature_channels, 9, 8) if feature_channels else None
    flow.map_component_log_prob(z, feats)  # ActNorm data init
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(noise * torch.randn_like(p))
    return flow.eval()


def example(flow, b=1, h=6, w=5, seed=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(b, flow.features, h, w, generator=gen, dtype=dtype)
    p = flow.feature_channels
    feats = torch.randn(b, p, h, w, generator=gen, dtype=dtype) if p else None
    return z, feats


@pytest.mark.parametrize("feature_channels", [0, 3])
def test_map_jacobian_logdet_is_sum_of_per_pixel_logdets(feature_channels):
    flow = make_flow(feature_channels=feature_channels).double()
    z, feats = example(flow, dtype=torch.float64)
    _, logabsdet = flow._transform(z, context=feats)
    assert logabsdet.shape == (1, 6, 5)
    jac = torch.autograd.functional.jacobian(lambda x: flow._transform(x, context=feats)[0], z)
    jac = jac.reshape(z.numel(), z.numel())
    sign, logdet = torch.linalg.slogdet(jac)
    assert sign != 0
    assert logdet.item() == pytest.approx(logabsdet.sum().item(), abs=1e-8)


@pytest.mark.parametrize("feature_channels", [0, 3])
def test_each_coupling_jacobian_is_block_triangular_identity_half_first(feature_channels):
    flow = make_flow(feature_channels=feature_channels).double()
    z, feats = example(flow, dtype=torch.float64)
    couplings = [t for t in flow._transform._transforms if isinstance(t, ConvAffineCoupling)]
    for coupling in couplings:
        ident, trans = coupling.identity_channels, coupling.transform_channels
        order = torch.cat([ident, trans])
        jac = torch.autograd.functional.jacobian(lambda x, c=coupling: c(x, feats)[0], z)
        jac = jac[0][order][:, :, :, 0][:, :, :, order]  # (D, h, w, D, h, w), halves ordered
        n = len(ident) * 30
        jac = jac.reshape(60, 60)
        assert torch.equal(jac[:n, :n], torch.eye(n, dtype=jac.dtype))  # identity half copied
        assert torch.count_nonzero(jac[:n, n:]) == 0  # nothing reads the transformed half
        log_scale, _ = coupling.scale_shift(z, feats)
        assert torch.allclose(jac[n:, n:], torch.diag(log_scale.exp().flatten()))
        # the transformed half depends on the identity half of neighbouring pixels
        assert torch.count_nonzero(jac[n:, :n]) > 30 * len(trans) * len(ident)
        _, logabsdet = coupling(z, feats)
        assert logabsdet.sum().item() == pytest.approx(torch.linalg.slogdet(jac)[1].item())


def test_context_reaches_exactly_halo_pixels():
    flow = make_flow(num_blocks=2)
    assert flow.halo == 6
    z = torch.randn(1, 2, 21, 21, requires_grad=True)
    latent, _ = flow._transform(z)
    latent[0, :, 10, 10].sum().backward()
    reach = z.grad[0].abs().sum(0) > 0
    rows, cols = reach.nonzero().T
    assert (rows - 10).abs().max() == 6 and (cols - 10).abs().max() == 6


@pytest.mark.parametrize("feature_channels", [0, 3])
def test_inverse_of_forward_is_identity_for_composite_and_each_block(feature_channels):
    # milder weights than elsewhere: at 0.3 the latents reach 1e3 and float32 round-off 1e-4
    flow = make_flow(features=6, feature_channels=feature_channels, noise=0.1)
    z, feats = example(flow, b=2, h=11, w=7)
    latent, logabsdet = flow._transform(z, context=feats)
    back, inverse_logabsdet = flow._transform.inverse(latent, context=feats)
    assert torch.allclose(back, z, atol=1e-5)
    assert torch.allclose(logabsdet, -inverse_logabsdet, atol=1e-5)
    transforms = list(flow._transform._transforms)
    for start in range(0, len(transforms), 3):
        for piece in [*transforms[start : start + 3], MapComposite(transforms[start : start + 3])]:
            out, ld = piece(z, feats)
            back, inverse_ld = piece.inverse(out, feats)
            assert torch.allclose(back, z, atol=1e-5), type(piece).__name__
            assert ld.shape == (2, 11, 7)
            assert torch.allclose(ld, -inverse_ld, atol=1e-5)


@pytest.mark.parametrize("feature_channels", [0, 3])
def test_coupling_network_never_reads_the_transformed_half(feature_channels):
    flow = make_flow(features=6, feature_channels=feature_channels)
    z, feats = example(flow, h=10, w=10)
    for coupling in [t for t in flow._transform._transforms if isinstance(t, ConvAffineCoupling)]:
        perturbed = z.clone()
        perturbed[:, coupling.transform_channels] += 5 * torch.randn(1, 3, 10, 10)
        for before, after in zip(
            coupling.scale_shift(z, feats), coupling.scale_shift(perturbed, feats), strict=True
        ):
            assert torch.equal(before, after)


@pytest.mark.parametrize("feature_channels", [0, 3])
@pytest.mark.parametrize(
    ("dtype", "noise", "atol"), [(torch.float32, 0.1, 1e-5), (torch.float64, 0.3, 1e-9)]
)
def test_banded_log_odds_equal_the_full_map(feature_channels, dtype, noise, atol):
    # float32 with mild weights (log-odds of tens); float64 with strong ones (thousands)
    flow = make_flow(features=6, feature_channels=feature_channels, seed=3, noise=noise)
    flow = flow.to(dtype)
    z, feats = example(flow, b=2, h=41, w=9, dtype=dtype)
    with torch.no_grad():
        full = flow.map_component_log_prob(z, feats)
    expected = full[:, MISS] - full[:, HIT]
    for rows in (1, 5, 13, 40):  # bands narrower than, near and wider than the halo (12)
        flow.train()
        banded = flow.log_odds_map(z, feats, chunk_pixels=rows * 2 * 9)
        assert flow.training  # the mode is restored
        assert banded.dtype == dtype
        assert torch.allclose(banded, expected, atol=atol, rtol=0), rows
    assert torch.allclose(flow.log_odds_map(z, feats), expected, atol=atol, rtol=0)


def test_maps_smaller_than_the_kernel_are_scored():
    flow = make_flow(feature_channels=3)
    z, feats = example(flow, h=2, w=3)
    full = flow.map_component_log_prob(z, feats)
    banded = flow.log_odds_map(z, feats, chunk_pixels=3)
    assert torch.allclose(banded, full[:, MISS] - full[:, HIT], atol=1e-5)


def test_fed_c_without_features_names_the_argument():
    flow = make_flow(feature_channels=3)
    with pytest.raises(ValueError, match="needs features"):
        flow.map_component_log_prob(torch.randn(1, 2, 8, 8), None)
    with pytest.raises(ValueError, match="features has shape"):
        flow.map_component_log_prob(torch.randn(1, 2, 8, 8), torch.randn(1, 3, 8, 7))


def test_training_with_the_class_balanced_loss_reduces_it():
    torch.manual_seed(4)
    b, h, w = 2, 16, 16
    miss = torch.zeros(b, h, w, dtype=torch.bool)
    miss[:, 4:10, 5:12] = True  # a blob of misses with lower confidence
    z = torch.randn(b, 2, h, w) * 0.5 + torch.stack([miss, ~miss], 1).float() * 1.5
    flow = ConvEnergyFlow(features=2, num_blocks=2)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        picked = torch.randperm(b * h * w)[:256]
        loss = hit_miss_loss(
            flow.sampled_component_log_prob(z, None, picked), miss.flatten()[picked]
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


@pytest.mark.parametrize("feature_channels", [0, 3])
def test_sampled_log_prob_equals_the_gathered_map(feature_channels):
    flow = make_flow(feature_channels=feature_channels)
    z, feats = example(flow, b=2, h=7, w=6)
    picked = torch.tensor([0, 5, 41, 42, 83])
    gathered = pixels(flow.map_component_log_prob(z, feats))[picked]
    assert torch.allclose(flow.sampled_component_log_prob(z, feats, picked), gathered)


@pytest.mark.parametrize("feature_channels", [0, 4])
def test_energy_flow_map_interface_matches_its_component_log_prob(feature_channels):
    torch.manual_seed(5)
    flow = EnergyFlow(features=2, context_channels=8, feature_channels=feature_channels)
    z = torch.randn(2, 2, 7, 6)
    feats = torch.randn(2, feature_channels, 7, 6) if feature_channels else None
    flow.train()
    flow.map_component_log_prob(z, feats)  # ActNorm data init
    flow.eval()
    picked = torch.tensor([0, 5, 41, 42, 83])
    context = pixels(flow.context_encoder(z, feats))
    expected = flow.component_log_prob(pixels(z)[picked], context[picked])
    assert torch.allclose(flow.sampled_component_log_prob(z, feats, picked), expected)
    full = flow.map_component_log_prob(z, feats)
    assert full.shape == (2, 2, 7, 6)
    assert torch.allclose(pixels(full)[picked], expected, atol=1e-6)
    log_odds = flow.log_odds_map(z, feats)
    assert torch.allclose(log_odds, full[:, MISS] - full[:, HIT], atol=1e-5)


def test_state_dict_round_trips_through_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    flow = make_flow(features=6, feature_channels=3)
    save_file(flow.state_dict(), tmp_path / "flow.safetensors")
    torch.manual_seed(99)  # another random orthogonal 1x1 init, overwritten by the load
    loaded = ConvEnergyFlow(6, 3, 4).eval()
    loaded.load_state_dict(load_file(tmp_path / "flow.safetensors"))
    z, feats = example(flow, h=9, w=9)
    assert torch.equal(loaded.log_odds_map(z, feats), flow.log_odds_map(z, feats))
