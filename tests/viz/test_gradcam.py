import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from pytorch_utils.errors import ConfigError, UnknownNameError
from pytorch_utils.viz import conv_layer_names, gradcam, plot_gradcam, resolve_target_layer

from viz_helpers import CLASSES, MEAN, STD


def _state(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)])


def test_maps_shape_range_and_differ(tiny_model, norm_images):
    maps = gradcam(tiny_model, norm_images[:4])
    assert maps.shape == (4, 32, 32) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert maps.max() > 0.5  # each map is scaled to [0, 1]
    assert np.abs(maps[0] - maps[1]).mean() > 1e-3  # different images, different maps
    # non-square inputs keep their spatial size
    assert gradcam(tiny_model, torch.randn(2, 3, 24, 40)).shape == (2, 24, 40)


def test_inplace_relu_gives_correct_maps_and_is_restored(tiny_model, norm_images):
    reference = copy.deepcopy(tiny_model)
    for m in reference.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    targets = [3, 5, 1, 7]
    maps = gradcam(tiny_model, norm_images[:4], targets=targets)
    expected = gradcam(reference, norm_images[:4], targets=targets)
    # Without switching off in-place ReLU the hooked BN output is overwritten and these differ by up to ~0.7.
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    assert all(m.inplace for m in tiny_model.modules() if isinstance(m, nn.ReLU))


def test_model_state_restored(tiny_model, norm_images):
    tiny_model.train()
    tiny_model.features[0].eval()  # a partly-eval model must come back exactly so
    tiny_model.fc.weight.requires_grad_(False)
    grad = torch.ones_like(tiny_model.features[0].weight)
    tiny_model.features[0].weight.grad = grad
    before = _state(tiny_model)
    running = tiny_model.features[1].running_mean.clone()
    with torch.no_grad():  # callers inside no_grad must still get maps
        gradcam(tiny_model, norm_images[:2])
    assert _state(tiny_model) == before
    assert tiny_model.features[0].weight.grad is grad  # .grad untouched
    assert tiny_model.fc.weight.grad is None
    assert torch.equal(tiny_model.features[1].running_mean, running)  # ran in eval mode: BN stats unchanged


def test_targets_change_the_map(tiny_model, norm_images):
    x = norm_images[:1].repeat(2, 1, 1, 1)
    maps = gradcam(tiny_model, x, targets=[0, 9])
    assert np.abs(maps[0] - maps[1]).mean() > 1e-3
    with pytest.raises(ConfigError):
        gradcam(tiny_model, x, targets=[0, 1, 2])


def test_target_layer_resolution(tiny_model, norm_images):
    assert resolve_target_layer(tiny_model)[0] == "features.4"  # cam_layer
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    assert resolve_target_layer(model)[0] == "2"  # no cam_layer: last Conv2d
    assert conv_layer_names(model) == ["0", "2"]
    with pytest.raises(UnknownNameError) as err:
        gradcam(tiny_model, norm_images[:1], target_layer="features.99")
    assert "features.3" in str(err.value) and isinstance(err.value, KeyError)
    assert gradcam(model, torch.randn(1, 3, 16, 16), target_layer="0", method="gradcam++").shape == (1, 16, 16)
    with pytest.raises(UnknownNameError):
        gradcam(model, torch.randn(1, 3, 16, 16), method="nope")


def test_plot_gradcam(tmp_path, check_png, tiny_model, norm_images):
    targets = np.arange(5) % 10
    preds = (targets + 2) % 10
    path = tmp_path / "cam.png"
    fig = plot_gradcam(tiny_model, norm_images[:5], targets, preds, CLASSES, MEAN, STD, target="true", k=5, save=path)
    check_png(path, fig)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert len(titles) == 10
    assert titles[0] == f"true: {CLASSES[0]}\npred: {CLASSES[2]}"
    assert titles[1] == f"CAM for: true {CLASSES[0]}"
    fig = plot_gradcam(tiny_model, norm_images, targets, None, CLASSES, MEAN, STD, k=2)  # preds computed here
    assert fig.axes[1].get_title().startswith("CAM for: pred ")


def test_registered_model_strixbee(norm_images):
    try:
        from pytorch_utils.models import create_model
        model = create_model("strixbee_l1")
    except Exception as exc:  # the models package is written in parallel; skip rather than fail here
        pytest.skip(f"models package unavailable: {exc}")
    model.eval()
    maps = gradcam(model, norm_images[:2])
    assert maps.shape == (2, 32, 32) and 0 <= maps.min() and maps.max() <= 1
    assert not model.training
