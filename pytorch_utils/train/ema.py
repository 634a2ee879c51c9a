"""Exponential moving average (EMA) of a model's weights, evaluated instead of the raw weights: torch's
``AveragedModel`` with the lerp of ``get_ema_multi_avg_fn`` and a decay that can warm up (tests pin it to torch's).
Buffers (BatchNorm statistics) are copied, not averaged (``use_buffers=False``): they are already running averages."""
import contextlib
from typing import Any, Dict, Iterator

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel

from pytorch_utils.errors import CheckpointError
from pytorch_utils.utils import preserved, unwrap_model


class ModelEMA:
    """A frozen copy ``module`` of a model (wrappers unwrapped) whose parameters follow
    ``ema = decay * ema + (1 - decay) * model`` at each :meth:`update` (``fit`` calls it after every optimizer step).

    ``decay`` in (0, 1) (the recipe checks it); ``warmup``: use ``min(decay, (1 + n) / (10 + n))`` after n updates,
    so early weights are not averaged with the initialisation for long. The copy follows the model's device.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        self.decay, self.warmup, self.updates = float(decay), bool(warmup), 0
        self.averaged = AveragedModel(unwrap_model(model), multi_avg_fn=self._lerp)
        self.averaged.n_averaged.fill_(1)  # the copy is the first average (else the first update copies the model)
        self.module = self.averaged.module.eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates)) if self.warmup else self.decay

    def _lerp(self, ema, model, _n_averaged) -> None:  # get_ema_multi_avg_fn's kernel, with our decay
        torch._foreach_lerp_(ema, model, 1.0 - self.current_decay())  # ema + (1 - d)(w - ema) = d ema + (1 - d) w

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's weights into the average (one batch of ``_foreach`` kernels) and copy its buffers."""
        src = unwrap_model(model)
        w = next(src.parameters())
        if w.device != next(self.module.parameters()).device:  # fit() moved the model after the EMA was built
            channels_last = any(p.dim() == 4 and not p.is_contiguous() and
                                p.is_contiguous(memory_format=torch.channels_last) for p in src.parameters())
            self.module.to(w.device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        self.averaged.update_parameters(src)
        self.updates += 1

    def state_dict(self) -> Dict[str, Any]:
        """The EMA weights and buffers, update count, decay and warmup."""
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay,
                "warmup": self.warmup}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; CheckpointError when it is not an EMA state or does not fit the model."""
        try:
            self.module.load_state_dict(state["module"])
        except (KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"not an EMA state of this model (from ModelEMA.state_dict()): {exc}") from None
        self.updates, self.decay = int(state.get("updates", 0)), float(state.get("decay", self.decay))
        self.warmup = bool(state.get("warmup", self.warmup))

    @contextlib.contextmanager
    def apply_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the EMA weights and buffers into ``model`` (yielded as given); the originals come back
        bit for bit, in place, also when the body raises."""
        target = unwrap_model(model)
        with preserved(target, rng=False):
            target.load_state_dict(self.module.state_dict())
            yield model

    def __repr__(self) -> str:
        return f"ModelEMA(decay={self.decay}, warmup={self.warmup}, updates={self.updates})"
