"""Declarative recipes, one per seed system (S10, WRN CIFAR-10, S8 CIFAR-100, Strixbee levels), and their runner."""
from pytorch_utils.recipes.base import (  # noqa: F401
    LRFinderSpec, Recipe, build_optimizer, get_recipe, list_recipes, parse_override, register_recipe,
    smoke_recipe,
)
from pytorch_utils.recipes import zoo  # noqa: F401,E402  (registers the recipes)
from pytorch_utils.recipes.runner import RunResult, check_model_data, run_recipe  # noqa: F401,E402
from pytorch_utils.recipes.reporting import report_data  # noqa: F401,E402
