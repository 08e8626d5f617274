import copy
import math
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flowenedet import FlowEneDet, fitting
from flowenedet.evaluation.baselines import MSP, Energy, Entropy, MaxLogit
from flowenedet.evaluation.metrics import auroc, average_precision
from flowenedet.labels import PADDING_INDEX
from flowenedet.postprocess import upsampled_argmax
from flowenedet.selection import is_held_out

from .conftest import FIT_STEPS
from .toy import NUM_CLASSES, OOD_LABEL, ToySegmenter, make_scenes, train_toy_segmenter


def _full_res_pred(segmenter, images):
    with torch.no_grad():
        logits = segmenter(images)
    return F.interpolate(logits, size=images.shape[-2:], mode="bilinear").argmax(1)


@pytest.mark.parametrize("variant", ["U", "C"])
def test_detector_ranks_errors_and_ood_above_correct_pixels(
    fitted, segmenter, test_scenes, variant
):
    """The user-visible promise: suspicious pixels score higher than trustworthy ones.

    Misclassification: AUROC must beat the MSP baseline on the same pixels. OOD: the toy
    OOD colour lies between two known classes, where MSP is fooled in part (AUROC ~0.72);
    the detector must reach 0.8 and beat MSP too.
    """
    images, labels = test_scenes
    scores = fitted[variant].score(images)
    msp = MSP(segmenter).predict(images)
    known = labels < NUM_CLASSES
    wrong = (scores.pred != labels)[known]
    assert auroc(scores.idm[known], wrong) > auroc(msp[known], wrong) + 0.02
    ood = labels == OOD_LABEL
    assert auroc(scores.ood, ood) > max(0.8, auroc(msp, ood) + 0.05)


@pytest.fixture(scope="module")
def strong_toy(train_loader):
    """A toy segmenter trained longer (400 steps), whose errors MSP ranks well (AUROC
    ~0.88, against ~0.71 for the shared fixture's), and FED-U / FED-C fitted on it with
    the default settings (fewer steps)."""
    segmenter = train_toy_segmenter(steps=400)
    torch.manual_seed(0)
    detectors = {
        variant: FlowEneDet(segmenter, variant=variant).fit(
            train_loader, steps=FIT_STEPS, progress=False
        )
        for variant in "UC"
    }
    return segmenter, detectors


def test_idm_ranks_errors_at_least_as_well_as_each_confidence_measure_it_reads(
    strong_toy, test_scenes
):
    """Never worse than its own inputs: the flow reads max-softmax, max-logit and entropy
    among its inputs, so with the default settings its ``idm`` map must rank the
    segmenter's errors at least as well as each of them, by AUROC and by AP, on a toy
    world where MSP is a strong baseline. (With flowenedet 0.1's logit-pixel smoothing
    FED-U's AUROC was 0.868 against MSP's 0.879 here.)"""
    segmenter, detectors = strong_toy
    images, labels = test_scenes
    known = labels < NUM_CLASSES
    for variant, det in detectors.items():
        scores = det.score(images)
        wrong = (scores.pred != labels)[known]
        ours = scores.idm[known]
        for baseline in (MSP, MaxLogit, Entropy):
            theirs = baseline(segmenter).predict(images)[known]
            for metric in (auroc, average_precision):
                assert metric(ours, wrong) >= metric(theirs, wrong), (
                    f"FED-{variant} {metric.__name__} below {baseline.__name__}'s"
                )


def test_scores_have_input_resolution_and_the_segmenters_prediction(fitted, segmenter):
    images, _ = make_scenes(3, size=40, seed=3)
    scores = fitted["C"].score(images)
    for name in ("idm", "ood", "concurrent"):
        value = getattr(scores, name)
        assert value.shape == (3, 40, 40)
        assert value.min() >= 0 and value.max() <= 1
    assert torch.equal(scores.pred, _full_res_pred(segmenter, images))


def test_multi_scale_scores_keep_shape_and_differ_from_single_scale(fitted, segmenter):
    images, _ = make_scenes(2, seed=4)
    single = fitted["U"].score(images)
    multi = fitted["U"].score(images, scales=(1.0, 0.5))
    assert multi.idm.shape == single.idm.shape
    assert not torch.allclose(multi.idm, single.idm)
    with torch.no_grad():  # the prediction: argmax of the softmax averaged over the scales
        half = F.interpolate(images, scale_factor=0.5, mode="bilinear", align_corners=False)
        probs = [
            F.interpolate(segmenter(x), size=(32, 32), mode="bilinear").softmax(1)
            for x in (images, half)
        ]
    assert torch.equal(multi.pred, ((probs[0] + probs[1]) / 2).argmax(1))
    half = fitted["U"].score(images, scales=(0.5,))
    for kind in ("idm", "ood", "concurrent"):  # every map is the mean over the scales
        mean = (getattr(single, kind) + getattr(half, kind)) / 2
        assert torch.allclose(getattr(multi, kind), mean, atol=1e-6)


