"""What a model costs: parameters and multiply-accumulates per image, counted by torch's own FLOP counter."""
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from pytorch_utils.utils import eval_mode, model_device

__all__ = ["ModelCost", "model_cost"]


@dataclass(frozen=True)
class ModelCost:
    """Cost of one forward pass of one image of ``input_size`` (C, H, W): distinct ``params``, and ``macs``
    (torch's FLOP count / 2: convolutions and matrix products only; BatchNorm, activations and pooling, a few %
    more, are not counted)."""

    params: int
    macs: int
    input_size: tuple

    def epoch_macs(self, images: int = 50_000, train: bool = True) -> int:
        """MACs of one epoch over ``images`` images; training counts forward + backward as 3 forwards (the backward
        pass computes gradients for both inputs and weights, about twice the forward's work)."""
        return self.macs * images * (3 if train else 1)


def model_cost(model: nn.Module, input_size: Sequence[int] = (3, 32, 32)) -> ModelCost:
    """ModelCost of ``model`` for input of shape ``input_size`` (C, H, W), counted by ``FlopCounterMode``.

    The probe runs in eval mode under ``no_grad`` on the model's own device (the meta device costs no compute);
    every module's own mode is put back afterwards.
    """
    counter = FlopCounterMode(display=False)
    with eval_mode(model), torch.no_grad(), counter:
        model(torch.zeros(1, *input_size, device=model_device(model)))
    params = sum(p.numel() for p in model.parameters())
    return ModelCost(params=params, macs=counter.get_total_flops() // 2, input_size=tuple(input_size))
