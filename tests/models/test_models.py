"""Model zoo tests: every registered model is exercised the moment it is registered."""
import pytest
import torch
import torch.nn as nn

from pytorch_utils.errors import ConfigError, InputShapeError, UnknownNameError
from pytorch_utils.models import count_parameters, create_model, list_models, register_model, summary
from pytorch_utils.models.costs import model_cost
from pytorch_utils.models.resnet_s8 import S8ResNet
from pytorch_utils.models.resnet_s10 import S10ResNet
from pytorch_utils.models.strixbee import StrixbeeNet
from pytorch_utils.models.wide_resnet import WideResNet

ALL_MODELS = list_models()

# Exact counts for 10 classes (the Strixbee numbers are also in the builders' docstrings).
PARAM_COUNTS = {
    "s10_resnet": 6_573_130,
    "s8_resnet": 29_986_122,  # 30,032,292 for 100 classes (the S8 seed's count), test below
    "wrn28_10": 36_489_290,
    "wide_resnet": 36_489_290,  # defaults are depth 28, widen 10
    "wrn16_2": 692_810,
    "strixbee_l1": 83_368,  # the seed's level-1 count
    "strixbee_l2": 88_040,
    "strixbee_l3": 88_040,
}

# torchsummary rows of S10 in the course order (flatten is an op in forward, not a layer).
S10_LAYERS = [
    # prep
    "Conv2d-1", "BatchNorm2d-2", "ReLU-3", "Dropout-4",
    # layer1 X
    "Conv2d-5", "MaxPool2d-6", "BatchNorm2d-7", "ReLU-8", "Dropout-9",
    # layer1 R1
    "Conv2d-10", "BatchNorm2d-11", "ReLU-12", "Dropout-13",
    "Conv2d-14", "BatchNorm2d-15", "ReLU-16", "Dropout-17",
    # layer2
    "Conv2d-18", "MaxPool2d-19", "BatchNorm2d-20", "ReLU-21", "Dropout-22",
    # layer3 X
    "Conv2d-23", "MaxPool2d-24", "BatchNorm2d-25", "ReLU-26", "Dropout-27",
    # layer3 R2
    "Conv2d-28", "BatchNorm2d-29", "ReLU-30", "Dropout-31",
    "Conv2d-32", "BatchNorm2d-33", "ReLU-34", "Dropout-35",
    # head
    "MaxPool2d-36", "Linear-37",
]


