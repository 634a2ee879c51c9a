"""Model zoo: ``create_model(name, num_classes=..., **kwargs)`` and ``list_models()``.

Each model family lives in its own module and registers thin builders with ``@register_model``; importing this
package imports every family so the registry is complete.
"""
import inspect
from typing import List

import torch.nn as nn

from pytorch_utils.errors import ModelArgumentError
from pytorch_utils.registry import Registry

_MODELS: Registry[nn.Module] = Registry("model")
register_model = _MODELS.register


def create_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build a registered model.

    Args:
        name: registered model name (see ``list_models()``).
        num_classes: size of the output layer; models return logits.
        **kwargs: family-specific options (``dropout``, ``depth``, ``widen_factor``...).
    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the valid names).
        ModelArgumentError (a ConfigError and TypeError): a keyword the model does not take (the message lists
        the ones it takes). ConfigError: a bad value (the model's own check).
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
    """Names of the keyword arguments ``builder`` accepts, with their defaults (``dropout=0.0``)."""
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
    """Number of (trainable: ``requires_grad``) parameters of ``model``, each distinct ``nn.Parameter`` once (a layer
    used twice counts once), which is also what ``summary()`` reports as its totals."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# Importing the families registers them (kept at the bottom: they import register_model from here).
from pytorch_utils.models import resnet_s8, resnet_s10, strixbee, wide_resnet  # noqa: E402,F401
from pytorch_utils.models.costs import ModelCost, model_cost  # noqa: E402,F401
from pytorch_utils.models.summary import summary  # noqa: E402,F401

__all__ = ["create_model", "list_models", "register_model", "count_parameters", "summary", "model_cost", "ModelCost"]
