"""The detector's output: per-pixel maps, and reject masks at the calibrated thresholds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["MAPS", "Scores"]

MAPS = ("idm", "ood", "concurrent")  # the score maps of :class:`Scores`


@dataclass
class Scores:
    """Per-pixel maps at input resolution, higher = more suspicious.

    Each map is the sigmoid of its scoring rule (:mod:`flowenedet.rules`, the detector's
    ``idm_rule``, ``ood_rule``, ``concurrent_rule``), then post-processed.

    Attributes:
        idm: ``(B, H, W)`` in [0, 1], the misclassification map: the rule the fit chose on
            held-out images (``"posterior"``: the flow's posterior ``p(miss | z)``), with
            plain Gaussian smoothing.
        ood: ``(B, H, W)`` in [0, 1], out-of-distribution map: by default the posterior's
            log-odds plus 3 times minus the standardised max logit (each on the scale of
            the fit data, rule ``"flow + 3 sml"``), with optional boundary suppression and
            dilated smoothing (with ``ood_keep_peaks``, the larger of the map and its
            smoothed copy, so small objects keep their peaks).
        concurrent: ``(B, H, W)`` in [0, 1], "misclassified or unknown": the ``idm`` rule
            plus free energy, smoothed like ``idm`` (boundary errors kept).
        pred: ``(B, H, W)`` int64, the segmenter's predicted classes.
        thresholds: ``{map: t}``, the detector's calibrated reject thresholds (empty for
            an uncalibrated detector); a pixel is rejected when ``score > t``.
        num_classes: ``K``; the reject label of :meth:`open_set_prediction`.
    """

    idm: Tensor
    ood: Tensor
    concurrent: Tensor
    pred: Tensor
    thresholds: Mapping[str, float] = field(default_factory=dict)
    num_classes: int | None = None

    def masks(self, maps: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Boolean reject masks ``{map: (B, H, W)}``, ``score > t`` at the stored thresholds,
        for ``maps`` (default: every calibrated map)."""
        if maps is None:
            maps = tuple(self.thresholds) or ("concurrent",)
        return {name: getattr(self, name) > self._threshold(name) for name in maps}

    def open_set_prediction(self, map: str = "concurrent") -> Tensor:
        """``pred`` ``(B, H, W)`` with the pixels ``map`` rejects set to the reject label
        ``num_classes`` (``K``): an open-set prediction over ``K + 1`` classes, as
        open-mIoU (:class:`flowenedet.evaluation.metrics.OpenSetIoU`) reads it."""
        if self.num_classes is None:
            raise ValueError("these Scores do not know the class count (num_classes)")
        rejected = getattr(self, map) > self._threshold(map)
        return self.pred.masked_fill(rejected, self.num_classes)

    def _threshold(self, name: str) -> float:
        if name not in MAPS:
            raise ValueError(f"map must be one of {list(MAPS)}; got {name!r}")
        if name not in self.thresholds:
            raise ValueError(
                f"the detector has no calibrated threshold for the {name!r} map: call "
                "det.calibrate(held_out_loader) (or flowenedet calibrate) and save it again; "
                "files written before flowenedet stored thresholds (format 3 or older) are "
                "uncalibrated"
            )
        return self.thresholds[name]
