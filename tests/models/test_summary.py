"""summary(): torchsummary's table as data, without side effects on the model."""
import pytest
import torch
import torch.nn as nn

from pytorch_utils.errors import ConfigError, InputShapeError
from pytorch_utils.models import count_parameters, create_model, list_models, summary
from pytorch_utils.models.summary import ModelSummary


def _hook_counts(model):
    return [len(m._forward_hooks) for m in model.modules()]


@pytest.mark.parametrize("name", [n for n in list_models() if n not in ("wrn28_10", "wide_resnet")])
def test_totals_equal_count_parameters(name):
    model = create_model(name)
    result = summary(model, print_table=False)
    assert isinstance(result, ModelSummary)
    assert result.total_params == count_parameters(model, trainable_only=False)
    assert result.trainable_params == count_parameters(model)
    assert sum(params for _, _, params in result.layers) == result.total_params


def test_rows_parse_names_shapes_and_params():
    result = summary(create_model("strixbee_l1"), print_table=False)
    assert result.layers[0] == ("Conv2d-1", (-1, 16, 32, 32), 3 * 16 * 9)
    assert result.layers[1] == ("BatchNorm2d-2", (-1, 16, 32, 32), 32)
    assert result.layers[-1] == (f"Linear-{len(result.layers)}", (-1, 10), 650)


def test_batch_size_shows_in_shapes():
    result = summary(create_model("strixbee_l1"), batch_size=8, print_table=False)
    assert all(shape[0] == 8 for _, shape, _ in result.layers)


@pytest.mark.parametrize("train", [True, False])
def test_mode_device_and_state_unchanged(train):
    torch.manual_seed(0)
    model = create_model("s10_resnet").train(train)
    model.res1.eval()  # mixed per-module modes must survive too
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = _hook_counts(model)

    summary(model, print_table=False)

    assert [m.training for m in model.modules()] == modes
    assert all(p.device.type == "cpu" for p in model.parameters())
    # BatchNorm running statistics (and everything else) untouched: the probe pass does not train.
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert _hook_counts(model) == hooks
    assert all(p.grad is None for p in model.parameters())


def test_failed_probe_restores_mode_and_hooks():
    model = create_model("s10_resnet").train()
    hooks = _hook_counts(model)
    with pytest.raises(InputShapeError):
        summary(model, input_size=(3, 28, 28), print_table=False)
    assert model.training and all(m.training for m in model.modules())
    assert _hook_counts(model) == hooks


def test_frozen_layers_count_as_non_trainable():
    model = create_model("strixbee_l1")
    for p in model.stage1.parameters():
        p.requires_grad_(False)
    result = summary(model, print_table=False)
    assert result.total_params == 82_290
    assert result.trainable_params == count_parameters(model) < result.total_params


def test_print_table_and_str(capsys):
    model = create_model("strixbee_l2")
    quiet = summary(model, print_table=False)
    assert capsys.readouterr().out == ""
    loud = summary(model, print_table=True)
    printed = capsys.readouterr().out
    assert printed.strip() == loud.text.strip() == str(loud).strip() == quiet.text.strip()
    assert "Total params: 86,962" in printed
    assert "86,962" in repr(loud) and "ModelSummary" in repr(loud)


def test_repr_pretty_shows_table():
    result = summary(create_model("strixbee_l1"), print_table=False)

    class Printer:
        def __init__(self):
            self.parts = []

        def text(self, s):
            self.parts.append(s)

    printer = Printer()
    result._repr_pretty_(printer, cycle=False)
    assert printer.parts == [result.text]
    # When summary() already printed the table, a cell ending in it shows only the totals (not the table twice).
    printed = summary(create_model("strixbee_l1"))
    printer = Printer()
    printed._repr_pretty_(printer, cycle=False)
    assert printer.parts == [repr(printed)] and "Total params" not in printer.parts[0]
    assert printed == result  # the flag does not change equality


def test_non_square_and_multi_channel_input_size():
    result = summary(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()), input_size=(1, 10, 12), print_table=False)
    assert [shape for _, shape, _ in result.layers] == [(-1, 4, 8, 10), (-1, 320)]
    assert result.total_params == 4 * 9 + 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is missing")
def test_cuda_without_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        summary(create_model("strixbee_l1"), device="cuda", print_table=False)


def test_unsupported_device_and_dtype_are_config_errors():
    model = create_model("strixbee_l1")
    with pytest.raises(ConfigError, match="'cpu' and 'cuda'"):
        summary(model, device="meta", print_table=False)
    with pytest.raises(ConfigError, match="float32"):
        summary(model.double(), print_table=False)
