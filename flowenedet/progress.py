"""Progress bars on a terminal only; elsewhere (a log file, CI) one summary line per stage.

``progress=None`` (the default everywhere) means "a bar when stderr is a terminal (or a
Jupyter notebook)";
``True`` / ``False`` force the bars on / off. Summary lines instead of hidden bars are
printed only after :func:`summaries` switched them on (the command line does), so the
library stays quiet in other programs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

__all__ = ["progress_bar", "show_bars", "summaries"]

_SUMMARIES = {"on": False}


def show_bars(progress: bool | None) -> bool:
    """Whether a bar is drawn: ``progress``, or for ``None`` whether stderr is a terminal
    or a Jupyter notebook's."""
    if progress is None:
        if type(sys.stderr).__module__.startswith("ipykernel"):  # a notebook: widget bars
            return True
        isatty = getattr(sys.stderr, "isatty", None)
        return bool(isatty and isatty())
    return bool(progress)


def summaries(on: bool = True) -> None:
    """Print one line per stage where ``progress=None`` hides a bar (the command line)."""
    _SUMMARIES["on"] = on


def progress_bar(iterable: Iterable[Any] | None = None, *, progress: bool | None = None, **kw):
    """A ``tqdm`` bar over ``iterable`` (``kw``: tqdm's ``desc``, ``total``, ``unit`` ...)
    shown as :func:`show_bars` says; hidden by ``progress=None`` with summaries on, it
    prints ``desc: N unit in T s`` to stderr when the iteration ends."""
    if show_bars(progress):
        return tqdm(iterable, **kw)
    if progress is None and _SUMMARIES["on"]:
        return _Summary(iterable, **kw)
    return tqdm(iterable, disable=True, **kw)


class _Summary(tqdm):
    """A hidden bar that counts and prints one line at the end (no line on early exit)."""

    def __init__(self, iterable: Iterable[Any] | None = None, **kw: Any) -> None:
        super().__init__(iterable, disable=True, **kw)
        self._what = kw.get("desc") or "done"
        self._unit = kw.get("unit", "it")
        self._count = kw.get("initial", 0)
        self._total = kw.get("total")
        if self._total is None and hasattr(iterable, "__len__"):
            self._total = len(iterable)
        self._started = time.perf_counter()
        self._postfix_text = ""
        self._reported = False

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            self._count += 1
            yield item
        self.close()

    def update(self, n: float | None = 1) -> None:
        self._count += n or 0

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kw: Any) -> None:
        items = {**(ordered_dict or {}), **kw}
        self._postfix_text = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        if not self._reported:
            self._reported = True
            seconds = time.perf_counter() - self._started
            total = f"/{self._total}" if self._total is not None else ""
            extra = f" ({self._postfix_text})" if self._postfix_text else ""
            print(
                f"{self._what}: {self._count}{total} {self._unit} in {seconds:.1f} s{extra}",
                file=sys.stderr,
                flush=True,
            )
        super().close()

    def __del__(self) -> None:  # a stage left early reports nothing
        self._reported = True
