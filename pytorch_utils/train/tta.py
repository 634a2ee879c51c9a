"""Test-time augmentation: average the softmax of a few views (tensor ops on the normalized batch) of each batch."""
import math
from typing import Callable, Literal, Optional, Sequence, Tuple, Union, get_args

import torch
import torch.nn.functional as F

from pytorch_utils.errors import UnknownNameError


def translate(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Shift a (N, C, H, W) batch by (dx, dy) pixels with edge replication; channels_last stays channels_last (the
    pad may return NCHW, and every conv of a channels_last model would convert back)."""
    if dx == 0 and dy == 0:
        return x
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    pad = max(abs(dx), abs(dy))
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    top, left = pad - dy, pad - dx
    out = padded[..., top:top + h, left:left + w]
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def tta_logits(model, x: torch.Tensor, views: Sequence[Tuple[bool, int, int]]) -> torch.Tensor:
    """Log of the mean softmax over ``views`` = (flip, dx, dy) tuples: (N, C) log-probabilities."""
    log_probs = []
    for flip, dx, dy in views:
        v = torch.flip(x, dims=(3,)) if flip else x
        log_probs.append(F.log_softmax(model(translate(v, dx, dy)).float(), dim=1))
    # log(mean(p)) computed as logsumexp(log p) - log(n): stays finite where a view's probability underflows to 0.
    return torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(len(views))


FLIP_VIEWS = ((False, 0, 0), (True, 0, 0))
FLIP_TRANSLATE_VIEWS = FLIP_VIEWS + tuple((f, dx, dy) for f in (False, True)
                                          for dx, dy in ((2, 0), (-2, 0), (0, 2), (0, -2)))

# The TTA modes, listed once: the CLI's --tta choices, Recipe.validate and get_tta read TTA_MODES.
TTAMode = Literal["none", "flip", "flip_translate"]
TTA_MODES = get_args(TTAMode)
_VIEWS = {"flip": FLIP_VIEWS, "flip_translate": FLIP_TRANSLATE_VIEWS}
assert set(_VIEWS) == set(TTA_MODES) - {"none"}


def get_tta(tta: Union[TTAMode, Callable, None]) -> Optional[Callable]:
    """Resolve None, one of :data:`TTA_MODES` (else UnknownNameError) or a callable ``(model, x) -> logits``."""
    if tta is None or tta == "none":
        return None
    if callable(tta):
        return tta
    if tta not in TTA_MODES:
        raise UnknownNameError(f"unknown tta {tta!r}; valid: {', '.join(TTA_MODES)}")
    views = _VIEWS[tta]
    return lambda model, x: tta_logits(model, x, views)
