"""The embedded benchmark's worlds: scenes generated deterministically from real pictures
that ship inside PyPI packages, with known classes, void, OOD objects and shifts.

- :mod:`~flowenedet.evaluation.worlds.digits`: real MNIST digits on real photos (96 x 96);
- :mod:`~flowenedet.evaluation.worlds.street`: driving-scene structure (256 x 512);
- :mod:`~flowenedet.evaluation.worlds.aerial`: top-down land cover (256 x 256), with shifts
  of its own (:mod:`~flowenedet.evaluation.worlds.aerial_shift`);
- :mod:`~flowenedet.evaluation.worlds.scenes`, ``sources``, ``shift``: what they share.

Each world module offers ``make_scenes(split, num_scenes, *, seed, size, corruption,
severity)`` returning a :class:`~flowenedet.evaluation.worlds.scenes.SceneSet`, and
``NUM_CLASSES`` / ``CLASS_NAMES``. Needs the ``bench`` extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["WORLDS", "world_module"]

WORLDS = ("digits", "street", "aerial")
"""The embedded worlds, by name."""


def world_module(world: str) -> ModuleType:
    """The scene module of ``world`` (one of :data:`WORLDS`)."""
    if world not in WORLDS:
        raise ValueError(f"world must be one of {WORLDS}, got {world!r}")
    return importlib.import_module(f"{__name__}.{world}")
