"""Model summary table over torchsummary, returned as data instead of only printed."""
import ast
import contextlib
import io
import re
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from pytorch_utils.errors import ConfigError

__all__ = ["ModelSummary", "summary"]

# One table row of torchsummary: "  Conv2d-1  [-1, 64, 32, 32]  1,728"; shapes may be nested lists for
# layers returning tuples, hence the greedy bracket match.
_ROW = re.compile(r"^\s*(?P<name>\S+-\d+)\s+(?P<shape>\[.*\])\s+(?P<params>[\d,]+)\s*$")
_TOTAL = re.compile(r"^Total params: ([\d,]+)", re.MULTILINE)
_TRAINABLE = re.compile(r"^Trainable params: ([\d,]+)", re.MULTILINE)


@dataclass
class ModelSummary:
    """torchsummary's table plus the numbers parsed from it.

    Attributes:
        text: the table as torchsummary prints it.
        total_params: "Total params" of the table.
        trainable_params: "Trainable params" of the table.
        layers: one (name such as "Conv2d-1", output shape with batch -1, parameter count) per row.
    """

    text: str
    total_params: int
    trainable_params: int
    layers: List[Tuple[str, tuple, int]] = field(default_factory=list)
    # Whether summary() already printed the table: the notebook display hook then shows the totals only, so a cell
    # ending in `summary(model, ...)` does not show the table twice.
    printed: bool = field(default=False, compare=False, repr=False)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return (
            f"ModelSummary(layers={len(self.layers)}, total_params={self.total_params:,}, "
            f"trainable_params={self.trainable_params:,})"
        )

    def _repr_pretty_(self, printer, cycle) -> None:
        # IPython/Jupyter display hook: show the table itself when the summary is a cell's last expression.
        printer.text(repr(self) if (cycle or self.printed) else self.text)


def summary(
    model: nn.Module,
    input_size: Union[Sequence[int], List[Sequence[int]]] = (3, 32, 32),
    device: Optional[Union[str, torch.device]] = None,
    batch_size: int = -1,
    print_table: bool = True,
) -> ModelSummary:
    """Run torchsummary on ``model`` and return its table as a ``ModelSummary``.

    The forward pass runs in eval mode under ``no_grad`` so BatchNorm running statistics are not updated; the
    model's per-module training flags are restored afterwards and the model is never moved.

    Args:
        model: the network (float32 parameters).
        input_size: one input shape without the batch dimension, e.g. (3, 32, 32), or a list of shapes for
            models taking several inputs.
        device: where the probe input is created; defaults to the device of the model's parameters. Must be
            the model's device ("cpu" or "cuda").
        batch_size: batch size shown in the table's shapes and size estimate (-1 = unspecified).
        print_table: also print the table (for notebooks).
    Returns:
        ModelSummary with the text, total/trainable parameter counts and the per-layer rows.
    Raises:
        ConfigError: the device is not cpu/cuda, is unavailable, or differs from the model's device, or the
            model is not float32 (torchsummary always feeds float32 input).
    """
    probe_device = _resolve_device(model, device)
    if isinstance(input_size, list):
        input_size = [tuple(s) for s in input_size]
    else:
        input_size = tuple(input_size)

    modes = {m: m.training for m in model.modules()}
    # torchsummary removes its hooks only after a successful forward; remember what was there so a model
    # that raises (e.g. InputShapeError) does not keep stale hooks.
    hooks_before = {m: set(m._forward_hooks) for m in model.modules()}
    buffer = io.StringIO()
    try:
        model.eval()
        cuda_ctx = torch.cuda.device(probe_device) if probe_device.type == "cuda" else contextlib.nullcontext()
        with torch.no_grad(), cuda_ctx, contextlib.redirect_stdout(buffer):
            import torchsummary  # local: only summary() needs it, not training

            torchsummary.summary(model, input_size, batch_size=batch_size, device=probe_device.type)
    finally:
        for m, was_training in modes.items():
            m.training = was_training
        for m, keys in hooks_before.items():
            for key in set(m._forward_hooks) - keys:
                del m._forward_hooks[key]

    text = buffer.getvalue().rstrip("\n")
    if print_table:
        print(text)
    result = _parse(text)
    result.printed = print_table
    return result


def _resolve_device(model: nn.Module, device) -> torch.device:
    """The device for torchsummary's probe input, checked against the model's parameters."""
    params = list(model.parameters())
    model_device = params[0].device if params else torch.device("cpu")
    probe = torch.device(device) if device is not None else model_device
    if probe.type not in ("cpu", "cuda"):
        raise ConfigError(f"summary supports devices 'cpu' and 'cuda' (torchsummary's limit), got {str(probe)!r}")
    if probe.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("summary was asked for device 'cuda' but CUDA is not available; pass device='cpu'")
    if params and (probe.type != model_device.type or probe.index not in (None, model_device.index)):
        raise ConfigError(
            f"model parameters are on {model_device} but summary device is {probe}; "
            f"move the model with model.to({str(probe)!r}) or leave device=None"
        )
    if any(p.dtype != torch.float32 for p in params):
        raise ConfigError("summary needs a float32 model (torchsummary feeds float32 input); call it on model.float()")
    # The model's own device carries the CUDA index that torchsummary's bare "cuda" cannot express.
    return model_device if params else probe


def _parse(text: str) -> ModelSummary:
    """Parse torchsummary's printed table into a ModelSummary."""
    layers = []
    for line in text.splitlines():
        row = _ROW.match(line)
        if row:
            shape = _to_tuple(ast.literal_eval(row.group("shape")))
            layers.append((row.group("name"), shape, int(row.group("params").replace(",", ""))))
    total, trainable = _TOTAL.search(text), _TRAINABLE.search(text)
    if total is None or trainable is None:  # torchsummary changed its format; fail loudly, not with zeros
        raise RuntimeError(f"could not parse the torchsummary table:\n{text}")
    return ModelSummary(
        text=text,
        total_params=int(total.group(1).replace(",", "")),
        trainable_params=int(trainable.group(1).replace(",", "")),
        layers=layers,
    )


def _to_tuple(value):
    """Nested lists -> nested tuples (shapes of layers returning several tensors stay nested)."""
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list) else value