def test_score_logits_equals_score_on_the_same_logits(fitted, segmenter):
    images, _ = make_scenes(2, seed=6)
    det = fitted["C"]
    logits, features = det.segment(images)
    direct = det.score_logits(logits, features, size=(32, 32))
    assert torch.equal(direct.idm, det.score(images).idm)


def test_banded_scoring_equals_whole_map(fitted):
    images, _ = make_scenes(2, seed=7)
    det = fitted["C"]
    whole = det.score(images)
    banded = det.with_options(chunk_pixels=40).score(images)  # one or two rows at a time
    assert torch.allclose(whole.idm, banded.idm, atol=1e-6)


def test_segmenter_is_left_exactly_as_it_was(segmenter, train_loader):
    model = copy.deepcopy(segmenter).train()
    model.backbone[1].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    det = FlowEneDet(model).fit(train_loader[:2], steps=3, progress=False)
    det.score(train_loader[0][0], scales=(1.0, 0.5))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(p.grad is None for p in model.parameters())


def test_fit_accepts_dict_batches_and_fit_logits(segmenter, train_loader):
    dict_loader = [{"image": x, "label": y} for x, y in train_loader[:2]]
    det = FlowEneDet(segmenter, variant="U").fit(dict_loader, steps=2, progress=False)
    assert det.stats.mean.shape == (NUM_CLASSES,) and det.stats.var.shape == (NUM_CLASSES,)
    images, labels = train_loader[0]
    with torch.no_grad():
        logits = segmenter(images)
    from_logits = FlowEneDet(segmenter, variant="U").fit_logits(
        logits, labels, steps=2, progress=False
    )
    assert torch.allclose(
        from_logits.stats.mean,
        FlowEneDet(segmenter, variant="U")
        .fit([(images, labels)], steps=1, progress=False)
        .stats.mean,
    )


def test_stats_items_limits_the_statistics_but_the_flow_trains_on_everything(
    segmenter, train_loader
):
    images = torch.cat([x for x, _ in train_loader[:2]])  # 32 items
    labels = torch.cat([y for _, y in train_loader[:2]])
    with torch.no_grad():
        logits = segmenter(images)
    noisy = logits + 3.0 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(0))
    mixed_logits, mixed_labels = torch.cat([logits[:20], noisy[20:]]), labels

    def fit(logits, labels, **options):
        return FlowEneDet(segmenter, variant="U").fit_logits(
            logits, labels, batch_size=8, steps=3, progress=False, **options
        )

    clean_only = fit(logits[:20], labels[:20])
    limited = fit(mixed_logits, mixed_labels, stats_items=20)  # batch 16..23 straddles 20
    everything = fit(mixed_logits, mixed_labels)
    assert torch.allclose(limited.stats.mean, clean_only.stats.mean)
    assert torch.allclose(limited.stats.var, clean_only.stats.var)
    assert not torch.allclose(everything.stats.mean, clean_only.stats.mean)
    flow_weights = list(limited.flow.parameters())
    clean_weights = list(clean_only.flow.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(flow_weights, clean_weights, strict=True))
    for bad in (0, 33, True):
        with pytest.raises(ValueError, match="stats_items"):
            fit(mixed_logits, mixed_labels, stats_items=bad)


def test_papers_energy_pair_is_available_as_input_set(segmenter, train_loader):
    det = FlowEneDet(segmenter, variant="U", inputs="energy")
    det.fit(train_loader[:2], steps=2, progress=False)
    assert det.flow.context_encoder.spatial.in_channels == 2
    assert det.score(train_loader[0][0]).idm.shape == (16, 32, 32)


def test_each_map_follows_its_rule(fitted):
    """No post-processing: a map of rule ``flow`` ranks pixels as the posterior; an energy
    term changes the order; ``msp`` alone ranks them as minus the log max softmax; two
    maps of one rule are equal."""
    det = fitted["C"].with_options(
        idm_rule="posterior", ood_rule="flow", boundary_width=0, smooth_kernel=1
    )
    images, _ = make_scenes(2, seed=8)
    logits, features = det.segment(images)
    scores = det.score_logits(logits, features)
    order = scores.idm.flatten().argsort()
    assert (scores.ood.flatten()[order].diff() >= -1e-6).all()
    with_energy = det.with_options(ood_rule="flow + energy").score_logits(logits, features)
    assert not (with_energy.ood.flatten()[order].diff() >= -1e-6).all()
    same = det.with_options(concurrent_rule="flow").score_logits(logits, features)
    assert torch.allclose(same.concurrent, same.ood, atol=1e-6)
    msp = det.with_options(idm_rule="msp").score_logits(logits, features).idm.flatten()
    log_max_p = logits.log_softmax(1).amax(1).flatten()
    assert (msp[log_max_p.argsort(descending=True)].diff() >= -1e-6).all()
    with pytest.raises(ValueError, match="a fit chooses it"):
        det.with_options(idm_rule="auto").score_logits(logits, features)
    with pytest.raises(ValueError, match="does not give"):
        FlowEneDet(det.segmenter, inputs="energy", idm_rule="msp")


