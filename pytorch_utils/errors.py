"""Exception types raised by pytorch_utils: every error bad input can trigger is a ``PytorchUtilsError`` (one clear
line in notebooks and the CLI), and also the built-in a caller would expect (``except ValueError`` keeps working)."""


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
