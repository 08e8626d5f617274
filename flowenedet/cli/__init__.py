"""The ``flowenedet`` command: ``fit``, ``calibrate``, ``score``, ``evaluate``, ``demo``, ``bench``.

``fit``, ``score`` and ``evaluate`` take the segmenter as ``--model package.module:factory``
(plus optional ``--weights``), ``--model zoo`` or ``--timm NAME``; ``demo`` and ``bench``
run the embedded benchmark on the shipped reference segmenter; see ``docs/cli.md``.
Expected failures (a missing file, an import path that does not resolve, a detector that
does not match the segmenter, a missing extra) print ``flowenedet: error: <message>`` and
return a non-zero status instead of a traceback: 2 for usage, file and import errors, 1 for
a mismatch or bad data.
"""

from __future__ import annotations

import logging
import os
import sys

from .. import io, progress
from .dataset import build_dataset
from .errors import CLIError, cli_wording
from .parser import build_parser
from .segmenter import load_segmenter

__all__ = ["CLIError", "build_dataset", "build_parser", "load_segmenter", "main"]

logger = logging.getLogger(__name__)


def _configure_logging(verbose: bool) -> None:
    """INFO with ``-v``, else WARNING; under torchrun (``RANK`` set by the launcher, before
    any process group exists) ranks other than 0 log warnings and errors only, tagged with
    their rank, so a message is printed once, not once per process."""
    rank = int(os.environ.get("RANK", "0") or 0)
    level = logging.INFO if verbose and rank == 0 else logging.WARNING
    tag = f"[rank {rank}] " if rank else ""
    logging.basicConfig(level=level, format=f"%(levelname)s {tag}%(name)s: %(message)s")
    logging.getLogger("flowenedet").setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (``--help`` raises ``SystemExit(0)``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        if exit_.code in (0, None):
            raise
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    _configure_logging(args.verbose)
    progress.summaries(True)  # off a terminal: one line per stage instead of a bar
    try:
        return args.handler(args)
    except CLIError as error:
        message, code = str(error), error.code
    except (OSError, io.FormatError) as error:  # files: missing, unwritable, damaged
        message, code = str(error), 2
    except (ValueError, FloatingPointError) as error:  # bad data, a mismatch, a diverged fit
        message, code = cli_wording(str(error)), 1
    except KeyboardInterrupt:
        message, code = "interrupted", 130
    finally:
        progress.summaries(False)
    logger.debug("details", exc_info=True)
    print(f"flowenedet: error: {message}", file=sys.stderr)
    return code
