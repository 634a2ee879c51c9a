import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from viz_helpers import CLASSES, MEAN, STD, leftover_hooks, model_flags, partly_frozen

from pytorch_utils.errors import ConfigError, UnknownNameError
from pytorch_utils.viz import gradcam, plot_gradcam
from pytorch_utils.viz.gradcam import conv_layer_names, resolve_target_layer


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


@pytest.mark.parametrize("targets", [[3, 5, 1, 7], None])
def test_maps_equal_pytorch_grad_cam(tiny_model, norm_images, targets):
    """Pinned to the library: pytorch-grad-cam's GradCAM on the same model (eval mode, out-of-place ReLUs)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    reference = copy.deepcopy(tiny_model).eval()
    for m in reference.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    cam = GradCAM(model=reference, target_layers=[reference.features[4]])
    expected = cam(input_tensor=norm_images[:4],
                   targets=None if targets is None else [ClassifierOutputTarget(c) for c in targets])
    cam.activations_and_grads.release()
    np.testing.assert_allclose(gradcam(tiny_model, norm_images[:4], targets=targets), expected, atol=1e-6)


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
    with pytest.raises(ValueError):  # neither one target for all nor one per image
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


def test_plot_gradcam_keeps_per_module_modes_when_predicting(tiny_model, norm_images):
    model = partly_frozen(tiny_model, tiny_model.features[1])  # a BN frozen in eval mode inside a training model
    before = model_flags(model)
    plot_gradcam(model, norm_images, np.arange(4), None, CLASSES, MEAN, STD, k=4)  # preds=None: predicted here
    assert model_flags(model) == before
    assert not model.features[1].training and model.features[4].training
    assert leftover_hooks(model) == []


def test_no_leftover_hooks_and_flags_restored(tiny_model, norm_images):
    model = partly_frozen(tiny_model, tiny_model.fc)
    before = model_flags(model)
    names_before = [n for n, _ in model.named_modules()]
    gradcam(model, norm_images[:3], targets=[1, 2, 3])
    gradcam(model, norm_images[:3], target_layer="pool:input", method="gradcam++")
    plot_gradcam(model, norm_images[:3], [0, 1, 2], [2, 1, 0], CLASSES, MEAN, STD, k=3)
    assert leftover_hooks(model) == []
    assert model_flags(model) == before
    assert [n for n, _ in model.named_modules()] == names_before  # nothing added to the model (summary table)
    with pytest.raises(ConfigError):  # also on the error path
        gradcam(model, norm_images[:2], targets=[0, 99])
    assert leftover_hooks(model) == [] and model_flags(model) == before
    assert all(p.grad is None for p in model.parameters())


def test_bad_target_class_names_class_and_range(tiny_model, norm_images):
    with pytest.raises(ConfigError, match=r"class 99 .*10 classes.*\[0, 9\]"):
        gradcam(tiny_model, norm_images[:2], targets=99)
    with pytest.raises(ConfigError, match="-1"):
        gradcam(tiny_model, norm_images[:2], targets=[-1, 0])
    with pytest.raises(ConfigError, match="class 12"):
        plot_gradcam(tiny_model, norm_images[:2], [12, 3], [1, 2], CLASSES, MEAN, STD, target="true", k=2)


def test_input_hook_point(tiny_model, norm_images):
    name, module = resolve_target_layer(tiny_model, "pool:input")
    assert name == "pool:input" and module is tiny_model.pool
    assert resolve_target_layer(tiny_model, "features.4:output")[1] is tiny_model.features[4]
    # The pool's input is the last ReLU's output: the same activations, so the same maps.
    np.testing.assert_allclose(gradcam(tiny_model, norm_images[:3], target_layer="pool:input", targets=[1, 2, 3]),
                               gradcam(tiny_model, norm_images[:3], target_layer="features.5", targets=[1, 2, 3]),
                               atol=1e-5)
    with pytest.raises(UnknownNameError, match="'name:input'"):
        resolve_target_layer(tiny_model, "pool:inptu")
    with pytest.raises(UnknownNameError):
        resolve_target_layer(tiny_model, "nope:input")
    fig = plot_gradcam(tiny_model, norm_images[:2], [0, 1], [0, 1], CLASSES, MEAN, STD, target_layer="pool:input")
    assert "input of layer 'pool'" in fig._suptitle.get_text()


def test_s10_default_cam_includes_the_skip_path():
    from pytorch_utils.models import create_model
    from pytorch_utils.models.resnet_s10 import S10ResNet

    class S10WithSumModule(S10ResNet):
        """Reference: the residual sum exposed as a module output (what the default spec must explain)."""

        def __init__(self):
            super().__init__()
            self.sum_point = nn.Identity()

        def forward(self, x):
            x = self.prep(x)
            x = self.layer1(x)
            x = x + self.res1(x)
            x = self.layer3(self.layer2(x))
            x = self.sum_point(x + self.res2(x))
            return self.fc(torch.flatten(self.pool(x), 1))

    torch.manual_seed(0)
    model = create_model("s10_resnet")
    reference = S10WithSumModule()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    maps = gradcam(model, x, targets=[3, 5])  # default: model.cam_layer
    np.testing.assert_allclose(maps, gradcam(reference, x, target_layer="sum_point", targets=[3, 5]), atol=1e-4)
    assert np.abs(maps - gradcam(model, x, target_layer="res2", targets=[3, 5])).max() > 1e-3  # res2 alone differs
    assert leftover_hooks(model) == []


def _registered_models():
    try:
        from pytorch_utils.models import list_models
        return list_models()
    except Exception:  # the models package is written in parallel; the test below skips then
        return ["<models unavailable>"]


# Smallest settings per builder; wrn28_10 has no smaller setting (36M parameters, a few seconds on 2 CPU cores).
SMALL_KWARGS = {"wide_resnet": {"depth": 10, "widen_factor": 1}}


@pytest.mark.parametrize("name", _registered_models())
def test_gradcam_runs_on_every_registered_model(name):
    from pytorch_utils.models import create_model

    if name.startswith("<"):
        pytest.skip("models package unavailable")
    torch.manual_seed(0)
    model = create_model(name, **SMALL_KWARGS.get(name, {}))
    model.train()
    before = model_flags(model)
    maps = gradcam(model, torch.randn(2, 3, 32, 32))
    assert maps.shape == (2, 32, 32) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    assert leftover_hooks(model) == [] and model_flags(model) == before
