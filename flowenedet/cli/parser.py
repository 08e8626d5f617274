"""The ``flowenedet`` argument parser, built from what each command declares (its
module's ``COMMAND``: handler, option tables, example)."""

from __future__ import annotations

import argparse

from .. import __version__
from . import calibrate, evaluate, export, fit, score
from .bench import BENCH_COMMAND, DEMO_COMMAND
from .options import Command, non_negative_int, positive_int

__all__ = ["COMMANDS", "build_parser", "non_negative_int", "positive_int"]

COMMANDS: dict[str, Command] = {
    "fit": fit.COMMAND,
    "score": score.COMMAND,
    "calibrate": calibrate.COMMAND,
    "evaluate": evaluate.COMMAND,
    "export": export.COMMAND,
    "demo": DEMO_COMMAND,
    "bench": BENCH_COMMAND,
}
"""Every subcommand, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The ``flowenedet`` argument parser with its subcommands (see :data:`COMMANDS`)."""
    parser = argparse.ArgumentParser(
        prog="flowenedet", description="Misclassification and OOD maps for frozen segmenters."
    )
    parser.add_argument("--version", action="version", version=f"flowenedet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name, command_spec in COMMANDS.items():
        handler, groups, defaults = command_spec.handler, command_spec.groups, command_spec.defaults
        summary = handler.__doc__.splitlines()[0]
        command = sub.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=command_spec.example,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.set_defaults(handler=handler, **defaults)
        for title, options in groups:
            group = command.add_argument_group(title)
            for flag, kwargs in options:
                group.add_argument(flag, **kwargs)
        command.add_argument("-v", "--verbose", action="store_true", help="log INFO messages")
        command.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="progress bars (default: on a terminal; elsewhere one line per stage); "
            "--no-progress: neither",
        )
    return parser
