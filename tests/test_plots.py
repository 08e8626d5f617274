"""The pictures: every method's curve in its own colour, maps coloured by rank."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from flowenedet.evaluation.plots import PALETTE, method_styles, percentile_scale

pytest.importorskip("matplotlib")

DEMO_ROWS = [
    *(f"FED-{v} {kind}" for v in "UC" for kind in ("idm", "ood", "concurrent")),
    *("MSP", "MaxLogit", "Energy", "Entropy", "SML", "SML+post", "MC dropout"),
]


def _lab(colour: str) -> np.ndarray:
    """CIELAB (D65) of a ``#rrggbb`` colour."""
    rgb = np.array([int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    to_xyz = np.array(
        [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]
    )
    xyz = to_xyz @ linear / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_every_method_of_the_demo_has_a_colour_of_its_own():
    """13 curves (6 FED maps, 7 baselines): no two share a colour, any two colours are
    at least 30 CIELAB units apart (matplotlib's 10-colour cycle repeated blue for the
    11th curve), and the line style tells FED-C, FED-U and the baselines apart."""
    styles = method_styles(DEMO_ROWS)
    colours = [styles[name]["color"] for name in DEMO_ROWS]
    assert len(set(colours)) == len(DEMO_ROWS) <= len(PALETTE)
    closest = min(np.linalg.norm(_lab(a) - _lab(b)) for a, b in itertools.combinations(colours, 2))
    assert closest > 30
    assert {styles[f"FED-C {k}"]["linestyle"] for k in ("idm", "ood", "concurrent")} == {"-"}
    assert {styles[f"FED-U {k}"]["linestyle"] for k in ("idm", "ood", "concurrent")} == {"-."}
    assert {styles[name]["linestyle"] for name in DEMO_ROWS[6:]} == {"--"}


def test_maps_are_coloured_by_their_rank_within_the_image():
    """A map bright over its whole background (0.85-0.93) with an object at 0.95: on the
    fixed [0, 1] range nearly every pixel is bright; by rank only the object is at the
    top, the background spreads below it, and the picture does not depend on the
    values' range (a monotone transform of the map gives the same colours)."""
    rng = np.random.default_rng(0)
    ood = rng.uniform(0.85, 0.93, size=(32, 32))
    ood[10:14, 10:14] = 0.95
    blob = np.zeros(ood.shape, dtype=bool)
    blob[10:14, 10:14] = True
    scaled = percentile_scale(ood)
    assert scaled.min() == 0.0  # ties (the object) share their mean rank
    assert (scaled[blob] > 0.98).all()
    assert np.median(scaled[~blob]) < 0.55 and (ood[~blob] > 0.8).all()
    np.testing.assert_allclose(percentile_scale(np.exp(20 * ood) - 3.0), scaled)
    assert (percentile_scale(np.full((4, 4), 0.7)) == 0).all()


def test_score_heat_maps_show_the_object_not_the_bright_background():
    from flowenedet.cli.outputs import colormap

    ood = np.random.default_rng(1).uniform(0.85, 0.93, size=(32, 32))
    ood[10:14, 10:14] = 0.95
    picture = colormap("inferno")(ood).astype(np.float64).mean(-1)
    object_brightness, background = picture[10:14, 10:14].mean(), np.median(picture)
    assert object_brightness > background + 80  # of 255
