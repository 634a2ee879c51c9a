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


def seed_everything(seed: int, deterministic: bool = False) -> int:
    """Seed python, numpy and torch (CPU and all GPUs); ``deterministic`` also asks for deterministic kernels (slower
    on GPU). Returns the seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    return seed


def _has_mps() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(device: Union[str, torch.device, None] = None, fallback: bool = True) -> torch.device:
    """A torch.device that exists here: None/"auto" picks CUDA, then MPS, then CPU. A missing accelerator warns and
    gives the CPU (``fallback``) or raises ConfigError, as does a string torch cannot parse."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _has_mps() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:  # torch's own message lists ~20 backend names
        raise ConfigError(
            f"invalid device {device!r}; use 'auto' (or None) for the best available, 'cpu', 'cuda', 'cuda:0' "
            "(a GPU index), or 'mps' (Apple silicon)"
        ) from exc
    if (dev.type == "cuda" and not torch.cuda.is_available()) or (dev.type == "mps" and not _has_mps()):
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
    torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


@contextlib.contextmanager
def preserved(model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None, *, weights: bool = True,
              rng: bool = True, train: Optional[bool] = None):
    """Run a block, then put back exactly (also after an error) every submodule's train/eval flag, the weights and
    buffers (``weights``: costs one copy), the ``optimizer``'s state and the RNG states (``rng``). ``train``
    switches the model to train/eval mode for the block. Yields ``model``.
    """
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
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# The amp modes, listed once: the CLI's --amp choices and Recipe.validate read AMP_MODES (None means "none").
AmpMode = Literal["none", "auto", "bf16", "fp16"]
AMP_MODES = get_args(AmpMode)


def amp_dtype_for(amp: Optional[AmpMode], device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``amp`` (None/"none": fp32; "auto": bf16 or fp16 on CUDA, fp32 elsewhere since CPU
    autocast is slower for these small convnets). Raises ConfigError for an unknown mode or fp16 on the CPU."""
    if amp is None or amp == "none":
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None
        # Emulated bf16 (a T4, compute capability 7.5) has no cuDNN conv kernels: such GPUs get fp16 + GradScaler.
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type == "cpu":
            raise ConfigError("amp='fp16' needs a GPU; use amp='bf16' or amp=None on the CPU")
        return torch.float16
    raise ConfigError(f"unknown amp option {amp!r}; valid: None, {', '.join(map(repr, AMP_MODES))}")
