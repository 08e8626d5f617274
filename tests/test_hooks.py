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