@pytest.mark.parametrize(
    ("rule", "baseline"),
    [("msp", MSP), ("entropy", Entropy), ("maxlogit", MaxLogit), ("rawenergy", Energy)],
)
def test_a_map_that_falls_back_to_an_input_is_that_baseline(fitted, test_scenes, rule, baseline):
    """A rule of one measure ranks the image's pixels as the baseline of that measure
    does (the sigmoid comes after resizing; no smoothing)."""
    det = fitted["U"].with_options(idm_rule=rule, smooth_kernel=1)
    images, _ = test_scenes
    expected = baseline(det.segmenter).predict(images).flatten()
    ordered = det.score(images).idm.flatten()[expected.argsort(stable=True)]
    assert (ordered.diff() >= -1e-6).all()


def test_the_fit_chooses_the_rules_on_held_out_images_and_falls_back_to_an_input(
    segmenter, train_loader
):
    """Two optimizer steps leave the flow near its start, knowing nothing: on the
    held-out images the posterior ranks errors worse than the logits' own confidence, so
    the idm map falls back to an input, and the concurrent map starts from it."""
    det = FlowEneDet(segmenter, variant="U", seed=3).fit(train_loader, steps=2, progress=False)
    choice = det.selection
    assert choice.pixels > 0 and set(choice.scores) >= {"flow", "msp", "entropy", "margin"}
    inputs = ("msp", "entropy", "margin", "sml", "energy", "rawenergy", "maxlogit")
    best_input = max(choice.scores[t] for t in inputs)
    assert choice.scores["flow"] < best_input  # the untrained flow loses ...
    chosen = det.config.scoring.idm_rule
    assert choice.scores[chosen] >= best_input  # ... and the rule does not
    assert det.config.scoring.concurrent_rule.startswith(chosen)
    assert det.config.scoring.ood_rule == "flow + 3 sml"  # never chosen: no unknown objects
    trained = FlowEneDet(segmenter, variant="U", idm_rule="flow").fit(
        train_loader, steps=2, progress=False
    )
    assert trained.config.scoring.idm_rule == "flow"  # a rule given is kept


def test_a_loader_of_single_images_trains_and_a_single_image_fits(segmenter, train_loader):
    """With one image per batch, a held-out image is a whole batch: the fit trains on
    the others (it used to step on an empty sample and stop with a NaN loss), and a fit
    on one image trains on it and keeps the default rules (nothing to choose them on)."""
    images, labels = train_loader[0]
    singles = [(images[i : i + 1], labels[i : i + 1]) for i in range(len(images))]
    assert any(is_held_out(0, b, 0) for b in range(len(singles)))  # some batch is held out
    det = FlowEneDet(segmenter, variant="U", seed=0).fit(singles, steps=12, progress=False)
    assert det.selection.pixels > 0 and torch.isfinite(det.score(images).idm).all()
    one = FlowEneDet(segmenter, variant="U", seed=0).fit(singles[:1], steps=3, progress=False)
    assert one.selection.pixels == 0
    assert one.config.scoring.idm_rule == "posterior"  # the flow's own map


def test_ood_map_smoothing_has_its_own_kernel_and_can_keep_peaks(fitted):
    # no boundary suppression: the maps differ by smoothing only
    det = fitted["C"].with_options(boundary_width=0)
    images, _ = make_scenes(2, seed=8)
    logits, features = det.segment(images)
    raw = det.with_options(ood_smooth_kernel=1).score_logits(logits, features)  # ood unsmoothed
    smoothed = det.with_options(ood_smooth_kernel=None).score_logits(logits, features)  # as 7
    assert torch.equal(raw.idm, smoothed.idm)
    assert not torch.allclose(raw.ood, smoothed.ood)
    assert (smoothed.ood.amax((1, 2)) < raw.ood.amax((1, 2))).all()  # peaks flattened
    kept = det.with_options(ood_keep_peaks=True).score_logits(logits, features).ood
    assert torch.equal(kept, torch.maximum(raw.ood, smoothed.ood))
    assert torch.equal(kept.amax((1, 2)), raw.ood.amax((1, 2)))


def test_scores_follow_flow_weights_loaded_in_eval_mode(segmenter, train_loader):
    # the LU layers cache their matrix in eval mode; scoring must never use a stale one
    posterior = {"variant": "U", "idm_rule": "posterior"}  # the map the flow makes
    a = FlowEneDet(segmenter, seed=1, **posterior).fit(train_loader[:2], steps=3, progress=False)
    b = FlowEneDet(segmenter, seed=2, **posterior).fit(train_loader[:2], steps=3, progress=False)
    images = train_loader[2][0]
    before = a.score(images).idm
    a.flow.load_state_dict(b.flow.state_dict())  # a.flow stays in eval mode
    after = a.score(images).idm
    assert not torch.equal(before, after)
    assert torch.equal(after, b.score(images).idm)


