"""summary(): torchsummary's table as data, without side effects on the model."""
import pytest
import torch
import torch.nn as nn

from pytorch_utils.errors import ConfigError, InputShapeError
from pytorch_utils.models import count_parameters, create_model, list_models, summary
from pytorch_utils.models.summary import ModelSummary


def _hook_counts(model):
    return [len(m._forward_hooks) for m in model.modules()]


@pytest.mark.parametrize("name", [n for n in list_models() if n not in ("wrn28_10", "wide_resnet", "s8_resnet")])
def test_totals_equal_count_parameters(name):
    model = create_model(name)
    result = summary(model, print_table=False)
    assert isinstance(result, ModelSummary)
    assert result.total_params == count_parameters(model, trainable_only=False)
    assert result.trainable_params == count_parameters(model)
    assert sum(params for _, _, params in result.layers) == result.total_params
    assert result.notes == [] and "Note:" not in result.text  # torchsummary agrees on these models


def test_rows_parse_names_shapes_and_params():
    result = summary(create_model("strixbee_l1"), print_table=False)
    assert result.layers[0] == ("Conv2d-1", (-1, 16, 32, 32), 3 * 16 * 9)
    assert result.layers[1] == ("BatchNorm2d-2", (-1, 16, 32, 32), 32)
    assert result.layers[-1] == (f"Linear-{len(result.layers)}", (-1, 10), 640)  # head without bias


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
    assert result.total_params == 83_368
    assert result.trainable_params == count_parameters(model) < result.total_params


def test_print_table_and_str(capsys):
    model = create_model("strixbee_l2")
    quiet = summary(model, print_table=False)
    assert capsys.readouterr().out == ""
    loud = summary(model, print_table=True)
    printed = capsys.readouterr().out
    assert printed.strip() == loud.text.strip() == str(loud).strip() == quiet.text.strip()
    assert "Total params: 88,040" in printed
    assert "88,040" in repr(loud) and "ModelSummary" in repr(loud)


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


def test_another_device_or_dtype_is_refused_by_torch():
    """summary() adds no checks of its own: torch names the mismatch (device, dtype, missing CUDA)."""
    model = create_model("strixbee_l1")
    with pytest.raises(RuntimeError, match="meta"):
        summary(model, device="meta", print_table=False)
    with pytest.raises(RuntimeError, match="Double"):
        summary(model.double(), print_table=False)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            summary(create_model("strixbee_l1"), device="cuda", print_table=False)


# The three miscounts of torchsummary's own totals, and a layer it cannot trace.


class _LinearTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.fc(x))


class _OwnParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.fc(x) * self.scale


class _FrozenWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)  # 36 weights frozen, 4 bias trainable
        self.fc = nn.Linear(4, 2)  # 10 trainable
        self.conv.weight.requires_grad_(False)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


class _WithLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 4, batch_first=True)  # 160 parameters, none named weight/bias
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        out, _ = self.lstm(x)  # the LSTM returns (out, (h, c)): a tuple holding a tuple
        return self.fc(out[:, -1])


class _DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return {"features": self.lin(x)}


class _WithDictLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = _DictOut()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.body(x)["features"])


def test_reused_layer_counts_once():
    result = summary(_LinearTwice(), input_size=(4,), print_table=False)
    assert (result.total_params, result.trainable_params) == (20, 20)
    assert len(result.layers) == 2  # the table still shows both calls, as the course's does
    assert (result.torchsummary_total, result.torchsummary_trainable) == (40, 40)
    assert "Total params: 20\n" in result.text and "Trainable params: 20\n" in result.text
    assert "Non-trainable params: 0\n" in result.text
    assert len(result.notes) == 1 and "40 total / 40 trainable" in result.notes[0]
    assert result.text.endswith(result.notes[0])


def test_own_parameter_is_counted():
    result = summary(_OwnParameter(), input_size=(4,), print_table=False)
    assert (result.total_params, result.trainable_params) == (24, 24)
    assert result.torchsummary_total == 20 and "20 total" in result.notes[0]


def test_frozen_weight_with_trainable_bias():
    model = _FrozenWeight()
    result = summary(model, input_size=(1, 6, 6), print_table=False)
    assert (result.total_params, result.trainable_params) == (50, 14)
    assert result.torchsummary_trainable == 10  # torchsummary calls the conv row frozen by its weight
    assert "Non-trainable params: 36\n" in result.text
    assert f"Params size (MB): {50 * 4 / 1024 ** 2:0.2f}" in result.text


def test_lstm_layer_gets_no_row_and_a_note(capsys):
    torch.manual_seed(0)
    model = _WithLSTM().train()
    hooks = _hook_counts(model)
    result = summary(model, input_size=(5, 4))
    printed = capsys.readouterr().out
    assert result.layers == [("Linear-1", (-1, 3), 15)]
    assert (result.total_params, result.trainable_params) == (175, 175)
    assert any("LSTM 'lstm' returns a tuple holding a tuple" in n and "160 parameters" in n for n in result.notes)
    assert "LSTM 'lstm'" in printed and "Total params: 175" in printed
    # The shadowing of register_forward_hook and every probe hook are gone; modes are back.
    assert "register_forward_hook" not in vars(model.lstm)
    assert _hook_counts(model) == hooks and all(m.training for m in model.modules())
    model.lstm.register_forward_hook(lambda *a: None).remove()  # the method works again


def test_dict_output_layer_gets_no_row_and_a_note():
    result = summary(_WithDictLayer(), input_size=(4,), print_table=False)
    assert result.layers == [("Linear-1", (-1, 4), 20), ("Linear-2", (-1, 3), 15)]
    assert result.total_params == 35
    assert result.notes == ["Note: _DictOut 'body' returns a dict, which torchsummary cannot show: it has no row "
                            "(its 20 parameters are in the totals)."]


def test_untraceable_model_without_other_rows_is_a_library_error():
    # Only the LSTM holds parameters: without its row torchsummary has nothing to add up and fails itself.
    class OnlyLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 4, batch_first=True)

        def forward(self, x):
            return self.lstm(x)[0]

    with pytest.raises(ConfigError, match=r"LSTM 'lstm' \(returns a tuple holding a tuple\).*count_parameters"):
        summary(OnlyLSTM(), input_size=(5, 4), print_table=False)


def test_model_errors_are_not_mistaken_for_untraceable_layers():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x).no_such_method()

    with pytest.raises(AttributeError, match="no_such_method"):
        summary(Broken(), input_size=(4,), print_table=False)
