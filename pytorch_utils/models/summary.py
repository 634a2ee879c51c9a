"""Model summary table over torchsummary, returned as data instead of only printed."""
import ast
import contextlib
import io
import re
import types
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from pytorch_utils.errors import ConfigError
from pytorch_utils.utils import eval_mode, model_device

__all__ = ["ModelSummary", "summary", "count_parameters"]

# One table row of torchsummary: "  Conv2d-1  [-1, 64, 32, 32]  1,728"; shapes may be nested lists for
# layers returning tuples, hence the greedy bracket match.
_ROW = re.compile(r"^[ \t]*(?P<name>\S+-\d+)[ \t]+(?P<shape>\[.*\])[ \t]+(?P<params>[\d,]+)[ \t]*$", re.MULTILINE)
_TOTALS = {label: re.compile(rf"^{label} params: ([\d,]+)", re.MULTILINE)
           for label in ("Total", "Trainable", "Non-trainable")}
_SIZES = re.compile(r"^Params size \(MB\): ([\d.]+)\nEstimated Total Size \(MB\): ([\d.]+)", re.MULTILINE)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Distinct (``requires_grad``) parameters of ``model``: a shared layer counts once, as in ``summary()``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@dataclass
class ModelSummary:
    """torchsummary's table ``text`` (with the true totals and ``notes`` below it), the model's distinct
    (``requires_grad``) parameter totals, torchsummary's own sums, and one ``layers`` row per table line:
    (name such as "Conv2d-1", output shape with batch -1, parameter count)."""

    text: str
    total_params: int
    trainable_params: int
    layers: List[Tuple[str, tuple, int]] = field(default_factory=list)
    torchsummary_total: Optional[int] = None
    torchsummary_trainable: Optional[int] = None
    notes: List[str] = field(default_factory=list)
    # Already printed: the notebook display hook then shows the totals only, not the table a second time.
    printed: bool = field(default=False, compare=False, repr=False)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return (f"ModelSummary(layers={len(self.layers)}, total_params={self.total_params:,}, "
                f"trainable_params={self.trainable_params:,})")

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self) if (cycle or self.printed) else self.text)


def summary(model: nn.Module, input_size: Union[Sequence[int], List[Sequence[int]]] = (3, 32, 32),
            device: Optional[Union[str, torch.device]] = None, batch_size: int = -1,
            print_table: bool = True) -> ModelSummary:
    """torchsummary's table of ``model`` as a ModelSummary (printed too with ``print_table``) with true totals: each
    distinct parameter once (torchsummary adds ``weight``/``bias`` per layer call), noted when they differ. A layer
    torchsummary cannot size (it passes a tuple of tuples, a dict, None; found by a first probe pass) gets a note
    instead of a row. The probes run in eval mode under ``no_grad``; modes are restored and the model is never moved.

    ``input_size``: one input shape without the batch dimension, or a list of them; ``device``: "cpu" or "cuda"
    (default: the model's, which must be float32: torchsummary's limits, else torch's error); ``batch_size``: shown
    in the table (-1 = unspecified). ConfigError when no layer is left for torchsummary to show.
    """
    import torchsummary  # local: only summary() needs it, not training (a GPU run without it still trains)

    device = torch.device(device) if device is not None else model_device(model)
    input_size = [tuple(s) for s in input_size] if isinstance(input_size, list) else tuple(input_size)
    hidden = _untraceable_layers(model, input_size, device)
    for _, module, _ in hidden:
        # torchsummary hooks every submodule through ``register_forward_hook``; an instance attribute shadows
        # that method for these layers only, so they run normally but add no row.
        module.register_forward_hook = lambda *args, **kwargs: types.SimpleNamespace(remove=lambda: None)
    buffer = io.StringIO()
    try:
        with _probe(model, device), contextlib.redirect_stdout(buffer):
            torchsummary.summary(model, input_size, batch_size=batch_size, device=device.type)
    except AttributeError:  # torchsummary's sum of no rows (an int) has no .numpy()
        names = ", ".join(f"{type(m).__name__} '{name}' ({kind})" for name, m, kind in hidden) or "none"
        raise ConfigError(f"torchsummary has no layer to show (those it cannot trace: {names}); "
                          "use count_parameters(model) for the totals") from None
    finally:
        for _, module, _ in hidden:
            del module.register_forward_hook
    result = _with_true_totals(buffer.getvalue().rstrip("\n"), model, hidden)
    if print_table:
        print(result.text)
    result.printed = print_table
    return result


