"""Packaging for pytorch_utils (``pip install git+<repo>`` or ``pip install -e .``)."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "pytorch_utils" / "__init__.py").read_text()).group(1)

setup(
    name="pytorch_utils",
    version=VERSION,
    description="Training utilities, models, recipes and plots for CIFAR-10/100 course notebooks",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["pytorch_utils", "pytorch_utils.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch",
        "torchvision",
        "albumentations>=2",
        "torchsummary",
        "torch-lr-finder>=0.2.2",
        "grad-cam>=1.5",
        "matplotlib",
        "seaborn",
        "tqdm",
        "numpy",
        "scikit-learn",  # the per-class precision/recall/F1 table
    ],
    extras_require={
        # The Hub test needs the package, not a network; the export and TensorBoard tests need their extras; ruff is the
        # lint CI runs; timm's Mixup is what our MixUp/CutMix targets are tested against.
        "test": ["pytest", "nbval", "ipykernel", "huggingface_hub", "onnx", "onnxscript", "tensorboard", "ruff",
                 "timm"],
        "hub": ["huggingface_hub"],
        "onnx": ["onnx", "onnxscript"],  # export(..., format="onnx"); onnxruntime, if installed, runs the check
        "tensorboard": ["tensorboard"],  # tensorboard=True / --tensorboard
    },
    entry_points={"console_scripts": ["pytorch-utils=pytorch_utils.cli:main"]},
)