def test_a_segmenter_with_constant_outputs_still_gets_finite_scores():
    # an untrained model: every pixel has the same logits, so some flow inputs are
    # exactly constant over the first batch (zero spread for ActNorm's initialisation)
    logits = torch.tensor([0.3, -0.1, 0.2]).view(1, 3, 1, 1).expand(4, 3, 8, 8).contiguous()
    labels = torch.randint(0, 3, (4, 32, 32), generator=torch.Generator().manual_seed(0))
    det = FlowEneDet(torch.nn.Identity(), variant="U").fit_logits(
        logits, labels, steps=3, progress=False
    )
    maps = det.score_logits(logits, size=(32, 32))
    assert torch.isfinite(maps.idm).all() and torch.isfinite(maps.ood).all()


def test_fitting_is_reproducible(segmenter, train_loader):
    a = FlowEneDet(segmenter, seed=3).fit(train_loader[:2], steps=4, progress=False)
    b = FlowEneDet(segmenter, seed=3).fit(train_loader[:2], steps=4, progress=False)
    images = train_loader[2][0]
    assert torch.equal(a.score(images).idm, b.score(images).idm)


# ---------------------------------------------------------------- bad input
@pytest.fixture
def fresh(segmenter):
    return FlowEneDet(segmenter, variant="U")


def test_score_before_fit_is_refused(fresh):
    with pytest.raises(RuntimeError, match="not fitted"):
        fresh.score(torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize(
    ("images", "labels", "error", "match"),
    [
        (
            torch.rand(3, 32, 32),
            torch.zeros(1, 32, 32, dtype=torch.long),
            ValueError,
            "images must have shape",
        ),
        (
            torch.zeros(1, 3, 32, 32, dtype=torch.uint8),
            torch.zeros(1, 32, 32, dtype=torch.long),
            ValueError,
            "floating",
        ),
        (
            torch.rand(2, 3, 32, 32),
            torch.zeros(2, 30, 32, dtype=torch.long),
            ValueError,
            r"labels has shape \(2, 30, 32\)",
        ),
        (torch.rand(1, 3, 32, 32), torch.full((1, 32, 32), 7), ValueError, r"outside \[0, 4\)"),
        (torch.rand(1, 3, 32, 32), torch.rand(1, 32, 32), ValueError, "integer"),
    ],
)
def test_bad_fit_batches_get_clear_errors(segmenter, images, labels, error, match):
    with pytest.raises(error, match=match):
        FlowEneDet(segmenter, variant="U", num_classes=NUM_CLASSES).fit(
            [(images, labels)], steps=1, progress=False
        )


def test_empty_loader_is_refused(fresh):
    with pytest.raises(ValueError, match="loader is empty"):
        fresh.fit([], progress=False)


def test_fit_data_without_errors_is_refused(fresh, segmenter):
    images, _ = make_scenes(4, seed=1)
    with torch.no_grad():  # labels that agree with the prediction the detector scores
        perfect = upsampled_argmax(segmenter(images), images.shape[-2:])
    with pytest.raises(ValueError, match="0 wrongly classified"):
        fresh.fit([(images, perfect)], steps=1, progress=False)


def test_nan_logits_are_refused(fresh):
    logits = torch.zeros(1, NUM_CLASSES, 8, 8)
    logits[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="logits contains 1 NaN"):
        fresh.fit_logits(logits, torch.zeros(1, 8, 8, dtype=torch.long), progress=False)


def test_wrong_number_of_classes_is_refused(segmenter):
    with pytest.raises(ValueError, match="gives 4 classes but the detector is for num_classes=6"):
        FlowEneDet(segmenter, num_classes=6).fit([make_scenes(2)], steps=1, progress=False)


def test_unknown_variant_and_options_are_refused(segmenter):
    with pytest.raises(ValueError, match="variant"):
        FlowEneDet(segmenter, variant="X")
    with pytest.raises(ValueError, match="inputs must be one of"):
        FlowEneDet(segmenter, inputs="logits")
    with pytest.raises(TypeError, match="unknown FlowEneDet options"):
        FlowEneDet(segmenter, hiden=4)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        FlowEneDet(lambda x: x)


def test_torchvision_model_is_wrapped_with_its_aux_head_skipped():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3, aux_loss=True
    ).eval()
    images = torch.rand(2, 3, 64, 64)
    labels = torch.randint(0, 3, (2, 64, 64))
    det = FlowEneDet(model).fit([(images, labels)], steps=2, pixels_per_image=64, progress=False)
    assert det.config.fitted.feature_layer == "classifier.4:input"
    assert det.score(images).ood.shape == (2, 64, 64)


