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
from pytorch_utils.utils import eval_mode

__all__ = ["ModelSummary", "summary"]

# One table row of torchsummary: "  Conv2d-1  [-1, 64, 32, 32]  1,728"; shapes may be nested lists for
# layers returning tuples, hence the greedy bracket match.
_ROW = re.compile(r"^\s*(?P<name>\S+-\d+)\s+(?P<shape>\[.*\])\s+(?P<params>[\d,]+)\s*$")
_TOTALS = {label: re.compile(rf"^{label} params: ([\d,]+)", re.MULTILINE)
           for label in ("Total", "Trainable", "Non-trainable")}
_PARAMS_SIZE = re.compile(r"^Params size \(MB\): (?P<params>[\d.]+)\nEstimated Total Size \(MB\): (?P<est>[\d.]+)",
                          re.MULTILINE)


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
    torchsummary cannot size (it passes a tuple of tuples, a dict, None) gets a note instead of a row. The probe runs
    in eval mode under ``no_grad``; modes are restored and the model is never moved.

    ``input_size``: one input shape without the batch dimension, or a list of them; ``device``: "cpu" or "cuda"
    (default: the model's); ``batch_size``: shown in the table (-1 = unspecified). ConfigError: a device that is
    not cpu/cuda, unavailable or not the model's; a model not float32; or torchsummary failing even without the
    layers it cannot size (named).
    """
    probe_device = _resolve_device(model, device)
    input_size = [tuple(s) for s in input_size] if isinstance(input_size, list) else tuple(input_size)
    hidden: List[Tuple[str, nn.Module, str]] = []
    try:
        text = _torchsummary_text(model, input_size, batch_size, probe_device, hidden)
    except (AttributeError, IndexError, TypeError):
        # torchsummary's hook failed on some layer's input or output: retry once without those layers (a model
        # that fails for its own reasons fails again in the probe, with its own error).
        hidden = _untraceable_layers(model, input_size, probe_device)
        if not hidden:
            raise
        try:
            text = _torchsummary_text(model, input_size, batch_size, probe_device, hidden)
        except (AttributeError, IndexError, TypeError) as exc:
            names = ", ".join(f"{type(m).__name__} '{name}' ({kind})" for name, m, kind in hidden)
            raise ConfigError(
                f"torchsummary cannot trace this model: {names}; even without those layers it fails with {exc!r}. "
                "Use count_parameters(model) for the totals"
            ) from None
    result = _with_true_totals(_parse(text), model, hidden)
    if print_table:
        print(result.text)
    result.printed = print_table
    return result


@contextlib.contextmanager
def _probe(model: nn.Module, probe_device: torch.device):
    """Eval mode, no_grad and the model's CUDA device for one probe pass; modes and stray hooks put back after."""
    hooks_before = {m: set(m._forward_hooks) for m in model.modules()}
    cuda_ctx = torch.cuda.device(probe_device) if probe_device.type == "cuda" else contextlib.nullcontext()
    try:
        # torchsummary removes its hooks only after a successful forward: a model that raises (e.g.
        # InputShapeError) must not keep them, hence the hook bookkeeping beside eval_mode().
        with eval_mode(model), torch.no_grad(), cuda_ctx:
            yield
    finally:
        for m, keys in hooks_before.items():
            for key in set(m._forward_hooks) - keys:
                del m._forward_hooks[key]


def _torchsummary_text(model, input_size, batch_size, probe_device, hidden) -> str:
    """torchsummary's printed table, with the ``hidden`` layers left out of its hooks (hence of its rows)."""
    import torchsummary  # local: only summary() needs it, not training (a GPU run without it still trains)

    buffer = io.StringIO()
    for _, module, _ in hidden:
        # torchsummary hooks every submodule through ``register_forward_hook``; an instance attribute shadows
        # that method for these layers only, so they run normally but add no row.
        module.register_forward_hook = _no_hook
    try:
        with _probe(model, probe_device), contextlib.redirect_stdout(buffer):
            torchsummary.summary(model, input_size, batch_size=batch_size, device=probe_device.type)
    finally:
        for _, module, _ in hidden:
            del module.register_forward_hook
    return buffer.getvalue().rstrip("\n")


def _no_hook(*args, **kwargs):
    """Stands in for ``register_forward_hook``: registers nothing, returns a handle whose ``remove`` does nothing."""
    return types.SimpleNamespace(remove=lambda: None)


def _untraceable_layers(model, input_size, probe_device) -> List[Tuple[str, nn.Module, str]]:
    """(name, module, what it passes) for each layer whose first input is not a tensor or whose output is not a
    tensor or a flat list/tuple of tensors (what torchsummary cannot size)."""
    found, hooks = [], []

    def check(name):
        def hook(module, inputs, output):
            kind = None
            if not inputs or not torch.is_tensor(inputs[0]):
                kind = f"takes {_describe(inputs[0] if inputs else None)} as first input"
            elif not (torch.is_tensor(output) or (
                    isinstance(output, (list, tuple)) and all(torch.is_tensor(o) for o in output))):
                kind = f"returns {_describe(output)}"
            if kind and all(m is not module for _, m, _ in found):
                found.append((name, module, kind))
        return hook

    for name, module in model.named_modules():
        if name and not isinstance(module, (nn.Sequential, nn.ModuleList)):
            hooks.append(module.register_forward_hook(check(name)))
    try:
        with _probe(model, probe_device):
            shapes = input_size if isinstance(input_size, list) else [input_size]
            model(*[torch.rand(2, *s, device=probe_device) for s in shapes])
    finally:
        for h in hooks:
            h.remove()
    return found


def _describe(value) -> str:
    """'a tuple holding a tuple', 'a dict', 'None'... for the note about a layer torchsummary cannot show."""
    if isinstance(value, (list, tuple)):
        inner = next((type(v).__name__ for v in value if not torch.is_tensor(v)), None)
        return f"a {type(value).__name__} holding a {inner}" if inner else f"a {type(value).__name__}"
    return "None" if value is None else f"a {type(value).__name__}"


def _with_true_totals(table: ModelSummary, model: nn.Module, hidden) -> ModelSummary:
    """``table`` with the model's own deduplicated totals in place of torchsummary's, and notes on differences."""
    params = list(model.parameters())  # distinct Parameters: a shared layer once
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    notes = [
        f"Note: {type(m).__name__} '{name}' {kind}, which torchsummary cannot show: it has no row "
        f"(its {sum(p.numel() for p in m.parameters()):,} parameters are in the totals)."
        for name, m, kind in hidden
    ]
    if (table.total_params, table.trainable_params) != (total, trainable):
        notes.append(
            f"Note: totals count each parameter of the model once (trainable: requires_grad); torchsummary's rows "
            f"add up to {table.total_params:,} total / {table.trainable_params:,} trainable (it counts a layer "
            "once per call, only its weight and bias, trainable by its weight)."
        )
    text = _PARAMS_SIZE.sub(lambda m: _fix_sizes(m, total), table.text)
    for label, value in (("Total", total), ("Trainable", trainable), ("Non-trainable", total - trainable)):
        text = _TOTALS[label].sub(f"{label} params: {value:,}", text)
    return ModelSummary(
        text="\n".join([text, *notes]), total_params=total, trainable_params=trainable, layers=table.layers,
        torchsummary_total=table.total_params, torchsummary_trainable=table.trainable_params, notes=notes,
    )


def _fix_sizes(match, total: int) -> str:
    """The "Params size" and "Estimated Total Size" lines for the true total (4 bytes a parameter, as torchsummary)."""
    params_mb = total * 4.0 / 1024 ** 2
    estimated = float(match.group("est")) - float(match.group("params")) + params_mb
    return f"Params size (MB): {params_mb:0.2f}\nEstimated Total Size (MB): {estimated:0.2f}"


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
    total, trainable = _TOTALS["Total"].search(text), _TOTALS["Trainable"].search(text)
    if total is None or trainable is None:  # torchsummary changed its format; fail loudly, not with zeros
        raise RuntimeError(f"could not parse the torchsummary table:\n{text}")
    return ModelSummary(text=text, total_params=int(total.group(1).replace(",", "")),
                        trainable_params=int(trainable.group(1).replace(",", "")), layers=layers)


def _to_tuple(value):
    """Nested lists -> nested tuples (shapes of layers returning several tensors stay nested)."""
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list) else value
