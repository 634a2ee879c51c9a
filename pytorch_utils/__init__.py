"""pytorch_utils: models, data, training engine, recipes and plots for CIFAR course notebooks."""

__version__ = "0.1.0"
