"""Pictures of a benchmark split: scene panels and ROC / precision-recall curves.

Uses matplotlib (installed with nflows) with the non-interactive Agg backend; files are
written atomically.
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

__all__ = ["label_colours", "save_curves", "save_panels"]

DPI = 90
CURVE_POINTS = 4000


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


def save_panels(split: SplitData, path: Path, *, detector: str = "FED-C", count: int = 4) -> Path:
    """A row per scene: image, ground truth, prediction, IDM map, OOD map."""
    plt = _figure()
    num_classes = split.logits.shape[1]
    has_ood = (split.labels == OOD_INDEX).flatten(1).any(1)
    order = torch.cat([has_ood.nonzero().flatten(), (~has_ood).nonzero().flatten()])[:count]
    columns = ("image", "ground truth", "prediction", f"{detector} IDM", f"{detector} OOD")
    maps = [split.scores[f"{detector} {kind}"] for kind in ("idm", "ood")]
    ranges = [_display_range(scores) for scores in maps]
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
                low, high = ranges[col - 3]
                ax.imshow(panel, cmap="inferno", vmin=low, vmax=high)
            else:
                ax.imshow(panel)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title)
    fig.suptitle(
        f"{split.name}: OOD in magenta, void in black; maps: bright = suspicious "
        "(colour range: 1st to 99th percentile of the map over the whole split)"
    )
    fig.tight_layout()
    return _save(fig, plt, path)


def _display_range(scores: torch.Tensor) -> tuple[float, float]:
    """The 1st and 99th percentile of a split's scores ``(N, H, W)``: one colour scale for
    every scene, spread over the values the map actually takes."""
    sample = scores.flatten()[:: max(1, scores.numel() // 1_000_000)].float()
    low, high = torch.quantile(sample, torch.tensor([0.01, 0.99])).tolist()
    return low, max(high, low + 1e-6)


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
    for name, scores in split.scores.items():
        evaluator = (evaluators or {}).get(name)
        if evaluator is None:
            evaluator = PixelEvaluator(num_classes)
            evaluator.update(scores, split.labels, split.pred)
        curve = _thin(evaluator.curve(task))
        style = "-" if name.startswith("FED") else "--"
        roc.plot(curve["fpr"], curve["tpr"], style, label=name)
        pr.plot(curve["recall"], curve["precision"], style, label=name)
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


def _save(fig, plt, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
    plt.close(fig)
    return path
