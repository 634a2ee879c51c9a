"""Which input side a model trains and evaluates at, decided before any training by a cheap dry forward."""
import logging
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from pytorch_utils.errors import ConfigError
from pytorch_utils.utils import preserved

log = logging.getLogger(__name__)

# The side every CIFAR model of the package takes; the fallback when a model cannot take the data's own size.
FALLBACK_SIZE = 32


def forward_error(model: nn.Module, size: int) -> Optional[str]:
    """None when ``model`` accepts one (1, 3, size, size) input, else the first line of the error it raised; runs in
    eval mode without gradients on the model's device (``utils.preserved`` restores flags and RNG)."""
    param = next(model.parameters(), None)
    x = torch.zeros(1, 3, size, size, device=param.device if param is not None else "cpu")
    try:
        with preserved(model, weights=False, train=False), torch.no_grad():
            model(x)
    except (RuntimeError, ValueError) as exc:  # shape mismatches (e.g. a Linear head sized for 32x32 inputs)
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def choose_input_size(model: nn.Module, image_size: Union[int, Sequence[int]],
                      requested: Optional[int] = None) -> Tuple[int, Optional[str]]:
    """``(size, note)``: the square input side to train and evaluate at, and a logged one-line note when images
    (of ``image_size``, (H, W) or one side) get resized (else None).

    Rule: a ``requested`` side is used when the model takes it (probed with one zero image), else refused; without
    one, the data's larger side when the model takes it, else ``FALLBACK_SIZE`` (e.g. ``s10_resnet``'s head needs
    32x32 inputs). ConfigError: the model takes neither the requested side nor (without one) the data's side or 32.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    name = type(model).__name__
    if requested is not None:
        error = forward_error(model, int(requested))
        if error is not None:
            raise ConfigError(f"{name} cannot take {requested}x{requested} inputs ({error}); request a size the "
                              f"model takes (e.g. {FALLBACK_SIZE}) or pick another model")
        size, why = int(requested), "as requested"
    else:
        size, why = max(h, w), "the data's own size"
        error = forward_error(model, size)
        if error is not None and size != FALLBACK_SIZE:
            size, why = FALLBACK_SIZE, f"{name} cannot take {max(h, w)}x{max(h, w)} inputs ({error})"
            error = forward_error(model, size)
        if error is not None:
            raise ConfigError(f"{name} takes neither the data's {h}x{w} images nor {FALLBACK_SIZE}x{FALLBACK_SIZE} "
                              f"inputs ({error}); pick another model or resize the images")
    note = None if (h, w) == (size, size) else f"images are {h}x{w}; training and evaluating at {size}x{size} ({why})"
    if note:
        log.info(note)
    return size, note