def _meta_model(name, **kwargs):
    """Build on the meta device: exact shapes and counts without allocating or initialising 36M weights."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


def test_registry_lists_every_family():
    assert set(PARAM_COUNTS) == set(ALL_MODELS)


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward(name, num_classes):
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    out.logsumexp(dim=1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert model.model_name == name


@pytest.mark.parametrize("name", ALL_MODELS)
def test_parameter_count(name):
    assert count_parameters(_meta_model(name)) == PARAM_COUNTS[name]


def test_parameter_counts_for_100_classes():
    assert count_parameters(_meta_model("wrn28_10", num_classes=100)) == 36_546_980
    assert count_parameters(_meta_model("s8_resnet", num_classes=100)) == 30_032_292
    # Only the Linear head grows: 90 more classes x (512 weights + 1 bias).
    assert count_parameters(_meta_model("s10_resnet", num_classes=100)) == 6_573_130 + 90 * 513


@pytest.mark.parametrize("name", [n for n in ALL_MODELS if n.startswith("strixbee")])
def test_strixbee_levels_stay_under_100k(name):
    assert count_parameters(_meta_model(name)) < 100_000


def test_strixbee_levels_differ_as_specified():
    l1, l2, l3 = (create_model(f"strixbee_l{i}") for i in (1, 2, 3))
    assert any(isinstance(m, nn.MaxPool2d) for m in l1.modules())
    assert not any(isinstance(m, nn.MaxPool2d) for m in l2.modules())
    assert sum(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in l2.modules()) == 2
    assert {m.p for m in l1.modules() if isinstance(m, nn.Dropout)} == {0.0}
    assert {m.p for m in l2.modules() if isinstance(m, nn.Dropout)} == {0.0}
    assert {m.p for m in l3.modules() if isinstance(m, nn.Dropout)} == {0.05}


def test_s10_summary_lists_spec_layers_in_order():
    result = summary(create_model("s10_resnet"), print_table=False)
    assert [name for name, _, _ in result.layers] == S10_LAYERS
    assert result.layers[-1] == ("Linear-37", (-1, 10), 5_130)
    assert result.layers[-2][1] == (-1, 512, 1, 1)


def test_s10_rejects_non_32x32_input():
    model = create_model("s10_resnet")
    with pytest.raises(InputShapeError, match=r"\(N, 3, 32, 32\).*\(2, 3, 28, 28\)"):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(InputShapeError):
        model(torch.randn(3, 32, 32))  # unbatched


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (2, 3, 4, 4), (3, 32, 32)])
def test_wrn_rejects_bad_input(shape):
    with pytest.raises(InputShapeError, match=r"\(N, 3, H, W\)"):
        create_model("wrn16_2")(torch.randn(*shape))


@pytest.mark.parametrize("size", [36, 40])
def test_wrn_accepts_progressive_resizing_inputs(size):
    model = create_model("wrn16_2", num_classes=100).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 100)
    # Same check on the full WRN-28-10, shapes only (meta device: no compute).
    big = _meta_model("wrn28_10")
    assert big(torch.empty(2, 3, size, size, device="meta")).shape == (2, 10)


@pytest.mark.parametrize("depth", [27, 4, 10.0, "28"])
def test_wrn_rejects_bad_depth(depth):
    with pytest.raises(ConfigError, match="depth"):
        create_model("wide_resnet", depth=depth)


def test_wide_resnet_kwargs_reach_the_model():
    model = _meta_model("wide_resnet", depth=16, widen_factor=2, dropout=0.1)
    assert count_parameters(model) == PARAM_COUNTS["wrn16_2"]
    assert len(model.layer1) == 2  # (16 - 4) / 6 blocks per stage
    assert model.fc.in_features == 128


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("kwargs", [{"dropout": -0.1}, {"dropout": 1.0}, {"num_classes": 0}])
def test_bad_options_raise_config_error(name, kwargs):
    with pytest.raises(ConfigError):
        create_model(name, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"depth": 1000, "widen_factor": 100}, "'depth' must be >= 10 and <= 40, got 1000"),
    ({"depth": 46}, "'depth' must be >= 10 and <= 40"),
    ({"widen_factor": 100}, "'widen_factor' must be >= 1 and <= 20, got 100"),
    ({"num_classes": 100_000}, "'num_classes' must be >= 1 and <= 1000"),
])
def test_sizes_have_upper_bounds(kwargs, message):
    """A file's config cannot ask for a model of any size: the bounds are checked before anything is built."""
    with pytest.raises(ConfigError, match=message):
        create_model("wide_resnet", **kwargs)


def test_the_bounds_admit_every_recipe_and_the_largest_allowed_sizes():
    from pytorch_utils.recipes import get_recipe, list_recipes

    for name in list_recipes():
        recipe = get_recipe(name)
        assert isinstance(_meta_model(recipe.model, num_classes=100, **recipe.model_kwargs), nn.Module), name
    assert _meta_model("wide_resnet", depth=40, widen_factor=20, num_classes=1000).fc.out_features == 1000


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownNameError) as info:
        create_model("resnet9000")
    message = str(info.value)
    assert "resnet9000" in message
    assert all(name in message for name in ALL_MODELS)
    assert isinstance(info.value, KeyError)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_model(name="s10_resnet")(lambda num_classes=10: nn.Linear(1, num_classes))
    assert list_models() == ALL_MODELS


@pytest.mark.parametrize("name", ALL_MODELS)
def test_dropout_reaches_every_dropout_module(name):
    with_p = _meta_model(name, dropout=0.3)
    without = _meta_model(name, dropout=0.0)
    ps = [m.p for m in with_p.modules() if isinstance(m, nn.Dropout)]
    assert ps and all(p == 0.3 for p in ps)
    # p=0 keeps the modules, so tables and run-time schedules see the same layout.
    assert sum(isinstance(m, nn.Dropout) for m in without.modules()) == len(ps)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_models_return_logits(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(4, 3, 32, 32))
    assert not torch.allclose(out.sum(dim=1), torch.ones(4), atol=1e-3)  # not softmax
    assert not torch.allclose(out.logsumexp(dim=1), torch.zeros(4), atol=1e-3)  # not log-softmax


