"""Expected failures of the command line, and the option checks that raise them."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any

__all__ = [
    "BENCH_MODULES",
    "CLIError",
    "cli_wording",
    "json_object",
    "missing_extra",
    "require_bench_extra",
    "require_file",
    "require_output_dir",
    "require_output_file",
]

BENCH_MODULES = ("skimage", "mlxtend", "imagecorruptions", "sklearn", "matplotlib", "pywt")
"""Import names of the ``bench`` extra."""
_FLAGS = {
    "check_segmenter=False": "--no-segmenter-check",
    "feature_layer=": "--feature-layer ",
}
"""Python arguments named in library messages, and the command line's flag for each."""


class CLIError(Exception):
    """An expected failure: shown as ``flowenedet: error: <message>``, exit status ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def cli_wording(message: str) -> str:
    """``message`` (a library error) with its Python arguments named as the flags that set
    them, e.g. ``check_segmenter=False`` as ``--no-segmenter-check``."""
    pattern = "|".join(rf"(?<![\w.]){re.escape(python)}" for python in _FLAGS)
    return re.sub(pattern, lambda found: _FLAGS[found.group(0)], message)


def missing_extra(what: str, modules: list[str]) -> CLIError:
    """The one-line error for ``what`` run without the ``bench`` extra's ``modules``."""
    return CLIError(
        f'{what} needs the bench extra: pip install "flowenedet[bench]" '
        f"(missing module {', '.join(modules)})"
    )


def require_bench_extra(what: str) -> None:
    """Fail before minutes of work, not at the first scene or figure, when a module of the
    ``bench`` extra is not installed."""
    missing = [name for name in BENCH_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise missing_extra(what, missing)


def json_object(text: str | None, option: str) -> dict[str, Any]:
    """The JSON object given to ``option`` (``{}`` when the option was not given)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise CLIError(
            f"{option} must be a JSON object; could not parse {text!r}: {error}"
        ) from None
    if not isinstance(value, dict):
        raise CLIError(f"{option} must be a JSON object like '{{\"a\": 1}}'; got {text!r}")
    return value


def require_file(path: str | None, option: str) -> None:
    """Fail early, before slow work, when the file given to ``option`` does not exist."""
    if path is not None and not Path(path).is_file():
        raise CLIError(f"{option} {path}: file not found")


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _require_writable_parent(path: Path, option: str) -> None:
    above = _first_existing(path.parent)
    if not above.is_dir():
        raise CLIError(f"{option} {path}: {above} is a file, not a folder")
    if not os.access(above, os.W_OK):
        raise CLIError(f"{option} {path}: folder {above} is not writable")


def require_output_file(path: str | None, option: str) -> None:
    """Fail before slow work when ``option``'s output file cannot be written: a folder is
    in its place, or its parent is a file or read-only."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise CLIError(f"{option} {path}: is a folder; give a file name")
    _require_writable_parent(target, option)


def require_output_dir(path: str | None, option: str) -> None:
    """Fail before slow work when ``option``'s output folder cannot be made or written."""
    if path is None:
        return
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise CLIError(f"{option} {path}: is a file; give a folder")
    if target.is_dir():
        if not os.access(target, os.W_OK):
            raise CLIError(f"{option} {path}: folder is not writable")
        return
    _require_writable_parent(target, option)
