"""Export a trained model to TorchScript or ONNX (the extra ``pytorch_utils[onnx]``) with a metadata JSON beside it,
checked against the eager model; ``predict`` and ``load_run`` accept the exported file."""
import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn

from pytorch_utils.errors import CheckpointError, ConfigError, ExportError
from pytorch_utils.inference import METADATA_KEYS, LoadedRun, as_loaded_run
from pytorch_utils.io import PathLike, atomic_write_text
from pytorch_utils.utils import eval_mode, model_device

__all__ = ["export", "load_exported", "EXPORT_FORMATS", "ATOL", "RTOL"]

log = logging.getLogger(__name__)

ExportFormat = Literal["torchscript", "onnx"]
EXPORT_FORMATS = ("torchscript", "onnx")
ATOL, RTOL = 1e-4, 1e-4  # float32 kernels may differ in summation order; a real export bug is off by far more


def _require_onnx(exporting: bool = False):
    """The ``onnx`` module (and, to export, onnxscript); ConfigError naming the extra when one is missing."""
    try:
        import onnx
        if exporting:
            import onnxscript  # noqa: F401
    except ImportError:
        raise ConfigError('format="onnx" needs the onnx and onnxscript packages: pip install "pytorch_utils[onnx]"'
                          ) from None
    return onnx


def metadata_path(path: PathLike) -> Path:
    """The metadata JSON beside an exported model: its file name + ``.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


@contextlib.contextmanager
def _quiet_jit():
    """Hide torch >= 2.9's torch.jit deprecation notice: TorchScript files still load everywhere (C++, mobile)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        yield


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    # Tracing records the ops one forward runs: right for these feed-forward CNNs (no data-dependent branches);
    # the output check below catches a model for which it is not.
    with torch.no_grad(), _quiet_jit():
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(path))


def _write_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each stage on stdout
        torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"], dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False)


class OnnxModel:
    """An ONNX file called like a model (float32 (N, 3, H, W) -> logits (N, C), CPU): onnxruntime when installed,
    else ``onnx.reference.ReferenceEvaluator`` (pure Python, slower, exact ONNX semantics)."""

    def __init__(self, path: PathLike):
        onnx = _require_onnx()
        try:
            import onnxruntime

            self._session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except ImportError:
            from onnx.reference import ReferenceEvaluator

            self._session = ReferenceEvaluator(onnx.load(str(path)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self._session.run(None, {"input": x.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(np.asarray(out))


def _load_model(path: Path):
    if path.suffix.lower() == ".onnx":
        return OnnxModel(path), "onnx"
    try:
        with _quiet_jit():
            return torch.jit.load(str(path), map_location="cpu").eval(), "torchscript"
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{str(path)!r} is not a TorchScript model written by export ({exc}); pass a run "
                              "folder, or a .pt/.onnx file from export") from None


def load_exported(path: PathLike) -> LoadedRun:
    """A model written by :func:`export`, with its metadata, as a :class:`LoadedRun`. Raises CheckpointError
    (missing/incomplete metadata, not an export) or ConfigError (ONNX without its extra)."""
    path = Path(path)
    meta_file = metadata_path(path)
    if not meta_file.is_file():
        raise CheckpointError(f"{str(path)!r} has no metadata file {meta_file.name!r} beside it (export writes one; "
                              "it holds the class names and normalization): export again, or pass the run folder")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    missing = [k for k in METADATA_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"{str(meta_file)!r} lacks {', '.join(missing)}; export the run again")
    model, kind = _load_model(path)
    return LoadedRun.from_metadata(model, meta, recipe=meta.get("recipe") or {}, source=path, weights=kind)


def export(model_or_run, path: PathLike, format: ExportFormat = "torchscript", batch: int = 4) -> Path:
    """Write the model (from the CPU, eval mode) as TorchScript (``torch.jit.trace``) or ONNX (dynamic batch size)
    plus ``<path>.json`` (classes, mean/std, input size, recipe); return ``path``. The written file is re-loaded
    and its logits on a seeded random batch of ``batch`` inputs must match the eager model's: ``|exported - eager|
    <= 1e-4 + 1e-4 * |eager|`` (``ATOL``, ``RTOL``). Raises ConfigError (unknown format, ONNX without its extra)
    or ExportError (the exporter failed or the outputs differ; an earlier file at ``path`` stays)."""
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"format must be one of {', '.join(map(repr, EXPORT_FORMATS))}, got {format!r}")
    run = as_loaded_run(model_or_run)
    if not isinstance(run.model, nn.Module) or isinstance(run.model, torch.jit.ScriptModule):
        raise ConfigError("export needs the trained model, not an already exported file: pass the run folder")
    if format == "onnx":
        _require_onnx(exporting=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written and checked under a temporary name, then renamed: a failed export never replaces a good one.
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    example = torch.randn(batch, 3, *run.input_size, generator=torch.Generator().manual_seed(0))
    model, device = run.model, model_device(run.model)
    try:
        with eval_mode(model):
            try:
                with torch.no_grad():
                    eager = model.cpu()(example).float()
                (_write_torchscript if format == "torchscript" else _write_onnx)(model, example, tmp)
            except Exception as exc:  # the exporters raise many types; the message is what helps
                raise ExportError(f"{format} export of {type(model).__name__} failed: {type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
            finally:
                model.to(device)
        _verify(tmp, eager, example)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_text(metadata_path(path), json.dumps(run.metadata(), indent=2, default=str))
    log.info(f"exported {format} model to {str(path)!r} (outputs match the eager model within atol={ATOL:g}, "
             f"rtol={RTOL:g}); metadata in {metadata_path(path).name!r}")
    return path


def _verify(path: Path, eager: torch.Tensor, example: torch.Tensor) -> None:
    """Re-load the written file and compare its logits with ``eager``."""
    model, _ = _load_model(path)
    with torch.no_grad():
        exported = model(example).float()
    if exported.shape != eager.shape or not torch.allclose(exported, eager, atol=ATOL, rtol=RTOL):
        diff = (exported - eager).abs().max().item() if exported.shape == eager.shape else float("nan")
        raise ExportError(f"the exported model's outputs differ from the eager model's (max |diff| {diff:.3g}, "
                          f"shapes {tuple(exported.shape)} vs {tuple(eager.shape)}; tolerance atol={ATOL:g}, "
                          f"rtol={RTOL:g}); a forward with data-dependent branches cannot be traced: try the other "
                          "format")
