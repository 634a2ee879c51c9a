"""Model zoo: ``create_model(name, num_classes=..., **kwargs)`` and ``list_models()``; each family module registers
its builders with ``@register_model``. ``create_model`` is the door for a recipe's kwargs: it checks them once
(:class:`_ModelArgs`) and the models trust them."""
import inspect
from dataclasses import dataclass, fields

import torch.nn as nn

from pytorch_utils.errors import ConfigError, ModelArgumentError, bounded, check_fields
from pytorch_utils.registry import Registry

_MODELS: Registry[nn.Module] = Registry("model")
register_model = _MODELS.register


@dataclass
class _ModelArgs:
    """The ranges of the builders' keyword arguments (a builder's other keywords are its own to check)."""

    num_classes: int = bounded(10, ge=1)
    dropout: float = bounded(0.0, ge=0, lt=1)
    depth: int = bounded(28, ge=10)  # Wide ResNet: 6n + 4
    widen_factor: int = bounded(10, ge=1)

    def __post_init__(self):
        check_fields(self, "model argument")
        if (self.depth - 4) % 6:
            raise ConfigError(f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {self.depth}")


def create_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build registered model ``name`` (returning logits) with ``num_classes`` outputs and family options ``kwargs``.

    Raises:
        UnknownNameError: ``name`` is not registered. ModelArgumentError (a ConfigError and TypeError): a keyword
        the model does not take (the message lists the ones it takes). ConfigError: a value out of its range.
    """
    builder = _MODELS.get(name)
    signature = inspect.signature(builder)
    # Bind first, so a TypeError raised inside the model code is not misreported as a bad keyword.
    try:
        given = signature.bind(num_classes=num_classes, **kwargs).arguments
    except TypeError as exc:
        raise ModelArgumentError(f"create_model({name!r}, ...): {exc}; model {name!r} accepts "
                                 f"{signature.replace(return_annotation=signature.empty)}; fix or drop the argument "
                                 "(in a recipe: model_kwargs)") from None
    _ModelArgs(**{f.name: given[f.name] for f in fields(_ModelArgs) if f.name in given})
    model = builder(num_classes=num_classes, **kwargs)
    model.model_name = name  # recorded in checkpoints, checked on load
    return model


def list_models() -> list:
    """Names of all registered models, sorted."""
    return _MODELS.names()


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Distinct (``requires_grad``) parameters of ``model``: a shared layer counts once, as in ``summary()``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# At the bottom: the families import register_model from here.
from pytorch_utils.models import resnet_s8, resnet_s10, strixbee, wide_resnet  # noqa: E402,F401
from pytorch_utils.models.costs import ModelCost, model_cost  # noqa: E402,F401
from pytorch_utils.models.summary import summary  # noqa: E402,F401

__all__ = ["create_model", "list_models", "register_model", "count_parameters", "summary", "model_cost"]
