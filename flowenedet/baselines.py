"""Deprecated spelling of :mod:`flowenedet.evaluation.baselines`: everything it exports, with a
``DeprecationWarning``. Import ``flowenedet.evaluation.baselines`` instead."""

from __future__ import annotations

import warnings

from .evaluation.baselines import *  # noqa: F403
from .evaluation.baselines import __all__  # noqa: F401

warnings.warn(
    "flowenedet.baselines is deprecated; import flowenedet.evaluation.baselines instead",
    DeprecationWarning,
    stacklevel=2,
)
