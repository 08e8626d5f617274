"""The detector's settings and the fit's options, each field with its type and range.

Every value is checked in one place, :func:`check_field`, on construction and on every
later assignment, whether it comes from a caller, a saved detector file or a training
checkpoint. The bounds are far above anything a real detector uses and far below what
could exhaust memory or time, so a crafted file can never make ``load()`` or ``score()``
allocate or loop without bound.

Longer than 400 lines: the one schema of every setting, kept whole so that nothing is
validated twice or differently.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .energy import INPUT_SETS
from .rules import AUTO, check_rule, parse_rule, terms_of

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "DEFAULT_STEPS",
    "FILE_DEFAULTS",
    "GROUPS",
    "POSTPROCESS_MODES",
    "PRESETS",
    "TTA_MAPS",
    "TTA_SCALES",
    "DetectorConfig",
    "FitOptions",
    "FitRecord",
    "FlowSettings",
    "ScoringOptions",
    "Spec",
    "check_field",
    "config_from_dict",
    "differences",
    "merge_fit_options",
    "preset",
    "split_settings",
]

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Spec:
    """What one setting may hold.

    ``kind`` is ``int``, ``float``, ``bool`` or ``str``; ``low`` / ``high`` bound numbers
    (inclusive) and string lengths; ``choices`` lists allowed strings; ``odd`` asks for an
    odd integer (a kernel with a centre tap); ``optional`` allows ``None``.
    """

    kind: type
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    odd: bool = False
    optional: bool = False
    pattern: re.Pattern[str] | None = None
    check: Callable[[Any], Any] | None = None  # a further check, raising ValueError


def setting(default: Any, spec: Spec) -> Any:
    """A dataclass field with its :class:`Spec` in the field's metadata."""
    return field(default=default, metadata={"spec": spec})


def _kind_name(spec: Spec) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names[spec.kind] + (" or None" if spec.optional else "")


def check_field(owner: str, name: str, value: Any, spec: Spec) -> Any:
    """``value`` if it fits ``spec``, else ``TypeError`` (wrong type) or ``ValueError``
    (out of range) naming ``owner.name``. Integers are accepted for float fields."""
    where = f"{owner}.{name}"
    if value is None:
        if spec.optional:
            return None
        raise TypeError(f"{where} must be {_kind_name(spec)}; got None")
    is_bool = isinstance(value, bool)
    if spec.kind is bool:
        ok = is_bool
    elif spec.kind is float:
        ok = isinstance(value, (int, float)) and not is_bool
    else:
        ok = isinstance(value, spec.kind) and not is_bool
    if not ok:
        raise TypeError(f"{where} must be {_kind_name(spec)}; got {value!r}")
    if spec.kind is float:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{where} must be finite; got {value!r}")
    if spec.kind is str:
        if spec.choices is not None and value not in spec.choices:
            raise ValueError(f"{where} must be one of {list(spec.choices)}; got {value!r}")
        if spec.high is not None and len(value) > spec.high:
            raise ValueError(f"{where} is {len(value)} characters long; at most {spec.high}")
        if spec.pattern is not None and not spec.pattern.fullmatch(value):
            raise ValueError(f"{where} must match {spec.pattern.pattern}; got {value!r}")
        if spec.check is not None:
            try:
                spec.check(value)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
        return value
    if spec.kind in (int, float):
        if (spec.low is not None and value < spec.low) or (
            spec.high is not None and value > spec.high
        ):
            raise ValueError(
                f"{where} must be in [{spec.low:g}, {spec.high:g}]; got {value!r}"
                if spec.low is not None and spec.high is not None
                else f"{where} is out of range: {value!r}"
            )
        if spec.odd and value % 2 != 1:
            raise ValueError(f"{where} must be odd (a kernel with a centre pixel); got {value}")
    return value


class _Checked:
    """Mixin for dataclasses whose fields carry a :class:`Spec`: every assignment, the
    constructor's included, goes through :func:`check_field`."""

    def __setattr__(self, name: str, value: Any) -> None:
        spec = _specs(type(self)).get(name)
        if spec is None:
            raise AttributeError(f"{type(self).__name__} has no setting {name!r}")
        super().__setattr__(name, check_field(type(self).__name__, name, value, spec))


