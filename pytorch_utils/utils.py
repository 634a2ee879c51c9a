"""Small shared helpers: seeding, device choice, RNG state capture, model unwrapping."""
import contextlib
import copy
import os
import random
import warnings
from typing import Any, Dict, Literal, Optional, Union, get_args

import numpy as np
import torch
import torch.nn as nn

from pytorch_utils.errors import ConfigError


def seed_everything(seed: int) -> int:
    """Seed python, numpy and torch (CPU and all GPUs) with ``seed``, an integer in [0, 2**32 - 1] (numpy's range;
    ConfigError outside it). Returns the seed."""
    if not 0 <= seed <= 2**32 - 1:
        raise ConfigError(f"seed must be an integer from 0 to 2**32 - 1 = {2**32 - 1}, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # all GPUs too
    os.environ["PYTHONHASHSEED"] = str(seed)  # for worker processes started later
    return seed


def resolve_device(device: Union[str, torch.device, None] = None, fallback: bool = True) -> torch.device:
    """A torch.device that exists here: None/"auto" picks CUDA, then MPS, then CPU; else "cpu", "cuda", "cuda:N" or
    "mps"; ConfigError for any other string (also "meta": nothing trains there). A missing accelerator warns and gives
    the CPU (``fallback``) or raises ConfigError."""
    mps = torch.backends.mps.is_available()
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    dev = None
    with contextlib.suppress(RuntimeError, TypeError, ValueError):  # torch's own message lists ~20 backend names
        dev = torch.device(device)
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"invalid device {device!r}; use 'auto' (or None), 'cpu', 'cuda', 'cuda:0' (GPU 0) or 'mps'")
    if (dev.type == "cuda" and not torch.cuda.is_available()) or (dev.type == "mps" and not mps):
        msg = (f"device {str(dev)!r} was requested but this machine has no {dev.type.upper()} "
               "(in Colab: Runtime > Change runtime type > GPU)")
        if not fallback:
            raise ConfigError(msg + "; pass device='cpu' or allow the CPU fallback")
        warnings.warn(msg + "; falling back to the CPU", RuntimeWarning, stacklevel=2)
        return torch.device("cpu")
    return dev


def get_rng_state() -> Dict[str, Any]:
    """The RNG states of python, numpy, torch CPU and all CUDA devices (for exact resume)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore RNG states captured by :func:`get_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())  # a checkpoint may have been loaded onto the GPU
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel / DataParallel / torch.compile wrappers."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, wrappers) or hasattr(model, "_orig_mod"):
        model = model.module if isinstance(model, wrappers) else model._orig_mod
    return model


@contextlib.contextmanager
def preserved(model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None, *, weights: bool = True,
              rng: bool = True, train: Optional[bool] = None):
    """Run a block, then put back exactly (also after an error) every submodule's train/eval flag, the weights and
    buffers (``weights``: costs one copy), the ``optimizer``'s state and the RNG states (``rng``). ``train``
    switches the model to train/eval mode for the block. Yields ``model``."""
    # Per-module flags: ``model.train(was)`` alone would unfreeze a BatchNorm a caller had left in eval mode.
    modes = [(m, m.training) for m in model.modules()]
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()} if weights else None
    opt_state = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    rng_state = get_rng_state() if rng else None
    if train is not None:
        model.train(train)
    try:
        yield model
    finally:
        if saved is not None:
            model.load_state_dict(saved)
        for m, mode in modes:
            m.training = mode
        if opt_state is not None:
            optimizer.load_state_dict(opt_state)
        if rng_state is not None:
            set_rng_state(rng_state)


def eval_mode(model: nn.Module):
    """Eval mode for a ``with`` block, every submodule's own mode given back afterwards (see :func:`preserved`)."""
    return preserved(model, weights=False, rng=False, train=False)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-free module)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


# The amp modes, listed once: the CLI's --amp choices and Recipe.validate read AMP_MODES (None means "none").
AmpMode = Literal["none", "auto", "bf16", "fp16"]
AMP_MODES = get_args(AmpMode)


def amp_dtype_for(amp: Optional[AmpMode], device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``amp`` (None/"none": fp32; "auto": bf16 or fp16 on CUDA, fp32 elsewhere since CPU
    autocast is slower for these small convnets). Raises ConfigError for an unknown mode or fp16 on the CPU."""
    if amp == "auto" and device.type == "cuda":
        # Emulated bf16 (a T4, compute capability 7.5) has no cuDNN conv kernels: such GPUs get fp16 + GradScaler.
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    dtypes = {None: None, "none": None, "auto": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in dtypes or (amp == "fp16" and device.type == "cpu"):
        raise ConfigError(f"unknown amp option {amp!r} on {device.type}; valid: None, "
                          f"{', '.join(map(repr, AMP_MODES))} ('fp16' needs a GPU: use 'bf16' or None on the CPU)")
    return dtypes[amp]
