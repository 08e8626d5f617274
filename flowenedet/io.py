"""Safe, atomic storage of detectors and checkpoints as safetensors files (never pickle).

A file holds plain tensors and a string header with the format name, its version, a
JSON document of settings and a SHA-256 checksum of the tensor bytes, so truncated,
corrupted or foreign files are refused with a clear error instead of loading garbage.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

__all__ = ["FormatError", "atomic_write", "load_file", "save_file_atomic", "tensor_checksum"]


class FormatError(ValueError):
    """A file is not a valid flowenedet file of the expected kind and version."""


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then move the result to ``path`` in one atomic rename.

    The temporary file lives in the destination folder; if ``write`` fails, it is removed
    and any existing file at ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def tensor_checksum(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``tensors`` in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_file_atomic(
    path: str | os.PathLike[str],
    tensors: Mapping[str, Tensor],
    *,
    kind: str,
    version: int,
    config: Mapping[str, Any],
) -> Path:
    """Write ``tensors`` and a header (kind, version, JSON ``config``, checksum) atomically."""
    plain = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    metadata = {
        "format": kind,
        "format_version": str(version),
        "config": json.dumps(dict(config), sort_keys=True),
        "sha256": tensor_checksum(plain),
    }
    return atomic_write(path, lambda tmp: save_file(plain, str(tmp), metadata=metadata))


def load_file(
    path: str | os.PathLike[str], *, kind: str, version: int
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read and validate a file written by :func:`save_file_atomic`.

    Returns ``(tensors, config)``. Raises ``FileNotFoundError`` for a missing file and
    :class:`FormatError` for a file that is not safetensors, is truncated or corrupted,
    is of another kind, or has an unknown format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise FormatError(
            f"{path} is not a readable safetensors file (truncated, corrupted or another "
            f"format): {error}"
        ) from error
    if metadata.get("format") != kind:
        raise FormatError(
            f"{path} is not a {kind} file (its header says format={metadata.get('format')!r})"
        )
    found = metadata.get("format_version")
    if found != str(version):
        raise FormatError(
            f"{path} has format version {found!r}; this flowenedet reads version {version}. "
            "Refit the detector or use a matching flowenedet release."
        )
    if metadata.get("sha256") != tensor_checksum(tensors):
        raise FormatError(f"{path} is corrupted: its tensors do not match the stored checksum")
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as error:
        raise FormatError(f"{path} has no valid config in its header") from error
    return tensors, config
