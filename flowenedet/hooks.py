"""Getting logits and decoder features out of any PyTorch segmentation model.

The segmenter is treated as a black box that maps images ``(B, 3, H, W)`` to logits
``(B, K, h, w)``. Its forward may return a tensor, a dict with ``"out"`` (torchvision),
a tuple or list (first item), or an object with ``.logits`` (transformers). Decoder
features ``(B, F, h', w')`` are captured with a forward hook, by default on the input of
the classifier: the ``Conv2d`` with ``K`` output channels whose output matches the logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SegmenterTap",
    "find_classifier",
    "frozen",
    "logits_of",
    "segmenter_device",
    "segmenter_dtype",
]


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
    """Name of the ``Conv2d`` that produces the segmenter's logits.

    Runs one forward pass on ``images`` ``(B, 3, H, W)``, records every ``Conv2d`` with
    ``K`` output channels, and picks the one whose (resized) output best matches the logits,
    so auxiliary heads with ``K`` channels (torchvision's ``aux_classifier``) are skipped.
    """
    with frozen(segmenter):
        logits = logits_of(segmenter(images))
        num_classes = logits.shape[1]
        candidates = {
            name: m
            for name, m in segmenter.named_modules()
            if isinstance(m, nn.Conv2d) and m.out_channels == num_classes
        }
        outputs: dict[str, Tensor] = {}
        handles = [
            m.register_forward_hook(lambda _m, _i, out, n=name: outputs.__setitem__(n, out))
            for name, m in candidates.items()
        ]
        try:
            segmenter(images)
        finally:
            for h in handles:
                h.remove()
    best, best_similarity = None, 0.9
    for name, out in outputs.items():
        if out.shape[-2:] != logits.shape[-2:]:
            out = F.interpolate(out, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        similarity = F.cosine_similarity(out.flatten(), logits.flatten(), dim=0).item()
        if similarity > best_similarity:
            best, best_similarity = name, similarity
    if best is None:
        raise ValueError(
            f"could not find the classifier of the segmenter: no Conv2d with {num_classes} "
            "output channels produces its logits. Pass feature_layer='<module name>' "
            "(the decoder layer whose output feeds the classifier) or use variant='U'."
        )
    return best


class SegmenterTap:
    """Runs a frozen segmenter and returns its logits and, optionally, decoder features.

    Args:
        segmenter: any ``nn.Module`` mapping ``(B, 3, H, W)`` images to logits.
        feature_layer: name of the submodule whose *output* is taken as features, or
            ``"<name>:input"`` to take the *input* of that module (used for the classifier
            conv found by :func:`find_classifier`). ``None`` captures no features.
    """

    def __init__(self, segmenter: nn.Module, feature_layer: str | None = None) -> None:
        self.segmenter = segmenter
        self.feature_layer = feature_layer
        self._module: nn.Module | None = None
        if feature_layer is not None:
            name, _, where = feature_layer.partition(":")
            modules = dict(segmenter.named_modules())
            if name not in modules:
                raise ValueError(
                    f"feature_layer {name!r} is not a submodule of the segmenter "
                    f"({type(segmenter).__name__}); see segmenter.named_modules()"
                )
            if where not in ("", "input"):
                raise ValueError(f"feature_layer suffix must be ':input'; got {feature_layer!r}")
            self._module = modules[name]
            self._take_input = where == "input"

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
        try:
            with frozen(self.segmenter, dropout=dropout):
                logits = logits_of(self.segmenter(images))
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
        return logits, features


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
