"""Deprecated spelling of :mod:`flowenedet.evaluation.metrics`: everything it exports, with a
``DeprecationWarning``. Import ``flowenedet.evaluation.metrics`` instead."""

from __future__ import annotations

import warnings

from .evaluation.metrics import *  # noqa: F403
from .evaluation.metrics import __all__  # noqa: F401

warnings.warn(
    "flowenedet.metrics is deprecated; import flowenedet.evaluation.metrics instead",
    DeprecationWarning,
    stacklevel=2,
)
