"""Test-time augmentation views: the shifts are right, keep channels_last, and the TTA output is the log of the mean
softmax over the views."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pytorch_utils.train import tta
from pytorch_utils.train.tta import FLIP_TRANSLATE_VIEWS, FLIP_VIEWS, get_tta, translate


def _shift_by_hand(x, dx, dy):
    """out[..., i, j] = x[..., clamp(i - dy), clamp(j - dx)]: the shift with edge replication, by indexing."""
    h, w = x.shape[-2:]
    rows = (torch.arange(h) - dy).clamp(0, h - 1)
    cols = (torch.arange(w) - dx).clamp(0, w - 1)
    return x[:, :, rows][:, :, :, cols]


class Recorder(nn.Module):
    """A small conv net that records the memory format of every input it sees."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.is_contiguous(memory_format=torch.channels_last))
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


def _batch(channels_last):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("dx,dy", [(2, 0), (-2, 0), (0, 2), (0, -2), (1, -3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_translate_matches_the_shift_by_hand(dx, dy, channels_last):
    x = _batch(channels_last)
    out = translate(x, dx, dy)
    assert out.shape == x.shape
    assert torch.equal(out, _shift_by_hand(x, dx, dy))
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_translate_keeps_channels_last_when_the_pad_returns_nchw(monkeypatch):
    # Some backends' replicate pad hands back an NCHW tensor for a channels_last input: the view must still be
    # channels_last.
    nchw_pad = lambda *a, **k: F.pad(*a, **k).contiguous()  # noqa: E731
    monkeypatch.setattr(tta, "F", SimpleNamespace(pad=nchw_pad, log_softmax=F.log_softmax))
    x = _batch(True)
    for _, dx, dy in FLIP_TRANSLATE_VIEWS:
        out = translate(x, dx, dy)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(out, _shift_by_hand(x, dx, dy))


def test_flip_translate_views_reach_the_model_channels_last():
    model = Recorder().eval().to(memory_format=torch.channels_last)
    with torch.no_grad():
        get_tta("flip_translate")(model, _batch(True))
    assert len(model.seen) == len(FLIP_TRANSLATE_VIEWS) == 10
    assert all(model.seen)


@pytest.mark.parametrize("name,views", [("flip", FLIP_VIEWS), ("flip_translate", FLIP_TRANSLATE_VIEWS)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_tta_logits_are_the_log_mean_softmax_over_the_views(name, views, channels_last):
    model = Recorder().eval()
    x = _batch(channels_last)
    with torch.no_grad():
        out = get_tta(name)(model, x)
        probs = []
        for flip, dx, dy in views:
            v = torch.flip(x, dims=(3,)) if flip else x
            probs.append(model(_shift_by_hand(v, dx, dy)).softmax(1))
        expected = torch.stack(probs).mean(0)
    assert out.shape == (4, 5)
    assert torch.allclose(out.exp(), expected, atol=1e-6)
    assert torch.allclose(out, expected.log(), atol=1e-5)
    assert len(views) == (2 if name == "flip" else 10)
    assert math.isclose(out.exp().sum(1).mean().item(), 1.0, abs_tol=1e-5)


def test_get_tta_options():
    assert get_tta(None) is None and get_tta("none") is None
    fn = lambda model, x: model(x)  # noqa: E731
    assert get_tta(fn) is fn
    with pytest.raises(Exception, match="unknown tta"):
        get_tta("rotate")


def test_flip_tta_is_the_mean_softmax_of_the_image_and_its_mirror():
    """Pinned to the plain computation, so evaluate's and predict's one flip TTA cannot drift."""
    model = Recorder().eval()
    x = _batch(False)
    with torch.no_grad():
        expected = (F.softmax(model(x), dim=1) + F.softmax(model(torch.flip(x, dims=[3])), dim=1)) / 2
        got = F.softmax(get_tta("flip")(model, x), dim=1)  # what evaluate and predict turn into probabilities
    assert torch.allclose(got, expected, atol=1e-6)
