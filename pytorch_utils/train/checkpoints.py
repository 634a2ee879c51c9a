"""Checkpoints that survive a Colab disconnect: atomic writes, keep-last-N + best, exact resume, optional Hub push.
A checkpoint is one dict of tensors and plain values, so it loads with ``torch.load(weights_only=True)``."""
import contextlib
import copy
import json
import logging
import os
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from pytorch_utils import __version__
from pytorch_utils.errors import CheckpointError, ConfigError
from pytorch_utils.io import MAX_ZIP_DIRECTORY, atomic_write, ensure_writable_dir, zip_directory_bytes
from pytorch_utils.train import distributed as dist_utils
from pytorch_utils.train.state import Callback, History, TrainState
from pytorch_utils.utils import get_rng_state, set_rng_state, unwrap_model

_log = logging.getLogger(__name__)
FORMAT = 2  # 2: steps_per_epoch added, schedules saved as their adapters
EPOCH_FILE = re.compile(r"^epoch-(\d+)\.pt$")


def _plain(obj: Any) -> Any:
    """JSON-compatible copy of a config (dataclasses, tuples, paths become dicts/lists/strings)."""
    return json.loads(json.dumps(obj, default=lambda o: o.__dict__ if hasattr(o, "__dict__") else str(o)))


def _rng_to_plain(state: Dict[str, Any]) -> Dict[str, Any]:
    """``get_rng_state()`` as tensors, lists and numbers only (what ``torch.load(weights_only=True)`` accepts)."""
    name, keys, pos, has_gauss, cached = state["numpy"]
    version, internal, gauss = state["python"]
    return dict(state, python=[version, list(internal), gauss],
                numpy={"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)})


def _rng_from_plain(plain: Dict[str, Any]) -> Dict[str, Any]:
    py, n = plain["python"], plain["numpy"]
    return dict(plain, python=(py[0], tuple(py[1]), py[2]),
                numpy=(n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))


def make_checkpoint(state: TrainState, config: Optional[Dict[str, Any]] = None,
                    best: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The checkpoint dict for the current :class:`TrainState`."""
    model = unwrap_model(state.model)
    return {
        "format": FORMAT, "version": __version__,
        "model_name": getattr(model, "model_name", type(model).__name__),
        "model": model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        **{key: part.state_dict() if hasattr(part, "state_dict") else None
           for key, part in (("scheduler", state.scheduler), ("scaler", state.scaler), ("ema", state.ema))},
        "epoch": state.epoch, "step": state.step, "steps_per_epoch": state.steps_per_epoch,
        "history": _plain(list(state.history)), "rng": _rng_to_plain(get_rng_state()),
        "config": _plain(config or {}), "best": best,
    }


def save_checkpoint(checkpoint: Dict[str, Any], path) -> Path:
    """``torch.save`` via ``io.atomic_write`` (a kill mid-write keeps the old file; replaces a link); dir must exist."""
    return atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` gets ``src``'s bytes via ``io.atomic_write``: a hard link (no 2nd write), or a copy on mounted drives."""
    def fill(tmp: str) -> None:
        try:
            os.unlink(tmp)  # the fresh temporary's name goes to the link; os.link refuses an existing name
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)

    atomic_write(dst, fill)


def repair_best(directory, checkpoint: Dict[str, Any]) -> Optional[Path]:
    """Link the best epoch's file over a stale ``directory/best.pt`` (a kill between the two writes); returns the
    repaired path, or None when it was current or the best epoch's file is gone (logged as a warning)."""
    epoch = (checkpoint.get("best") or {}).get("epoch")
    if epoch is None:
        return None
    best_path = Path(directory) / "best.pt"
    try:  # mmap: only the small "epoch" entry is read, not a 146 MB WRN state
        _check_file(best_path)
        held = torch.load(best_path, map_location="cpu", weights_only=True, mmap=True).get("epoch")
    except Exception:  # missing, truncated or not ours: all mean "rewrite it"
        held = None
    if held == epoch:
        return None
    source = Path(directory) / f"epoch-{epoch:04d}.pt"
    if not source.is_file():
        _log.warning(f"{str(best_path)!r} holds epoch {held}, not the best epoch {epoch}, whose checkpoint is gone; "
                     "it is replaced at the next improvement")
        return None
    link_or_copy(source, best_path)
    _log.info(f"{str(best_path)!r} held epoch {held}; restored it to the best epoch {epoch} (killed before updating)")
    return best_path


def _check_file(path: Path) -> None:
    """CheckpointError unless ``path`` is a regular file (a FIFO hangs a load) with no compressed zip member."""
    if not path.is_file():  # os.stat (following links) + S_ISREG
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a regular file")
    listed = 0
    with contextlib.suppress(OSError):  # unreadable: torch.load below says so, naming the file
        listed = zip_directory_bytes(path)
    if listed > MAX_ZIP_DIRECTORY:  # before zipfile spends ~1 kB per entry listed (torch.save writes a few KB)
        raise CheckpointError(f"checkpoint {str(path)!r} declares a file list of {listed:,} bytes (torch.save writes "
                              f"a few KB; the limit is {MAX_ZIP_DIRECTORY:,}): delete it")
    packed = False
    with contextlib.suppress(Exception), zipfile.ZipFile(path) as archive:  # not a zip or broken: torch.load refuses
        packed = any(member.compress_type != zipfile.ZIP_STORED for member in archive.infolist())
    if packed:
        raise CheckpointError(f"checkpoint {str(path)!r} has compressed members, which torch.save never writes (they "
                              "could expand to any size on load): delete it")


def _not_stored(t: Any) -> bool:
    """An expanded or overlapping view: a huge shape from a tiny file (torch.save of a model never writes one)."""
    return isinstance(t, torch.Tensor) and (t.layout != torch.strided  # sparse: torch.save of a model never writes
                                            or t.untyped_storage().nbytes() < t.numel() * t.element_size())


def load_checkpoint(path, map_location="cpu") -> Dict[str, Any]:
    """Load a checkpoint of this module; CheckpointError (naming the file) when missing, unsafe, corrupt or not ours."""
    _check_file(path := Path(path))
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, disk error, TorchScript: all mean "unusable"
        # One sentence of torch's message: its advice to allow more (weights_only=False) would run the file's code.
        lines = str(exc).strip().splitlines() or [""]
        reason = next((x.strip() for x in lines if "error:" in x), lines[0]).split(". ")[0][:300]
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or truncated, or not a weights-only checkpoint "
                              f"({type(exc).__name__}: {reason})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or not isinstance(ckpt.get("format"), int):
        raise CheckpointError(f"{str(path)!r} is not a pytorch_utils checkpoint (format {FORMAT})")
    if any(map(_not_stored, ckpt["model"].values())):
        raise CheckpointError(f"{str(path)!r} holds expanded or sparse weight tensors (training never saves them)")
    if ckpt["format"] > FORMAT:  # format 1 (no steps_per_epoch) is read as written at today's steps per epoch
        raise CheckpointError(f"{str(path)!r} was written by pytorch_utils {ckpt.get('version')} (checkpoint format "
                              f"{ckpt['format']}, this version reads up to {FORMAT}): use that version or newer")
    return ckpt


def check_model_name(checkpoint: Dict[str, Any], name: Optional[str], source: str = "checkpoint") -> None:
    """Raise CheckpointError for a checkpoint saved from another model than ``name`` (None: nothing to compare)."""
    saved_name = checkpoint.get("model_name")
    if saved_name and name and saved_name != name:
        raise CheckpointError(f"{source} holds a {saved_name!r} model but the model to restore is {name!r}; "
                              "use the same model/recipe as the run that wrote it, or another out_dir")


def restore_model(model: torch.nn.Module, checkpoint: Dict[str, Any], source: str = "checkpoint") -> None:
    """Load the checkpoint's weights into ``model``; CheckpointError when the model name or state dict differs."""
    target = unwrap_model(model)
    check_model_name(checkpoint, getattr(target, "model_name", None), source)
    try:
        target.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{source} does not fit this model ({checkpoint.get('model_name') or 'unknown model'} "
                              "weights): " + " ".join(str(exc).strip().splitlines()[:3])) from None


def restore_state(state: TrainState, checkpoint: Dict[str, Any], source: str = "checkpoint") -> None:
    """Put a checkpoint back into a :class:`TrainState` (``fit`` does, before any callback hook); other steps per
    epoch than the checkpoint's (batch or data size) rescale the step count to the same point of the run (logged)."""
    restore_model(state.model, checkpoint, source)
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    for key, part in (("scheduler", state.scheduler), ("scaler", state.scaler), ("ema", state.ema)):
        if checkpoint.get(key) is not None and hasattr(part, "load_state_dict"):
            part.load_state_dict(checkpoint[key])
    state.epoch, state.step = int(checkpoint["epoch"]), int(checkpoint["step"])
    saved = checkpoint.get("steps_per_epoch", state.steps_per_epoch)
    if saved != state.steps_per_epoch:
        state.step = round(state.step * state.steps_per_epoch / saved)
        _log.info(f"{source} was written at {saved} steps per epoch, this run has {state.steps_per_epoch} (another "
                  f"batch or data size): the LR schedule continues from the same point of the run, step {state.step}")
    state.history = History(checkpoint.get("history") or [])
    set_rng_state(_rng_from_plain(checkpoint["rng"]))


def epoch_files(directory) -> List[Path]:
    """Epoch checkpoints (``epoch-0007.pt``) in ``directory``, oldest first (empty when it does not exist)."""
    files = [p for p in Path(directory).glob("epoch-*.pt") if EPOCH_FILE.match(p.name)]
    return sorted(files, key=lambda p: int(EPOCH_FILE.match(p.name).group(1)))


def latest_checkpoint(directory, skipped: Optional[List[str]] = None) -> Optional[Dict[str, Any]]:
    """The newest intact epoch checkpoint in ``directory`` (dict with ``_path``), or None; corrupt files are
    warned about, appended to ``skipped`` and passed over."""
    for path in reversed(epoch_files(directory)):
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as exc:
            if skipped is not None:
                skipped.append(str(path))
            warnings.warn(f"{str(exc).splitlines()[0]}; trying the previous checkpoint", RuntimeWarning, stacklevel=2)
            continue
        return {**ckpt, "_path": str(path)}
    return None


class CheckpointManager(Callback):
    """Writes ``epoch-0007.pt`` files (the last ``keep_last``; every ``every`` epochs and the last) and ``best.pt`` (by
    ``monitor``, ``mode`` "max"/"min"; a best between saves waits in memory for the next) in ``directory`` (created
    here; its parent must exist), rank 0 only, storing ``config`` (dict or dataclass) in each. It only writes: a run
    resumes by handing ``fit`` a loaded checkpoint (``resume=``), whose history gives back the best so far."""

    def __init__(self, directory, keep_last: int = 5, monitor: str = "test_acc", mode: str = "max",
                 config: Any = None, hub: "HubPusher" = None, every: int = 1):
        assert every >= 1 and keep_last >= 1 and mode in ("max", "min")
        self.directory, self.best_path = Path(directory), Path(directory) / "best.pt"
        if dist_utils.is_main_process():
            ensure_writable_dir(self.directory, parents=False)  # an unmounted Drive is not re-created locally
        self.keep_last, self.monitor, self.mode = keep_last, monitor, mode
        self.config, self.hub, self.every = config, hub, every
        self.best = self._pending_best = None  # {"monitor", "value", "epoch"} so far; a best checkpoint not yet saved

    def _is_better(self, value: Optional[float]) -> bool:
        if value is None or self.best is None:
            return value is not None
        return value > self.best["value"] if self.mode == "max" else value < self.best["value"]

    def on_fit_start(self, state: TrainState) -> None:
        self.best = None
        for record in state.history:  # a resumed run: the best so far, from its history
            if self._is_better(record.get(self.monitor)):
                self.best = {"monitor": self.monitor, "value": record[self.monitor], "epoch": record["epoch"]}
        if dist_utils.is_main_process():  # temporaries of a killed write never replaced a checkpoint
            for path in self.directory.glob(".*.tmp"):
                path.unlink(missing_ok=True)

    def on_epoch_complete(self, state: TrainState, record: Dict[str, Any]) -> None:
        value = record.get(self.monitor)
        improved = self._is_better(value)
        if improved:
            self.best = {"monitor": self.monitor, "value": value, "epoch": state.epoch}
            record["best"] = True
        if not dist_utils.is_main_process():
            return
        last = state.epoch >= state.epochs or state.stop
        if state.epoch % self.every and not last:
            if improved:  # held until the next save, no disk write now; deepcopy: state_dicts alias the weights
                self._pending_best = copy.deepcopy(make_checkpoint(state, self.config, self.best))
            return
        path = self.directory / f"epoch-{state.epoch:04d}.pt"
        record["checkpoint"] = path.name
        save_checkpoint(make_checkpoint(state, self.config, self.best), path)
        best_changed = improved or self._pending_best is not None
        if improved:
            link_or_copy(path, self.best_path)
            self._pending_best = None
        self.write_pending_best()
        for old in epoch_files(self.directory)[:-self.keep_last]:  # only after the new file is in place
            old.unlink(missing_ok=True)
        if self.hub is not None:
            self.hub.maybe_push(self.directory, path, state.epoch, best_changed, record)

    def write_pending_best(self) -> None:
        """Write a best checkpoint held in memory since the last save (``every > 1``) to ``best.pt``."""
        if self._pending_best is not None and dist_utils.is_main_process():
            save_checkpoint(self._pending_best, self.best_path)
        self._pending_best = None

    def on_exception(self, state: TrainState, exc: BaseException) -> None:
        self.write_pending_best()  # NaN loss, Ctrl-C: the best weights seen so far are still worth keeping


class HubPusher:
    """Pushes checkpoints to a Hugging Face Hub repo every ``every`` epochs and when the best improves. A missing
    package, token or Hub is a ConfigError here; a failed push later only warns (the checkpoints are safe on disk)."""

    def __init__(self, repo_id: str, token: Optional[str] = None, every: int = 10, push_best: bool = True,
                 private: bool = True, create: bool = True):
        try:
            import huggingface_hub
        except ImportError:
            raise ConfigError("Hub push needs huggingface_hub: pip install 'pytorch_utils[hub]'") from None
        token = token or huggingface_hub.get_token()
        if not token:
            raise ConfigError("Hub push needs a token: set HF_TOKEN or run `huggingface-cli login` "
                              "(or drop the hub option to keep checkpoints local)")
        self.api = huggingface_hub.HfApi(token=token)
        self.repo_id, self.every, self.push_best = repo_id, every, push_best
        self.errors: List[str] = []
        if create:
            try:
                self.api.create_repo(repo_id, private=private, exist_ok=True)
            except Exception as exc:
                raise ConfigError(f"cannot reach the Hugging Face Hub to create {repo_id!r} ({type(exc).__name__}: "
                                  f"{exc}); check the network and token, or drop the hub option") from None

    def push(self, local: Path, remote_name: str) -> bool:
        """Upload one file; returns False (and warns) when the upload fails."""
        try:
            self.api.upload_file(path_or_fileobj=str(local), path_in_repo=remote_name, repo_id=self.repo_id)
            return True
        except Exception as exc:
            msg = f"Hub push of {local.name} to {self.repo_id} failed ({type(exc).__name__}: {exc}); kept locally"
            self.errors.append(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            return False

    def maybe_push(self, directory: Path, path: Path, epoch: int, improved: bool, record: Dict[str, Any]) -> None:
        """Push ``path`` on every ``every``-th epoch and ``best.pt`` when it improved; note failures in ``record``."""
        ok = True
        if self.every and epoch % self.every == 0:
            ok &= self.push(path, path.name)
        if self.push_best and improved:
            ok &= self.push(directory / "best.pt", "best.pt")
        if not ok:
            record["hub_error"] = self.errors[-1]
