"""Detector-file headers in tests: the grouped settings of today's format and the one flat
object of the formats before it (2 to 4)."""

from __future__ import annotations

from typing import Any


def group_of(header: dict[str, Any], field: str) -> dict[str, Any]:
    """The settings group of ``header`` that holds ``field`` (``"flow"`` for a name no
    group has, so an unknown setting lands somewhere)."""
    for name in ("fitted", "scoring", "flow"):
        if isinstance(header.get(name), dict) and field in header[name]:
            return header[name]
    return header["flow"]


def edited(header: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``header`` with each setting of ``changes`` set, or removed for ``...``."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in header.items()}
    for field, value in changes.items():
        group = group_of(out, field)
        if value is ...:
            group.pop(field, None)
        else:
            group[field] = value
    return out


def flat(header: dict[str, Any]) -> dict[str, Any]:
    """The header as a detector file before format 5 held it: one object of every setting
    (the fitted feature layer for ``feature_layer``) and its ``calibration``."""
    out = {**header["flow"], **header["scoring"], **header["fitted"]}
    if "calibration" in header:
        out["calibration"] = header["calibration"]
    return out
