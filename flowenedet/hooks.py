"""Getting logits and decoder features out of any PyTorch segmentation model.

The segmenter is treated as a black box that maps images ``(B, 3, H, W)`` to logits
``(B, K, h, w)``. Its forward may return a tensor, a dict with ``"out"`` (torchvision),
a tuple or list (first item), or an object with ``.logits`` (transformers);
mask-classification models (Mask2Former) are wrapped in :class:`MaskClassificationLogits`.
Decoder features ``(B, F, h', w')`` are captured with a forward hook, by default on the
input of the classifier: the ``Conv2d`` (or ``Linear``) with ``K`` outputs whose output
matches the logits (:func:`find_feature_layer`). ``torch.compile``'d models are seen
through (:func:`unwrap`).

Longer than 400 lines: one concept, reading any model family's outputs, with the case
of each family (dicts, tuples, ``.logits``, mask classification, compiled models) here.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FEATURE_LAYER_ATTRIBUTE",
    "MaskClassificationLogits",
    "SegmenterTap",
    "find_classifier",
    "find_feature_layer",
    "frozen",
    "logits_of",
    "segmenter_device",
    "segmenter_dtype",
    "unwrap",
]

logger = logging.getLogger(__name__)

FEATURE_LAYER_ATTRIBUTE = "flowenedet_feature_layer"
"""A segmenter (or wrapper) attribute naming its FED-C feature layer, used by
:func:`find_feature_layer` before any search (set by :class:`MaskClassificationLogits`)."""

_MASK_QUERY_HINT = (
    "this is a mask-classification model (Mask2Former, MaskFormer, OneFormer): its output "
    "is class and mask queries, not per-pixel logits. Wrap it: "
    "FlowEneDet(flowenedet.hooks.MaskClassificationLogits(model))"
)


def unwrap(segmenter: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper (``OptimizedModule``) holds, else ``segmenter``:
    its submodule names and state dict are those of the model itself."""
    while isinstance(getattr(segmenter, "_orig_mod", None), nn.Module):
        segmenter = segmenter._orig_mod
    return segmenter


def logits_of(output: Any) -> Tensor:
    """Return the logits tensor ``(B, K, h, w)`` from whatever a segmenter's forward gave."""
    if isinstance(output, Tensor):
        logits = output
    elif isinstance(output, Mapping) and "out" in output:
        logits = output["out"]
    elif isinstance(output, (tuple, list)) and len(output) > 0:
        logits = output[0]
    elif hasattr(output, "logits"):
        logits = output.logits
    elif _mask_queries(output) is not None:
        raise TypeError(_MASK_QUERY_HINT)
    else:
        raise TypeError(
            "segmenter output must be a tensor (B, K, h, w), a dict with 'out', a tuple/list "
            f"whose first item is the logits, or an object with .logits; got {type(output)!r}"
        )
    if not isinstance(logits, Tensor) or logits.dim() != 4:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"segmenter logits must have shape (B, K, h, w); got {shape}")
    return logits


@contextlib.contextmanager
def frozen(module: nn.Module, *, dropout: bool = False) -> Iterator[nn.Module]:
    """Run ``module`` in eval mode without autograd, restoring every submodule's mode after.

    With ``dropout=True`` the dropout layers stay active (for MC dropout); batch norm and
    everything else stay in eval mode, so no buffer changes.
    """
    modes = {m: m.training for m in module.modules()}
    module.eval()
    if dropout:
        for m in module.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.train()
    try:
        with torch.no_grad():
            yield module
    finally:
        for m, mode in modes.items():
            m.training = mode


