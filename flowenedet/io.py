"""Safe, atomic storage of detectors and checkpoints as safetensors files (never pickle).

A file holds plain tensors and a string header with the format name, its version, a
JSON document of settings and a SHA-256 checksum of the tensor bytes *and* of those
header fields, so truncated, corrupted, edited or foreign files are refused with a clear
error instead of loading garbage or running with settings nobody chose.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

__all__ = [
    "FormatError",
    "atomic_write",
    "load_file",
    "save_file_atomic",
    "tensor_checksum",
]

logger = logging.getLogger(__name__)

STALE_SECONDS = 60.0  # a temporary file of a dead writer this old is litter


class FormatError(ValueError):
    """A file is not a valid flowenedet file of the expected kind and version."""


def _tmp_prefix(path: Path) -> str:
    """Temporary files of ``path`` are ``.NAME.HOST.PID.<random>.tmp`` beside it."""
    return f".{path.name}.{socket.gethostname()}."


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files left beside ``path`` by writers on this host that were
    killed mid-write (their process is gone and the file is older than a minute)."""
    prefix = _tmp_prefix(path)
    for tmp in path.parent.glob(f"{_glob_escape(prefix)}*.tmp"):
        pid = tmp.name[len(prefix) :].split(".", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            if time.time() - tmp.stat().st_mtime > STALE_SECONDS:
                tmp.unlink()
                logger.info("removed %s, left by an interrupted write", tmp)
        except OSError:
            pass  # another writer cleaned it, or it is not ours to remove


def _glob_escape(text: str) -> str:
    """``text`` with glob wildcards escaped, for :meth:`Path.glob`."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[Path], None], *, clean_stale: bool = False
) -> Path:
    """Call ``write(tmp_path)`` then move the result to ``path`` in one atomic rename.

    The temporary file lives in the destination folder; if ``write`` fails, it is removed
    and any existing file at ``path`` is left untouched. With ``clean_stale`` (detector
    and checkpoint files: big, rewritten in place) a successful write also removes
    temporaries that earlier, killed writes of ``path`` left behind. Any failure to write
    (a full disk, a folder where the file should be) is an ``OSError`` naming ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f"{_tmp_prefix(path)}{os.getpid()}.", suffix=".tmp", dir=path.parent
        )
        os.close(fd)
    except OSError as error:
        raise OSError(error.errno, f"cannot write {path}: {error.strerror or error}") from None
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OSError(error.errno, f"cannot write {path}: {error.strerror or error}") from None
        if isinstance(error, SafetensorError):
            raise OSError(f"cannot write {path}: {error}") from None
        raise
    if clean_stale:  # one directory listing; not for the many small maps of a folder
        _remove_stale_temporaries(path)
    return path


def tensor_checksum(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``tensors`` in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _file_checksum(tensors: Mapping[str, Tensor], header: Mapping[str, str]) -> str:
    """SHA-256 over :func:`tensor_checksum` and the header's format, version and config."""
    fields = {key: header.get(key) for key in ("format", "format_version", "config")}
    text = tensor_checksum(tensors) + json.dumps(fields, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


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
        "config": json.dumps(dict(config), sort_keys=True, allow_nan=False),
    }
    metadata["sha256"] = _file_checksum(plain, metadata)
    return atomic_write(
        path, lambda tmp: save_file(plain, str(tmp), metadata=metadata), clean_stale=True
    )


def load_file(
    path: str | os.PathLike[str],
    *,
    kind: str,
    version: int,
    legacy_versions: Collection[int] = (),
    older_versions: Collection[int] = (),
) -> tuple[dict[str, Tensor], Any, int]:
    """Read and validate a file written by :func:`save_file_atomic`.

    Returns ``(tensors, config, version)``; ``config`` is the parsed JSON, for the caller
    to validate. ``older_versions`` are older versions still read whose checksum covers
    the header like the current one's; ``legacy_versions`` are older versions whose
    checksum covers only the tensors, so their settings are not protected (the caller
    should say so).
    Raises ``FileNotFoundError`` for a missing file, ``IsADirectoryError`` for a folder
    and :class:`FormatError` for a file
    that is not safetensors, is truncated, corrupted or edited, is of another kind, or has
    an unknown format version.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the {kind} file in it")
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
    older = (*older_versions, *legacy_versions)
    readable = {str(v): v for v in (version, *older)}
    if found not in readable:
        raise FormatError(
            f"{path} has format version {found!r}; this flowenedet reads version {version}"
            + (f" (and {sorted(older)})" if older else "")
            + ". Refit the detector or use a matching flowenedet release."
        )
    legacy = readable[found] in legacy_versions
    expected = tensor_checksum(tensors) if legacy else _file_checksum(tensors, metadata)
    if metadata.get("sha256") != expected:
        raise FormatError(
            f"{path} is damaged: its tensors or settings do not match the stored checksum "
            "(a truncated copy, a flipped bit or an edited header)"
        )
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError, RecursionError) as error:
        raise FormatError(f"{path} has no valid config in its header") from error
    return tensors, config, readable[found]
