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
