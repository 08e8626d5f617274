"""Pictures of a benchmark split: scene panels and ROC / precision-recall curves.

Uses matplotlib (installed with nflows) with the non-interactive Agg backend; files are
written atomically.

Maps are shown by rank, not by value (:func:`percentile_scale`): each pixel's colour is
its score's percentile within its image, which is what a ranking metric (AUROC, AP,
FPR95) reads of a map, so the pixels a map ranks highest are the brightest however
narrow or high its range of values is. Curves give every method its own colour
(:data:`PALETTE`, 13 colours at least 35 CIELAB units apart) and each kind of method its
own line style (:func:`method_styles`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..io import atomic_write
from ..labels import IGNORE_INDEX, OOD_INDEX
from .metrics import PixelEvaluator

if TYPE_CHECKING:
    from .splits import SplitData

__all__ = [
    "PALETTE",
    "label_colours",
    "method_styles",
    "percentile_scale",
    "save_curves",
    "save_panels",
]

DPI = 90
CURVE_POINTS = 4000
PALETTE = (
    "#1f77b4",  # blue
    "#ff4500",  # orange red
    "#8fbc00",  # yellow green
    "#c71585",  # violet red
    "#00008b",  # navy
    "#003d1f",  # dark green
    "#00e5a0",  # spring green
    "#8c564b",  # brown
    "#f5c400",  # amber
    "#17becf",  # cyan
    "#ff99cc",  # pink
    "#9467bd",  # purple
    "#000000",  # black
)
"""Line colours of the curves, in the order methods are drawn: chosen greedily for the
largest smallest CIELAB distance (about 37) between any two, so the 13 methods of the
demo (6 FED maps, 7 baselines) never share a colour."""
LINE_STYLES = {"FED-C": "-", "FED-U": "-.", "baseline": "--"}


def method_styles(names: list[str]) -> dict[str, dict[str, str]]:
    """``{name: {"color", "linestyle"}}``: a colour of :data:`PALETTE` per method (cycling
    only past 13 methods) and a line style per kind: FED-C solid, FED-U dash-dot,
    baselines dashed."""
    styles = {}
    for index, name in enumerate(names):
        kind = name.split(" ")[0] if name.startswith("FED-") else "baseline"
        styles[name] = {
            "color": PALETTE[index % len(PALETTE)],
            "linestyle": LINE_STYLES.get(kind, "--"),
        }
    return styles


def percentile_scale(scores: np.ndarray) -> np.ndarray:
    """Each score of a map ``(H, W)`` as its percentile within the map, in [0, 1]: the
    fraction of the other pixels scored strictly lower, ties at their mean rank; a
    constant map is 0 everywhere. Monotone transforms of the map do not change it."""
    values = np.asarray(scores, dtype=np.float64)
    if values.size < 2:
        return np.zeros_like(values)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based rank of each distinct value's first pixel
    ranks = (first + (counts - 1) / 2.0)[inverse.reshape(-1)].reshape(values.shape)
    scaled = ranks / (values.size - 1)
    return scaled - scaled.min()  # a constant map: all tied, 0


def label_colours(labels: torch.Tensor, num_classes: int) -> np.ndarray:
    """RGB ``(H, W, 3)`` in [0, 1] for a label map: classes from a qualitative colormap,
    OOD magenta, void black."""
    import matplotlib

    palette = matplotlib.colormaps["tab20"](np.linspace(0, 1, 20))[:, :3]
    values = labels.cpu().numpy()
    rgb = palette[np.clip(values, 0, num_classes - 1) % 20]
    rgb[values == OOD_INDEX] = (1.0, 0.0, 1.0)
    rgb[values == IGNORE_INDEX] = (0.0, 0.0, 0.0)
    return rgb


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_panels(
    split: SplitData,
    path: Path,
    *,
    detector: str = "FED-C",
    count: int = 4,
    thresholds: dict[str, float] | None = None,
    dpi: int = DPI,
) -> Path:
    """A row per scene: image, ground truth, prediction, IDM map, OOD map; the maps by
    :func:`percentile_scale`, each with a cyan outline around the pixels its calibrated
    threshold flags (``thresholds``: ``{"idm": t, "ood": t}``, e.g. the detector's
    ``calibration.thresholds``)."""
    plt = _figure()
    num_classes = split.logits.shape[1]
    has_ood = (split.labels == OOD_INDEX).flatten(1).any(1)
    order = torch.cat([has_ood.nonzero().flatten(), (~has_ood).nonzero().flatten()])[:count]
    columns = ("image", "ground truth", "prediction", f"{detector} IDM", f"{detector} OOD")
    kinds = ("idm", "ood")
    maps = [split.scores[f"{detector} {kind}"] for kind in kinds]
    thresholds = thresholds or {}
    height, width = split.labels.shape[-2:]
    # every panel at least at its pixel size (DPI pixels per inch), so that an obstacle of a
    # few pixels stays visible in a 256 x 512 scene
    panel_w, panel_h = max(12 / 5, width / DPI), max(2.5, height / DPI + 0.4)
    fig, axes = plt.subplots(
        len(order), 5, figsize=(5 * panel_w, panel_h * len(order)), squeeze=False
    )
    for row, index in enumerate(order.tolist()):
        panels = (
            split.images[index].permute(1, 2, 0).numpy(),
            label_colours(split.labels[index], num_classes),
            label_colours(split.pred[index], num_classes),
            *(scores[index].numpy() for scores in maps),
        )
        for col, (title, panel) in enumerate(zip(columns, panels, strict=True)):
            ax = axes[row, col]
            if col >= 3:
                ax.imshow(percentile_scale(panel), cmap="inferno", vmin=0.0, vmax=1.0)
                threshold = thresholds.get(kinds[col - 3])
                if threshold is not None and (panel > threshold).any():
                    flagged = (panel > threshold).astype(np.float32)
                    ax.contour(flagged, levels=[0.5], colors="cyan", linewidths=0.9)
            else:
                ax.imshow(panel)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title)
    outline = "; cyan outline: above the calibrated threshold" if thresholds else ""
    fig.suptitle(
        f"{split.name}: OOD in magenta, void in black\nmaps: colour = each pixel's "
        f"percentile within its image (black: lowest, yellow: highest){outline}",
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, plt, path, dpi)


def save_curves(
    split: SplitData,
    num_classes: int,
    path: Path,
    task: str = "ood",
    evaluators: dict[str, PixelEvaluator] | None = None,
) -> Path:
    """ROC and precision-recall curves of every method for ``task``; ``evaluators``, filled
    ones by method name (e.g. from the runner's ``evaluate_split``), save scoring again."""
    plt = _figure()
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(12, 5))
    styles = method_styles(list(split.scores))
    for name, scores in split.scores.items():
        evaluator = (evaluators or {}).get(name)
        if evaluator is None:
            evaluator = PixelEvaluator(num_classes)
            evaluator.update(scores, split.labels, split.pred)
        curve = _thin(evaluator.curve(task))
        roc.plot(curve["fpr"], curve["tpr"], label=name, **styles[name])
        pr.plot(curve["recall"], curve["precision"], label=name, **styles[name])
    roc.set(xlabel="false-positive rate", ylabel="true-positive rate", title=f"ROC ({task})")
    pr.set(xlabel="recall", ylabel="precision", title=f"precision-recall ({task})")
    roc.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{split.name} ({len(split.labels)} scenes, every pixel pooled)")
    fig.tight_layout()
    return _save(fig, plt, path)


def _thin(curve: dict[str, np.ndarray], points: int = CURVE_POINTS) -> dict[str, np.ndarray]:
    """At most about ``points`` evenly spaced thresholds of a curve, its ends kept (a line
    through millions of thresholds draws no differently at figure size, only slower)."""
    n = len(next(iter(curve.values())))
    if n <= points:
        return curve
    keep = np.unique(np.r_[np.linspace(0, n - 1, points).round().astype(np.int64), n - 1])
    return {key: values[keep] for key, values in curve.items()}


def _save(fig, plt, path: Path, dpi: int = DPI) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    plt.close(fig)
    return path
