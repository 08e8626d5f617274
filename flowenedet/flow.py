"""The normalizing flow over energy inputs, with a two-component (hit / miss) mixture base.

Pixels are the flow's samples: inputs ``z`` are ``(N, D)`` (``D = 2`` energy inputs) and
each pixel has a context vector ``(N, C)``. The context is computed in image layout by
:class:`ContextEncoder` from the pixel's 7x7 neighbourhood of energy inputs (its own
value masked out, so ``log p(z | context)`` stays an exact density) and, for FED-C, from
channel-pooled decoder features. The invertible part is built from nflows transforms:
ActNorm, an invertible linear (1x1) mixing and a context-conditioned affine coupling with
alternating channel masks, repeated ``num_blocks`` times.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from nflows.distributions.base import Distribution
from nflows.flows.base import Flow
from nflows.transforms import (
    ActNorm,
    AffineCouplingTransform,
    CompositeTransform,
    LULinear,
)
from torch import Tensor, nn

__all__ = [
    "ContextEncoder",
    "CouplingNet",
    "EnergyFlow",
    "FlooredActNorm",
    "HitMissMixture",
    "align_features",
    "miss_posterior",
    "pixels",
    "pool_feature_channels",
]

HIT, MISS = 0, 1


class HitMissMixture(Distribution):
    """Two full-covariance Gaussians in latent space: component 0 = hit, 1 = miss.

    Each component has a mean and a lower-triangular Cholesky factor ``L`` of its
    precision (``Sigma^-1 = L L^T``, positive diagonal). ``log_weights`` hold the hit and
    miss rates of the fit data (used by the marginal ``log_prob``). ``prior`` says what
    the posterior ``p(miss | z)`` uses: ``"equal"`` weights; the ``"measured"`` rates; or
    weights ``"learned"`` by the training loss from the measured rates (a parameter, as
    in the reference release).
    """

    def __init__(self, features: int, separation: float = 1.0, prior: str = "equal") -> None:
        super().__init__()
        if prior not in ("equal", "measured", "learned"):
            raise ValueError(f"prior must be 'equal', 'measured' or 'learned'; got {prior!r}")
        self.features = features
        self.prior = prior
        offset = separation / math.sqrt(features)
        self.means = nn.Parameter(torch.tensor([[-offset], [offset]]).repeat(1, features))
        self.log_diag = nn.Parameter(torch.zeros(2, features))
        self.off_diag = nn.Parameter(torch.zeros(2, features, features))
        weights = torch.full((2,), math.log(0.5))
        if prior == "learned":
            self.log_weights = nn.Parameter(weights)
        else:
            self.register_buffer("log_weights", weights)

    def log_prior(self) -> Tensor:
        """``(2,)`` log prior of hit and miss that the posterior adds to ``log p(z | m)``:
        zeros for ``"equal"`` (any constant cancels), else the normalised weights."""
        if self.prior == "equal":
            return torch.zeros_like(self.log_weights)
        return self.log_weights.log_softmax(0)

    def precision_cholesky(self) -> Tensor:
        """Lower-triangular ``L`` ``(2, D, D)`` with ``Sigma_m^-1 = L_m L_m^T``."""
        # eye * d, not torch.diag_embed(d): the same matrix, and an ONNX graph can hold it
        eye = torch.eye(self.features, dtype=self.log_diag.dtype, device=self.log_diag.device)
        return torch.tril(self.off_diag, diagonal=-1) + eye * self.log_diag.exp()[:, None, :]

    def component_log_prob(self, inputs: Tensor) -> Tensor:
        """``log N(u; mu_m, Sigma_m)`` for ``inputs`` ``(N, D)``, shape ``(N, 2)``."""
        chol = self.precision_cholesky()
        centred = inputs[:, None, :] - self.means[None]  # (N, 2, D)
        projected = torch.einsum("nmd,mde->nme", centred, chol)  # (L^T (u - mu))^T
        return (
            -0.5 * projected.pow(2).sum(-1)
            + self.log_diag.sum(-1)[None]
            - 0.5 * self.features * math.log(2 * math.pi)
        )

    def _log_prob(self, inputs: Tensor, context: Tensor | None) -> Tensor:
        return torch.logsumexp(self.component_log_prob(inputs) + self.log_weights, dim=1)

    def _sample(self, num_samples: int, context: Tensor | None) -> Tensor:
        if context is not None:
            raise NotImplementedError("the mixture base is unconditional")
        component = torch.multinomial(self.log_weights.exp(), num_samples, replacement=True)
        noise = torch.randn(num_samples, self.features, 1, device=self.means.device)
        chol = self.precision_cholesky()[component]  # (N, D, D)
        offset = torch.linalg.solve_triangular(chol.transpose(1, 2), noise, upper=True)
        return self.means[component] + offset.squeeze(-1)


def pixels(maps: Tensor) -> Tensor:
    """Maps ``(B, C, h, w)`` as pixel rows ``(B h w, C)``, in ``(B, h, w)`` flat order."""
    return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])


def pool_feature_channels(features: Tensor, channels: int) -> Tensor:
    """Average ``features`` ``(B, F, h, w)`` over groups of channels to ``(B, P, h, w)``.

    ``P = min(channels, F)``; groups are contiguous and as equal as possible.
    """
    b, f, h, w = features.shape
    features = features.float()
    if f <= channels:
        return features
    if f % channels == 0:  # equal groups: a plain mean, much cheaper than adaptive pooling
        return features.view(b, channels, f // channels, h, w).mean(2)
    return F.adaptive_avg_pool3d(features[:, None], (channels, h, w))[:, 0]


def align_features(features: Tensor, logits: Tensor, channels: int) -> Tensor:
    """Decoder ``features`` ``(B, F, h', w')`` pooled to ``channels`` groups and resized to
    the ``logits``' ``(h, w)``: the flow's context ``(B, P, h, w)``."""
    features = pool_feature_channels(features.float(), channels)
    if features.shape[-2:] != logits.shape[-2:]:
        features = F.interpolate(
            features, size=logits.shape[-2:], mode="bilinear", align_corners=False
        )
    return features


class ContextEncoder(nn.Module):
    """Per-pixel context ``(B, C, h, w)`` from energy inputs and, optionally, features.

    Args:
        input_channels: ``D``, channels of the energy inputs.
        context_channels: ``C``.
        feature_channels: ``P`` pooled decoder-feature channels (0 for FED-U).
        kernel_size: spatial neighbourhood of the energy inputs (reflect padding); the
            centre tap is masked so a pixel's context never contains its own input.
    """

    def __init__(
        self,
        input_channels: int,
        context_channels: int,
        feature_channels: int = 0,
        kernel_size: int = 7,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd; got {kernel_size}")
        self.spatial = nn.Conv2d(input_channels, context_channels, kernel_size)
        mask = torch.ones(1, 1, kernel_size, kernel_size)
        mask[..., kernel_size // 2, kernel_size // 2] = 0
        self.register_buffer("centre_mask", mask, persistent=False)
        self.features = (
            nn.Conv2d(feature_channels, context_channels, 1) if feature_channels > 0 else None
        )
        self.mix = nn.Conv2d(context_channels, context_channels, 1)

    @property
    def halo(self) -> int:
        """Rows / columns of neighbourhood each pixel's context reads on every side."""
        return self.spatial.kernel_size[0] // 2

    def pad(self, inputs: Tensor) -> Tensor:
        """Reflect-pad ``inputs`` ``(B, D, h, w)`` by :attr:`halo` on every side."""
        return F.pad(
            inputs,
            [self.halo] * 4,
            mode="reflect" if min(inputs.shape[-2:]) > self.halo else "replicate",
        )

    def forward(self, inputs: Tensor, features: Tensor | None = None) -> Tensor:
        """Context ``(B, C, h, w)`` from ``inputs`` ``(B, D, h, w)`` and ``features``."""
        return self.from_padded(self.pad(inputs), features)

    def hidden_at(self, inputs: Tensor, features: Tensor | None, picked: Tensor) -> Tensor:
        """The hidden layer ``(N, C)`` (before its activation) of the pixels ``picked``
        ``(N,)`` only (flat indices into ``(B, h, w)``): each one's masked neighbourhood
        gathered from the padded inputs ``(B, D, h, w)``, or the whole map's convolution
        when most pixels are picked (the cheaper of the two)."""
        batch, _, h, w = inputs.shape
        image, rest = picked // (h * w), picked % (h * w)
        weight = self.spatial.weight * self.centre_mask
        if 2 * picked.numel() >= batch * h * w:
            hidden = pixels(F.conv2d(self.pad(inputs), weight, self.spatial.bias))[picked]
        else:
            offsets = torch.arange(self.spatial.kernel_size[0], device=picked.device)
            rows = (rest // w)[:, None] + offsets  # (N, k) rows of the padded map
            cols = (rest % w)[:, None] + offsets
            # (N, k, k, D): the advanced indices' dims come first, then the channel slice
            patches = self.pad(inputs)[image[:, None, None], :, rows[:, :, None], cols[:, None, :]]
            hidden = F.linear(patches.flatten(1), weight.permute(0, 2, 3, 1).flatten(1))
            hidden = hidden + self.spatial.bias
        if self.features is not None:
            if features is None:
                raise ValueError("this context encoder (FED-C) needs decoder features")
            picked_features = features[image, :, rest // w, rest % w]  # (N, P)
            hidden = hidden + F.linear(
                picked_features, self.features.weight.flatten(1), self.features.bias
            )
        return hidden

    def at(self, inputs: Tensor, features: Tensor | None, picked: Tensor) -> Tensor:
        """The context ``(N, C)`` of the pixels ``picked`` only (see :meth:`hidden_at`):
        what :meth:`forward` gives at those pixels."""
        hidden = self.hidden_at(inputs, features, picked)
        return F.linear(F.gelu(hidden), self.mix.weight.flatten(1), self.mix.bias)

    def from_padded(self, padded: Tensor, features: Tensor | None = None) -> Tensor:
        """Like :meth:`forward` on inputs already padded by :meth:`pad`, so a band of rows
        (with its halo) can be processed on its own and give the same context."""
        hidden = F.conv2d(padded, self.spatial.weight * self.centre_mask, self.spatial.bias)
        if self.features is not None:
            if features is None:
                raise ValueError("this context encoder (FED-C) needs decoder features")
            hidden = hidden + self.features(features)
        return self.mix(F.gelu(hidden))


class FlooredActNorm(ActNorm):
    """nflows' ``ActNorm`` whose data-dependent initialisation only centres a feature
    whose standard deviation over the first batch is below ``min_std``.

    A feature that is (nearly) constant over the first batch (an untrained segmenter, a
    channel that saturates) would otherwise get an infinite scale, or a huge one that
    every later block multiplies again (``100 ** 8`` over 8 blocks at a floor of 0.01), so
    that the first optimizer step sends the loss to 1e21.
    """

    def __init__(self, features: int, min_std: float = 1e-2) -> None:
        super().__init__(features)
        self.min_std = min_std

    def _initialize(self, inputs: Tensor) -> None:
        if inputs.dim() == 4:
            inputs = inputs.permute(0, 2, 3, 1).reshape(-1, inputs.shape[1])
        with torch.no_grad():
            std = inputs.std(dim=0)
            std = torch.where(std < self.min_std, torch.ones_like(std), std)
            self.log_scale.data = -std.log()
            self.shift.data = -inputs.mean(dim=0) / std
            self.initialized.data = torch.tensor(True, dtype=torch.bool)


class CouplingNet(nn.Module):
    """Coupling parameters from the identity half ``(N, d)`` and the context ``(N, C)``.

    One hidden layer, ``gelu(W_x x + W_c c + b)``, then a zero-initialised output layer so
    every coupling starts as the identity. The two input projections are added rather than
    concatenated: the flow runs on every pixel of a map, and this is its inner loop.
    """

    def __init__(self, in_features: int, out_features: int, context_features: int, hidden: int):
        super().__init__()
        self.inputs = nn.Linear(in_features, hidden, bias=False)
        self.context = nn.Linear(context_features, hidden)
        self.out = nn.Linear(hidden, out_features)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, inputs: Tensor, context: Tensor) -> Tensor:
        return self.out(F.gelu(self.inputs(inputs) + self.context(context)))


class EnergyFlow(Flow):
    """Conditional flow ``z -> u`` with a hit / miss mixture base.

    Args:
        features: ``D``, the number of per-pixel inputs (2 energy inputs).
        context_channels: ``C``, width of the per-pixel context.
        feature_channels: ``P`` pooled decoder-feature channels (0 for FED-U).
        num_blocks: number of (ActNorm, linear mixing, affine coupling) blocks.
        hidden: width of each coupling network.
    """

    def __init__(
        self,
        features: int = 2,
        context_channels: int = 32,
        feature_channels: int = 0,
        num_blocks: int = 8,
        hidden: int = 32,
        prior: str = "equal",
    ) -> None:
        if features < 2:
            raise ValueError(f"the flow needs at least 2 input features; got {features}")
        blocks = []
        for i in range(num_blocks):
            mask = torch.ones(features)
            mask[i % 2 :: 2] = -1  # alternate which half is transformed
            blocks += [
                FlooredActNorm(features),
                # in eval mode the LU product is cached: see refresh_linear_caches
                LULinear(features, using_cache=True, identity_init=True),
                AffineCouplingTransform(
                    mask, lambda i, o: CouplingNet(i, o, context_channels, hidden)
                ),
            ]
        super().__init__(CompositeTransform(blocks), HitMissMixture(features, prior=prior))
        self.context_encoder = ContextEncoder(features, context_channels, feature_channels)

    @property
    def base(self) -> HitMissMixture:
        """The hit / miss mixture base distribution."""
        return self._distribution

    def refresh_linear_caches(self) -> None:
        """Drop the eval-mode caches of the LU-factorised linear layers.

        In eval mode each ``LULinear`` multiplies by a cached ``W = L U`` instead of by
        ``U`` then ``L`` (half its per-pixel cost). nflows drops the cache only on
        ``train()``; calling this before scoring also covers weights loaded or moved in
        eval mode, so a stale matrix is never used.
        """
        for module in self.modules():
            if isinstance(module, LULinear):
                module.cache.invalidate()

    def component_log_prob(self, inputs: Tensor, context: Tensor) -> Tensor:
        """Class-conditional ``log p(z | m)`` for ``inputs`` ``(N, D)``, ``context`` ``(N, C)``.

        Returns ``(N, 2)``: column 0 = hit, column 1 = miss.
        """
        latent, logabsdet = self._transform(inputs, context=context)
        return self._distribution.component_log_prob(latent) + logabsdet[:, None]

    def map_component_log_prob(self, inputs: Tensor, features: Tensor | None = None) -> Tensor:
        """``log p(z | m)`` ``(B, 2, h, w)`` (0 = hit, 1 = miss) for input maps
        ``(B, D, h, w)`` and pooled features ``(B, P, h, w)`` (None for FED-U)."""
        context = self.context_encoder(inputs, features)
        b, _, h, w = inputs.shape
        log_probs = self.component_log_prob(pixels(inputs), pixels(context))
        return log_probs.view(b, h, w, 2).permute(0, 3, 1, 2)

    def sampled_component_log_prob(
        self, inputs: Tensor, features: Tensor | None, picked: Tensor
    ) -> Tensor:
        """``(N, 2)`` for the pixels ``picked`` ``(N,)`` (flat indices into ``(B, h, w)``):
        the context and the flow are computed at the picked pixels only."""
        context = self.context_encoder.at(inputs, features, picked)
        return self.component_log_prob(pixels(inputs)[picked], context)

    @torch.no_grad()
    def log_odds_map(
        self, inputs: Tensor, features: Tensor | None, chunk_pixels: int = 1 << 16
    ) -> Tensor:
        """``log p(z | miss) - log p(z | hit)`` ``(B, h, w)`` for input maps ``(B, D, h, w)``
        (and pooled features ``(B, P, h, w)``), in bands of about ``chunk_pixels`` pixels
        (at least one row) so memory stays bounded at any map size."""
        self.refresh_linear_caches()
        encoder = self.context_encoder
        padded = encoder.pad(inputs)
        batch, _, h, w = inputs.shape
        rows = max(1, chunk_pixels // (batch * w))
        out = torch.empty(batch, h, w, device=inputs.device)
        for top in range(0, h, rows):
            bottom = min(h, top + rows)
            band = padded[:, :, top : bottom + 2 * encoder.halo]
            feats = None if features is None else features[:, :, top:bottom]
            context = encoder.from_padded(band, feats)
            z = inputs[:, :, top:bottom].permute(0, 2, 3, 1).reshape(-1, inputs.shape[1])
            c = context.permute(0, 2, 3, 1).reshape(-1, context.shape[1])
            log_probs = self.component_log_prob(z, c)
            log_odds = log_probs[:, MISS] - log_probs[:, HIT]
            out[:, top:bottom] = log_odds.reshape(batch, bottom - top, w)
        return out


def miss_posterior(component_log_prob: Tensor) -> Tensor:
    """``p(miss | z)`` ``(N,)`` from ``(N, 2)`` class-conditional log-likelihoods."""
    return torch.sigmoid(component_log_prob[:, MISS] - component_log_prob[:, HIT])