def _specs(cls: type) -> dict[str, Spec]:
    return {f.name: f.metadata["spec"] for f in dataclasses.fields(cls)}


_SIZE = Spec(int, 0, 64)  # a post-processing size in pixels
_RULE = Spec(str, high=200, check=check_rule)
POSTPROCESS_MODES = ("logit-pixels", "image-pixels", "image-pixels-at-logits")
"""Where post-processing runs and in which unit its sizes are: at logit resolution with
sizes in logit pixels (flowenedet 0.1); at image resolution with sizes in image pixels
(the reference release); sizes in image pixels, divided by the measured ``stride`` and
applied at logit resolution."""
TTA_SCALES = (1.0, 0.5, 0.25)  # the reference release's test-time scales
TTA_MAPS = ("all", "ood")
"""Which maps test-time scales average: every map and the prediction (the reference
release), or the ``ood`` map alone, with ``idm``, ``concurrent`` and the prediction from
the first scale."""
FILE_DEFAULTS = {
    "postprocess": "logit-pixels",
    "sigmoid_last": False,
    "ood_energy_weight": 1.5,
    "concurrent_energy_weight": 0.5,
}
"""Settings a detector file of the flat format (before format 5) may lack because it
predates them, with the value that reproduces how it scored: files of flowenedet before
the ``postprocess`` setting ran it in logit pixels (today's default is another), every
such file took the sigmoid before post-processing, and the energy weights that every
file of that format used became rules (:func:`from_flat`)."""


@dataclass
class FlowSettings(_Checked):
    """The flow and how it learns: chosen before the fit and fixed by it.

    ``feature_layer`` is the FED-C layer asked for (None: the classifier's input, found at
    fit); ``ignore_index`` the void label; ``void_as_miss`` and ``loss_weighting`` say
    which pixels train the flow and how they are weighted; ``seed`` fixes its
    initialisation and pixel sampling.
    """

    variant: str = setting("C", Spec(str, choices=("C", "U")))
    inputs: str = setting("rich", Spec(str, choices=tuple(INPUT_SETS)))
    feature_layer: str | None = setting(None, Spec(str, high=1000, optional=True))
    ignore_index: int = setting(255, Spec(int, -(2**31), 2**31 - 1))
    pooled_channels: int = setting(32, Spec(int, 1, 256))
    context_channels: int = setting(32, Spec(int, 1, 256))
    num_blocks: int = setting(8, Spec(int, 1, 32))
    hidden: int = setting(32, Spec(int, 1, 512))
    coupling: str = setting("pixel", Spec(str, choices=("pixel", "conv")))
    prior: str = setting("equal", Spec(str, choices=("equal", "measured", "learned")))
    # the reference release's options (docs/method.md, "Reproducing the paper")
    void_as_miss: bool = setting(False, Spec(bool))
    loss_weighting: str = setting("balanced", Spec(str, choices=("balanced", "prevalence")))
    seed: int = setting(0, Spec(int, 0, 2**63 - 1))


@dataclass
class ScoringOptions(_Checked):
    """How the maps are made from a fitted flow; any of them can change after the fit
    (:meth:`flowenedet.FlowEneDet.with_options`).

    The defaults were chosen on the validation splits of both embedded worlds together
    (docs/benchmarks.md): post-processing sizes in image pixels, converted by the stride
    measured at fit, so that one setting serves logits at any stride; no boundary
    suppression and no dilated smoothing, which on both worlds erased small OOD objects
    (and SML's post-processing loses to plain SML there too).
    """

    # post-processing sizes, in image pixels unless postprocess="logit-pixels"
    boundary_width: int = setting(0, _SIZE)
    boundary_iterations: int = setting(0, _SIZE)
    ood_dilation: int = setting(1, Spec(int, 1, 32))
    smooth_kernel: int = setting(7, Spec(int, 1, 63, odd=True))
    # None: smooth_kernel (files before it existed)
    ood_smooth_kernel: int | None = setting(None, Spec(int, 1, 63, odd=True, optional=True))
    ood_smooth_sigma: float = setting(1.0, Spec(float, 0.05, 64.0))
    ood_keep_peaks: bool = setting(False, Spec(bool))
    # each map's rule (flowenedet.rules): "auto" is chosen by the fit on held-out images
    idm_rule: str = setting(AUTO, _RULE)
    ood_rule: str = setting(AUTO, _RULE)
    concurrent_rule: str = setting(AUTO, _RULE)
    chunk_pixels: int = setting(1 << 16, Spec(int, 1, 1 << 26))
    postprocess: str = setting("image-pixels-at-logits", Spec(str, choices=POSTPROCESS_MODES))
    tta: bool = setting(False, Spec(bool))
    tta_maps: str = setting("all", Spec(str, choices=TTA_MAPS))
    # the sigmoid after post-processing and resizing (False: before, files before format 5)
    sigmoid_last: bool = setting(True, Spec(bool))


