"""The scoring path: a fitted :class:`~flowenedet.flow.EnergyFlow`'s log-odds map from
plain tensors, at close to the flow's arithmetic floor.

Training keeps nflows; scoring only needs the posterior's log-odds
``log p(z | miss) - log p(z | hit)``, in which the flow's ``log|det|`` cancels, so it is
never computed. :class:`FusedEnergyFlow` is built once from the flow's weights (folded in
float64) and then works in channel-major pixel columns ``(channels, N)`` (a band of rows
of one image, a view of the map, no copies):

* each block's ActNorm and LU mixing are one affine map ``y = A s + c``, whose rows are
  ordered (identity half, transformed half) of that block's coupling, so every split is a
  slice; the next block's ``A`` reads that order (the permutation is folded into it);
* the context encoder's 1x1 ``mix`` is folded into every coupling net's context
  projection, and the block's affine map and all biases into its input projection (the
  state carries a row of ones), so a hidden layer is one matmul from the context plus one
  accumulated in place from the state;
* the output layer's shift bias is carried into the next block's affine bias, and the
  sigmoid's ``+ 2`` into the scale bias; the coupling's update runs in place;
* the base's two Gaussians (means and precision factors, with the last permutation) are
  one ``(2 D, D)`` affine map whose squared rows are summed with signs ``+-1/2``.

The result equals nflows' ``EnergyFlow.log_odds_map`` up to float32 rounding (tested
to 1e-5). ``dtype=torch.bfloat16`` (or float16) runs the context and coupling networks'
matmuls in that precision; the flow's state and the base stay float32.
:class:`~flowenedet.conv_flow.ConvEnergyFlow` (``coupling="conv"``) is already a map of
convolutions and keeps its own path (see :func:`scoring_flow`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from nflows.transforms import AffineCouplingTransform, LULinear
from torch import Tensor, nn

from .conv_flow import ConvEnergyFlow
from .flow import HIT, MISS, EnergyFlow, FlooredActNorm

__all__ = [
    "AUTOCAST_DTYPES",
    "FusedEnergyFlow",
    "ScoringCache",
    "check_autocast",
    "fold",
    "folded_log_odds",
    "log_odds",
    "sampled_log_odds",
    "scoring_flow",
]

SCALE_OFFSET = 2.0  # nflows' affine coupling: scale = sigmoid(raw + 2) + 1e-3
SCALE_FLOOR = 1e-3
BAND_PIXELS = 1 << 14  # CPU: pixels per band, so a block's activations stay in cache


@dataclass
class Folded:
    """A fitted :class:`EnergyFlow`'s log-odds as matrices (:func:`fold`): the context
    encoder's ``halo``, the coupling networks' width ``hidden``, each block's
    ``(identity, transformed)`` split and the named ``tensors`` (see
    :class:`FusedEnergyFlow`)."""

    halo: int
    hidden: int
    splits: list[tuple[int, int]]
    tensors: dict[str, Tensor]


def fold(flow: EnergyFlow, precision: torch.dtype = torch.float64) -> Folded:
    """The log-odds of ``flow`` as a few matrices (see :class:`FusedEnergyFlow`), folded
    in ``precision`` and returned in float32: differentiable in the flow's parameters, so
    training and scoring compute the same function."""
    if not isinstance(flow, EnergyFlow):
        raise TypeError(f"FusedEnergyFlow needs an EnergyFlow; got {type(flow).__name__}")
    tensors: dict[str, Tensor] = {}

    def keep(name: str, value: Tensor) -> None:
        tensors[name] = value.float()

    encoder = flow.context_encoder
    device = encoder.spatial.weight.device
    f64 = {"dtype": precision, "device": device}
    keep("spatial_weight", encoder.spatial.weight * encoder.centre_mask)
    spatial_bias = encoder.spatial.bias.to(precision)
    if encoder.features is not None:
        keep("feature_weight", encoder.features.weight[:, :, 0, 0])
        spatial_bias = spatial_bias + encoder.features.bias.to(precision)
    keep("spatial_bias", spatial_bias)
    mix_weight = encoder.mix.weight[:, :, 0, 0].to(precision)  # (C, C)
    mix_bias = encoder.mix.bias.to(precision)

    transforms = list(flow._transform._transforms)
    if len(transforms) % 3:
        raise ValueError("EnergyFlow blocks must be (ActNorm, LULinear, coupling) triples")
    features = flow.base.features
    order = torch.arange(features, device=device)  # state row j holds feature order[j]
    missing = torch.zeros(features, **f64)  # output biases not yet added to the state
    context_weights, splits = [], []
    for k in range(len(transforms) // 3):
        norm, linear, coupling = transforms[3 * k : 3 * k + 3]
        if not (
            isinstance(norm, FlooredActNorm)
            and isinstance(linear, LULinear)
            and isinstance(coupling, AffineCouplingTransform)
        ):
            raise TypeError(f"block {k} is not (ActNorm, LULinear, AffineCoupling)")
        # y = W (x * e^s + t) + b = A x + c, rows in this block's (identity, transformed)
        # order, columns in the previous state's order, which lacks `missing`
        mixing = linear.weight().to(precision)
        rows = torch.cat([coupling.identity_features, coupling.transform_features])
        affine = (mixing * norm.log_scale.to(precision).exp()[None])[rows][:, order]
        bias = (mixing @ norm.shift.to(precision) + linear.bias.to(precision))[
            rows
        ] + affine @ missing
        identity = coupling.num_identity_features
        net = coupling.transform_net
        # hidden layer W_x y_id + W_c mix(g) + b_c = W_x' [s; 1] + (W_c W_mix) g
        input_weight = net.inputs.weight.to(precision)
        context = net.context.weight.to(precision)
        hidden_bias = input_weight @ bias[:identity] + context @ mix_bias + net.context.bias
        keep(f"affine_{k}", torch.cat([affine, bias[:, None]], 1))
        keep(
            f"input_{k}",
            torch.cat([input_weight @ affine[:identity], hidden_bias[:, None]], 1),
        )
        context_weights.append(context @ mix_weight)
        transformed = coupling.num_transform_features
        keep(f"out_{k}", net.out.weight)
        keep(f"scale_bias_{k}", net.out.bias.to(precision)[transformed:, None] + SCALE_OFFSET)
        missing = torch.cat([missing.new_zeros(identity), net.out.bias.to(precision)[:transformed]])
        splits.append((identity, transformed))
        order = rows
    keep("context_weight", torch.cat(context_weights))
    # L_m^T (u - mu_m), u = the state (plus `missing`) in feature order
    base = flow.base
    chol_t = base.precision_cholesky().to(precision).transpose(1, 2)[:, :, order]  # (2, D, D)
    means = base.means.to(precision)[:, order]
    centred = missing[None] - means  # (2, D)
    base_weight = torch.cat([chol_t[HIT], chol_t[MISS]])
    base_bias = torch.cat([chol_t[HIT] @ centred[HIT], chol_t[MISS] @ centred[MISS]])
    keep("base", torch.cat([base_weight, base_bias[:, None]], 1))
    half = torch.full((features,), 0.5, **f64)
    keep("base_sign", torch.cat([half, -half])[None])
    constant = base.log_diag.to(precision).sum(-1)
    keep("base_constant", (constant[MISS] - constant[HIT]).reshape(1, 1))
    return Folded(encoder.halo, context_weights[0].shape[0], splits, tensors)


class FusedEnergyFlow(nn.Module):
    """Log-odds of a fitted :class:`EnergyFlow` from folded per-block matrices.

    Buffers (non-persistent; ``K`` blocks, ``D`` inputs, ``C`` context, ``H`` hidden, ``P``
    pooled features): ``spatial_weight`` ``(C, D, k, k)`` (centre tap masked),
    ``spatial_bias`` ``(C,)`` (with the feature conv's bias), ``feature_weight``
    ``(C, P)`` (FED-C), ``context_weight`` ``(K H, C)`` (block ``k``: rows ``k H ..``), per
    block ``affine_k`` ``(D, D + 1)`` and ``input_k`` ``(H, D + 1)`` (last column: bias),
    ``out_k`` ``(2 t_k, H)``, ``scale_bias_k`` ``(t_k, 1)``; ``base`` ``(2 D, D + 1)``,
    ``base_sign`` ``(1, 2 D)``, ``base_constant`` ``(1, 1)``.
    """

    def __init__(self, flow: EnergyFlow) -> None:
        super().__init__()
        with torch.no_grad():
            folded = fold(flow)
        self.halo, self.hidden, self.splits = folded.halo, folded.hidden, folded.splits
        self.register_buffer("feature_weight", None, persistent=False)  # FED-U: none
        for name, value in folded.tensors.items():
            self.register_buffer(name, value.detach().clone(), persistent=False)

    def forward(
        self,
        inputs: Tensor,
        features: Tensor | None = None,
        chunk_pixels: int = 1 << 16,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """``log p(z | miss) - log p(z | hit)`` ``(B, h, w)`` for inputs ``(B, D, h, w)``
        and pooled features ``(B, P, h, w)`` (FED-C) or None, in bands of at most
        ``chunk_pixels`` pixels (at least one row) of one image (on the CPU at most
        :data:`BAND_PIXELS`, for the caches); ``dtype`` for the networks' matmuls
        (default float32)."""
        batch, _, h, w = inputs.shape
        if (self.feature_weight is None) != (features is None):
            need = "needs" if features is None else "takes no"
            raise ValueError(f"this flow {need} decoder features")
        inputs = inputs.float()
        padded = F.pad(
            inputs, [self.halo] * 4, mode="reflect" if min(h, w) > self.halo else "replicate"
        )
        if inputs.device.type == "cpu":
            chunk_pixels = min(chunk_pixels, BAND_PIXELS)
        rows = max(1, chunk_pixels // w)
        low = dtype if dtype is not None else torch.float32
        nets = [  # each block's network weights in the matmuls' precision, cast once
            (
                self.context_weight[k * self.hidden : (k + 1) * self.hidden].to(low),
                getattr(self, f"input_{k}").to(low),
                getattr(self, f"out_{k}").to(low),
            )
            for k in range(len(self.splits))
        ]
        out = inputs.new_empty(batch, h, w)
        for b in range(batch):
            for top in range(0, h, rows):
                bottom = min(h, top + rows)
                band = padded[b : b + 1, :, top : bottom + 2 * self.halo]
                feats = None if features is None else features[b, :, top:bottom].flatten(1)
                z = inputs[b, :, top:bottom].flatten(1)
                out[b, top:bottom] = self._band(z, band, feats, nets).view(bottom - top, w)
        return out

    log_odds_map = forward

    def _band(
        self,
        z: Tensor,
        padded: Tensor,
        features: Tensor | None,
        nets: list[tuple[Tensor, Tensor, Tensor]],
    ) -> Tensor:
        """Log-odds ``(N,)`` of one band: inputs ``z`` ``(D, N)``, its padded map
        ``(1, D, rows + 2 halo, w + 2 halo)``, features ``(P, N)`` or None; ``nets``: each
        block's (context, input, output) weights in the matmuls' precision."""
        low = nets[0][0].dtype
        hidden = F.conv2d(padded, self.spatial_weight, self.spatial_bias)[0].flatten(1)
        if features is not None:
            hidden.addmm_(self.feature_weight, features.float())
        context = F.gelu(hidden).to(low)  # (C, N)
        features_in = z.shape[0]
        # the state and a row of ones (for the biases), ping-ponged between two buffers
        state = torch.cat([z, z.new_ones(1, z.shape[1])])
        spare = torch.empty_like(state)
        spare[features_in:] = 1.0
        for k, (identity, transformed) in enumerate(self.splits):
            context_weight, input_weight, out_weight = nets[k]
            pre = torch.mm(context_weight, context)  # (H, N)
            pre.addmm_(input_weight, state.to(low))
            params = torch.mm(out_weight, F.gelu(pre)).float()
            scale = params[transformed:].add_(getattr(self, f"scale_bias_{k}")).sigmoid_()
            y = spare[:features_in]
            torch.mm(getattr(self, f"affine_{k}"), state, out=y)
            y[identity:].mul_(scale.add_(SCALE_FLOOR)).add_(params[:transformed])
            state, spare = spare, state
        projected = torch.mm(self.base, state)  # (2 D, N)
        return torch.addmm(self.base_constant, self.base_sign, projected.square_())[0]


AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


def check_autocast(dtype: torch.dtype | None) -> torch.dtype | None:
    """``dtype`` if it is None or a reduced precision for scoring, else ``ValueError``."""
    if dtype is not None and dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast must be None, torch.bfloat16 or torch.float16; got {dtype!r}")
    return dtype


class _ConvScoring:
    """A :class:`ConvEnergyFlow`'s own ``log_odds_map``, under ``torch.autocast`` for a
    reduced ``dtype`` (its convolutions are not fused)."""

    def __init__(self, flow: ConvEnergyFlow) -> None:
        self.flow = flow

    def __call__(
        self,
        inputs: Tensor,
        features: Tensor | None = None,
        chunk_pixels: int = 1 << 16,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        with torch.autocast(inputs.device.type, dtype=dtype, enabled=dtype is not None):
            return self.flow.log_odds_map(inputs, features, chunk_pixels).float()


LogOdds = Callable[..., Tensor]
"""``(inputs (B, D, h, w), features (B, P, h, w) | None, chunk_pixels, dtype) -> (B, h, w)``"""


def scoring_flow(flow: EnergyFlow | ConvEnergyFlow) -> LogOdds:
    """The log-odds function of ``flow``'s current weights: a :class:`FusedEnergyFlow` for
    an :class:`EnergyFlow`, the conv flow's own path otherwise."""
    if isinstance(flow, EnergyFlow):
        return FusedEnergyFlow(flow).eval()
    if isinstance(flow, ConvEnergyFlow):
        return _ConvScoring(flow)
    raise TypeError(f"no scoring path for {type(flow).__name__}")


class ScoringCache:
    """The scoring path of a flow, rebuilt whenever the flow, its device or any of its
    weights changed (a new fit, ``load``, ``to()``, an optimizer step, ``load_state_dict``):
    the key is every parameter's and buffer's device, dtype, storage and version counter."""

    def __init__(self) -> None:
        self._flow: nn.Module | None = None
        self._key: tuple | None = None
        self._scoring: LogOdds | None = None

    @staticmethod
    def _state(flow: nn.Module) -> tuple:
        tensors = [*flow.parameters(), *flow.buffers()]
        return tuple((t.device, t.dtype, t.data_ptr(), t._version) for t in tensors)

    def get(self, flow: EnergyFlow | ConvEnergyFlow) -> LogOdds:
        """The log-odds function for ``flow``'s current weights."""
        key = self._state(flow)
        if flow is not self._flow or key != self._key:
            self._flow, self._key, self._scoring = flow, key, scoring_flow(flow)
        return self._scoring


def log_odds(
    flow: EnergyFlow | ConvEnergyFlow,
    inputs: Tensor,
    features: Tensor | None,
    chunk_pixels: int = 1 << 16,
    autocast: torch.dtype | None = None,
    cache: ScoringCache | None = None,
) -> Tensor:
    """The posterior's log-odds ``log p(miss | z) - log p(hit | z)`` ``(B, h, w)`` for
    inputs ``(B, D, h, w)`` (and pooled features ``(B, P, h, w)``): the flow's likelihood
    ratio by its scoring path (kept in ``cache`` across calls) plus the prior's log-odds
    (0 for equal priors). ``autocast``: the networks' precision (see
    :class:`FusedEnergyFlow`)."""
    prior = flow.base.log_prior()
    scoring = cache.get(flow) if cache is not None else scoring_flow(flow)
    ratio = scoring(inputs, features, chunk_pixels, autocast)
    return ratio + (prior[MISS] - prior[HIT])


def sampled_log_odds(
    flow: EnergyFlow | ConvEnergyFlow, inputs: Tensor, features: Tensor | None, picked: Tensor
) -> Tensor:
    """``log p(z | miss) - log p(z | hit)`` ``(N,)`` at the pixels ``picked`` ``(N,)`` (flat
    indices into the input maps ``(B, D, h, w)``), differentiable in the flow's
    parameters: all the training loss reads of the flow, since a pixel's ``log|det|`` is
    the same for both components and cancels in the posterior.

    An :class:`EnergyFlow` whose ActNorms are initialised is folded as for scoring and
    evaluated at the picked pixels alone; before that (the fit's first batch) nflows' own
    forward runs, which initialises them; a :class:`ConvEnergyFlow` uses its map path.
    """
    if isinstance(flow, ConvEnergyFlow) or not all(
        norm.initialized for norm in flow.modules() if isinstance(norm, FlooredActNorm)
    ):
        log_probs = flow.sampled_component_log_prob(inputs, features, picked)
        return log_probs[:, MISS] - log_probs[:, HIT]
    folded = fold(flow, torch.float32)  # the gradient's rounding, not the scores'
    context = F.gelu(flow.context_encoder.hidden_at(inputs, features, picked)).T  # (C, N)
    z = inputs.permute(1, 0, 2, 3).flatten(1)[:, picked]  # (D, N)
    return folded_log_odds(folded, context, z)


def folded_log_odds(folded: Folded, context: Tensor, z: Tensor) -> Tensor:
    """``log p(z | miss) - log p(z | hit)`` ``(..., N)`` of pixel columns from a flow's
    :func:`fold`: the context ``(..., C, N)`` (after its activation) and the inputs
    ``(..., D, N)``, with any leading dims (none for the fit's sampled pixels, the batch for
    a whole map, as :mod:`flowenedet.export` evaluates it). No loop over pixels and no
    in-place update: differentiable, and traceable to one graph."""
    w = folded.tensors
    # every block's context term in one product; split (not sliced) for a cheap backward
    context_terms = torch.matmul(w["context_weight"], context).split(folded.hidden, dim=-2)
    ones = torch.ones_like(z[..., :1, :])
    state = torch.cat([z, ones], -2)
    for k, (identity, transformed) in enumerate(folded.splits):
        pre = context_terms[k] + torch.matmul(w[f"input_{k}"], state)
        shift, raw_scale = torch.matmul(w[f"out_{k}"], F.gelu(pre)).split(transformed, dim=-2)
        scale = torch.sigmoid(raw_scale + w[f"scale_bias_{k}"]) + SCALE_FLOOR
        kept, changed = torch.matmul(w[f"affine_{k}"], state).split((identity, transformed), -2)
        state = torch.cat([kept, changed * scale + shift, ones], -2)
    projected = torch.matmul(w["base"], state)  # (..., 2 D, N)
    return (torch.matmul(w["base_sign"], projected.square()) + w["base_constant"]).squeeze(-2)