def test_unfitted_segmenter_of_other_width_is_refused_at_score(fitted, tmp_path):
    path = fitted["U"].save(tmp_path / "det.safetensors")
    det = FlowEneDet.load(path, ToySegmenter(num_classes=NUM_CLASSES + 1), check_segmenter=False)
    with pytest.raises(ValueError, match="gives 5 classes"):
        det.score(torch.rand(1, 3, 32, 32))


def test_prediction_upsampling_in_class_groups_equals_full_upsampling():

    torch.manual_seed(0)
    logits = torch.randn(2, 19, 13, 17)
    full = F.interpolate(logits, size=(52, 68), mode="bilinear", align_corners=False)
    assert torch.equal(upsampled_argmax(logits, (52, 68)), full.argmax(1))


# ---------------------------------------------------------------- hostile arguments
def _finishes(function, seconds=60):
    """Run ``function`` in a thread; fail the test if it is still running after ``seconds``
    (a hang), else return what it raised (or None)."""
    outcome = {}

    def run():
        try:
            function()
        except Exception as error:
            outcome["error"] = error

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s: it hangs"
    return outcome.get("error")


@pytest.mark.parametrize(
    "make_loader",
    [lambda batches: (b for b in batches), lambda batches: iter(batches)],
    ids=["generator", "iterator"],
)
def test_one_shot_loaders_get_a_clear_error_not_a_hang(segmenter, train_loader, make_loader):
    for options in ({"epochs": 2}, {"steps": 3}):
        det = FlowEneDet(segmenter, variant="U")
        error = _finishes(
            lambda det=det, options=options: det.fit(
                make_loader(train_loader[:2]), progress=False, **options
            )
        )
        assert isinstance(error, TypeError) and "one-shot iterator" in str(error)


def test_a_loader_that_runs_dry_after_one_pass_is_an_error(segmenter, train_loader):
    class OncePerLife:
        def __init__(self):
            self.used = False

        def __iter__(self):
            batches = [] if self.used else train_loader[:2]
            self.used = True
            return iter(batches)

    det = FlowEneDet(segmenter, variant="U")
    error = _finishes(lambda: det.fit(OncePerLife(), steps=3, progress=False))
    assert isinstance(error, ValueError) and "no batches on pass 2" in str(error)


@pytest.mark.parametrize("lr", [math.inf, 1e6, 0.0])
def test_a_meaningless_learning_rate_is_refused_before_fitting(fresh, train_loader, lr):
    with pytest.raises(ValueError, match=r"FitOptions\.lr"):
        fresh.fit(train_loader[:1], steps=2, lr=lr, progress=False)


def test_a_fit_whose_loss_explodes_stops_with_the_likely_cause(fresh, train_loader, monkeypatch):
    import flowenedet.training as training

    real = training.hit_miss_loss
    calls = []

    def exploding(*args):  # the loss of a diverged flow at its second step
        calls.append(1)
        return real(*args) * (1.0 if len(calls) == 1 else 1e21)

    monkeypatch.setattr(training, "hit_miss_loss", exploding)
    with pytest.raises(FloatingPointError, match=r"diverged.*learning rate"):
        fresh.fit(train_loader[:2], steps=4, progress=False)
    assert fresh.stats is None  # nothing half-fitted is left to score with


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"pixels_per_image": 0}, "pixels_per_image"),
        ({"pixels_per_image": -3}, "pixels_per_image"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"steps": 2.5}, "steps"),
        ({"steps": 0}, "steps"),
        ({"epochs": 0}, "epochs"),
    ],
)
def test_meaningless_fit_options_are_refused(fresh, train_loader, options, match):
    with pytest.raises((TypeError, ValueError), match=match):
        fresh.fit(train_loader[:1], progress=False, **options)


def test_fit_logits_batch_size_must_be_positive(fresh):
    logits = torch.randn(2, NUM_CLASSES, 8, 8)
    labels = torch.randint(0, NUM_CLASSES, (2, 8, 8))
    for size in (0, -1, 1.5):
        with pytest.raises((TypeError, ValueError), match="batch_size"):
            fresh.fit_logits(logits, labels, batch_size=size, progress=False)


@pytest.mark.parametrize("scales", [(0.0,), (-1.0,), (), (math.nan,), (100.0,), "1", 1.0])
def test_meaningless_scales_are_refused(fitted, scales):
    with pytest.raises((TypeError, ValueError), match="scales"):
        fitted["U"].score(torch.rand(1, 3, 32, 32), scales=scales)


@pytest.mark.parametrize("size", [(0, 0), (-4, 8), (2.5, 8), (8,), (1 << 20, 8)])
def test_meaningless_output_sizes_are_refused(fitted, size):
    with pytest.raises((TypeError, ValueError), match="size"):
        fitted["U"].score_logits(torch.randn(1, NUM_CLASSES, 8, 8), size=size)


