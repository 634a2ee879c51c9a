"""Exponential moving average (EMA) of a model's weights, evaluated instead of the raw weights. Buffers (BatchNorm
statistics) are copied, not averaged: they are already running averages."""
import contextlib
import copy
from typing import Any, Dict, Iterator

import torch
import torch.nn as nn

from pytorch_utils.errors import CheckpointError, ConfigError
from pytorch_utils.utils import preserved, unwrap_model


class ModelEMA:
    """A frozen copy ``module`` of a model (wrappers unwrapped) whose parameters follow
    ``ema = decay * ema + (1 - decay) * model`` at each :meth:`update` (``fit`` calls it after every optimizer step).

    ``decay`` in [0, 1) (else ConfigError); ``warmup``: use ``min(decay, (1 + n) / (10 + n))`` after n updates, so
    early weights are not averaged with the initialisation for long; ``device``: None follows the model's.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True, device=None):
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.device = torch.device(device) if device is not None else None
        self.updates = 0
        self.module = copy.deepcopy(unwrap_model(model)).eval().requires_grad_(False)
        if self.device is not None:
            self.module.to(self.device)

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    def _follow(self, src: nn.Module) -> None:
        """With ``device=None``, move the copy to the model's device and memory format when they change."""
        src_p = next(src.parameters(), None)
        ema_p = next(self.module.parameters(), None)
        if self.device is not None or src_p is None or ema_p is None or src_p.device == ema_p.device:
            return
        self.module.to(src_p.device)
        # fit() converts the model to channels_last; follow, so eval of the EMA copy gets the fast layout too.
        src_conv = next((p for p in src.parameters() if p.dim() == 4), None)
        if src_conv is not None and src_conv.is_contiguous(memory_format=torch.channels_last) \
                and not src_conv.is_contiguous():
            self.module.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's weights into the average (one batch of ``_foreach`` kernels, no host sync) and copy its
        buffers; ConfigError when its parameters or buffers do not match the copy's."""
        src = unwrap_model(model)
        self._follow(src)
        d = self.current_decay()
        ema_params, src_params = list(self.module.parameters()), list(src.parameters())
        ema_buffers, src_buffers = list(self.module.buffers()), list(src.buffers())
        if len(ema_params) != len(src_params) or len(ema_buffers) != len(src_buffers):
            raise ConfigError(
                f"ModelEMA.update got a model with {len(src_params)} parameters and {len(src_buffers)} buffers, but "
                f"the EMA copy has {len(ema_params)} and {len(ema_buffers)}; pass the model the EMA was built from")
        float_e, float_s, other_e, other_s = [], [], [], []
        for e, s in zip(ema_params, src_params):
            # Blocking on purpose: a non_blocking device-to-host copy may not have landed when lerp reads it.
            s = s.detach().to(e.device)
            if e.dtype.is_floating_point:
                float_e.append(e)
                float_s.append(s.to(e.dtype))
            else:
                other_e.append(e)
                other_s.append(s)
        other_e += ema_buffers
        other_s += [b.detach() for b in src_buffers]
        if float_e:
            torch._foreach_lerp_(float_e, float_s, 1.0 - d)  # ema + (1 - d) (w - ema) = d ema + (1 - d) w
        if other_e:
            torch._foreach_copy_(other_e, other_s)  # copy_ handles device and dtype differences
        self.updates += 1

    def state_dict(self) -> Dict[str, Any]:
        """The EMA weights and buffers, update count, decay and warmup."""
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay,
                "warmup": self.warmup}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; CheckpointError when it is not an EMA state or does not fit the model."""
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
        """Temporarily load the EMA weights and buffers into ``model`` (yielded as given); the originals come back
        bit for bit, in place, also when the body raises."""
        target = unwrap_model(model)
        ema_state = self.module.state_dict()
        missing = set(target.state_dict()) ^ set(ema_state)
        if missing:
            raise ConfigError(
                f"apply_to got a model whose state keys differ from the EMA copy's: {sorted(missing)[:5]}")
        with preserved(target, rng=False):
            target.load_state_dict(ema_state)
            yield model

    def __repr__(self) -> str:
        return f"ModelEMA(decay={self.decay}, warmup={self.warmup}, updates={self.updates})"