@dataclass
class FitRecord(_Checked):
    """What the fit measured on the segmenter and its data; set by the fit, never by hand.

    ``num_classes`` ``K`` of the logits; ``feature_layer`` the FED-C layer the features
    came from (None: not known, as after ``fit_logits`` without one: scoring images finds
    it as the fit would); ``feature_channels`` ``F`` of those features (FED-C);
    ``stride`` image pixels per logit pixel (None in files older than its measurement);
    ``segmenter_fingerprint`` the fitted segmenter's weights
    (:func:`flowenedet.storage.segmenter_fingerprint`).
    """

    num_classes: int = setting(None, Spec(int, 2, 100_000))
    segmenter_fingerprint: str = setting(None, Spec(str, pattern=_HEX64))
    feature_layer: str | None = setting(None, Spec(str, high=1000, optional=True))
    feature_channels: int | None = setting(None, Spec(int, 1, 65_536, optional=True))
    stride: float | None = setting(None, Spec(float, 0.01, 256.0, optional=True))


GROUPS: dict[str, type] = {"flow": FlowSettings, "scoring": ScoringOptions, "fitted": FitRecord}
"""The detector's settings by what they are, as stored in its file."""


@dataclass
class DetectorConfig:
    """Everything needed to rebuild a detector, stored in its file: the flow's settings,
    the scoring options and, once fitted, what the fit measured."""

    flow: FlowSettings = field(default_factory=FlowSettings)
    scoring: ScoringOptions = field(default_factory=ScoringOptions)
    fitted: FitRecord | None = None

    def __post_init__(self) -> None:
        for name, cls in GROUPS.items():
            value = getattr(self, name)
            if not (isinstance(value, cls) or (name == "fitted" and value is None)):
                raise TypeError(f"DetectorConfig.{name} must be a {cls.__name__}; got {value!r}")
        available = {"posterior", *terms_of(self.flow.inputs)}
        for name in ("idm_rule", "ood_rule", "concurrent_rule"):
            rule = getattr(self.scoring, name)
            missing = set() if rule == AUTO else set(parse_rule(rule)) - available
            if missing:
                raise ValueError(
                    f"ScoringOptions.{name} {rule!r} uses {sorted(missing)}, which the "
                    f"{self.flow.inputs!r} input set does not give"
                )

    @classmethod
    def from_settings(cls, values: Mapping[str, Any], fitted: FitRecord | None = None):
        """A config from one flat mapping of :class:`FlowSettings` and
        :class:`ScoringOptions` fields (the constructor's keywords, a preset); an unknown
        name or one that only a fit may set is a ``TypeError`` naming it."""
        flow, scoring = split_settings(values)
        return cls(FlowSettings(**flow), ScoringOptions(**scoring), fitted)

    def to_json(self) -> dict[str, Any]:
        """``{"flow": {...}, "scoring": {...}, "fitted": {...} or null}``."""
        return {
            name: None if getattr(self, name) is None else dataclasses.asdict(getattr(self, name))
            for name in GROUPS
        }

    @classmethod
    def from_json(cls, values: Any, source: str) -> DetectorConfig:
        """The config stored by :meth:`to_json` in ``source``; ``ValueError`` naming it for
        anything else (not an object, unknown groups or settings, invalid values)."""
        if not isinstance(values, Mapping) or set(values) != set(GROUPS):
            keys = sorted(values) if isinstance(values, Mapping) else type(values).__name__
            raise ValueError(
                f"{source}: settings must be a JSON object of {sorted(GROUPS)}; got {keys}"
            )
        groups = {
            name: None if values[name] is None else config_from_dict(kind, values[name], source)
            for name, kind in GROUPS.items()
        }
        if groups["flow"] is None or groups["scoring"] is None:
            raise ValueError(f"{source}: the flow and scoring settings may not be null")
        return cls(**groups)

    @classmethod
    def from_flat(cls, values: Any, source: str) -> DetectorConfig:
        """The config of a file written before the settings were grouped: one flat object
        (the fitted values among them); ``ValueError`` naming ``source`` otherwise."""
        if not isinstance(values, Mapping):
            raise ValueError(
                f"{source}: settings must be a JSON object; got {type(values).__name__}"
            )
        values = _rules_of_weights(values, source)
        parts: dict[str, dict[str, Any]] = {name: {} for name in GROUPS}
        for key, value in values.items():  # feature_layer: as asked and as fitted
            groups = [g for g, kind in GROUPS.items() if key in _specs(kind)]
            if not groups:
                raise ValueError(f"{source} has unknown settings {[key]}")
            for group in groups:
                parts[group][key] = value
        fitted = parts["fitted"]
        if fitted.get("num_classes") is None or fitted.get("segmenter_fingerprint") is None:
            raise ValueError(
                f"{source} has no segmenter fingerprint or class count: it is not a fitted detector"
            )
        return cls(
            config_from_dict(FlowSettings, parts["flow"], source),
            config_from_dict(ScoringOptions, parts["scoring"], source),
            config_from_dict(FitRecord, fitted, source),
        )


