"""Argument checks shared by the detector, the baselines and the command line.

Every check raises ``ValueError`` (or ``TypeError``) naming the argument, what was
expected and what arrived, so bad input never turns into a silently wrong answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .config import Spec, check_field
from .labels import PADDING_INDEX

SCALE = Spec(float, 0.05, 4.0)  # a test-time scale
MAX_SCALES = 16
SIDE = Spec(int, 1, 1 << 15)  # a side of an output map, in pixels

__all__ = [
    "BATCH_KEYS",
    "check_device",
    "check_finite",
    "check_images",
    "check_labels",
    "check_logits",
    "check_scales",
    "check_size",
    "unpack_batch",
]


def check_images(images: Any, name: str = "images") -> Tensor:
    """``images`` must be a floating tensor ``(B, C, H, W)`` with ``B, H, W > 0``."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B, C, H, W); got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W); got {tuple(images.shape)}")
    if images.shape[-1] in (1, 3, 4) and images.shape[1] > 4:
        raise ValueError(
            f"{name} has shape {tuple(images.shape)}, channels last (B, H, W, C); the "
            f"segmenter takes (B, C, H, W): pass {name}.permute(0, 3, 1, 2)"
        )
    check_has_data(images, name)
    if not images.is_floating_point():
        raise ValueError(
            f"{name} must be a floating tensor (convert uint8 images with .float() / 255 and "
            f"normalise them as the segmenter expects); got dtype {images.dtype}"
        )
    if min(images.shape[0], images.shape[2], images.shape[3]) == 0:
        raise ValueError(f"{name} is empty: shape {tuple(images.shape)}")
    return images


def check_labels(
    labels: Any,
    size: tuple[int, int],
    batch: int,
    num_classes: int | None,
    ignore_index: int,
    name: str = "labels",
) -> Tensor:
    """``labels`` must be an integer tensor ``(B, H, W)`` matching the images' batch and size,
    with values in ``[0, num_classes)``, ``ignore_index`` or ``PADDING_INDEX``."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B, H, W); got {type(labels).__name__}")
    if labels.dim() != 3 or labels.shape[0] != batch or tuple(labels.shape[1:]) != tuple(size):
        raise ValueError(
            f"{name} has shape {tuple(labels.shape)} but must be ({batch}, {size[0]}, {size[1]}) "
            "to match the images"
        )
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices; got dtype {labels.dtype}")
    if num_classes is not None:
        special = (labels == ignore_index) | (labels == PADDING_INDEX)
        bad = ~special & ((labels < 0) | (labels >= num_classes))
        if bad.any():
            values = torch.unique(labels[bad])[:5].tolist()
            raise ValueError(
                f"{name} contains values {values} outside [0, {num_classes}) other than "
                f"ignore_index={ignore_index} and padding {PADDING_INDEX}"
            )
    return labels.long()


def check_logits(logits: Any, name: str = "logits") -> Tensor:
    """``logits`` must be a finite floating tensor ``(B, K, h, w)`` with ``K >= 2``; returns
    float32. Every detector and baseline refuses NaN or infinite logits the same way."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B, K, h, w); got {type(logits).__name__}")
    if logits.dim() != 4:
        raise ValueError(f"{name} must have shape (B, K, h, w); got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor; got dtype {logits.dtype}")
    if logits.shape[1] < 2:
        raise ValueError(f"{name} must have at least 2 classes (dim 1); got {tuple(logits.shape)}")
    check_has_data(logits, name)
    logits = logits.float()
    if not torch.isfinite(logits).all():
        bad = (~torch.isfinite(logits)).sum().item()
        raise ValueError(
            f"{name} contains {bad} NaN or infinite values (in float32); the segmenter's "
            "output is not usable for these inputs"
        )
    return logits


def check_has_data(tensor: Tensor, name: str) -> None:
    """``ValueError`` for a tensor on the ``meta`` device, which has a shape but no values."""
    if tensor.device.type == "meta":
        raise ValueError(
            f"{name} is on the 'meta' device, which holds shapes but no values; move real "
            "data to the segmenter's device (e.g. images.to('cpu'))"
        )


def check_device(device: Any, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` that exists here; ``ValueError`` naming it otherwise."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"{name} must be a torch device such as 'cpu', 'cuda' or 'cuda:1'; got {device!r}"
        ) from None
    if device.type == "meta":
        raise ValueError(f"{name} 'meta' holds no data; the fit needs a real device")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name} {str(device)!r}: CUDA is not available on this machine")
    return device


def check_finite(tensor: Tensor, name: str) -> Tensor:
    """``tensor`` must contain no NaN or infinity."""
    if not torch.isfinite(tensor).all():
        bad = (~torch.isfinite(tensor)).sum().item()
        raise ValueError(f"{name} contains {bad} NaN or infinite values")
    return tensor


BATCH_KEYS: tuple[tuple[str, str], ...] = (("image", "label"), ("pixel_values", "labels"))
"""The ``(images, labels)`` keys a dict batch is read with by default, in order: ours, then
transformers' (``pixel_values`` / ``labels``)."""


def unpack_batch(batch: Any, keys: tuple[str, str] | None = None) -> tuple[Tensor, Tensor]:
    """``(images, labels)`` from a loader batch: a pair, or a dict read with ``keys``
    ``(image_key, label_key)`` (default: the first pair of :data:`BATCH_KEYS` it holds)."""
    if keys is not None and (
        not isinstance(keys, (tuple, list))
        or len(keys) != 2
        or not all(isinstance(k, str) for k in keys)
    ):
        raise TypeError(f"batch_keys must be (image_key, label_key), two strings; got {keys!r}")
    if isinstance(batch, Mapping):
        choices = [tuple(keys)] if keys is not None else BATCH_KEYS
        for image_key, label_key in choices:
            if image_key in batch and label_key in batch:
                return batch[image_key], batch[label_key]
        wanted = " or ".join(f"{a!r} and {b!r}" for a, b in choices)
        hint = "" if keys is not None else "; name others with batch_keys=(image_key, label_key)"
        raise ValueError(f"a dict batch needs keys {wanted}; got keys {sorted(batch)}{hint}")
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(
        "loader batches must be (images, labels) pairs or dicts with 'image' and 'label'; "
        f"got {type(batch).__name__}"
    )


def check_scales(scales: Any) -> tuple[float, ...]:
    """Test-time ``scales``: 1 to :data:`MAX_SCALES` numbers in [0.05, 4]."""
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence):
        raise TypeError(f"scales must be a sequence of numbers like (1.0, 0.5); got {scales!r}")
    if not 1 <= len(scales) <= MAX_SCALES:
        raise ValueError(f"scales must hold 1 to {MAX_SCALES} scales; got {len(scales)}")
    return tuple(check_field("score", "scales", s, SCALE) for s in scales)


def check_size(size: Any) -> tuple[int, int]:
    """An output ``size``: two integers ``(H, W)`` in [1, 32768]."""
    if not isinstance(size, Sequence) or len(size) != 2:
        raise ValueError(f"size must be (H, W); got {size!r}")
    return tuple(
        check_field("score_logits", "size", int(s) if isinstance(s, Tensor) else s, SIDE)
        for s in size
    )
