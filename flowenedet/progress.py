"""Progress bars on a terminal only; elsewhere (a log file, CI) one summary line per stage.

``progress=None`` (the default everywhere) means "a bar when stderr is a terminal (or a
Jupyter notebook)";
``True`` / ``False`` force the bars on / off. Summary lines instead of hidden bars are
printed only after :func:`summaries` switched them on (the command line does), so the
library stays quiet in other programs.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

__all__ = ["StageTimer", "progress_bar", "show_bars", "stage", "summaries"]

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


class StageTimer:
    """Wall-clock and process CPU seconds spent in named stages of long work, summed over
    every time a stage runs (``with timer("flow"): ...``). ``synchronize`` (e.g.
    ``torch.cuda.synchronize``) runs before each reading, so queued GPU work is counted
    in the stage that queued it."""

    def __init__(self, synchronize: Callable[[], None] | None = None) -> None:
        self.synchronize = synchronize
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.items: dict[str, int] = defaultdict(int)  # things counted, e.g. trained pixels

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.synchronize is not None:
            self.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            if self.synchronize is not None:
                self.synchronize()
            self.wall[name] += time.perf_counter() - wall
            self.cpu[name] += time.process_time() - cpu
            self.calls[name] += 1


def stage(timer: StageTimer | None, name: str) -> contextlib.AbstractContextManager[None]:
    """``timer(name)``, or nothing to time when ``timer`` is None."""
    return contextlib.nullcontext() if timer is None else timer(name)