def _rules_of_weights(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """A flat file's energy weights as the rules they were: ``idm`` the posterior, ``ood``
    and ``concurrent`` the log-odds plus their weight times the energy."""
    values = dict(values)
    weights = ("ood_energy_weight", "ood_rule"), ("concurrent_energy_weight", "concurrent_rule")
    if not any(name in values for name, _ in weights):
        return values  # a flat object of today's settings
    rules = {"idm_rule": "posterior"}
    for name, rule in weights:
        weight = values.pop(name, None)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"{source}: {name} must be a number; got {weight!r}")
        if not (math.isfinite(weight) and abs(weight) <= 100):
            raise ValueError(f"{source}: {name} must be finite, at most 100; got {weight!r}")
        rules[rule] = "flow" if weight == 0 else f"flow + {float(weight):g} energy"
    return values | rules


def split_settings(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(flow, scoring)`` settings from one flat mapping of their fields; ``TypeError``
    for a name of neither, naming what the fit measures apart."""
    flow, scoring, unknown = {}, {}, []
    for key, value in values.items():
        if key in _specs(FlowSettings):
            flow[key] = value
        elif key in _specs(ScoringOptions):
            scoring[key] = value
        else:
            unknown.append(key)
    measured = sorted(set(unknown) & set(_specs(FitRecord)))
    if measured:
        raise TypeError(f"{measured} are measured by the fit, not settings")
    if unknown:
        raise TypeError(f"unknown FlowEneDet options: {sorted(unknown)}")
    return flow, scoring


DEFAULT_STEPS = 1000
"""The default fit budget in optimizer steps, whatever the loader's length (the fit cycles
through it): chosen from the validation AP-against-steps curves of both embedded worlds
(docs/benchmarks.md, "Fit length"): up to 1000 steps validation AP rose on both; from
1000 to 2000 it moved by under half a point on the digits world, and on the street world
traded clean scenes (-0.9 IDM AP) for shifted ones (+1.9)."""


DEFAULT_CACHE_BYTES = 2 << 30
"""Memory a fit may keep its batches' flow inputs and targets in (2 GiB): enough for every
batch of the embedded worlds (the street world's 300 scenes need about 100 MB), a few
hundred Cityscapes images with FED-C; batches past it are recomputed every pass."""


@dataclass
class FitOptions(_Checked):
    """How :meth:`FlowEneDet.fit` trains; checked like :class:`DetectorConfig` and stored
    in training checkpoints so a resumed fit must ask for the same."""

    # None: ``epochs`` passes over the loader; both None is refused by the fit
    steps: int | None = setting(DEFAULT_STEPS, Spec(int, 1, 10**8, optional=True))
    epochs: int | None = setting(None, Spec(int, 1, 10**6, optional=True))
    lr: float = setting(1e-3, Spec(float, 1e-8, 1.0))
    pixels_per_image: int = setting(1024, Spec(int, 2, 1 << 24))
    checkpoint_every: int = setting(500, Spec(int, 1, 10**8))
    # None: 5 % of the fit / one decay at 80 % of it; the release: 4000 / every 15000
    warmup_steps: int | None = setting(None, Spec(int, 0, 10**8, optional=True))
    decay_every: int | None = setting(None, Spec(int, 1, 10**8, optional=True))
    weight_decay: float = setting(1e-4, Spec(float, 0.0, 1.0))
    # bytes of memory for what training reads of each batch (0: recompute it every pass)
    cache_bytes: int = setting(DEFAULT_CACHE_BYTES, Spec(int, 0, 1 << 50))
    # corrupted copies of each batch the flow also trains on (flowenedet.shifts; fit only)
    shifted_copies: int = setting(1, Spec(int, 0, 4))

    def __post_init__(self) -> None:
        if self.steps is None and self.epochs is None:
            raise ValueError("give the fit's length: steps= (optimizer steps) or epochs=")


def merge_fit_options(base: FitOptions, given: Mapping[str, Any]) -> FitOptions:
    """``base`` with the ``given`` :class:`FitOptions` fields (``TypeError`` naming unknown
    ones); ``epochs`` given alone means passes, not ``base``'s step budget."""
    unknown = set(given) - set(_specs(FitOptions))
    if unknown:
        raise TypeError(f"unknown fit options: {sorted(unknown)}")
    if "epochs" in given and "steps" not in given:
        given = {**given, "steps": None}
    return FitOptions(**(dataclasses.asdict(base) | dict(given)))


# The reference release (UAI 2023), as audited in docs/method.md: every option of it that
# keeps an exact per-pixel likelihood. Its single-Gaussian base is not a class-conditional
# density and is not reproduced; the hit / miss mixture stands in for it.
_PAPER = {
    "inputs": "energy",
    "void_as_miss": True,
    "loss_weighting": "prevalence",
    "prior": "learned",
    "coupling": "conv",
    "postprocess": "image-pixels",
    "boundary_width": 4,
    "boundary_iterations": 4,
    "smooth_kernel": 7,
    "ood_smooth_kernel": 7,
    "ood_smooth_sigma": 1.0,
    "ood_dilation": 6,
    "ood_keep_peaks": False,
    "idm_rule": "posterior",  # one score, p(miss | z), for every map
    "ood_rule": "posterior",
    "concurrent_rule": "posterior",
    "tta": True,
}
_PAPER_FIT = {
    "steps": 50_000,
    "lr": 1e-3,
    "warmup_steps": 4000,
    "decay_every": 15_000,
    "weight_decay": 0.01,
}
PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "default": ({}, {}),
    "paper-deeplabv3plus": ({**_PAPER, "num_blocks": 4}, _PAPER_FIT),
    "paper-segformer": ({**_PAPER, "num_blocks": 8}, _PAPER_FIT),
}
"""Name -> (``DetectorConfig`` values, ``FitOptions`` values). A preset is only a named set
of values: anything it sets can be overridden, and a saved detector stores the resolved
settings, never the preset's name."""


def preset(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``(config, fit options)`` values of preset ``name`` (copies)."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}; got {name!r}")
    config, fit = PRESETS[name]
    return dict(config), dict(fit)


def config_from_dict(cls: type, values: Any, source: str) -> Any:
    """Build ``cls`` (a checked dataclass) from a JSON object read from ``source``.

    Raises ``ValueError`` naming ``source`` for a non-object, unknown keys or any value
    :func:`check_field` refuses (the caller wraps it in its own error type).
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"{source}: settings must be a JSON object; got {type(values).__name__}")
    unknown = set(values) - set(_specs(cls))
    if unknown:
        raise ValueError(f"{source} has unknown settings {sorted(unknown)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: {error}") from None


def differences(stored: Mapping[str, Any], requested: Mapping[str, Any], what: str) -> list[str]:
    """``"<what> NAME: stored X, requested Y"`` for each key of ``requested`` whose value
    differs from ``stored``'s (a key missing from ``stored`` differs too)."""
    return [
        f"{what} {name}: checkpoint {stored.get(name)!r}, this fit {value!r}"
        for name, value in requested.items()
        if name not in stored or stored[name] != value
    ]
