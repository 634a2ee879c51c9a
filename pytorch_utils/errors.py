"""Exception types raised by pytorch_utils: every error bad input can trigger is a ``PytorchUtilsError`` (one clear
line in notebooks and the CLI), and also the built-in a caller would expect (``except ValueError`` keeps working).
Also the one checker of declared dataclass fields (:func:`check_fields`) that every spec runs at the doors."""
import dataclasses
import math
import operator
import typing
from dataclasses import MISSING, field
from typing import Any, Literal, Union


class PytorchUtilsError(Exception):
    """Base class of every error raised on purpose by pytorch_utils."""


class UnknownNameError(PytorchUtilsError, KeyError):
    """A model, recipe, dataset, scheduler or preset name that is not registered."""

    def __str__(self):  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class DatasetError(PytorchUtilsError, ValueError):
    """A dataset that is missing, empty, laid out wrongly or holds unusable images/labels."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset path that does not exist."""


class ConfigError(PytorchUtilsError, ValueError):
    """Arguments that do not fit together (sizes, ranges, class counts, devices)."""


class InputShapeError(ConfigError):
    """An input tensor whose shape the model cannot take."""


class NonFiniteLossError(PytorchUtilsError, FloatingPointError):
    """The training loss became NaN or infinite."""


class CheckpointError(PytorchUtilsError, RuntimeError):
    """A checkpoint that is missing, corrupt, or belongs to a different model."""


class ModelArgumentError(ConfigError, TypeError):
    """Keyword arguments a model builder does not accept (also a TypeError, as a bad call would raise)."""


class ExportError(PytorchUtilsError, RuntimeError):
    """An exported model whose outputs differ from the eager model's, or an export the exporter refused."""


class DiskFullError(PytorchUtilsError, OSError):
    """No space left (or the disk quota is used up) while writing a file; the file it replaces is intact."""


class RunLockedError(PytorchUtilsError, RuntimeError):
    """The output folder belongs to a run that is still going (another process holds its lock)."""


# ---- the one field checker: types from annotations, numeric ranges declared beside the field --------------------

def bounded(default: Any = MISSING, *, ge=None, gt=None, le=None, lt=None, default_factory: Any = MISSING):
    """A dataclass field whose number must be finite and within the declared bounds (``ge``/``gt``/``le``/``lt``);
    :func:`check_fields` enforces them. ``x: float = bounded(0.1, gt=0)``."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return field(default=default, default_factory=default_factory, metadata={"bounds": bounds})


_OPS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="), "lt": (operator.lt, "<")}


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is Union:
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if origin is Literal:
        return isinstance(value, str) and value in typing.get_args(hint)
    if origin is list:  # List[Phase]: every element too
        return isinstance(value, list) and all(_type_ok(v, typing.get_args(hint)[0]) for v in value)
    if origin is not None:  # Dict[...], Tuple[...]: the container type
        return isinstance(value, origin)
    if isinstance(value, bool) and hint is not bool:  # True is an int to Python, not an epoch count
        return False
    return isinstance(value, (int, float)) if hint is float else isinstance(value, hint)


def describe_type(hint: Any) -> str:
    """A type annotation in words: ``int or None``, ``one of 'sgd', 'adam'``."""
    origin = typing.get_origin(hint)
    if origin is Union:
        return " or ".join(describe_type(arg) for arg in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    return "None" if hint is type(None) else getattr(origin or hint, "__name__", str(hint))


def check_fields(obj: Any, where: str) -> None:
    """Check every field of the dataclass ``obj`` against its annotation and its declared :func:`bounds <bounded>`
    (numbers finite, NaN and infinity refused). Raises ConfigError naming ``where``, the field, the value and what is
    expected: ``recipe field 'lr' must be > 0, got -1``."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not _type_ok(value, hints[f.name]):
            raise ConfigError(f"{where} {f.name!r} must be {describe_type(hints[f.name])}, got {value!r}")
        bounds = f.metadata.get("bounds")
        if bounds is None or value is None:
            continue
        finite = not isinstance(value, float) or math.isfinite(value)  # an int of 400 digits is no float
        if not finite or not all(_OPS[k][0](value, v) for k, v in bounds.items()):
            expected = " and ".join(f"{_OPS[k][1]} {v}" for k, v in bounds.items()) or "finite"
            raise ConfigError(f"{where} {f.name!r} must be {expected}, got {value!r}")
