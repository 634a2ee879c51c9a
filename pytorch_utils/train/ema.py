"""Exponential moving average (EMA) of a model's weights, evaluated instead of the raw weights.

``ema = d * ema + (1 - d) * weights`` after every optimizer step smooths out the noise of the last steps; the EMA
model is usually a little better than the raw one at the end of a One Cycle or cosine run. Buffers (BatchNorm
running statistics) are copied, not averaged: they are already running averages of the raw model's activations.
"""
import contextlib
import copy
from typing import Any, Dict, Iterator

import torch
import torch.nn as nn

from pytorch_utils.errors import CheckpointError, ConfigError
from pytorch_utils.utils import preserved, unwrap_model


class ModelEMA:
    """A frozen copy of a model whose parameters follow an exponential moving average of the model's.

    Call :meth:`update` after each optimizer step (the engine does when ``ema=`` is given to ``fit``) and
    evaluate ``ema.module``. The update is a few ``torch._foreach_*`` kernels over all tensors at once, with no
    host-device sync.

    Args:
        model: the model to follow (DDP / DataParallel / ``torch.compile`` wrappers are unwrapped).
        decay: the EMA decay ``d`` in ``ema = d * ema + (1 - d) * model``; in [0, 1).
        warmup: ramp the decay as ``min(decay, (1 + n) / (10 + n))`` over the first updates (n = updates so far),
            so the early, fast-moving weights are not averaged with the random initialisation for long.
        device: where to keep the copy; None follows the model (also when ``fit`` moves the model later).
    Raises:
        ConfigError: decay outside [0, 1).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True, device=None):
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.device = torch.device(device) if device is not None else None
        self.updates = 0
        self.module = copy.deepcopy(unwrap_model(model))
        if self.device is not None:
            self.module.to(self.device)
        self.module.eval()
        self.module.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use (host-side arithmetic: no device sync)."""
        if not self.warmup:
            return self.decay
        n = self.updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    def _follow(self, src: nn.Module) -> None:
        """With ``device=None``, move the copy to the model's device and memory format when they change."""
        if self.device is not None:
            return
        src_p = next(src.parameters(), None)
        ema_p = next(self.module.parameters(), None)
        if src_p is None or ema_p is None or src_p.device == ema_p.device:
            return
        self.module.to(src_p.device)
        # fit() converts the model to channels_last; follow, so eval of the EMA copy gets the fast layout too.
        src_conv = next((p for p in src.parameters() if p.dim() == 4), None)
        if src_conv is not None and src_conv.is_contiguous(memory_format=torch.channels_last) \
                and not src_conv.is_contiguous():
            self.module.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average and copy its buffers.

        Args:
            model: the trained model (same architecture as the copy; wrappers are unwrapped).
        Raises:
            ConfigError: the model's parameters or buffers do not match the copy's.
        """
        src = unwrap_model(model)
        self._follow(src)
        d = self.current_decay()
        ema_params = list(self.module.parameters())
        src_params = list(src.parameters())
        ema_buffers = list(self.module.buffers())
        src_buffers = list(src.buffers())
        if len(ema_params) != len(src_params) or len(ema_buffers) != len(src_buffers):
            raise ConfigError(
                f"ModelEMA.update got a model with {len(src_params)} parameters and {len(src_buffers)} buffers, but "
                f"the EMA copy has {len(ema_params)} and {len(ema_buffers)}; pass the model the EMA was built from"
            )
        float_e, float_s, other_e, other_s = [], [], [], []
        for e, s in zip(ema_params, src_params):
            s = s.detach()
            if s.device != e.device:
                # Blocking on purpose: a non_blocking device-to-host copy may not have landed when lerp reads it.
                s = s.to(e.device)
            if e.dtype.is_floating_point:
                float_e.append(e)
                float_s.append(s if s.dtype == e.dtype else s.to(e.dtype))
            else:
                other_e.append(e)
                other_s.append(s)
        if float_e:
            # lerp(ema, w, 1 - d) = ema + (1 - d) (w - ema) = d ema + (1 - d) w, for all tensors in one go.
            torch._foreach_lerp_(float_e, float_s, 1.0 - d)
        for e, s in zip(ema_buffers, src_buffers):
            other_e.append(e)
            other_s.append(s.detach())
        if other_e:
            # copy_ handles device and dtype differences; _foreach_copy_ batches the launches.
            torch._foreach_copy_(other_e, other_s)
        self.updates += 1

    def state_dict(self) -> Dict[str, Any]:
        """Checkpoint data: the EMA weights and buffers, the update count, decay and warmup."""
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay,
                "warmup": self.warmup}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (weights, update count, decay, warmup).

        Raises:
            CheckpointError: the state is not an EMA state or belongs to a different architecture.
        """
        if not isinstance(state, dict) or "module" not in state:
            raise CheckpointError("not a ModelEMA state: expected a dict with a 'module' entry (from ema.state_dict())")
        try:
            self.module.load_state_dict(state["module"])
        except RuntimeError as exc:
            raise CheckpointError(f"the EMA state does not fit this model: {exc}") from exc
        self.updates = int(state.get("updates", 0))
        self.decay = float(state.get("decay", self.decay))
        self.warmup = bool(state.get("warmup", self.warmup))

    @contextlib.contextmanager
    def apply_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the EMA weights (and buffers) into ``model``; the originals come back in ``finally``.

        Useful to evaluate, save or TTA the EMA weights through code that takes the training model. The original
        tensors are restored bit for bit (saved as clones, copied back in place, so optimizer references stay
        valid), also when the body raises.

        Args:
            model: the trained model (wrappers are unwrapped; the wrapper itself is yielded).
        Yields:
            ``model``, holding the EMA weights.
        """
        target = unwrap_model(model)
        ema_state = self.module.state_dict()
        missing = set(target.state_dict()) ^ set(ema_state)
        if missing:
            raise ConfigError(
                f"apply_to got a model whose state keys differ from the EMA copy's: {sorted(missing)[:5]}")
        # preserved() copies the originals back in place (load_state_dict), so optimizer references stay valid.
        with preserved(target, rng=False):
            target.load_state_dict(ema_state)
            yield model

    def __repr__(self) -> str:
        return f"ModelEMA(decay={self.decay}, warmup={self.warmup}, updates={self.updates})"
