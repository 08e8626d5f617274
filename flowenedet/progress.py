"""Progress bars on a terminal only; elsewhere (a log file, CI) one summary line per stage.

``progress=None`` (the default everywhere) means "a bar when stderr is a terminal (or a
Jupyter notebook)";
``True`` / ``False`` force the bars on / off. Summary lines instead of hidden bars are
printed only after :func:`summaries` switched them on (the command line does), so the
library stays quiet in other programs.

Where ``progress=None`` hides a bar, long stages are logged instead, through ``logging``
(logger ``flowenedet.progress``, level INFO, so only where INFO is shown): a stage still
running after :data:`FIRST_REPORT_S` seconds logs its count, elapsed time and expected
remaining time, then again every :data:`REPORT_EVERY_S` seconds, and one line when it
ends. A stage shorter than :data:`FIRST_REPORT_S` logs nothing; a 10-minute fit logs
about 20 lines.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

__all__ = ["StageTimer", "progress_bar", "show_bars", "stage", "summaries"]

_SUMMARIES = {"on": False}
FIRST_REPORT_S = 10.0
"""Seconds a stage runs, its bar hidden, before its progress is logged (INFO)."""
REPORT_EVERY_S = 30.0
"""Seconds between two logged progress lines of one stage."""

logger = logging.getLogger(__name__)


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
    shown as :func:`show_bars` says; hidden by ``progress=None``, it logs a long stage's
    progress at INFO (see the module docstring) and, with summaries on, prints
    ``desc: N unit in T s`` to stderr when the iteration ends."""
    if show_bars(progress):
        return tqdm(iterable, **kw)
    if progress is None:
        return _Summary(iterable, summary=_SUMMARIES["on"], **kw)
    return tqdm(iterable, disable=True, **kw)


class _Summary(tqdm):
    """A hidden bar that counts, logs long stages with an ETA (see the module docstring)
    and, with ``summary``, prints one line at the end (no line on early exit)."""

    def __init__(
        self, iterable: Iterable[Any] | None = None, *, summary: bool = False, **kw: Any
    ) -> None:
        super().__init__(iterable, disable=True, **kw)
        self._summary = summary
        self._next_report = FIRST_REPORT_S
        self._logged = False
        self._what = kw.get("desc") or "done"
        self._unit = kw.get("unit", "it")
        self._count = self._initial = kw.get("initial", 0)
        self._total = kw.get("total")
        if self._total is None and hasattr(iterable, "__len__"):
            self._total = len(iterable)
        self._started = time.perf_counter()
        self._postfix_text = ""
        self._reported = False

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            self._maybe_log(self._count)  # items done before this one
            self._count += 1
            yield item
        self.close()

    def update(self, n: float | None = 1) -> None:
        self._count += n or 0
        self._maybe_log(self._count)

    def _maybe_log(self, done: int) -> None:
        """An INFO line with the expected remaining time, when one is due."""
        seconds = time.perf_counter() - self._started
        if seconds < self._next_report:
            return
        self._next_report = seconds + REPORT_EVERY_S
        self._logged = True
        total = f"/{self._total}" if self._total is not None else ""
        eta = ""
        if self._total is not None and done > self._initial:
            rate = (done - self._initial) / seconds
            eta = f", about {_duration((self._total - done) / rate)} left"
        logger.info(
            "%s: %d%s %s in %s%s", self._what, done, total, self._unit, _duration(seconds), eta
        )

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kw: Any) -> None:
        items = {**(ordered_dict or {}), **kw}
        self._postfix_text = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        if not self._reported:
            self._reported = True
            seconds = time.perf_counter() - self._started
            total = f"/{self._total}" if self._total is not None else ""
            extra = f" ({self._postfix_text})" if self._postfix_text else ""
            line = f"{self._what}: {self._count}{total} {self._unit} in {seconds:.1f} s{extra}"
            if self._summary:
                print(line, file=sys.stderr, flush=True)
            elif self._logged:  # a stage whose progress was logged logs its end too
                logger.info("%s, done", line)
        super().close()

    def __del__(self) -> None:  # a stage left early reports nothing
        self._reported = True


def _duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min 5 s"`` or ``"1 h 2 min"``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


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
