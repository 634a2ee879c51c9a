"""choose_input_size: the data's own size when the model takes it, else 32 with a note, else refused."""
import logging

import pytest
import torch
from torch import nn

from pytorch_utils.data.input_size import choose_input_size, forward_error
from pytorch_utils.errors import ConfigError
from pytorch_utils.models import create_model


class FixedHead(nn.Module):
    """Flatten > Linear sized for ``side`` x ``side`` inputs: takes no other size."""

    def __init__(self, side: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * side * side, 2)

    def forward(self, x):
        return self.fc(self.bn(x).flatten(1))


def test_the_data_size_is_kept_when_the_model_takes_it():
    model = create_model("wrn16_2", num_classes=10)
    assert choose_input_size(model, (64, 64)) == (64, None)
    assert choose_input_size(model, (28, 28)) == (28, None)


def test_s10_resnet_on_64px_is_resized_to_32_with_one_note(caplog):
    model = create_model("s10_resnet", num_classes=10)
    with caplog.at_level(logging.INFO, logger="pytorch_utils.data.input_size"):
        size, note = choose_input_size(model, (64, 64))
    assert size == 32 and note.startswith("images are 64x64; training and evaluating at 32x32")
    assert [r.getMessage() for r in caplog.records] == [note]


def test_a_requested_size_the_model_cannot_take_is_refused():
    with pytest.raises(ConfigError, match="cannot take 40x40"):
        choose_input_size(FixedHead(32), (32, 32), requested=40)
    assert choose_input_size(FixedHead(32), (64, 64), requested=32)[0] == 32


def test_a_model_taking_neither_size_is_refused_before_training():
    with pytest.raises(ConfigError, match="neither the data's 28x28 images nor 32x32"):
        choose_input_size(FixedHead(20), (28, 28))


def test_the_dry_forward_leaves_the_model_as_it_was():
    model = FixedHead(8).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert forward_error(model, 8) is None and forward_error(model, 9) is not None
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
