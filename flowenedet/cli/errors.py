"""Expected failures of the command line, and the option checks that raise them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["CLIError", "json_object", "require_file"]


class CLIError(Exception):
    """An expected failure: shown as ``flowenedet: error: <message>``, exit status ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


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
