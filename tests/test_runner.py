"""The embedded benchmark's per-split evaluation (flowenedet.evaluation.runner)."""

from __future__ import annotations

import torch

from flowenedet.evaluation.components import ComponentEvaluator
from flowenedet.evaluation.metrics import PixelEvaluator
from flowenedet.evaluation.runner import COMPONENT_SIZES, evaluate_split
from flowenedet.evaluation.splits import SplitData
from flowenedet.labels import OOD_INDEX


def test_ood_rows_get_component_metrics_at_their_f1_optimal_threshold():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (3, 64, 64), generator=g)
    labels[:, 10:30, 20:44] = OOD_INDEX  # 480 px objects
    labels[:, 50:53, 5:8] = OOD_INDEX  # 9 px: void under the obstacle track's 10 px
    pred = torch.where(torch.rand(labels.shape, generator=g) < 0.1, (labels + 1) % 3, labels)
    pred = torch.where(labels == OOD_INDEX, torch.zeros_like(pred), pred)
    noise = torch.rand(labels.shape, generator=g)
    scores = {
        "MSP": noise + 0.8 * (labels == OOD_INDEX),
        "FED-C ood": noise + 0.5 * (labels == OOD_INDEX),
        "FED-C idm": noise,
    }
    empty = torch.empty(0)  # images, logits and features: not read once scored
    split = SplitData("test", empty, labels, empty, empty, scores=scores, pred=pred)
    rows, _ = evaluate_split(split, 3)
    assert "components" not in rows["FED-C idm"]  # not an OOD map
    for name in ("MSP", "FED-C ood"):
        evaluator = PixelEvaluator(3)
        evaluator.update(split.scores[name], labels, pred)
        expected = ComponentEvaluator(evaluator.threshold("ood"), COMPONENT_SIZES)
        expected.update(split.scores[name], labels)
        assert rows[name]["components"] == expected.compute()
        assert rows[name]["components"]["components"] == 3  # one object per scene kept
