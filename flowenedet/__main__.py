"""``python -m flowenedet`` (and ``torchrun -m flowenedet``): the ``flowenedet`` command."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
