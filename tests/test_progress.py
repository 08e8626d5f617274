"""Progress bars on a terminal only; one summary line per stage in command-line logs;
the score overlay's opacity scale."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

from flowenedet import FlowEneDet, progress
from flowenedet.cli.outputs import overlay_opacity

from .toy import make_scenes


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def stderr(monkeypatch):
    """Swap stderr for a stream; ``stderr(tty)`` returns it."""

    def swap(tty: bool) -> io.StringIO:
        stream = FakeTerminal() if tty else io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        return stream

    return swap


@pytest.mark.parametrize(
    ("tty", "given", "bar"),
    [(True, None, True), (False, None, False), (True, False, False), (False, True, True)],
)
def test_bars_on_a_terminal_unless_forced(stderr, tty, given, bar):
    stream = stderr(tty)
    assert list(progress.progress_bar(range(3), desc="stage", progress=given)) == [0, 1, 2]
    assert ("stage: 100%" in stream.getvalue()) == bar
    if not bar:
        assert stream.getvalue() == ""  # no summary outside the command line either


def test_summaries_replace_hidden_bars_with_one_line(stderr):
    stream = stderr(False)
    progress.summaries(True)
    try:
        bar = progress.progress_bar(range(4), desc="fitting", unit="steps")
        for _ in bar:
            bar.set_postfix(loss="0.5")
        list(progress.progress_bar(range(2), desc="forced off", progress=False))
        for step in progress.progress_bar(range(5), desc="left early"):
            if step == 1:
                break
    finally:
        progress.summaries(False)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("fitting: 4/4 steps in ") and lines[0].endswith("s (loss=0.5)")


def test_the_library_is_quiet_off_a_terminal_by_default(segmenter, stderr):
    stream = stderr(False)
    images, labels = make_scenes(8, seed=30)
    FlowEneDet(segmenter, variant="U", num_blocks=1, hidden=8).fit(
        [(images, labels)], steps=2, pixels_per_image=64
    )
    assert stream.getvalue() == ""
    stream = stderr(True)
    FlowEneDet(segmenter, variant="U", num_blocks=1, hidden=8).fit(
        [(images, labels)], steps=2, pixels_per_image=64
    )
    assert "fitting flow" in stream.getvalue() and "class statistics" in stream.getvalue()


def test_overlay_opacity_leaves_a_mostly_normal_image_clear():
    ood = np.full((32, 32), 0.3)
    ood[4:8, 4:8] = 0.9  # 16 of 1024 pixels stand out
    blob = np.zeros_like(ood, dtype=bool)
    blob[4:8, 4:8] = True
    calibrated = overlay_opacity(ood, 0.5, 95.0)
    assert (calibrated[~blob] == 0).all()
    assert (calibrated[blob] == 1).all()  # what --masks rejects, tinted at full --alpha
    percentile = overlay_opacity(ood, None, 95.0)
    assert (percentile[~blob] == 0).all() and (percentile[blob] == 1).all()
    assert (overlay_opacity(np.full((8, 8), 0.4), None, 95.0) == 0).all()  # nothing stands out


def test_a_long_stage_off_a_terminal_logs_its_progress_with_an_eta(stderr, monkeypatch, caplog):
    """A notebook's captured stderr or a log file gets no bar: a stage that runs past
    FIRST_REPORT_S logs count, elapsed and remaining time at INFO every REPORT_EVERY_S,
    then its end; a short one (or progress=False) logs nothing, and stderr stays clean."""
    stream = stderr(False)
    clock = iter(float(t) for t in range(1000))
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(progress, "FIRST_REPORT_S", 3.0)
    monkeypatch.setattr(progress, "REPORT_EVERY_S", 4.0)
    with caplog.at_level("INFO", logger="flowenedet.progress"):
        list(progress.progress_bar(range(10), desc="fitting flow", unit="steps"))
        list(progress.progress_bar(range(2), desc="quick stage"))
        list(progress.progress_bar(range(10), desc="switched off", progress=False))
    lines = [r.getMessage() for r in caplog.records]
    # one clock tick per step: reports at 3, 7 and 11 s of the 10-step stage, then its end
    assert lines[0] == "fitting flow: 2/10 steps in 3 s, about 12 s left"
    assert lines[1] == "fitting flow: 6/10 steps in 7 s, about 5 s left"
    assert lines[-1].startswith("fitting flow: 10/10 steps in") and lines[-1].endswith("done")
    assert len(lines) == 3
    assert stream.getvalue() == ""
