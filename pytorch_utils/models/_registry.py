"""The model registry (the one list of names that tools read): ``@register_model`` builders, ``create_model`` (the
door for a recipe's kwargs: it checks them once with :class:`_ModelArgs`, the models trust them), ``list_models``."""
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

    # Upper bounds keep a file's config from asking for a huge model: they admit every registered model and recipe.
    num_classes: int = bounded(10, ge=1, le=1000)
    dropout: float = bounded(0.0, ge=0, lt=1)
    depth: int = bounded(28, ge=10, le=40)  # Wide ResNet: 6n + 4
    widen_factor: int = bounded(10, ge=1, le=20)

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
    signature = inspect.signature(builder).replace(return_annotation=inspect.Signature.empty)
    # Bind first, so a TypeError raised inside the model code is not misreported as a bad keyword.
    try:
        given = signature.bind(num_classes=num_classes, **kwargs).arguments
    except TypeError as exc:
        raise ModelArgumentError(f"create_model({name!r}, ...): {exc}; model {name!r} accepts {signature}; fix or "
                                 "drop the argument (in a recipe: model_kwargs)") from None
    _ModelArgs(**{f.name: given[f.name] for f in fields(_ModelArgs) if f.name in given})
    model = builder(num_classes=num_classes, **kwargs)
    model.model_name = name  # recorded in checkpoints, checked on load
    return model


def list_models() -> list:
    """Names of all registered models, sorted."""
    return _MODELS.names()