def find_classifier(segmenter: nn.Module, images: Tensor) -> str:
    """Name of the ``Conv2d`` (or channels-last ``Linear``) that produces the logits.

    Runs one forward pass on ``images`` ``(B, 3, H, W)``, records every ``Conv2d`` with
    ``K`` output channels and every ``Linear`` with ``K`` outputs on ``(B, h, w, C)``, and
    picks the one whose (resized) output best matches the logits, so auxiliary heads with
    ``K`` channels (torchvision's ``aux_classifier``) are skipped. Logits that are the sum
    of several such layers (torchvision's LR-ASPP: a low- and a high-resolution
    classifier) give the one with the most input channels. Raises ``ValueError`` listing
    the candidate layers when none fits.
    """
    model = unwrap(segmenter)  # hooks need the eager model: compiled graphs skip them
    if images.is_floating_point():
        images = images.to(segmenter_dtype(model))
    with frozen(model):
        logits = logits_of(model(images))
        num_classes = logits.shape[1]
        candidates = {name: m for name, m in model.named_modules() if _out_width(m) == num_classes}
        outputs = _record_outputs(model, images, candidates)
    resized = {}
    for name, out in outputs.items():
        if isinstance(candidates[name], nn.Linear):
            if out.dim() != 4:
                continue
            out = out.permute(0, 3, 1, 2)
        if out.dim() != 4 or out.shape[:2] != logits.shape[:2]:
            continue
        resized[name] = _resize(out.float(), logits.shape[-2:])
    target = logits.float()
    similarity = {name: _cosine(out, target) for name, out in resized.items()}
    best = max(similarity, key=similarity.get, default=None)
    if best is not None and similarity[best] > 0.9:
        return best
    for size in (2, 3):
        for group in itertools.combinations(sorted(resized, key=similarity.get)[-6:], size):
            if _cosine(sum(resized[name] for name in group), target) > 0.99:
                widest = max(group, key=lambda n: (_in_width(candidates[n]), similarity[n]))
                logger.info(
                    "the logits are the sum of %s; taking the widest, %r", list(group), widest
                )
                return widest
    raise ValueError(_no_classifier_message(model, images, logits, similarity))


def find_feature_layer(segmenter: nn.Module, images: Tensor) -> str:
    """The FED-C feature layer of ``segmenter`` as a ``feature_layer`` string.

    The segmenter's ``flowenedet_feature_layer`` attribute if it has one (a wrapper that
    knows its model), else the input of :func:`find_classifier`'s layer,
    ``"<name>:input"``. Raises ``ValueError`` (listing candidates) if there is none.
    """
    hint = getattr(unwrap(segmenter), FEATURE_LAYER_ATTRIBUTE, None)
    if isinstance(hint, str):
        return hint
    return f"{find_classifier(segmenter, images)}:input"


def _out_width(module: nn.Module) -> int | None:
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    return None


def _in_width(module: nn.Module) -> int:
    return module.in_channels if isinstance(module, nn.Conv2d) else module.in_features


def _resize(maps: Tensor, size: tuple[int, int]) -> Tensor:
    if maps.shape[-2:] == size:
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def _cosine(a: Tensor, b: Tensor) -> float:
    return F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def _record_outputs(
    segmenter: nn.Module, images: Tensor, modules: Mapping[str, nn.Module]
) -> dict[str, Tensor]:
    """Each module's (first tensor) output during one frozen forward on ``images``."""
    outputs: dict[str, Tensor] = {}

    def keep(name: str, out: Any) -> None:
        out = out[0] if isinstance(out, (tuple, list)) and out else out
        if isinstance(out, Tensor):
            outputs[name] = out

    handles = [
        m.register_forward_hook(lambda _m, _i, out, n=name: keep(n, out))
        for name, m in modules.items()
    ]
    try:
        with frozen(segmenter):
            segmenter(images)
    finally:
        for h in handles:
            h.remove()
    return outputs


def _no_classifier_message(
    segmenter: nn.Module, images: Tensor, logits: Tensor, similarity: Mapping[str, float]
) -> str:
    """Why :func:`find_classifier` failed, with the layers one could name instead."""
    k, size = logits.shape[1], tuple(logits.shape[-2:])
    text = (
        f"could not find the classifier of the segmenter: no Conv2d or Linear with {k} "
        "outputs produces its logits"
    )
    if similarity:
        found = ", ".join(f"{n!r} (similarity {v:.2f})" for n, v in similarity.items())
        text += f" (layers with {k} outputs: {found})"
    modules = dict(segmenter.named_modules())
    outputs = _record_outputs(segmenter, images, {n: m for n, m in modules.items() if n})
    maps = [
        f"{name!r} {tuple(out.shape)}"
        for name, out in outputs.items()
        if out.dim() == 4 and (out.shape[-2:] == size or out.shape[1:3] == size)
    ]
    if maps:
        text += (
            f". Layers whose output has the logits' size {size[0]}x{size[1]}, in call order: "
            + ", ".join(maps[-6:])
        )
    return (
        text + ". Pass feature_layer='<name>' (a decoder layer whose output feeds the "
        "classifier) or feature_layer='<name>:input' (the input of the classifier), or use "
        "variant='U'."
    )


def _mask_queries(output: Any) -> tuple[Tensor, Tensor] | None:
    """``(class logits (B, Q, K + 1), mask logits (B, Q, h, w))`` of a mask-classification
    output (transformers' names or the reference's ``pred_logits`` / ``pred_masks``)."""
    for classes, masks in (
        ("class_queries_logits", "masks_queries_logits"),
        ("pred_logits", "pred_masks"),
    ):
        if isinstance(output, Mapping):
            found = output.get(classes), output.get(masks)
        else:
            found = getattr(output, classes, None), getattr(output, masks, None)
        if all(isinstance(t, Tensor) for t in found):
            return found
    return None


