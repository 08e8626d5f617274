from types import SimpleNamespace

import pytest
import torch
from torch import nn

from flowenedet.hooks import SegmenterTap, find_classifier, frozen, logits_of


class AuxHeadModel(nn.Module):
    """torchvision-like: dict output, an auxiliary classifier called after the main one."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.classifier = nn.Conv2d(8, 5, 1)
        self.aux_classifier = nn.Conv2d(3, 5, 1)

    def forward(self, x):
        out = nn.functional.interpolate(self.classifier(self.body(x)), size=x.shape[-2:])
        return {"out": out, "aux": self.aux_classifier(x)}


@pytest.mark.parametrize(
    "wrap",
    [
        lambda t: t,
        lambda t: {"out": t, "aux": t * 0},
        lambda t: (t, "other"),
        lambda t: [t],
        lambda t: SimpleNamespace(logits=t),
    ],
)
def test_logits_of_accepts_common_output_formats(wrap):
    t = torch.randn(2, 3, 4, 4)
    assert logits_of(wrap(t)) is t


def test_logits_of_rejects_other_outputs():
    with pytest.raises(TypeError, match="segmenter output"):
        logits_of("nope")
    with pytest.raises(ValueError, match=r"\(B, K, h, w\)"):
        logits_of(torch.zeros(2, 3))


def test_find_classifier_skips_auxiliary_head():
    torch.manual_seed(0)
    model = AuxHeadModel()
    assert find_classifier(model, torch.randn(1, 3, 16, 16)) == "classifier"


class SlicedHead(nn.Module):
    """Logits are a slice of a wider conv: no Conv2d has K output channels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        return self.conv(x)[:, :4]


def test_find_classifier_explains_when_there_is_none():
    model = SlicedHead()
    with pytest.raises(ValueError, match="feature_layer="):
        find_classifier(model, torch.randn(1, 3, 8, 8))


def test_tap_captures_classifier_input_and_named_layer_output():
    torch.manual_seed(0)
    model = AuxHeadModel()
    x = torch.randn(2, 3, 8, 8)
    logits, features = SegmenterTap(model, "classifier:input")(x)
    assert logits.shape == (2, 5, 8, 8)
    assert torch.allclose(features, model.body(x))
    _, body_out = SegmenterTap(model, "body")(x)
    assert torch.allclose(body_out, features)
    with pytest.raises(ValueError, match="not a submodule"):
        SegmenterTap(model, "decoder")


def test_frozen_restores_every_training_flag_and_keeps_dropout_on_request():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.Dropout(0.5))
    model.train()
    model[1].eval()
    with frozen(model, dropout=True):
        assert not model.training and not model[1].training and model[2].training
        assert not torch.is_grad_enabled()
    assert [m.training for m in model.modules()] == [True, True, False, True]


class SummedHeads(nn.Module):
    """LR-ASPP-like: the logits are the sum of a low- and a high-resolution classifier."""

    def __init__(self):
        super().__init__()
        self.low = nn.Conv2d(3, 4, 1)
        self.high_body = nn.Conv2d(3, 12, 3, stride=2, padding=1)
        self.low_classifier = nn.Conv2d(4, 5, 1)
        self.high_classifier = nn.Conv2d(12, 5, 1)

    def forward(self, x):
        high = self.high_classifier(self.high_body(x))
        up = nn.functional.interpolate(high, size=x.shape[-2:], mode="bilinear")
        return self.low_classifier(self.low(x)) + up


def test_summed_classifiers_give_the_one_with_the_widest_input():
    torch.manual_seed(0)
    assert find_classifier(SummedHeads(), torch.randn(1, 3, 16, 16)) == "high_classifier"


def test_the_failure_lists_the_layers_one_could_name():
    torch.manual_seed(0)
    with pytest.raises(ValueError) as error:
        find_classifier(SlicedHead(), torch.randn(1, 3, 8, 8))
    # the 8-channel conv's output has the logits' size 8x8
    assert "'conv' (1, 8, 8, 8)" in str(error.value)


class LinearHead(nn.Module):
    """A transformer-style head: channels-last tokens, LayerNorm and nn.Linear classifier."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 6, 2, stride=2)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        tokens = self.norm(self.embed(x).permute(0, 2, 3, 1))  # (B, h, w, C)
        return self.head(tokens).permute(0, 3, 1, 2)


class ChannelsLastOutput(nn.Module):
    """A plain module whose output is channels-last: only its shape tells the layout."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1)


def test_a_linear_classifier_is_found_and_channels_last_features_are_permuted():
    torch.manual_seed(0)
    model = LinearHead()
    x = torch.randn(2, 3, 12, 20)
    assert find_classifier(model, x) == "head"
    expected = model.norm(model.embed(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (2, 6, 6, 10)
    for layer in ("head:input", "norm"):
        logits, features = SegmenterTap(model, layer)(x)
        assert logits.shape == (2, 5, 6, 10)
        assert torch.allclose(features, expected)


@pytest.mark.parametrize("size", [(12, 20), (16, 16)])
def test_a_plain_channels_last_output_is_read_from_the_logits_size(size):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 7, 1), ChannelsLastOutput(), nn.Linear(7, 5))
    model.forward = lambda x: model[2](model[1](model[0](x))).permute(0, 3, 1, 2)
    x = torch.randn(1, 3, *size)
    _, features = SegmenterTap(model, "1")(x)
    assert torch.allclose(features, model[0](x))


def test_features_that_fit_no_layout_are_refused():
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Identity()
            self.classifier = nn.Conv2d(3, 5, 1)

        def forward(self, x):
            self.body(x.reshape(x.shape[0], 3, 1, -1))  # a row: no spatial alignment
            return self.classifier(x)

    with pytest.raises(ValueError, match="aspect ratio"):
        SegmenterTap(Flat(), "body")(torch.randn(1, 3, 8, 8))
