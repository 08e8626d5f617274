"""Reject thresholds calibrated on held-out labelled data and stored with the detector.

One threshold per map for the rule ``score > t`` (rejected), chosen by the threshold
search of :mod:`flowenedet.thresholds` (the one the metrics use) on the task whose
positives the map is meant to flag, with the benchmark's conventions:

* ``idm`` -> task ``"idm"``: misclassified class-labelled pixels;
* ``ood`` -> task ``"ood"``: OOD pixels (label ``OOD_INDEX``) against in-distribution ones;
* ``concurrent`` -> task ``"cdd"``: misclassified or OOD pixels.

The data must not be the fit data: the flow has seen those pixels, so its maps are
over-confident there and the thresholds would be too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .checks import check_labels
from .config import Spec, check_field
from .labels import IGNORE_INDEX, PADDING_INDEX
from .thresholds import Target, TaskHistogram, check_target

__all__ = ["DEFAULT_BINS", "MAP_TASKS", "Calibration", "calibrate_maps", "check_maps"]

MAP_TASKS = {"idm": "idm", "ood": "ood", "concurrent": "cdd"}
"""The metric task whose positives each map flags."""
POSITIVES = {
    "idm": ("misclassified class-labelled pixels", "correctly classified ones"),
    "ood": ("OOD pixels (label 254)", "in-distribution pixels (classes and 253)"),
    "concurrent": ("misclassified or OOD pixels", "correctly classified ones"),
}
"""Each map's positives and negatives, as its threshold's error messages name them."""
DEFAULT_BINS = 100_000
"""Histogram bins over [0, 1]: memory flat in the data, thresholds exact to 1e-5."""
THRESHOLD = Spec(float, 0.0, 1.0)
BINS = Spec(int, 10, 10_000_000)


def check_maps(maps: Any) -> tuple[str, ...]:
    """``maps`` as a tuple of distinct names of :data:`MAP_TASKS`, at least one."""
    if isinstance(maps, str):
        maps = (maps,)
    if not isinstance(maps, Sequence) or not maps:
        raise ValueError(f"maps must name one or more of {list(MAP_TASKS)}; got {maps!r}")
    unknown = [m for m in maps if m not in MAP_TASKS]
    if unknown or len(set(maps)) != len(maps):
        raise ValueError(f"maps must be distinct names of {list(MAP_TASKS)}; got {list(maps)}")
    return tuple(maps)


@dataclass(frozen=True)
class Calibration:
    """Stored reject thresholds.

    Attributes:
        target: what each threshold achieved on the calibration data (see
            :data:`flowenedet.thresholds.Target`).
        thresholds: ``{map: t}``, a pixel of that map is rejected when ``score > t``.
    """

    target: Target
    thresholds: Mapping[str, float]

    def to_json(self) -> dict[str, Any]:
        target = self.target if isinstance(self.target, str) else list(self.target)
        return {"target": target, "thresholds": dict(self.thresholds)}

    @classmethod
    def from_json(cls, value: Any, source: str) -> Calibration:
        """Validate a stored calibration; ``ValueError`` naming ``source`` otherwise."""
        if not isinstance(value, Mapping) or set(value) != {"target", "thresholds"}:
            raise ValueError(f"{source}: calibration must hold 'target' and 'thresholds'")
        try:
            target = check_target(value["target"])
            found = value["thresholds"]
            if not isinstance(found, Mapping):
                raise ValueError("calibration thresholds must be an object")
            maps = check_maps(list(found))
            thresholds = {m: check_field("calibration", m, found[m], THRESHOLD) for m in maps}
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {error}") from None
        return cls(target, thresholds)

    def describe(self) -> str:
        """``"f1: idm > 0.41, ood > 0.73"``: the target and each map's rule."""
        target = self.target
        if not isinstance(target, str):
            target = f"{target[0]}={target[1]:g}"
        return f"{target}: " + ", ".join(f"{m} > {t:.4g}" for m, t in self.thresholds.items())


def calibrate_maps(
    batches: Iterable[tuple[Any, Tensor]],
    num_classes: int,
    *,
    target: Any = "f1",
    maps: Any = ("idm", "ood", "concurrent"),
    ignore_index: int = IGNORE_INDEX,
    bins: int = DEFAULT_BINS,
) -> Calibration:
    """One threshold per map from ``(scores, labels)`` batches: :class:`~flowenedet.Scores`
    and labels ``(B, H, W)`` at the maps' size (``0..K-1``, ``OOD_INDEX``,
    ``UNLABELLED_ID``, ``ignore_index``, padding). Memory is ``bins`` counts per map and
    class, whatever the amount of data.

    A threshold that would flag every pixel is stored as 0 (the maps are in [0, 1]).
    Raises ``ValueError`` when a map's task has no positives or no negatives in the data.
    """
    target, maps = check_target(target), check_maps(maps)
    bins = check_field("calibrate", "bins", bins, BINS)
    histograms = {m: TaskHistogram(num_classes, (0.0, 1.0), bins, ignore_index) for m in maps}
    seen = 0
    for scores, labels in batches:
        labels = check_labels(labels, scores.idm.shape[-2:], len(scores.idm), None, ignore_index)
        labels = labels.masked_fill(labels == PADDING_INDEX, ignore_index).cpu()
        pred = scores.pred.cpu()
        for m, histogram in histograms.items():
            histogram.update(getattr(scores, m).float().cpu(), labels, pred)
        seen += 1
    if not seen:
        raise ValueError("the calibration loader yielded no batches")
    counts = {m: histogram.counts(MAP_TASKS[m]) for m, histogram in histograms.items()}
    lacking = [m for m, (pos, neg) in counts.items() if not pos or not neg]
    if lacking:
        m, (pos, neg) = lacking[0], counts[lacking[0]]
        # without OOD pixels the concurrent threshold would be one for misclassification
        no_ood = "ood" in lacking and counts["ood"][0] == 0
        usable = [n for n in maps if n not in lacking and not (no_ood and n == "concurrent")]
        advice = (
            f"calibrate only {tuple(usable)} on these data (maps={tuple(usable)}), and the "
            "others on data that hold both (for ood and concurrent: OOD pixels, as an "
            "anomaly validation set has)"
            if usable
            else "use held-out data that hold both"
        )
        raise ValueError(
            f"cannot calibrate the {m!r} map: its threshold separates {POSITIVES[m][0]} "
            f"from {POSITIVES[m][1]}, and these data hold {pos} of the first and {neg} of "
            f"the second; {advice}"
        )
    thresholds = {}
    for m, histogram in histograms.items():
        t = histogram.threshold(MAP_TASKS[m], target)
        thresholds[m] = min(1.0, max(0.0, t)) if math.isfinite(t) else 0.0
    return Calibration(target, thresholds)