@pytest.mark.parametrize("channels", [1, 4])
def test_images_with_the_wrong_channel_count_are_explained(fitted, channels):
    with pytest.raises(ValueError, match=f"images have {channels} channels .* expects 3"):
        fitted["U"].score(torch.rand(1, channels, 32, 32))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_images_of_other_float_dtypes_score_as_float32(fitted, dtype):
    images, _ = make_scenes(2, seed=4)
    expected = fitted["C"].score(images.to(dtype).float())  # the same values, in float32
    maps = fitted["C"].score(images.to(dtype))
    assert torch.equal(maps.idm, expected.idm) and torch.equal(maps.ood, expected.ood)


def test_images_that_overflow_the_segmenter_give_an_error_not_nan_maps(fitted):
    images, _ = make_scenes(1, seed=4)
    for scale in (1e30, 1e6):
        try:
            maps = fitted["C"].score(images * scale)
        except ValueError as error:
            assert "logits" in str(error) or "maps are not finite" in str(error)
        else:
            assert all(torch.isfinite(getattr(maps, k)).all() for k in ("idm", "ood", "concurrent"))


# ---------------------------------------------------------------- the release's options
def test_the_stride_is_measured_at_fit(fitted):
    assert fitted["U"].config.fitted.stride == 2.0  # 32-pixel images, 16-pixel logits


def test_a_measured_prior_shifts_the_posterior_by_exactly_its_log_odds(fitted):
    det = copy.deepcopy(fitted["U"])
    det.config.scoring.smooth_kernel = 1  # idm is then the posterior itself
    logits = det.segmenter(make_scenes(2, seed=8)[0]).detach()
    equal = det.score_logits(logits).idm
    det.config.flow.prior = "measured"
    det.flow.base.prior = "measured"
    with torch.no_grad():
        det.flow.base.log_weights.copy_(torch.tensor([0.8, 0.2]).log())
    shifted = det.score_logits(logits).idm
    unsaturated = (equal > 1e-4) & (equal < 1 - 1e-4) & (shifted > 1e-4) & (shifted < 1 - 1e-4)
    change = torch.logit(shifted.double()) - torch.logit(equal.double())
    assert torch.allclose(change[unsaturated], torch.tensor(0.25).log().double(), atol=2e-3)


def test_a_learned_prior_is_trained_from_the_measured_rates(segmenter, train_loader):
    det = FlowEneDet(segmenter, variant="U", prior="learned")
    det.fit(train_loader[:2], steps=6, lr=0.01, progress=False)
    weights = det.flow.base.log_weights
    assert isinstance(weights, torch.nn.Parameter)
    measured = FlowEneDet(segmenter, variant="U", prior="measured")
    measured.fit(train_loader[:2], steps=1, progress=False)
    assert not torch.allclose(weights, measured.flow.base.log_weights)


def test_void_as_miss_counts_void_pixels_as_misses_of_the_fit_data(segmenter, train_loader):
    images, labels = train_loader[0]
    labels = labels.clone()
    labels[:, :4] = 255  # a void band across every image
    labels[:, -4:] = PADDING_INDEX  # and padding, as a crop past the image adds (whole cells)
    rates = {}
    for void_as_miss in (False, True):
        det = FlowEneDet(segmenter, variant="U", void_as_miss=void_as_miss)
        det.fit([(images, labels)], steps=1, progress=False)
        rates[void_as_miss] = det.flow.base.log_weights.exp()[1].item()
    with torch.no_grad():
        pred = upsampled_argmax(segmenter(images), labels.shape[-2:])
    valid, void = (labels != 255) & (labels != PADDING_INDEX), labels == 255
    plain = ((pred != labels) & valid).sum() / valid.sum()
    with_void = (((pred != labels) & valid).sum() + void.sum()) / (valid | void).sum()
    assert rates[False] == pytest.approx(plain.item(), abs=1e-5)
    assert rates[True] == pytest.approx(with_void.item(), abs=1e-5)


def test_tta_scores_at_the_release_scales(fitted):
    det = copy.deepcopy(fitted["C"])
    images, _ = make_scenes(2, seed=12, size=64)
    explicit = det.score(images, scales=(1.0, 0.5, 0.25))
    det.config.scoring.tta = True
    by_default = det.score(images)
    assert torch.equal(explicit.ood, by_default.ood) and torch.equal(explicit.pred, by_default.pred)


def test_tta_on_the_ood_map_alone_keeps_the_other_maps_at_the_first_scale(fitted):
    det = copy.deepcopy(fitted["C"])
    images, _ = make_scenes(2, seed=12, size=64)
    one, every = det.score(images), det.score(images, scales=(1.0, 0.5, 0.25))
    det.config.scoring.tta_maps = "ood"
    only_ood = det.score(images, scales=(1.0, 0.5, 0.25))
    assert torch.equal(only_ood.ood, every.ood) and not torch.equal(only_ood.ood, one.ood)
    for kind in ("idm", "concurrent", "pred"):
        assert torch.equal(getattr(only_ood, kind), getattr(one, kind))


