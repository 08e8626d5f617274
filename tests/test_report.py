"""The quality-bar summary of the benchmark results (flowenedet.evaluation.report)."""

from flowenedet.evaluation.report import (
    corruption_wins,
    quality_bar,
    report,
    seed_summary,
    tables,
    variant_gap,
)


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
            "test/shifted": {
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
    shifted_row = next(line for line in lines if line.startswith("| test/shifted |"))
    assert shifted_row.endswith("| no: OOD FPR95 |")
    assert lines[-1] == "FED-C beats every baseline on 1 of 2 splits."


def test_report_judges_the_bar_on_clean_and_shifted_test_and_lists_the_rest_apart():
    baselines = {"MSP": _row(0.20, 0.40, 0.30, 0.40)}
    winner = {
        "FED-C idm": _row(0.0, 1.0, 0.35, 0.0),
        "FED-C ood": _row(0.31, 0.39, 0.0, 0.0),
        "FED-C concurrent": _row(0.0, 1.0, 0.0, 0.46),
        **baselines,
    }
    loser = {**winner, "FED-C ood": _row(0.1, 0.39, 0.0, 0.0)}
    names = ("val", "val/shifted", "test", "test/shifted", "test/fog-1", "test/fog-2")
    splits = dict(zip(names, (loser, winner, winner, winner, loser, winner), strict=True))
    sections = report({"splits": splits}).split("### ")[1:]
    assert [s.splitlines()[0] for s in sections] == [
        "Quality bar: clean and shifted test splits",
        "The same on the validation splits",
        "Per corruption and severity",
    ]
    bar, val, per_corruption = sections
    assert "| test |" in bar and "| test/shifted |" in bar and "fog" not in bar and "val" not in bar
    assert bar.strip().endswith("on 2 of 2 splits.")
    assert "| val |" in val and "| val/shifted |" in val and val.strip().endswith("1 of 2 splits.")
    assert "| test/fog-1 |" in per_corruption and "| test/shifted |" not in per_corruption
    assert "| test/fog-1 | 10.00 vs 20.00 MSP" in per_corruption
    assert per_corruption.strip().endswith("1 of 2 splits.")


def test_seed_summary_counts_a_cell_only_when_every_seed_wins_it():
    baselines = {"MSP": _row(0.20, 0.40, 0.30, 0.40)}

    def run(seed, ood_ap):
        rows = {
            "FED-C idm": _row(0.0, 1.0, 0.35, 0.0),
            "FED-C ood": _row(ood_ap, 0.39, 0.0, 0.0),
            "FED-C concurrent": _row(0.0, 1.0, 0.0, 0.46),
            **baselines,
        }
        return {"config": {"seed": seed}, "splits": {"test": rows}}

    # OOD AP 0.25 beats MSP's 0.20 in seed 0; 0.15 loses in seed 1
    table = seed_summary([run(0, 0.25), run(1, 0.15)])
    test_row = next(line for line in table.splitlines() if line.startswith("| test |"))
    cells = [cell.strip() for cell in test_row.strip("|").split("|")][1:]
    assert cells[0] == "20.00 (15.00-25.00) vs 20.00 (20.00-20.00); won 1/2"
    assert all(cell.endswith("won 2/2") for cell in cells[1:])
    assert table.splitlines()[-1] == "FED-C wins 3 of 4 cells in every one of 2 runs (seeds 0, 1)."


def test_variant_gap_and_corruption_wins_over_seeds():
    baselines = {"MSP": _row(0.20, 0.40, 0.30, 0.40)}

    def rows(ood_ap):
        return {
            f"FED-{v} {m}": _row(ood_ap + (0.01 if v == "C" else 0.0), 0.39, 0.35, 0.46)
            for v in "UC"
            for m in ("idm", "ood", "concurrent")
        } | baselines

    runs = [
        {"config": {"seed": s}, "splits": {"test": rows(0.3), "test/fog-1": rows(ap)}}
        for s, ap in ((0, 0.3), (1, 0.1))
    ]
    gap = variant_gap(runs).splitlines()
    test_row = next(line for line in gap if line.startswith("| test |"))
    # FED-C is 1 point above FED-U on OOD AP in both seeds, equal elsewhere
    assert "| 1.00 (1.00-1.00) | 0.00 (0.00-0.00) |" in test_row
    assert not any(line.startswith("| test/fog-1") for line in gap)  # bar and val only
    wins = corruption_wins(runs).splitlines()
    assert wins[0].startswith("- seed 0: all four columns on 1 of 1")
    assert wins[1].startswith("- seed 1: all four columns on 0 of 1") and "OOD AP 0" in wins[1]


def test_tables_show_the_ood_component_columns_where_rows_have_them():
    components = {"siou": 0.4, "ppv": 0.25, "f1_mean": 0.123456}
    rows = {
        "FED-C idm": {**_row(0.1, 0.9, 0.5, 0.2), "miou": 0.7},
        "FED-C ood": {**_row(0.3, 0.5, 0.1, 0.2), "miou": 0.7, "components": components},
        "MSP": {**_row(0.2, 0.6, 0.3, 0.2), "miou": 0.7, "components": None},
    }
    lines = tables({"splits": {"test": rows}}).splitlines()
    assert lines[2].endswith("| OOD sIoU | OOD PPV | OOD mean F1 |")
    assert lines[4].startswith("| FED-C idm |") and lines[4].endswith("| - | - | - |")
    assert lines[5].endswith("| 40.00 | 25.00 | 12.35 |")
    assert lines[6].endswith("| - | - | - |")  # no OOD pixels: nothing measured
    old = tables({"splits": {"test": {"MSP": _row(0.2, 0.6, 0.3, 0.2)}}})
    assert "sIoU" not in old  # results written before the columns existed
