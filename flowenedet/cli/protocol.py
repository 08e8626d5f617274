"""``flowenedet evaluate --protocol NAME``: one leaderboard's columns for FlowEneDet and
every baseline (:mod:`flowenedet.evaluation.protocols`)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..evaluation.protocols import PROTOCOLS, ProtocolEvaluator, protocol_table
from .errors import CLIError

__all__ = ["check_protocol_args", "run_protocol"]

Batches = Callable[..., Iterator[tuple[dict[str, Any], Any, Any]]]


def check_protocol_args(args: argparse.Namespace) -> None:
    """Refuse, before any work, options that do not apply to ``--protocol``."""
    if not args.protocol:
        return
    protocol = PROTOCOLS[args.protocol]
    if args.thresholds_from:
        raise CLIError(
            "--thresholds-from calibrates the default table's open-mIoU; --protocol "
            f"{protocol.name} has no open-mIoU column"
        )
    if args.histogram_bins and protocol.pixel == "smiyc":
        raise CLIError(
            f"--histogram-bins does not apply to --protocol {protocol.name}: its pixel curve "
            "is binned per image, as the SegmentMeIfYouCan benchmark bins it"
        )


def _bounded(name: str, k: int) -> tuple[float, float] | None:
    """The score range of rows with bounded scores (as the default table's histograms)."""
    if name.startswith("FED ") or name == "MSP":
        return (0.0, 1.0)
    return (0.0, math.log(k)) if name == "Entropy" else None


def _evaluators(args: argparse.Namespace, names: list[str], k: int) -> dict[str, Any]:
    out = {}
    for name in names:
        bounded = _bounded(name, k) if args.histogram_bins else None
        bins = args.histogram_bins if bounded else None
        out[name] = ProtocolEvaluator(
            args.protocol, k, histogram_bins=bins, score_range=bounded or (0.0, 1.0)
        )
    return out


def run_protocol(
    args: argparse.Namespace, batches: Batches, k: int
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Evaluate the rows of ``--protocol`` (the FED map made for its task and every
    baseline) over ``batches()``, a second pass for component metrics, and print the table.
    Returns the JSON report's head, its extra fields and the rows."""
    protocol = PROTOCOLS[args.protocol]
    evaluators: dict[str, ProtocolEvaluator] | None = None
    torch.manual_seed(args.seed)  # MC dropout: the same masks in both passes
    for scores, labels, pred in batches():
        if evaluators is None:
            rows = [f"FED {protocol.fed_map}", *(n for n in scores if not n.startswith("FED "))]
            evaluators = _evaluators(args, rows, k)
        for name, ev in evaluators.items():
            ev.update(scores[name].float().cpu(), labels, pred)
    if evaluators is None:
        raise CLIError("the dataset has no images")
    if protocol.components is not None:
        for name, ev in evaluators.items():
            try:
                ev.threshold()
            except ValueError as error:
                raise CLIError(f"{protocol.name}: {name}: {error}") from None
        torch.manual_seed(args.seed)
        for scores, labels, _ in batches(desc="components"):
            for name, ev in evaluators.items():
                ev.update_components(scores[name].float().cpu(), labels)
    rows = {name: ev.compute() for name, ev in evaluators.items()}
    print(f"protocol {protocol.name}: {protocol.reproduces}\n")
    print(protocol_table(rows, protocol))
    fields: dict[str, Any] = {}
    if protocol.task == "idm":
        try:
            miou = next(iter(evaluators.values())).pixels.miou()
        except ValueError:  # no class-labelled pixel
            miou = None
        print(f"\nsegmenter mIoU: {'-' if miou is None else f'{100 * miou:.2f}'} ({k} classes)")
        fields["miou"] = miou
    if protocol.components is not None:
        print("\nF1-optimal pixel threshold (score > t makes the predicted components):")
        for name, row in rows.items():
            print(f"  {name}: {format(row['threshold'], '.6g')}")
    return {"protocol": protocol.name, "reproduces": protocol.reproduces}, fields, rows
