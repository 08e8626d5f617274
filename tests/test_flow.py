import pytest
import torch
from torch.distributions import MultivariateNormal

from flowenedet.flow import ContextEncoder, EnergyFlow, HitMissMixture, pool_feature_channels


@pytest.fixture
def flow():
    torch.manual_seed(0)
    flow = EnergyFlow(features=2, context_channels=8, feature_channels=4, num_blocks=4, hidden=16)
    flow.train()
    flow.component_log_prob(torch.randn(64, 2), torch.randn(64, 8))  # ActNorm data init
    with torch.no_grad():  # move away from the identity initialisation
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return flow.eval()


def test_inverse_of_forward_is_identity(flow):
    z, c = torch.randn(50, 2), torch.randn(50, 8)
    latent, logdet = flow._transform(z, context=c)
    back, inverse_logdet = flow._transform.inverse(latent, context=c)
    assert torch.allclose(back, z, atol=1e-4)
    assert torch.allclose(logdet, -inverse_logdet, atol=1e-4)


def test_per_pixel_logdet_matches_autograd_jacobian(flow):
    z, c = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    flow = flow.double()
    _, logdet = flow._transform(z, context=c)
    for i in range(5):
        jac = torch.autograd.functional.jacobian(
            lambda x, i=i: flow._transform(x[None], context=c[i : i + 1])[0][0], z[i]
        )
        assert logdet[i].item() == pytest.approx(torch.linalg.slogdet(jac)[1].item(), abs=1e-8)


def test_mixture_components_are_gaussians_with_their_covariance():
    torch.manual_seed(1)
    base = HitMissMixture(3)
    with torch.no_grad():
        base.off_diag.normal_()
        base.log_diag.normal_(0, 0.3)
        base.means.normal_()
    chol = base.precision_cholesky()
    u = torch.randn(10, 3)
    got = base.component_log_prob(u)
    for m in range(2):
        reference = MultivariateNormal(base.means[m], precision_matrix=chol[m] @ chol[m].T)
        assert torch.allclose(got[:, m], reference.log_prob(u), atol=1e-4)
    weights = base.log_weights
    assert torch.allclose(base.log_prob(u), torch.logsumexp(got + weights, 1), atol=1e-6)


def test_mixture_samples_have_the_component_covariance():
    torch.manual_seed(2)
    base = HitMissMixture(2)
    with torch.no_grad():
        base.off_diag[:, 1, 0] = 0.8
        base.means.zero_()
    samples = base.sample(40000)
    chol = base.precision_cholesky()[0]
    expected = torch.linalg.inv(chol @ chol.T)
    assert torch.allclose(torch.cov(samples.T), expected, atol=0.05)


def test_context_never_sees_the_pixel_itself():
    torch.manual_seed(0)
    encoder = ContextEncoder(2, 8)
    inputs = torch.randn(1, 2, 9, 9)
    changed = inputs.clone()
    changed[0, :, 4, 4] += 10.0
    before, after = encoder(inputs), encoder(changed)
    assert torch.allclose(before[0, :, 4, 4], after[0, :, 4, 4])  # own pixel: no effect
    assert not torch.allclose(before[0, :, 4, 5], after[0, :, 4, 5])  # neighbour: effect
    assert torch.allclose(before[0, :, 0, 0], after[0, :, 0, 0])  # outside 7x7: no effect


def test_pool_feature_channels_averages_groups():
    features = torch.arange(8.0).view(1, 8, 1, 1).expand(2, 8, 3, 3)
    pooled = pool_feature_channels(features, 4)
    assert pooled.shape == (2, 4, 3, 3)
    assert pooled[0, :, 0, 0].tolist() == [0.5, 2.5, 4.5, 6.5]
    assert pool_feature_channels(features, 16).shape == (2, 8, 3, 3)
