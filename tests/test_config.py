import dataclasses
import math

import pytest

from flowenedet import FlowEneDet
from flowenedet.config import DetectorConfig, FitOptions
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
        ("ood_energy_weight", math.nan, ValueError, "finite"),
        ("concurrent_energy_weight", math.inf, ValueError, "finite"),
        ("ood_keep_peaks", "false", TypeError, "true or false"),
        ("num_blocks", "x", TypeError, "integer"),
        ("num_blocks", 2.0, TypeError, "integer"),
        ("seed", True, TypeError, "integer"),
        ("variant", "X", ValueError, "'C', 'U'"),
        ("segmenter_fingerprint", "abc", ValueError, "segmenter_fingerprint"),
    ],
)
def test_every_setting_is_checked_where_it_is_made(field, value, error, match):
    with pytest.raises(error, match=match):
        DetectorConfig(**{field: value})
    config = DetectorConfig()
    with pytest.raises(error, match=match):
        setattr(config, field, value)  # assignment is checked too, and leaves the old value
    assert getattr(config, field) == getattr(DetectorConfig(), field)


def test_the_constructor_uses_the_schema(segmenter):
    with pytest.raises(ValueError, match=r"DetectorConfig\.hidden"):
        FlowEneDet(segmenter, hidden=0)
    with pytest.raises(TypeError, match="unknown FlowEneDet options"):
        FlowEneDet(segmenter, hiden=8)


def test_defaults_and_integer_floats_are_accepted():
    config = DetectorConfig(ood_energy_weight=2, ood_smooth_sigma=1)
    assert config.ood_energy_weight == 2.0 and isinstance(config.ood_energy_weight, float)
    assert dataclasses.asdict(DetectorConfig()) == dataclasses.asdict(DetectorConfig())


def test_input_sets_follow_the_energy_module():
    spec = dataclasses.fields(DetectorConfig)[1].metadata["spec"]
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
    cfg = det.config
    assert (cfg.num_blocks, cfg.variant) == (6, "U")  # given values win
    assert cfg.inputs == "energy" and cfg.void_as_miss and cfg.loss_weighting == "prevalence"
    assert cfg.prior == "learned" and cfg.postprocess == "image-pixels" and cfg.tta
    assert (cfg.boundary_width, cfg.ood_dilation, cfg.ood_smooth_kernel) == (4, 6, 7)
    fit = det.fit_options
    assert (fit.steps, fit.warmup_steps, fit.decay_every, fit.weight_decay) == (
        50_000,
        4000,
        15_000,
        0.01,
    )
    assert FlowEneDet(segmenter, preset="paper-segformer").config.num_blocks == 8


def test_the_default_preset_is_the_plain_defaults(segmenter):
    det = FlowEneDet(segmenter)
    assert det.config == DetectorConfig()
    assert det.fit_options == FitOptions()


def test_an_unknown_preset_is_refused(segmenter):
    with pytest.raises(ValueError, match="preset must be one of"):
        FlowEneDet(segmenter, preset="paper")


def test_fit_arguments_override_the_preset_and_epochs_alone_means_passes(segmenter):
    det = FlowEneDet(segmenter, preset="paper-deeplabv3plus")
    assert det._fit_options({"steps": 3}).steps == 3
    assert det._fit_options({"steps": 3}).warmup_steps == 4000
    by_epochs = det._fit_options({"epochs": 2})
    assert by_epochs.steps is None and by_epochs.epochs == 2
    with pytest.raises(TypeError, match="unknown fit options"):
        det._fit_options({"step": 3})