@pytest.mark.parametrize("name", ALL_MODELS)
def test_cam_layer_is_a_spatial_module(name):
    model = _meta_model(name)
    modules = dict(model.named_modules())
    # "name" explains a module's output; "name:input" the tensor going into it (S10: the residual sum before pool).
    layer, _, point = model.cam_layer.partition(":")
    assert layer in modules and point in ("", "input", "output")
    seen = []
    modules[layer].register_forward_hook(lambda m, i, o: seen.append((i[0] if point == "input" else o).shape))
    model(torch.empty(2, 3, 32, 32, device="meta"))
    assert len(seen) == 1
    assert len(seen[0]) == 4 and seen[0][-1] >= 4  # a feature map, not a pooled vector


def test_model_classes_declare_cam_layer():
    for cls in (S10ResNet, S8ResNet, WideResNet, StrixbeeNet):
        assert isinstance(cls.cam_layer, str) and cls.cam_layer


def test_unknown_keyword_names_it_and_lists_the_accepted_ones():
    with pytest.raises(ConfigError) as info:
        create_model("wide_resnet", foo=1)
    msg = str(info.value)
    assert "'foo'" in msg and all(k in msg for k in ("num_classes", "depth", "widen_factor", "dropout"))
    assert isinstance(info.value, TypeError)  # code catching the old TypeError keeps working
    with pytest.raises(ConfigError, match="'widen'"):
        create_model("wrn16_2", widen=2)  # a keyword of another builder of the family


def test_type_error_inside_the_model_is_not_reported_as_a_bad_keyword(monkeypatch):
    from pytorch_utils.models import _registry

    def broken(num_classes=10, dropout=0.0):
        return nn.Linear(2, num_classes) + 1  # a bug in the model code: TypeError

    monkeypatch.setitem(_registry._MODELS._items, "broken_model", broken)
    with pytest.raises(TypeError) as info:
        create_model("broken_model", dropout=0.1)
    assert not isinstance(info.value, ConfigError)


