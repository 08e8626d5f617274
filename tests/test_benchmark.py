"""The quality-bar summary of the benchmark results (flowenedet.benchmark.quality_bar)."""

import pytest

from flowenedet.benchmark import BenchConfig, quality_bar


def _row(ood_ap, ood_fpr, idm_ap, cdd_ap):
    return {
        "ood": {"ap": ood_ap, "fpr95": ood_fpr},
        "idm": {"ap": idm_ap},
        "cdd": {"ap": cdd_ap},
    }


def test_quality_bar_compares_each_metric_with_the_best_baseline():
    baselines = {"MSP": _row(0.20, 0.40, 0.30, 0.40), "SML": _row(0.30, 0.50, 0.10, 0.45)}
    results = {
        "splits": {
            "val": {"FED-C idm": _row(0, 1, 0, 0), "FED-C ood": _row(0, 1, 0, 0), **baselines},
            # each map beats the best baseline on its own task: SML's OOD AP, MSP's FPR95,
            # MSP's IDM AP and SML's CDD AP (the concurrent map; the ood map would not)
            "test": {
                "FED-C idm": _row(0.0, 1.0, 0.35, 0.0),
                "FED-C ood": _row(0.31, 0.39, 0.0, 0.0),
                "FED-C concurrent": _row(0.0, 1.0, 0.0, 0.46),
                **baselines,
            },
            # the same, except an FPR95 above MSP's (lower is better)
            "test/snow-3": {
                "FED-C idm": _row(0.0, 1.0, 0.35, 0.0),
                "FED-C ood": _row(0.31, 0.41, 0.0, 0.0),
                "FED-C concurrent": _row(0.0, 1.0, 0.0, 0.46),
                **baselines,
            },
        }
    }
    table = quality_bar(results)
    lines = table.splitlines()
    assert not any(line.startswith("| val ") for line in lines)
    test_row = next(line for line in lines if line.startswith("| test |"))
    assert "31.00 vs 30.00 SML" in test_row and "39.00 vs 40.00 MSP" in test_row
    assert "35.00 vs 30.00 MSP" in test_row and "46.00 vs 45.00 SML" in test_row
    assert test_row.endswith("| yes |")
    snow_row = next(line for line in lines if line.startswith("| test/snow-3 |"))
    assert snow_row.endswith("| no: OOD FPR95 |")
    assert lines[-1] == "FED-C beats every baseline on 1 of 2 test splits."


def test_fitting_on_a_tested_corruption_is_refused():
    with pytest.raises(ValueError, match="fog"):
        BenchConfig(corruptions=(("fog", 2), ("snow", 1)), fit_corruptions=("fog", "pixelate"))
    assert BenchConfig(corruptions=(("snow", 1),), fit_corruptions=("fog",)).fit_corruptions
