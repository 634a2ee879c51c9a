"""Model zoo: ``create_model(name, num_classes=..., **kwargs)`` and ``list_models()``; each family module registers
its builders with ``@register_model``."""
import inspect
import numbers
from typing import List

import torch.nn as nn

from pytorch_utils.errors import ConfigError, ModelArgumentError
from pytorch_utils.registry import Registry

_MODELS: Registry[nn.Module] = Registry("model")
register_model = _MODELS.register


def create_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build registered model ``name`` (returning logits) with ``num_classes`` outputs and family options ``kwargs``.

    Raises:
        UnknownNameError: ``name`` is not registered. ModelArgumentError (a ConfigError and TypeError): a keyword
        the model does not take (the message lists the ones it takes). ConfigError: a bad value.
    """
    builder = _MODELS.get(name)
    # Bind first, so a TypeError raised inside the model code is not misreported as a bad keyword.
    try:
        inspect.signature(builder).bind(num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise ModelArgumentError(
            f"create_model({name!r}, ...): {exc}; model {name!r} accepts the keyword arguments "
            f"{', '.join(_keyword_names(builder))}; fix or drop the argument (in a recipe: model_kwargs)"
        ) from None
    model = builder(num_classes=num_classes, **kwargs)
    model.model_name = name  # recorded in checkpoints, checked on load
    return model


def _keyword_names(builder) -> List[str]:
    """The keyword arguments ``builder`` accepts, with their defaults (``dropout=0.0``)."""
    out = []
    for p in inspect.signature(builder).parameters.values():
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            out.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
        elif p.kind == p.VAR_KEYWORD:
            out.append(f"**{p.name}")
    return out


def list_models() -> List[str]:
    """Names of all registered models, sorted."""
    return _MODELS.names()


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Distinct (``requires_grad``) parameters of ``model``: a shared layer counts once, as in ``summary()``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def check_model_args(num_classes, dropout) -> None:
    """Raise ConfigError for a class count that is not a positive integer or a dropout outside [0, 1)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")


# At the bottom: the families import register_model and check_model_args from here.
from pytorch_utils.models import resnet_s8, resnet_s10, strixbee, wide_resnet  # noqa: E402,F401
from pytorch_utils.models.costs import ModelCost, model_cost  # noqa: E402,F401
from pytorch_utils.models.summary import summary  # noqa: E402,F401

__all__ = ["create_model", "list_models", "register_model", "count_parameters", "summary", "model_cost", "ModelCost"]