@contextlib.contextmanager
def _probe(model: nn.Module, device: torch.device):
    """Eval mode, no_grad and the model's CUDA device for one probe pass; modes and stray hooks put back after."""
    hooks_before = {m: set(m._forward_hooks) for m in model.modules()}
    cuda = torch.cuda.device(device) if device.type == "cuda" and device.index is not None else contextlib.nullcontext()
    try:
        # torchsummary removes its hooks only after a successful forward: a model that raises (e.g.
        # InputShapeError) must not keep them, hence the hook bookkeeping beside eval_mode().
        with eval_mode(model), torch.no_grad(), cuda:
            yield
    finally:
        for m, keys in hooks_before.items():
            for key in set(m._forward_hooks) - keys:
                del m._forward_hooks[key]


def _untraceable_layers(model, input_size, device) -> List[Tuple[str, nn.Module, str]]:
    """(name, module, what it passes) for each layer torchsummary would hook whose first input is not a tensor or
    whose output is not a tensor or a flat list/tuple of tensors (what it cannot size), found in one probe pass."""
    found = {}

    def check(name):
        def hook(module, inputs, output):
            if not inputs or not torch.is_tensor(inputs[0]):
                found.setdefault(module, (name, module, f"takes {_describe(inputs[0] if inputs else None)} as first "
                                                        "input"))
            elif not (torch.is_tensor(output) or (
                    isinstance(output, (list, tuple)) and all(torch.is_tensor(o) for o in output))):
                found.setdefault(module, (name, module, f"returns {_describe(output)}"))
        return hook

    hooks = [module.register_forward_hook(check(name)) for name, module in model.named_modules()
             if name and not isinstance(module, (nn.Sequential, nn.ModuleList))]
    try:
        with _probe(model, device):
            model(*[torch.rand(2, *s, device=device) for s in (input_size if isinstance(input_size, list)
                                                               else [input_size])])
    finally:
        for h in hooks:
            h.remove()
    return list(found.values())


def _describe(value) -> str:
    """'a tuple holding a tuple', 'a dict', 'None'... for the note about a layer torchsummary cannot show."""
    if isinstance(value, (list, tuple)):
        inner = next((type(v).__name__ for v in value if not torch.is_tensor(v)), None)
        return f"a {type(value).__name__} holding a {inner}" if inner else f"a {type(value).__name__}"
    return "None" if value is None else f"a {type(value).__name__}"


def _with_true_totals(text: str, model: nn.Module, hidden) -> ModelSummary:
    """The parsed table with the model's own deduplicated totals in place of torchsummary's, and notes on
    differences (sizes at 4 bytes a parameter, as torchsummary)."""
    layers = [(row["name"], _to_tuple(ast.literal_eval(row["shape"])), int(row["params"].replace(",", "")))
              for row in _ROW.finditer(text)]
    theirs = [int(_TOTALS[label].search(text).group(1).replace(",", "")) for label in ("Total", "Trainable")]
    total, trainable = count_parameters(model, trainable_only=False), count_parameters(model)
    notes = [f"Note: {type(m).__name__} '{name}' {kind}, which torchsummary cannot show: it has no row (its "
             f"{sum(p.numel() for p in m.parameters()):,} parameters are in the totals)." for name, m, kind in hidden]
    if theirs != [total, trainable]:
        notes.append(f"Note: totals count each parameter of the model once (trainable: requires_grad); torchsummary's "
                     f"rows add up to {theirs[0]:,} total / {theirs[1]:,} trainable (it counts a layer once per call, "
                     "only its weight and bias, trainable by its weight).")
    params_mb = total * 4.0 / 1024 ** 2
    text = _SIZES.sub(lambda m: f"Params size (MB): {params_mb:0.2f}\nEstimated Total Size (MB): "
                                f"{float(m[2]) - float(m[1]) + params_mb:0.2f}", text)
    for label, value in (("Total", total), ("Trainable", trainable), ("Non-trainable", total - trainable)):
        text = _TOTALS[label].sub(f"{label} params: {value:,}", text)
    return ModelSummary(text="\n".join([text, *notes]), total_params=total, trainable_params=trainable, layers=layers,
                        torchsummary_total=theirs[0], torchsummary_trainable=theirs[1], notes=notes)


def _to_tuple(value):
    """Nested lists -> nested tuples (shapes of layers returning several tensors stay nested)."""
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list) else value
