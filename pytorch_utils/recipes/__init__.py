"""Declarative recipes, one per seed system (S10, WRN CIFAR-10, S8 CIFAR-100, Strixbee levels), and their runner."""
from pytorch_utils.recipes import zoo  # noqa: F401,E402  (registers the recipes)
from pytorch_utils.recipes.base import Recipe, get_recipe, list_recipes, smoke_recipe
from pytorch_utils.recipes.runner import report_data, run_recipe

__all__ = ["Recipe", "get_recipe", "list_recipes", "run_recipe", "smoke_recipe", "report_data"]
