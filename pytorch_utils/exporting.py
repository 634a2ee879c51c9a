"""Export a trained model to TorchScript or ONNX (the extra ``pytorch_utils[onnx]``) with a metadata JSON beside it,
checked against the eager model. This module only writes: ``load_run``/``predict`` (:mod:`pytorch_utils.inference`)
read the exported file."""
import contextlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Literal, get_args

import torch
import torch.nn as nn

from pytorch_utils.errors import ConfigError, ExportError
from pytorch_utils.inference import as_loaded_run, load_exported_model, metadata_path, quiet_jit, require_onnx
from pytorch_utils.io import PathLike, atomic_write_text
from pytorch_utils.utils import eval_mode, model_device

__all__ = ["export", "EXPORT_FORMATS", "ATOL", "RTOL"]

log = logging.getLogger(__name__)

ExportFormat = Literal["torchscript", "onnx"]
EXPORT_FORMATS = get_args(ExportFormat)  # the CLI's --format choices
ATOL, RTOL = 1e-4, 1e-4  # float32 kernels may differ in summation order; a real export bug is off by far more


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    # Tracing records the ops one forward runs: right for these feed-forward CNNs (no data-dependent branches);
    # the output check in export catches a model for which it is not.
    with torch.no_grad(), quiet_jit():
        torch.jit.save(torch.jit.trace(model, example), str(path))


def _write_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each stage on stdout
        torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"], dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False)


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
        require_onnx(exporting=True)
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
        with torch.no_grad():
            exported = load_exported_model(tmp)[0](example).float()
        try:  # |exported - eager| <= ATOL + RTOL * |eager| elementwise, as torch.allclose; a shape change fails too
            torch.testing.assert_close(exported, eager, atol=ATOL, rtol=RTOL)
        except AssertionError as exc:
            why = " ".join(str(exc).replace("Tensor-likes are not close!", "").split())
            raise ExportError(f"the exported model's outputs differ from the eager model's ({why}; atol={ATOL:g}, "
                              f"rtol={RTOL:g}); a forward with data-dependent branches cannot be traced: try the "
                              "other format") from None
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_text(metadata_path(path), json.dumps(run.metadata(), indent=2, default=str))
    log.info(f"exported {format} model to {str(path)!r} (outputs match the eager model within atol={ATOL:g}, "
             f"rtol={RTOL:g}); metadata in {metadata_path(path).name!r}")
    return path