def _wrn_course_rows(num_classes=10, depth=28, k=10):
    """The course's torchsummary rows of WRN-depth-k (ReLU and pooling functional, identity shortcuts no module):
    stem Conv2d; per block BatchNorm2d, Conv2d, Dropout, BatchNorm2d, Conv2d(stride), the shortcut Conv2d when the
    shape changes, the block's own row; the final BatchNorm2d and the Linear."""
    rows = [("Conv2d", (16, 32, 32), 3 * 16 * 9 + 16)]
    c_in, size = 16, 32
    for width, stride in ((16 * k, 1), (32 * k, 2), (64 * k, 2)):
        for b in range((depth - 4) // 6):
            out = size // stride if b == 0 else size
            rows += [
                ("BatchNorm2d", (c_in, size, size), 2 * c_in),
                ("Conv2d", (width, size, size), c_in * width * 9 + width),
                ("Dropout", (width, size, size), 0),
                ("BatchNorm2d", (width, size, size), 2 * width),
                ("Conv2d", (width, out, out), width * width * 9 + width),
            ]
            if b == 0:
                rows.append(("Conv2d", (width, out, out), c_in * width + width))
            rows.append(("WideBasicBlock", (width, out, out), 0))
            c_in, size = width, out
    rows += [("BatchNorm2d", (c_in, size, size), 2 * c_in),
             ("Linear", (num_classes,), c_in * num_classes + num_classes)]
    return [(f"{kind}-{i}", (-1, *shape), params) for i, (kind, shape, params) in enumerate(rows, start=1)]


def test_wrn28_10_summary_equals_the_course_table_row_for_row():
    expected = _wrn_course_rows()
    # Spot checks against the course's printout, so the helper above cannot drift with the model.
    assert len(expected) == 78
    assert expected[:8] == [
        ("Conv2d-1", (-1, 16, 32, 32), 448), ("BatchNorm2d-2", (-1, 16, 32, 32), 32),
        ("Conv2d-3", (-1, 160, 32, 32), 23_200), ("Dropout-4", (-1, 160, 32, 32), 0),
        ("BatchNorm2d-5", (-1, 160, 32, 32), 320), ("Conv2d-6", (-1, 160, 32, 32), 230_560),
        ("Conv2d-7", (-1, 160, 32, 32), 2_720), ("WideBasicBlock-8", (-1, 160, 32, 32), 0),
    ]
    assert expected[-2:] == [("BatchNorm2d-77", (-1, 640, 8, 8), 1_280), ("Linear-78", (-1, 10), 6_410)]
    assert sum(p for _, _, p in expected) == 36_489_290

    torch.manual_seed(0)
    result = summary(create_model("wrn28_10", dropout=0.3), print_table=False)
    assert result.layers == expected
    assert (result.total_params, result.trainable_params) == (36_489_290, 36_489_290)
    assert result.notes == []  # torchsummary's sums agree: no shared layers, no bare Parameters


def test_wrn28_10_for_100_classes_changes_only_the_head():
    rows = _wrn_course_rows(num_classes=100)
    assert rows[-1] == ("Linear-78", (-1, 100), 64_100)
    assert sum(p for _, _, p in rows) == 36_546_980


def test_s8_resnet_is_the_seed_layout():
    model = _meta_model("s8_resnet", num_classes=100, dropout=0.3)
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3, 4)] == [5, 5, 5, 5]
    assert (model.conv1.in_channels, model.conv1.out_channels, model.conv1.bias) == (3, 64, None)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    firsts = [getattr(model, f"layer{i}")[0] for i in (1, 2, 3, 4)]
    assert [b.conv1.out_channels for b in firsts] == [64, 128, 256, 512]
    assert [b.conv1.stride for b in firsts] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    # Projection (1x1 conv without bias > BN) only where the shape changes.
    assert [b.shortcut is None for b in firsts] == [True, False, False, False]
    assert isinstance(firsts[1].shortcut[0], nn.Conv2d) and firsts[1].shortcut[0].kernel_size == (1, 1)
    assert firsts[1].shortcut[0].bias is None and isinstance(firsts[1].shortcut[1], nn.BatchNorm2d)
    assert model.dropout.p == 0.3 and model.fc.in_features == 512 and model.fc.bias is not None
    out = model(torch.empty(2, 3, 32, 32, device="meta"))
    assert out.shape == (2, 100)


def test_strixbee_level1_is_a_plain_cnn_with_the_seed_count():
    model = _meta_model("strixbee_l1")
    assert count_parameters(model) == 83_368
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2
    assert all(m.stride == (1, 1) for m in model.modules() if isinstance(m, nn.Conv2d))


def test_model_cost_counts_conv_and_linear_macs():
    # A 3x3 conv 3->8 on 10x10 (padding 1): 8 * 10 * 10 output values, 3 * 9 MACs each; then Linear 8 -> 2.
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    model.train()
    cost = model_cost(model, (3, 10, 10))
    assert cost.macs == 8 * 10 * 10 * 3 * 9 + 8 * 2
    assert cost.params == 3 * 8 * 9 + 8 + 8 * 2 + 2
    assert cost.epoch_macs(images=10) == 30 * cost.macs and cost.epoch_macs(10, train=False) == 10 * cost.macs
    assert model.training  # mode put back


def test_s8_resnet_costs_a_quarter_of_wrn28_10():
    s8 = model_cost(_meta_model("s8_resnet", num_classes=100))
    wrn = model_cost(_meta_model("wrn28_10", num_classes=100))
    assert s8.params == 30_032_292 and wrn.params == 36_546_980
    # The docstrings' numbers: 1.46 G and 5.95 G MACs per 32x32 image.
    assert round(s8.macs / 1e9, 2) == 1.46 and round(wrn.macs / 1e9, 2) == 5.95


def test_family_modules_import_the_registry_not_the_package():
    """No import cycle: the families register through ``_registry``, which imports nothing of ``models``."""
    import ast
    from pathlib import Path

    import pytorch_utils.models as models

    for path in Path(models.__file__).parent.glob("*.py"):
        imported = {n.module for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)}
        assert "pytorch_utils.models" not in imported or path.name == "__init__.py", path.name
        if path.name == "_registry.py":
            assert not any(m.startswith("pytorch_utils.models") for m in imported if m)