class MaskClassificationLogits(nn.Module):
    """Per-pixel semantic logits from a mask-classification model (Mask2Former, MaskFormer).

    Such a model predicts ``Q`` queries, each a class distribution (``K`` classes plus
    "no object") and a mask. The semantic score of class ``k`` at a pixel is
    ``S_k = sum_q softmax(class_q)[k] * sigmoid(mask_q)`` (what transformers'
    ``post_process_semantic_segmentation`` computes, before resizing); the adapter returns
    ``log(max(S_k, eps))`` ``(B, K, h, w)`` at the masks' resolution, whose softmax is
    ``S`` normalised over classes and whose argmax is the model's semantic prediction.

    ``model(images)`` must return an object or dict with ``class_queries_logits`` and
    ``masks_queries_logits`` (transformers' ``Mask2FormerForUniversalSegmentation``,
    ``MaskFormerForInstanceSegmentation``) or ``pred_logits`` and ``pred_masks``. For FED-C
    the pixel decoder's mask features (transformers' ``...decoder.mask_projection``, at the
    masks' resolution) are the feature layer when the model has one.
    """

    def __init__(self, model: nn.Module, eps: float = 1e-6) -> None:
        super().__init__()
        self.model = model
        self.eps = eps
        names = [name for name, _ in model.named_modules()]
        mask_features = [n for n in names if n.endswith("decoder.mask_projection")]
        self.flowenedet_feature_layer = f"model.{mask_features[0]}" if mask_features else None

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, K, h, w)`` for ``images`` ``(B, 3, H, W)``."""
        queries = _mask_queries(self.model(images))
        if queries is None:
            raise TypeError(
                "MaskClassificationLogits needs a model whose output has class_queries_logits "
                "and masks_queries_logits (or pred_logits and pred_masks)"
            )
        classes, masks = (t.float() for t in queries)
        probs = classes.softmax(-1)[..., :-1]  # the last class is "no object"
        scores = torch.einsum("bqk,bqhw->bkhw", probs, masks.sigmoid())
        return scores.clamp_min(self.eps).log()


class SegmenterTap:
    """Runs a frozen segmenter and returns its logits and, optionally, decoder features.

    Args:
        segmenter: any ``nn.Module`` mapping ``(B, 3, H, W)`` images to logits.
        feature_layer: name of the submodule whose *output* is taken as features, or
            ``"<name>:input"`` to take the *input* of that module (used for the classifier
            conv found by :func:`find_classifier`). ``None`` captures no features. Names
            are those of the model inside a ``torch.compile`` wrapper (:func:`unwrap`);
            with features, that model runs uncompiled (compiled graphs skip hooks).

    Features come back channels-first ``(B, F, h', w')``: a channels-last ``(B, h', w', F)``
    tensor (the input or output of an ``nn.Linear``, or of an ``nn.LayerNorm`` over the
    last dim, or one whose dims 1-2 rather than 2-3 have the logits' size or aspect ratio)
    is permuted; a 4-D tensor that fits neither layout raises ``ValueError``.
    """

    def __init__(self, segmenter: nn.Module, feature_layer: str | None = None) -> None:
        self.segmenter = segmenter
        self.feature_layer = feature_layer
        self._module: nn.Module | None = None
        if feature_layer is not None:
            name, _, where = feature_layer.partition(":")
            modules = dict(unwrap(segmenter).named_modules())
            if name not in modules:
                raise ValueError(
                    f"feature_layer {name!r} is not a submodule of the segmenter "
                    f"({type(segmenter).__name__}); see segmenter.named_modules()"
                )
            if where not in ("", "input"):
                raise ValueError(f"feature_layer suffix must be ':input'; got {feature_layer!r}")
            self._module = modules[name]
            self._take_input = where == "input"

    @classmethod
    def finding_features(
        cls, segmenter: nn.Module, images: Tensor, channels: int | None = None
    ) -> SegmenterTap:
        """A tap on the FED-C layer :func:`find_feature_layer` finds with ``images``;
        ``ValueError`` if ``channels`` is given and the layer's features have others."""
        layer = find_feature_layer(segmenter, images)
        tap = cls(segmenter, layer)
        if channels is not None and (found := tap(images)[1].shape[1]) != channels:
            raise ValueError(
                f"the detector was fitted on features with {channels} channels, but {layer!r} "
                f"(found as fit finds it) gives {found}; pass feature_layer= naming the layer "
                "the fit features came from"
            )
        logger.info("FED-C features: %r", layer)
        return tap

    def __call__(self, images: Tensor, *, dropout: bool = False) -> tuple[Tensor, Tensor | None]:
        """Return ``(logits (B, K, h, w), features (B, F, h', w') or None)``."""
        captured: list[Tensor] = []
        handle = None
        if self._module is not None:
            if self._take_input:
                handle = self._module.register_forward_pre_hook(
                    lambda _m, args: captured.append(args[0])
                )
            else:
                handle = self._module.register_forward_hook(
                    lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out)
                )
        dtype = segmenter_dtype(self.segmenter)
        if images.is_floating_point() and images.dtype != dtype:
            images = images.to(dtype)  # float64 / half images for a float32 model, and back
        # a torch.compile'd graph skips hooks added after compiling: capture on the model
        model = self.segmenter if self._module is None else unwrap(self.segmenter)
        try:
            with frozen(model, dropout=dropout):
                logits = logits_of(model(images))
        except RuntimeError as error:
            raise _explain_failure(self.segmenter, images, error) from error
        finally:
            if handle is not None:
                handle.remove()
        if self._module is None:
            return logits, None
        if not captured:
            raise RuntimeError(f"feature_layer {self.feature_layer!r} was not called in forward")
        features = captured[-1]
        if not isinstance(features, Tensor) or features.dim() != 4:
            raise ValueError(
                f"feature_layer {self.feature_layer!r} must give a (B, F, h, w) tensor; "
                f"got {getattr(features, 'shape', type(features))}"
            )
        return logits, self._channels_first(features, logits)

    def _channels_first(self, features: Tensor, logits: Tensor) -> Tensor:
        """``features`` as ``(B, F, h', w')``, from either layout (see the class doc)."""
        module, size = self._module, logits.shape[-2:]
        if isinstance(module, nn.Linear) or (
            isinstance(module, nn.LayerNorm)
            and tuple(module.normalized_shape) == (features.shape[-1],)
        ):
            return features.permute(0, 3, 1, 2)
        if isinstance(module, (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)):
            return features
        if features.shape[-2:] == size or features.shape[-2:] == (1, 1):
            return features
        if features.shape[1:3] == size:
            return features.permute(0, 3, 1, 2)
        first, last = (
            _same_aspect(features.shape[-2:], size),
            _same_aspect(features.shape[1:3], size),
        )
        if first:
            return features  # when both fit, PyTorch's channels-first convention
        if last:
            return features.permute(0, 3, 1, 2)
        raise ValueError(
            f"feature_layer {self.feature_layer!r} gives a tensor of shape "
            f"{tuple(features.shape)}, but neither (B, F, h, w) nor (B, h, w, F) has the "
            f"aspect ratio of the logits ({size[0]}x{size[1]}); name a layer whose output "
            "is a feature map aligned with the logits"
        )


