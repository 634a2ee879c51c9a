"""pytorch_utils: models, data, training engine, recipes and plots for CIFAR course notebooks."""
import importlib
import logging
import sys

__version__ = "0.2.0"


class _StdoutHandler(logging.StreamHandler):
    """Writes to the current ``sys.stdout``: a notebook kernel or a test may replace it after the import."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns one; the current sys.stdout is always used
        pass


def _default_logging() -> None:
    """Give the package logger one stdout handler at INFO (unless the application configured it), so notebooks and
    the CLI show epoch lines with no set-up; silence with ``logging.getLogger("pytorch_utils").setLevel(...)``."""
    logger = logging.getLogger(__name__)
    if logger.handlers or logger.level != logging.NOTSET:
        return
    handler = _StdoutHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # a root handler (pytest, Jupyter) would print every line twice


_default_logging()

# After training (imported on first use, so ``import pytorch_utils`` stays light).
_LAZY = {"load_run": "pytorch_utils.inference", "predict": "pytorch_utils.inference",
         "export": "pytorch_utils.exporting"}
__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
