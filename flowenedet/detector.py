"""FlowEneDet: wrap a frozen segmenter, fit the energy flow, score IDM / OOD maps, save / load.

This module only orchestrates: the fit recipe is :func:`flowenedet.fitting.fit_detector`,
the scoring path :class:`flowenedet.scoring.Scorer`, model access :mod:`flowenedet.hooks`
and the file format :mod:`flowenedet.storage`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from . import config as presets
from . import storage
from .calibration import DEFAULT_BINS, Calibration, calibrate_maps
from .checks import check_device, check_images, check_size, unpack_batch
from .config import DetectorConfig, FitOptions, ScoringOptions, Spec, check_field, merge_fit_options
from .fit_data import LoaderSource, Shapes, TensorSource
from .fitting import build_flow, fit_detector
from .hooks import SegmenterTap, segmenter_device
from .inference import ScoringCache, check_autocast
from .progress import StageTimer, progress_bar
from .scores import MAPS, Scores
from .scoring import Scorer, align_to_fit, test_time_scales
from .selection import Choice
from .storage import Stats, check_tensors, read_detector, segmenter_fingerprint, write_detector

__all__ = ["MAPS", "Calibration", "DetectorConfig", "FitOptions", "FlowEneDet", "Scores", "Stats"]

RULE_FIELDS = ("idm_rule", "ood_rule", "concurrent_rule")


class FlowEneDet:
    """Misclassification and OOD detector for a frozen segmentation model (UAI 2023).

    Args:
        segmenter: any ``nn.Module`` mapping images ``(B, 3, H, W)`` to logits
            ``(B, K, h, w)`` (tensor, dict with "out", tuple, or ``.logits``; Mask2Former:
            wrap it in :class:`flowenedet.hooks.MaskClassificationLogits`). Never changed.
        preset: ``"default"`` or a paper preset (:data:`flowenedet.config.PRESETS`).
        variant: ``"C"`` (flow conditioned on decoder features) or ``"U"`` (logits only).
        inputs: the flow's per-pixel inputs: ``"rich"`` (energy pair plus four confidence
            measures, the default) or ``"energy"`` (the paper's pair).
        feature_layer: submodule whose output gives the decoder features for FED-C; by
            default the input of the classifier conv is found at fit.
        num_classes: ``K``; the fit refuses logits of another class count if given.
        ignore_index: label of void pixels.
        **settings: further :class:`~flowenedet.config.FlowSettings` or
            :class:`~flowenedet.config.ScoringOptions` fields.
    """

    needs_images: ClassVar[bool] = False  # score_logits serves as well as score

    def __init__(
        self,
        segmenter: nn.Module,
        *,
        preset: str = "default",
        variant: str | None = None,
        inputs: str | None = None,
        feature_layer: str | None = None,
        num_classes: int | None = None,
        ignore_index: int | None = None,
        **settings: Any,
    ) -> None:
        if not isinstance(segmenter, nn.Module):
            raise TypeError(f"segmenter must be a torch.nn.Module; got {type(segmenter).__name__}")
        preset_settings, preset_fit = presets.preset(preset)
        given = {
            "variant": variant,
            "inputs": inputs,
            "feature_layer": feature_layer,
            "ignore_index": ignore_index,
        }
        given = {k: v for k, v in given.items() if v is not None} | settings
        self.segmenter = segmenter
        self.config = DetectorConfig.from_settings(preset_settings | given)
        self.fit_options = FitOptions(**preset_fit)
        self.num_classes = (
            None
            if num_classes is None
            else check_field("FlowEneDet", "num_classes", num_classes, Spec(int, 2, 100_000))
        )
        self.flow: nn.Module | None = None
        self.stats: Stats | None = None
        self.calibration: Calibration | None = None  # reject thresholds, see calibrate()
        self.selection: Choice | None = None  # how the last fit chose the maps' rules
        self._tap = self._new_tap(self.config.flow.feature_layer)
        self._cache = ScoringCache()  # the fused log-odds of the current flow weights

    def _new_tap(self, layer: str | None) -> SegmenterTap:
        return SegmenterTap(self.segmenter, layer if self.config.flow.variant == "C" else None)

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        loader: Iterable[Any],
        *,
        device: str | torch.device | None = None,
        progress: bool | None = None,
        checkpoint: str | Path | None = None,
        resume: bool = False,
        batch_keys: tuple[str, str] | None = None,
        timer: StageTimer | None = None,
        **options: Any,
    ) -> FlowEneDet:
        """Estimate class statistics, then train the flow; returns ``self``.

        ``loader`` yields ``(images (B, 3, H, W), labels (B, H, W))`` or dicts with "image"
        and "label" (or "pixel_values" and "labels", as transformers' datasets give them;
        other keys with ``batch_keys=(image_key, label_key)``), from the segmenter's
        training distribution; it is read once for the statistics and again for every
        training pass, so it must be re-iterable. ``options`` are
        :class:`~flowenedet.config.FitOptions` fields (``steps``, ``epochs``, ``lr``,
        ``pixels_per_image``, ``checkpoint_every``, ``warmup_steps``, ``decay_every``,
        ``weight_decay``); those not given come from the preset. Training runs ``steps``
        optimizer steps (one per batch, cycling through the loader as often as needed;
        default :data:`~flowenedet.config.DEFAULT_STEPS`, whatever the loader's length)
        or, if only ``epochs`` is given, ``epochs`` passes (with a warning when that is
        fewer steps than the default budget). With ``checkpoint`` the training state is
        saved every ``checkpoint_every`` steps; ``resume=True`` continues from it (same
        loader order and seed give the same result as an uninterrupted fit).
        ``progress``: bars (``None``: when stderr is a terminal). ``timer`` receives the
        time of each stage (:class:`~flowenedet.progress.StageTimer`). Under
        torch.distributed (torchrun) each process passes its shard of the data:
        statistics are summed and gradients averaged.
        """
        device = check_device(device) if device is not None else segmenter_device(self.segmenter)
        tap = self._new_tap(self.config.flow.feature_layer)
        source = LoaderSource(loader, tap, device, self._shapes(), batch_keys)
        self._fit(source, device, options, progress, checkpoint, resume, timer)
        self._tap = source.tap  # with the feature layer the fit found
        return self

    def fit_logits(
        self,
        logits: Tensor,
        labels: Tensor,
        features: Tensor | None = None,
        *,
        batch_size: int = 8,
        stats_items: int | None = None,
        progress: bool | None = None,
        checkpoint: str | Path | None = None,
        resume: bool = False,
        timer: StageTimer | None = None,
        **options: Any,
    ) -> FlowEneDet:
        """Fit from logits computed elsewhere: ``logits`` ``(N, K, h, w)``, ``labels``
        ``(N, H, W)`` at input resolution, ``features`` ``(N, F, h', w')`` for FED-C.

        Without ``feature_layer``, :meth:`score` on images later finds the layer as
        :meth:`fit` does (the classifier's input), which must give the features' ``F``.

        ``stats_items=n`` takes the class statistics (and the hit / miss prior) from the
        first ``n`` items only, while the flow trains on all: for clean data followed by
        augmented copies, so the statistics describe the segmenter's own training
        distribution. ``progress``, ``checkpoint``, ``resume``, ``timer`` and ``options``
        as for :meth:`fit`.
        """
        source = TensorSource(logits, labels, features, self._shapes(), batch_size, stats_items)
        return self._fit(source, logits.device, options, progress, checkpoint, resume, timer)

    def _shapes(self) -> Shapes:
        return Shapes(self.config.flow, self.num_classes)

    def _fit(self, source, device, options, progress, checkpoint, resume, timer) -> FlowEneDet:
        """Run :func:`~flowenedet.fitting.fit_detector` and keep what it gives: the
        detector stays unfitted if the fit fails."""
        options = merge_fit_options(self.fit_options, options)
        # the flow trains whatever the caller's grad mode (a frozen model is often held
        # under torch.no_grad() or inference_mode); the segmenter still runs without grad
        with torch.inference_mode(False), torch.enable_grad():
            result = fit_detector(
                source,
                self.config.flow,
                options,
                device,
                segmenter_fingerprint(self.segmenter),
                progress=progress,
                checkpoint=checkpoint,
                resume=resume,
                timer=timer,
                rules={name: getattr(self.config.scoring, name) for name in RULE_FIELDS},
            )
        self.flow, self.stats, self.selection = result.flow, result.stats, result.choice
        scoring = dataclasses.replace(self.config.scoring, **result.choice.rules)
        self.config = dataclasses.replace(self.config, scoring=scoring, fitted=result.record)
        self.calibration = None  # thresholds of an earlier fit do not apply
        return self

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score(
        self,
        images: Tensor,
        *,
        scales: Sequence[float] | None = None,
        autocast: torch.dtype | None = None,
    ) -> Scores:
        """IDM, OOD and concurrent maps for ``images`` ``(B, 3, H, W)``, averaged over the
        test-time ``scales`` (default ``(1.0,)``, or the reference's ``(1.0, 0.5, 0.25)``
        when ``config.scoring.tta``). With several scales ``pred`` is the argmax of the
        averaged upsampled softmax, as in the reference release; with
        ``tta_maps="ood"`` only the ``ood`` map is averaged, the other maps and ``pred``
        are the first scale's. ``autocast`` (``torch.bfloat16`` or ``torch.float16``)
        runs the segmenter under ``torch.autocast`` and the flow's networks in that
        precision; the maps stay float32."""
        scorer = self._scorer()
        autocast = check_autocast(autocast)
        images = check_images(images).to(segmenter_device(self.segmenter))

        def segment(batch: Tensor) -> tuple[Tensor, Tensor | None]:
            with torch.autocast(batch.device.type, dtype=autocast, enabled=autocast is not None):
                return self._align(*self.segment(batch))

        scales = test_time_scales(self.config.scoring, scales)
        return scorer.images(segment, images, scales, autocast, self._thresholds())

    @torch.no_grad()
    def score_logits(
        self,
        logits: Tensor,
        features: Tensor | None = None,
        size: tuple[int, int] | None = None,
        autocast: torch.dtype | None = None,
    ) -> Scores:
        """Scores from ``logits`` ``(B, K, h, w)`` (and ``features`` for FED-C), at ``size``
        (default: the logits' size); ``autocast``: the flow's precision, as in :meth:`score`.
        One scale's maps whatever ``config.scoring.tta`` says: test-time scales need the
        images."""
        scorer = self._scorer()
        autocast = check_autocast(autocast)
        logits, features = self._align(logits, features)
        size = check_size(size) if size is not None else tuple(logits.shape[-2:])
        return scorer.logits(logits, features, size, autocast, self._thresholds())

    def segment(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """What the detector reads of the frozen segmenter for ``images`` ``(B, 3, H, W)``:
        its logits ``(B, K, h, w)`` and, for FED-C, the decoder features ``(B, F, h', w')``
        (else None), e.g. to keep them for :meth:`fit_logits` / :meth:`score_logits`."""
        images = check_images(images)
        if self.config.flow.variant == "C" and self._tap.feature_layer is None:
            # after fit_logits without a feature layer: found as the fit would find it
            channels = self.config.fitted.feature_channels if self.config.fitted else None
            self._tap = SegmenterTap.finding_features(self.segmenter, images[:1], channels)
        return self._tap(images)

    def _align(self, logits: Tensor, features: Tensor | None) -> tuple[Tensor, Tensor | None]:
        device = next(self.flow.parameters()).device  # logits from anywhere
        return align_to_fit(self.config, logits, features, device)

    def _scorer(self) -> Scorer:
        if self.flow is None or self.stats is None:
            raise RuntimeError("this FlowEneDet is not fitted: call fit(), or load() a saved one")
        cfg = self.config
        return Scorer(self.flow, self.stats, cfg.flow, cfg.fitted, cfg.scoring, self._cache)

    def _thresholds(self) -> dict[str, float]:
        return dict(self.calibration.thresholds) if self.calibration else {}

    def with_options(self, **options: Any) -> FlowEneDet:
        """A detector scoring with other :class:`~flowenedet.config.ScoringOptions`
        (post-processing, energy weights, test-time scales, ...), sharing this one's
        segmenter, flow and statistics: no refit. Calibrated thresholds are kept only when
        no option changes (they were chosen for these maps)."""
        scoring = ScoringOptions(**(dataclasses.asdict(self.config.scoring) | options))
        other = copy.copy(self)
        other.config = dataclasses.replace(self.config, scoring=scoring)
        if scoring != self.config.scoring:
            other.calibration = None
        return other

    def calibrate(
        self,
        loader: Iterable[Any],
        *,
        target: str | tuple[str, float] = "f1",
        maps: Sequence[str] = MAPS,
        scales: Sequence[float] | None = None,
        bins: int = DEFAULT_BINS,
        progress: bool | None = None,
    ) -> FlowEneDet:
        """Store one reject threshold per map (``score > t``) chosen on ``loader``; returns
        ``self``. Use held-out labelled data, never the fit data.

        ``loader`` yields ``(images, labels)`` like :meth:`fit`'s; ``target`` is ``"f1"``,
        ``("fpr", r)`` or ``("tpr", r)`` (:data:`flowenedet.thresholds.Target`); each
        map's positives follow the benchmark (:mod:`flowenedet.calibration`): the ``ood``
        and ``concurrent`` maps need OOD-labelled pixels. :meth:`save` stores the
        thresholds; :meth:`Scores.masks` and :meth:`Scores.open_set_prediction` use them."""
        self._scorer()  # fitted
        batches = progress_bar(map(unpack_batch, loader), desc="calibrating", progress=progress)
        self.calibration = calibrate_maps(
            ((self.score(images, scales=scales), labels) for images, labels in batches),
            self.config.fitted.num_classes,
            target=target,
            maps=maps,
            ignore_index=self.config.flow.ignore_index,
            bins=bins,
        )
        return self

    def predict(
        self, images: Tensor, *, map: str = "ood", scales: Sequence[float] | None = None
    ) -> Tensor:
        """One map of :meth:`score` for ``images`` ``(B, 3, H, W)``: ``(B, H, W)`` in [0, 1],
        higher = more anomalous (pytorch-ood's ``Detector.predict``). ``map`` is ``"ood"``
        (unknown objects, the default), ``"idm"`` or ``"concurrent"``."""
        if map not in MAPS:
            raise ValueError(f"map must be one of {MAPS}; got {map!r}")
        return getattr(self.score(images, scales=scales), map)

    def __call__(self, images: Tensor, **kwargs: Any) -> Tensor:
        """:meth:`predict`: ``det(images)`` is the ``(B, H, W)`` ``"ood"`` map."""
        return self.predict(images, **kwargs)

    def to(self, device: str | torch.device) -> FlowEneDet:
        """Move the segmenter (in place, as ``nn.Module.to`` does), the flow and the
        statistics to ``device``; returns ``self``. Weights and results are unchanged."""
        device = torch.device(device)
        self.segmenter.to(device)
        if self.flow is not None:
            self.flow.to(device)
        if self.stats is not None:
            self.stats = Stats(**{k: t.to(device) for k, t in vars(self.stats).items()})
        return self

    def export(
        self,
        path: str | Path,
        *,
        format: str = "onnx",
        image_size: Sequence[int],
        maps: Sequence[str] = MAPS,
        dynamic: bool = True,
        **options: Any,
    ) -> Path:
        """Write the segmenter and this detector as one ONNX or TorchScript graph: images
        ``(B, 3, H, W)`` -> ``pred``, the ``maps`` and, when calibrated, ``<map>_mask``,
        each ``(B, H, W)`` and equal to :meth:`score`'s; ``options`` and errors as
        :func:`flowenedet.export.export_detector`'s. Needs the ``export`` extra."""
        from .export import export_detector  # torch.onnx and onnx only when exporting

        self._scorer()  # fitted
        return export_detector(
            self, path, format=format, image_size=image_size, maps=maps, dynamic=dynamic, **options
        )

    # ------------------------------------------------------------------ storage
    def save(self, path: str | Path) -> Path:
        """Write the detector (flow weights, statistics, settings, calibrated thresholds)
        as safetensors, atomically."""
        self._scorer()  # fitted
        return write_detector(
            path, self.config, self.flow.state_dict(), self.stats, self.calibration
        )

    @classmethod
    def load(
        cls, path: str | Path, segmenter: nn.Module, *, check_segmenter: bool = True
    ) -> FlowEneDet:
        """Load a detector saved by :meth:`save` for ``segmenter``.

        Refuses a segmenter whose weights differ from the one the detector was fitted on
        (``check_segmenter=False`` skips only that check), a feature layer that does not
        exist or has the wrong shape, and any unreadable, foreign or corrupted file.
        """
        config, flow_state, stats, calibration = read_detector(path)
        storage.check_segmenter(config, segmenter, path, weights=check_segmenter)
        detector = cls(segmenter)
        detector.config = config
        fitted = config.fitted
        detector._tap = detector._new_tap(fitted.feature_layer or config.flow.feature_layer)
        # small: the settings are bounded
        flow = build_flow(config.flow, fitted.feature_channels, segmenter_device(segmenter))
        check_tensors(flow.state_dict(), flow_state, f"{path}: flow weights")
        flow.load_state_dict(flow_state)
        detector.flow, detector.stats, detector.calibration = flow.eval(), stats, calibration
        return detector

    def __repr__(self) -> str:
        cfg = self.config
        state = "fitted" if self.flow is not None and self.stats is not None else "not fitted"
        if state == "fitted" and self.calibration is not None:
            state += f", calibrated {self.calibration.describe()}"
        elif state == "fitted":
            state += ", uncalibrated"
        classes = cfg.fitted.num_classes if cfg.fitted else self.num_classes
        layer = self._tap.feature_layer
        return (
            f"FlowEneDet(variant={cfg.flow.variant!r}, num_classes={classes}, "
            f"feature_layer={layer!r}, {state})"
        )