def test_image_pixel_postprocessing_at_stride_one_is_the_logit_pixel_one(fitted):
    det = copy.deepcopy(fitted["C"])
    det.config.scoring.postprocess = "logit-pixels"
    det.config.scoring.boundary_width = det.config.scoring.boundary_iterations = 2  # to compare
    logits, features = det.segment(make_scenes(2, seed=2)[0])
    before = det.score_logits(logits, features)
    det.config.scoring.postprocess = "image-pixels"
    after = det.score_logits(logits, features)  # size = logits' size: image and logits agree
    for kind in ("idm", "ood", "concurrent"):
        assert torch.allclose(getattr(before, kind), getattr(after, kind), atol=1e-6)


def test_image_pixel_sizes_at_logit_resolution_approximate_the_reference(fitted):
    """The release's sizes in image pixels, applied at image resolution (the reference) or
    converted by the stride and applied at logit resolution (cheaper): the maps are not
    equal (boundaries of the logit-resolution prediction fall elsewhere) but rank pixels
    alike."""
    det = copy.deepcopy(fitted["C"])
    det.config.fitted.stride = 4.0  # as if the logits were at stride 4
    for name, value in (("boundary_width", 4), ("boundary_iterations", 4), ("ood_dilation", 6)):
        setattr(det.config.scoring, name, value)  # the release's sizes
    images, _ = make_scenes(4, seed=3, size=64)
    logits, features = det.segment(images)
    logits = F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    features = F.interpolate(features, size=(16, 16), mode="bilinear", align_corners=False)
    maps = {}
    for mode in ("image-pixels", "image-pixels-at-logits"):
        det.config.scoring.postprocess = mode
        maps[mode] = det.score_logits(logits, features, size=(64, 64))
    # measured: correlation 0.994 / 0.80 / 0.996 and mean difference 0.014 / 0.104 / 0.011
    # (the sigmoid after post-processing; before it, 0.84-0.9 for ood); unconverted sizes
    # give correlations of 0.83 / 0.53 / 0.85
    for kind, least, apart in (
        ("idm", 0.95, 0.05),
        ("ood", 0.75, 0.12),
        ("concurrent", 0.95, 0.05),
    ):
        a, b = (getattr(maps[m], kind).flatten() for m in maps)
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] > least, kind
        assert (a - b).abs().mean() < apart, kind


def test_fit_length_is_a_step_budget_not_the_loaders_length(segmenter, train_loader, caplog):
    """Two batches and steps=5: five optimizer steps, cycling through the loader; epochs=1
    alone makes one pass (four steps: each batch and its shifted copy) and warns that it is
    far below the default budget; neither steps nor epochs is refused."""
    seen = []

    class Counting(list):
        def __iter__(self):
            seen.append(len(self))
            return super().__iter__()

    loader = Counting(train_loader[:2])
    once = {"steps": 5, "shifted_copies": 0, "progress": False}  # each batch as given
    FlowEneDet(segmenter, variant="U").fit(loader, cache_bytes=0, **once)
    # one statistics pass, then 5 steps over passes of 2 batches (the 3rd pass is cut
    # short), then the batch that measures the score scales
    assert len(seen) == 1 + 3 + 1  # and one more for the held-out images' rules
    seen.clear()
    FlowEneDet(segmenter, variant="U").fit(loader, **once)
    assert len(seen) == 1 + 1  # once the second pass repeated the first, from memory
    caplog.clear()
    fitting._WARNED.clear()
    with caplog.at_level("WARNING", logger="flowenedet"):
        FlowEneDet(segmenter, variant="U").fit(loader, epochs=1, progress=False)
    # one pass: each of the 2 batches as given and shifted
    assert any("epochs=1 gives 4 optimizer steps" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match=r"steps= .* or epochs="):
        FlowEneDet(segmenter, variant="U").fit(loader, steps=None, progress=False)


def test_fit_reads_a_dataloader_whose_batches_are_lists(segmenter):
    # a DataLoader of (image, label) items yields [images, labels] lists, not tuples
    images, labels = make_scenes(8, seed=3)
    dataset = torch.utils.data.TensorDataset(images, labels)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    det = FlowEneDet(segmenter, variant="U")
    det.fit(loader, steps=3, pixels_per_image=64, progress=False)
    ood = det.score(images[:2]).ood
    assert ood.shape == (2, *images.shape[-2:]) and torch.isfinite(ood).all()