def _same_aspect(spatial: tuple[int, int], size: tuple[int, int]) -> bool:
    """Whether a ``spatial`` size is a rescaling of ``size`` (within 25 %, or one pixel)."""
    (a, b), (h, w) = spatial, size
    rows, cols = a / h, b / w
    close = abs(rows - cols) <= 0.25 * max(rows, cols)
    return close or (abs(a - round(cols * h)) <= 1 and abs(b - round(rows * w)) <= 1)


def _explain_failure(segmenter: nn.Module, images: Tensor, error: RuntimeError) -> Exception:
    """A clear error for a segmenter forward that failed on ``images`` ``(B, C, H, W)``."""
    first = next((m for m in segmenter.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first.in_channels != images.shape[1]:
        return ValueError(
            f"images have {images.shape[1]} channels but the segmenter's first convolution "
            f"expects {first.in_channels} (images must be (B, {first.in_channels}, H, W))"
        )
    return RuntimeError(
        f"the segmenter failed on images of shape {tuple(images.shape)}, dtype "
        f"{images.dtype}: {error}"
    )


def segmenter_dtype(segmenter: nn.Module) -> torch.dtype:
    """The dtype of the segmenter's first floating parameter (float32 if it has none)."""
    for tensor in segmenter.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def segmenter_device(segmenter: nn.Module) -> torch.device:
    """The device of the segmenter's first parameter or buffer (CPU if it has none)."""
    for tensor in [*segmenter.parameters(), *segmenter.buffers()]:
        return tensor.device
    return torch.device("cpu")
