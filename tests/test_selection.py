"""The fit's choice of scoring rules measures what the maps are judged on."""

from __future__ import annotations

import pytest
import torch

from flowenedet.selection import HeldOut, choose_rules, weighted_ap

metrics = pytest.importorskip("sklearn.metrics")


def test_a_cell_counts_as_its_image_pixels():
    # 200 logit pixels, each the cell of 16 image pixels of which k are wrong: the
    # weighted AP of the cells is the AP of the image pixels, each with its cell's score
    gen = torch.Generator().manual_seed(0)
    wrong = torch.randint(0, 17, (200,), generator=gen)
    scores = (wrong / 16 + torch.rand(200, generator=gen)).round(decimals=1)  # with ties
    pixels = torch.arange(16)[None, :] < wrong[:, None]  # (200, 16)
    expected = metrics.average_precision_score(
        pixels.flatten().numpy(), scores[:, None].expand(-1, 16).flatten().numpy()
    )
    assert weighted_ap(scores, wrong / 16) == pytest.approx(expected, abs=1e-12)


def _held_out(flow_clean: float, flow_shifted: float) -> HeldOut:
    """Held-out pixels where msp tells errors apart equally in both parts and the flow's
    log-odds with strength ``flow_clean`` on the clean images, ``flow_shifted`` on the
    shifted copies (0: noise)."""
    gen = torch.Generator().manual_seed(1)
    held = HeldOut(seed=0)
    for shifted, strength in ((False, flow_clean), (True, flow_shifted)):
        for _ in range(4):  # images of 16 x 16 logit pixels
            miss = (torch.rand(1, 16, 16, generator=gen) < 0.2).float()
            noise = torch.randn(2, 1, 16, 16, generator=gen)
            log_odds = strength * 3 * miss[:, None] + noise[0:1]
            max_p = (0.9 - 0.1 * miss - 0.1 * noise[1:2].abs()).clamp(0.05, 1)[:, 0]
            inputs = torch.randn(1, 6, 16, 16, generator=gen)
            inputs[:, 4] = max_p.log()  # log max softmax; the other measures are noise
            held.add(
                log_odds[:, 0],
                inputs,
                torch.randn(1, 2, 16, 16, generator=gen),
                torch.ones(1, 16, 16, dtype=torch.bool),
                miss,
                shifted=shifted,
            )
    return held


@pytest.mark.parametrize(
    ("clean", "shifted", "flow_kept"), [(1.0, 1.0, True), (0.0, 1.0, False), (1.0, 0.0, False)]
)
def test_the_flow_replaces_the_inputs_only_where_it_wins_on_clean_and_shifted_images(
    clean, shifted, flow_kept
):
    """A flow that ranks errors better than msp on the clean held-out images and on their
    shifted copies gives the idm rule; one that is noise on either part does not, however
    well it does on the other: the rule falls back to the best input, msp."""
    scale = torch.tensor([[0.0, 1.0]]).repeat(8, 1)
    requested = {"idm_rule": "auto", "ood_rule": "auto", "concurrent_rule": "auto"}
    choice = choose_rules(_held_out(clean, shifted), scale, "rich", requested)
    assert set(choice.aps) == {"clean", "shifted"}
    rule = choice.rules["idm_rule"]
    assert ("flow" in rule or rule == "posterior") == flow_kept, rule
    if not flow_kept:
        assert rule == "msp"
        assert choice.scores["msp"] == pytest.approx(1.0)  # the best input in both parts
    assert choice.rules["concurrent_rule"].startswith(rule.replace("posterior", "flow"))