def test_a_short_fit_asked_for_with_steps_is_not_warned_about(segmenter, train_loader, caplog):
    """steps= is the caller's choice: no warning, however short. epochs= that gives fewer
    steps than the default budget says what was asked and what the budget is, once."""
    fitting._WARNED.clear()
    with caplog.at_level("WARNING", logger="flowenedet"):
        FlowEneDet(segmenter, variant="U").fit(train_loader[:2], steps=3, progress=False)
    assert not [r for r in caplog.records if "steps" in r.getMessage()]
    with caplog.at_level("WARNING", logger="flowenedet"):
        for _ in range(2):
            FlowEneDet(segmenter, variant="U").fit(train_loader[:2], epochs=2, progress=False)
    said = [r.getMessage() for r in caplog.records if "optimizer steps" in r.getMessage()]
    assert len(said) == 1
    assert "epochs=2 gives 8 optimizer steps" in said[0]  # 2 batches, each also shifted
    assert "default budget is 1000 steps" in said[0]


@pytest.mark.parametrize("grad_mode", [torch.no_grad, torch.inference_mode])
def test_fit_trains_the_flow_under_the_callers_no_grad(segmenter, train_loader, grad_mode):
    """A frozen model is often held under torch.no_grad(): fit and fit_logits still train
    the flow (the segmenter runs without gradients either way)."""
    images, labels = train_loader[0]
    with grad_mode():
        det = FlowEneDet(segmenter).fit(train_loader[:2], steps=3, progress=False)
        logits, features = det.segment(images)
        other = FlowEneDet(nn.Identity()).fit_logits(
            logits, labels, features, steps=3, progress=False
        )
        assert torch.isfinite(det.score(images[:2]).ood).all()
    assert torch.isfinite(other.score_logits(logits[:2], features[:2]).ood).all()
    assert not logits.requires_grad and not features.requires_grad


# ------------------------------------------------------------------ malformed inputs
def test_channels_last_images_are_named_as_such_not_as_a_labels_problem(segmenter):
    images, labels = make_scenes(2, seed=3)
    with pytest.raises(ValueError, match=r"channels last .*permute\(0, 3, 1, 2\)"):
        FlowEneDet(segmenter).fit([(images.permute(0, 2, 3, 1), labels)], steps=1)


def test_padding_labels_are_left_out_and_other_negatives_refused_in_the_first_batch(
    segmenter, caplog
):
    """-1 (PADDING_INDEX) marks pixels with no image, as a crop adds them: the fit leaves
    them out like void. Any other label outside the classes is refused, also in the first
    (or only) batch, before its pixels are counted as misclassified."""
    images, labels = make_scenes(8, seed=3)
    counts = {}
    for value in (255, -1):
        marked = labels.clone()
        marked[:, :6] = value
        with caplog.at_level("INFO", logger="flowenedet.fitting"):
            caplog.clear()
            FlowEneDet(segmenter, variant="U").fit([(images, marked)], steps=1, progress=False)
        counts[value] = [r.getMessage() for r in caplog.records if "fit data" in r.getMessage()]
    assert counts[-1] == counts[255] and counts[-1]
    for value in (-3, 99):
        marked = labels.clone()
        marked[:, :6] = value
        caplog.clear()
        with (
            caplog.at_level("INFO", logger="flowenedet.fitting"),
            pytest.raises(ValueError, match=rf"values \[{value}\] outside \[0, 4\)"),
        ):
            FlowEneDet(segmenter, variant="U").fit([(images, marked)], steps=1, progress=False)
        assert "fit data" not in caplog.text  # refused before its pixels were counted


def test_meta_tensors_and_unknown_devices_get_a_clear_error(fitted, segmenter):
    images, _ = make_scenes(2, seed=3)
    with pytest.raises(ValueError, match="images is on the 'meta' device"):
        fitted["C"].score(images.to("meta"))
    logits = torch.zeros(2, NUM_CLASSES, 16, 16, device="meta")
    with pytest.raises(ValueError, match="logits is on the 'meta' device"):
        fitted["U"].score_logits(logits)
    with pytest.raises(ValueError, match=r"device must be a torch device .* got 'bogus'"):
        FlowEneDet(segmenter).fit([make_scenes(2, seed=3)], device="bogus", steps=1)


def test_score_logits_with_features_of_another_batch_names_both_sizes(fitted, test_scenes):
    det = fitted["C"]
    logits, features = det.segment(test_scenes[0][:4])
    with pytest.raises(ValueError, match="features has 2 items but logits have 4"):
        det.score_logits(logits, features[:2])


def test_a_segmenter_with_constant_logits_is_warned_about_at_fit(caplog):
    """An untrained or broken segmenter (constant logits) fits, but says so: its maps
    cannot tell pixels apart (the ood map is a constant)."""

    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = nn.Conv2d(3, NUM_CLASSES, 1)
            with torch.no_grad():
                self.classifier.weight.zero_()

        def forward(self, images):
            return self.classifier(images)

    images, labels = make_scenes(4, seed=3)
    with caplog.at_level("WARNING", logger="flowenedet.fitting"):
        det = FlowEneDet(Constant(), variant="U").fit([(images, labels)], steps=2, progress=False)
    assert "does not vary" in caplog.text and "every class" in caplog.text
    ood = det.score(images).ood
    assert (ood.max() - ood.min()).item() < 1e-3  # what the warning is about
