"""Per-epoch logs that survive a disconnect: ``history.json`` and ``history.csv`` rewritten atomically after every
epoch (a kill leaves the previous epoch's complete files), plus optional TensorBoard scalars."""
import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

from pytorch_utils.errors import ConfigError
from pytorch_utils.io import PathLike, atomic_write_text
from pytorch_utils.train.loop import Callback, TrainState

__all__ = ["HISTORY_JSON", "HISTORY_CSV", "HistoryWriter", "write_history", "history_csv", "read_history",
           "check_tensorboard"]

log = logging.getLogger(__name__)

HISTORY_JSON, HISTORY_CSV, TENSORBOARD_DIR = "history.json", "history.csv", "tensorboard"


def _cell(value: Any) -> str:
    """One CSV cell: numbers and text as they are, None as empty, lists/dicts as JSON."""
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)


def history_csv(records: Sequence[Mapping[str, Any]]) -> str:
    """The records as CSV text: one row per epoch, one column per key (in order of first appearance)."""
    columns: List[str] = []
    for rec in records:
        columns += [k for k in rec if k not in columns]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for rec in records:
        writer.writerow([_cell(rec.get(k)) for k in columns])
    return out.getvalue()


def write_history(records: Sequence[Mapping[str, Any]], out_dir: PathLike) -> Tuple[Path, Path]:
    """Write ``history.json`` and ``history.csv`` in ``out_dir`` atomically; returns both paths."""
    out_dir = Path(out_dir)
    records = [dict(r) for r in records]
    json_path = atomic_write_text(out_dir / HISTORY_JSON, json.dumps(records, indent=2, default=str))
    csv_path = atomic_write_text(out_dir / HISTORY_CSV, history_csv(records))
    return json_path, csv_path


def _parse(text: str) -> Any:
    """A CSV cell back to a Python value: '' -> None, numbers -> int/float, true/false -> bool, JSON lists/dicts."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for parse in (int, float, json.loads) if text[:1] in "[{" else (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def read_history(path: PathLike) -> List[Dict[str, Any]]:
    """One dict per epoch from a run folder (its ``history.json``, else ``history.csv``) or either file; CSV cells
    are parsed back to numbers, bools and None. ConfigError when there is nothing to read or it is not a history."""
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in (HISTORY_JSON, HISTORY_CSV) if (path / n).is_file()]
        if not found:
            raise ConfigError(f"{str(path)!r} holds no {HISTORY_JSON} or {HISTORY_CSV}; pass a run folder "
                              "(the out_dir of a run that finished at least one epoch) or one of the files")
        path = found[0]
    if not path.is_file():
        raise ConfigError(f"history file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".csv":
            return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]
        records = json.loads(text)
    except (ValueError, csv.Error) as exc:
        raise ConfigError(f"{str(path)!r} is not a readable history ({exc})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ConfigError(f"{str(path)!r} is not a history: expected a JSON list of per-epoch objects")
    return records


def check_tensorboard():
    """The ``SummaryWriter`` class; ConfigError naming the extra to install when ``tensorboard`` is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError('tensorboard=True needs the tensorboard package: pip install "pytorch_utils[tensorboard]" '
                          "(or pip install tensorboard), or run without tensorboard") from None
    return SummaryWriter


class HistoryWriter(Callback):
    """Rewrite the history files in ``out_dir`` after every epoch; with ``tensorboard``, also log every numeric key
    of the epoch record under ``out_dir/tensorboard`` (ConfigError here, before training, without the package)."""

    def __init__(self, out_dir: PathLike, tensorboard: bool = False):
        self.out_dir = Path(out_dir)
        self._writer_class = check_tensorboard() if tensorboard else None
        self._writer = None

    def on_fit_start(self, state: TrainState) -> None:
        if self._writer_class is not None:
            self._writer = self._writer_class(log_dir=str(self.out_dir / TENSORBOARD_DIR))
            log.info(f"TensorBoard scalars in {str(self.out_dir / TENSORBOARD_DIR)!r} "
                     f"(tensorboard --logdir {self.out_dir / TENSORBOARD_DIR})")

    def on_epoch_end(self, state: TrainState, record: Dict[str, Any]) -> None:
        write_history(state.history, self.out_dir)
        if self._writer is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                        and math.isfinite(value):
                    self._writer.add_scalar(key, value, global_step=state.epoch)
            self._writer.flush()

    def on_fit_end(self, state: TrainState) -> None:
        write_history(state.history, self.out_dir)  # with what callbacks added after on_epoch_end (best, checkpoint)
        self._close()

    def on_exception(self, state: TrainState, exc: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def as_records(history: Union[PathLike, Sequence[Mapping[str, Any]]]) -> List[Mapping[str, Any]]:
    """``history`` itself when it is a list of records, else :func:`read_history` of the path."""
    if isinstance(history, (str, os.PathLike)):
        return read_history(history)
    return list(history)
