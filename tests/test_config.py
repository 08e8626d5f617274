import dataclasses
import math

import pytest

from flowenedet import FlowEneDet
from flowenedet.config import (
    DetectorConfig,
    FitOptions,
    FitRecord,
    FlowSettings,
    ScoringOptions,
    merge_fit_options,
)
from flowenedet.energy import INPUT_SETS


@pytest.mark.parametrize(
    ("field", "value", "error", "match"),
    [
        ("hidden", 10**9, ValueError, r"hidden must be in \[1, 512\]"),
        ("context_channels", 10**8, ValueError, "context_channels"),
        ("num_blocks", 10**6, ValueError, "num_blocks"),
        ("smooth_kernel", 40001, ValueError, "smooth_kernel"),
        ("smooth_kernel", 8, ValueError, "odd"),
        ("ood_dilation", 10**4, ValueError, "ood_dilation"),
        ("boundary_iterations", 10**9, ValueError, "boundary_iterations"),
        ("ood_smooth_sigma", 0, ValueError, "ood_smooth_sigma"),
        ("ood_rule", "flow + nan energy", ValueError, "weight"),
        ("concurrent_rule", "flow + 500 energy", ValueError, "at most"),
        ("idm_rule", "confidence", ValueError, "unknown term"),
        ("idm_rule", "posterior + msp", ValueError, "stands alone"),
        ("ood_keep_peaks", "false", TypeError, "true or false"),
        ("num_blocks", "x", TypeError, "integer"),
        ("num_blocks", 2.0, TypeError, "integer"),
        ("seed", True, TypeError, "integer"),
        ("variant", "X", ValueError, "'C', 'U'"),
        ("segmenter_fingerprint", "abc", ValueError, "segmenter_fingerprint"),
    ],
)
def test_every_setting_is_checked_where_it_is_made(field, value, error, match):
    group = next(g for g in (FlowSettings, ScoringOptions, FitRecord) if field in _names(g))
    valid = {"num_classes": 3, "segmenter_fingerprint": "0" * 64} if group is FitRecord else {}
    with pytest.raises(error, match=match):
        group(**(valid | {field: value}))
    config = group(**valid)
    with pytest.raises(error, match=match):
        setattr(config, field, value)  # assignment is checked too, and leaves the old value
    assert getattr(config, field) == getattr(group(**valid), field)


def _names(group: type) -> set[str]:
    return {f.name for f in dataclasses.fields(group)}


def test_settings_are_grouped_by_what_they_are(segmenter):
    config = DetectorConfig.from_settings({"num_blocks": 3, "ood_rule": "flow + energy"})
    assert config.flow.num_blocks == 3 and config.scoring.ood_rule == "flow + energy"
    assert config.fitted is None  # nothing measured before a fit
    with pytest.raises(TypeError, match=r"\['stride'\] are measured by the fit"):
        FlowEneDet(segmenter, stride=4.0)
    with pytest.raises(TypeError, match="must be a ScoringOptions"):
        DetectorConfig(scoring=FlowSettings())


def test_a_config_round_trips_through_json_and_reads_the_flat_format():
    record = FitRecord(num_classes=5, segmenter_fingerprint="ab" * 32, stride=8.0)
    config = DetectorConfig(FlowSettings(variant="U"), ScoringOptions(tta=True), record)
    assert DetectorConfig.from_json(config.to_json(), "here") == config
    flat = {**dataclasses.asdict(config.flow), **dataclasses.asdict(config.scoring)}
    flat |= dataclasses.asdict(record)  # the format before the groups: one object
    assert DetectorConfig.from_flat(flat, "old") == config
    with pytest.raises(ValueError, match="not a fitted detector"):
        DetectorConfig.from_flat({"variant": "U"}, "unfitted")
    with pytest.raises(ValueError, match=r"old has unknown settings \['colour'\]"):
        DetectorConfig.from_flat(flat | {"colour": 1}, "old")
    with pytest.raises(ValueError, match="must be a JSON object of"):
        DetectorConfig.from_json(flat, "flat")


def test_the_constructor_uses_the_schema(segmenter):
    with pytest.raises(ValueError, match=r"FlowSettings\.hidden"):
        FlowEneDet(segmenter, hidden=0)
    with pytest.raises(TypeError, match="unknown FlowEneDet options"):
        FlowEneDet(segmenter, hiden=8)


def test_defaults_and_integer_floats_are_accepted():
    config = ScoringOptions(ood_smooth_sigma=1)
    assert config.ood_smooth_sigma == 1.0 and isinstance(config.ood_smooth_sigma, float)
    assert DetectorConfig().to_json() == DetectorConfig().to_json()


def test_input_sets_follow_the_energy_module():
    spec = dataclasses.fields(FlowSettings)[1].metadata["spec"]
    assert set(spec.choices) == set(INPUT_SETS)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("steps", 2.5),
        ("steps", 0),
        ("epochs", 0),
        ("lr", math.inf),
        ("lr", 1e6),
        ("lr", 0.0),
        ("pixels_per_image", 0),
        ("pixels_per_image", -5),
        ("checkpoint_every", 0),
    ],
)
def test_fit_options_are_checked(field, value):
    with pytest.raises((TypeError, ValueError), match=rf"FitOptions\.{field}"):
        FitOptions(**{field: value})


# ---------------------------------------------------------------- presets
def test_a_paper_preset_sets_the_reference_options_and_can_be_overridden(segmenter):
    det = FlowEneDet(segmenter, preset="paper-deeplabv3plus", num_blocks=6, variant="U")
    cfg, scoring = det.config.flow, det.config.scoring
    assert (cfg.num_blocks, cfg.variant) == (6, "U")  # given values win
    assert cfg.inputs == "energy" and cfg.void_as_miss and cfg.loss_weighting == "prevalence"
    assert cfg.prior == "learned" and scoring.postprocess == "image-pixels" and scoring.tta
    assert (scoring.boundary_width, scoring.ood_dilation, scoring.ood_smooth_kernel) == (4, 6, 7)
    fit = det.fit_options
    assert (fit.steps, fit.warmup_steps, fit.decay_every, fit.weight_decay) == (
        50_000,
        4000,
        15_000,
        0.01,
    )
    assert FlowEneDet(segmenter, preset="paper-segformer").config.flow.num_blocks == 8


def test_the_default_preset_is_the_plain_defaults(segmenter):
    det = FlowEneDet(segmenter)
    assert det.config == DetectorConfig()
    assert det.fit_options == FitOptions()


def test_an_unknown_preset_is_refused(segmenter):
    with pytest.raises(ValueError, match="preset must be one of"):
        FlowEneDet(segmenter, preset="paper")


def test_fit_arguments_override_the_preset_and_epochs_alone_means_passes(segmenter):
    preset = FlowEneDet(segmenter, preset="paper-deeplabv3plus").fit_options
    assert merge_fit_options(preset, {"steps": 3}).steps == 3
    assert merge_fit_options(preset, {"steps": 3}).warmup_steps == 4000
    by_epochs = merge_fit_options(preset, {"epochs": 2})
    assert by_epochs.steps is None and by_epochs.epochs == 2
    with pytest.raises(TypeError, match="unknown fit options"):
        merge_fit_options(preset, {"step": 3})
