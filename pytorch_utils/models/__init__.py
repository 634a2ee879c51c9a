"""Model zoo: ``create_model(name, num_classes=..., **kwargs)`` and ``list_models()`` over the registry in
``_registry.py``; one module per family registers its builders with ``@register_model`` when imported here."""
from pytorch_utils.models import resnet_s8, resnet_s10, strixbee, wide_resnet  # noqa: F401 (registers them)
from pytorch_utils.models._registry import create_model, list_models, register_model
from pytorch_utils.models.costs import model_cost
from pytorch_utils.models.summary import count_parameters, summary

__all__ = ["create_model", "list_models", "register_model", "count_parameters", "summary", "model_cost"]
