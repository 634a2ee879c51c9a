"""Per-epoch logs that survive a disconnect: ``history.json`` and ``history.csv`` rewritten atomically after every
epoch (a kill leaves the previous epoch's complete files), read back by ``read_history``, summarized by ``summarize``
(the one summary: ``summary.json``, the report's index), plus optional TensorBoard scalars."""
import contextlib
import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

from pytorch_utils.errors import ConfigError
from pytorch_utils.io import PathLike, atomic_write_text, ensure_writable_dir, read_run_file
from pytorch_utils.train.state import Callback, TrainState

__all__ = ["HISTORY_JSON", "HISTORY_CSV", "HistoryWriter", "write_history", "history_csv", "read_history",
           "summarize", "as_records"]

log = logging.getLogger(__name__)

HISTORY_JSON, HISTORY_CSV, TENSORBOARD_DIR = "history.json", "history.csv", "tensorboard"


def history_csv(records: Sequence[Mapping[str, Any]]) -> str:
    """The records as CSV text: one row per epoch, one column per key (in order of first appearance); None is an
    empty cell, lists/dicts are JSON."""
    out = io.StringIO()
    writer = csv.DictWriter(out, list(dict.fromkeys(k for rec in records for k in rec)), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else json.dumps(v) if isinstance(v, (list, tuple, dict)) else v
                      for k, v in rec.items()} for rec in records)
    return out.getvalue()


def write_history(records: Sequence[Mapping[str, Any]], out_dir: PathLike) -> Tuple[Path, Path]:
    """Write ``history.json`` and ``history.csv`` into the existing ``out_dir`` (``io.atomic_write``); return both."""
    out_dir, records = Path(out_dir), [dict(r) for r in records]
    return (atomic_write_text(out_dir / HISTORY_JSON, json.dumps(records, indent=2, default=str)),
            atomic_write_text(out_dir / HISTORY_CSV, history_csv(records)))


def _parse(text: str) -> Any:
    """A CSV cell back to a Python value: '' -> None, True/False, numbers -> int/float, JSON lists/dicts, else text."""
    if text in ("", "True", "False"):
        return {"": None, "True": True, "False": False}[text]
    for parse in (int, float, json.loads):
        with contextlib.suppress(ValueError):
            return parse(text)
    return text


def read_history(path: PathLike) -> List[Dict[str, Any]]:
    """One dict per epoch from a run folder (its ``history.json``, else ``history.csv``) or either file; CSV cells
    are parsed back to numbers, bools and None. ConfigError when there is nothing to read or it is not a history."""
    given = path = Path(path)
    if path.is_dir():
        path = next((f for f in (path / HISTORY_JSON, path / HISTORY_CSV) if f.is_file()), path / HISTORY_JSON)
    try:
        text = read_run_file(path)
        if path.suffix.lower() == ".csv":
            return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]
        return [{**record} for record in json.loads(text)]  # TypeError unless a list of objects
    except (OSError, ValueError, TypeError, RecursionError, csv.Error) as exc:  # RecursionError: a nesting bomb
        raise ConfigError(f"{str(given)!r} is not a history ({type(exc).__name__}: {exc}); pass a run folder holding "
                          f"{HISTORY_JSON} or {HISTORY_CSV} (a run past its first epoch) or one of the files") from None


def summarize(records: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """The one summary of a run's per-epoch records (one per epoch: ``viz.clean_history`` de-duplicates a resumed
    run's): ``epochs_run`` (the last epoch), the last recorded ``train_acc``, ``test_acc`` and ``test_loss``, the
    best ``best_test_acc`` (percent) with its ``best_epoch``, and ``stopped_early``; None where nothing was recorded."""
    def last(key):
        return next((r[key] for r in reversed(records) if r.get(key) is not None), None)

    best = max((r for r in records if r.get("test_acc") is not None), key=lambda r: r["test_acc"], default={})
    return {"epochs_run": records[-1].get("epoch", len(records)) if records else 0, "train_acc": last("train_acc"),
            "test_acc": last("test_acc"), "test_loss": last("test_loss"),
            "best_test_acc": best.get("test_acc"), "best_epoch": best.get("epoch"),
            "stopped_early": any(r.get("early_stop") is True for r in records)}


class HistoryWriter(Callback):
    """Rewrite the history files in ``out_dir`` (created here, never by later writes) after every epoch; with
    ``tensorboard``, also log every numeric key of the epoch record under ``out_dir/tensorboard`` (ConfigError
    here, before training, without the package)."""

    def __init__(self, out_dir: PathLike, tensorboard: bool = False):
        self.out_dir, self._writer_class, self._writer = ensure_writable_dir(out_dir), None, None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError('tensorboard=True needs the tensorboard package: pip install '
                                  '"pytorch_utils[tensorboard]" (or tensorboard), or run without it') from None
            self._writer_class = SummaryWriter

    def on_fit_start(self, state: TrainState) -> None:
        if self._writer_class is not None:
            logdir = self.out_dir / TENSORBOARD_DIR
            self._writer = self._writer_class(log_dir=str(logdir))
            log.info(f"TensorBoard scalars in {str(logdir)!r} (tensorboard --logdir {logdir})")

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
    return read_history(history) if isinstance(history, (str, os.PathLike)) else list(history)
