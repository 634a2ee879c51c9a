"""Export a trained model to TorchScript or ONNX (the extra ``pytorch_utils[onnx]``) with a metadata JSON beside it,
checked against the eager model. This module only writes: ``load_run``/``predict`` (:mod:`pytorch_utils.inference`)
read the exported file."""
import contextlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Callable, Literal, get_args

import torch
import torch.nn as nn

from pytorch_utils.errors import ConfigError, ExportError
from pytorch_utils.inference import OnnxModel, as_loaded_run, fingerprint, metadata_path, quiet_jit, require_onnx
from pytorch_utils.io import PathLike, atomic_write, atomic_write_text, ensure_writable_dir
from pytorch_utils.utils import eval_mode, model_device

__all__ = ["export", "EXPORT_FORMATS", "ATOL", "RTOL"]

log = logging.getLogger(__name__)

ExportFormat = Literal["torchscript", "onnx"]
EXPORT_FORMATS = get_args(ExportFormat)  # the CLI's --format choices
ATOL, RTOL = 1e-4, 1e-4  # float32 kernels may differ in summation order; a real export bug is off by far more


def _torchscript_writer(model: nn.Module, example: torch.Tensor) -> Callable[[str], None]:
    # Tracing records the ops one forward runs: right for these feed-forward CNNs (no data-dependent branches);
    # the output check in export catches a model for which it is not.
    buffer = io.BytesIO()  # saved in memory first: torch.jit.save onto a full disk aborts the process (C++ terminate)
    with torch.no_grad(), quiet_jit():
        torch.jit.save(torch.jit.trace(model, example), buffer)
    return lambda tmp: Path(tmp).write_bytes(buffer.getvalue())


def _onnx_writer(model: nn.Module, example: torch.Tensor) -> Callable[[str], None]:
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each stage on stdout
        program = torch.onnx.export(model, (example,), input_names=["input"], output_names=["logits"], dynamo=True,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},))
    return lambda tmp: program.save(tmp, external_data=False)


def export(model_or_run, path: PathLike, format: ExportFormat = "torchscript", batch: int = 4) -> Path:
    """Write the model (from the CPU, eval mode) as TorchScript (``torch.jit.trace``) or ONNX (dynamic batch size)
    plus ``<path>.json`` (classes, mean/std, input size, recipe; the checkpoint's path from there and SHA-256, so that
    ``load_run`` refuses a stale export); return ``path``. The written file is re-loaded and its logits on a seeded
    random batch of ``batch`` inputs must match the eager model's: ``|exported - eager| <= 1e-4 + 1e-4 * |eager|``
    (``ATOL``, ``RTOL``). Both files go through ``io.atomic_write``: on any error an earlier file at ``path`` stays and
    no temporary is left; a symlink at either name is replaced, never written through. Raises ConfigError (unknown
    format, ONNX without its extra, an exported file given, a folder that cannot be written), DiskFullError, or
    ExportError (the exporter failed, the outputs differ, ONNX weights over 1.5 GiB or a graph ``load_run`` refuses)."""
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"format must be one of {', '.join(map(repr, EXPORT_FORMATS))}, got {format!r}")
    exported = isinstance(model_or_run, (str, Path)) and Path(model_or_run).is_file()  # never opened: it may be code
    run = None if exported else as_loaded_run(model_or_run)
    if exported or not isinstance(run.model, nn.Module) or isinstance(run.model, torch.jit.ScriptModule):
        raise ConfigError("export needs the trained model, not an already exported file: pass the run folder")
    if format == "onnx":
        require_onnx(exporting=True)
        weights = sum(t.numel() * t.element_size() for t in run.model.state_dict().values())
        if weights > OnnxModel.MAX_BYTES:
            raise ExportError(f"{weights / 2**30:.1f} GiB of weights: an ONNX file over 1.5 GiB needs a second data "
                              "file, which export does not write; use format='torchscript'")
    path = Path(path)
    ensure_writable_dir(path.parent)  # a read-only folder: one error before anything is traced
    example = torch.randn(batch, 3, *run.input_size, generator=torch.Generator().manual_seed(0))
    model, device = run.model, model_device(run.model)
    with eval_mode(model):
        try:
            with torch.no_grad():
                eager = model.cpu()(example).float()
            write = (_torchscript_writer if format == "torchscript" else _onnx_writer)(model, example)
        except Exception as exc:  # the exporters raise many types; the message is what helps
            raise ExportError(f"{format} export of {type(model).__name__} failed: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
        finally:
            model.to(device)

    def write_checked(tmp: str) -> None:  # checked under the temporary name: a failed export never replaces a good one
        write(tmp)
        try:  # |exported - eager| <= ATOL + RTOL * |eager| elementwise, as torch.allclose; a shape change fails too
            with torch.no_grad(), quiet_jit():  # our own file, just written: no opt-in needed to load it back
                reloaded = OnnxModel(tmp) if format == "onnx" else torch.jit.load(tmp, map_location="cpu").eval()
                n = getattr(reloaded, "max_batch", batch)  # images one ONNX run may take
                torch.testing.assert_close(reloaded(example[:n]).float(), eager[:n], atol=ATOL, rtol=RTOL)
        except ValueError as exc:  # OnnxModel: a graph larger than load_run accepts
            raise ExportError(f"the exported graph is refused on loading ({exc}); use format='torchscript'") from None
        except AssertionError as exc:
            why = " ".join(str(exc).replace("Tensor-likes are not close!", "").split())
            raise ExportError(f"the exported model's outputs differ from the eager model's ({why}; atol={ATOL:g}, "
                              f"rtol={RTOL:g}); branches on the data cannot be traced: try the other format") from None

    source = {"path": os.path.relpath(run.source, path.parent), "sha256": fingerprint(run.source)} \
        if run.source and run.source.is_file() else None  # a checkpoint (from a run result: its folder)
    meta = json.dumps({**run.metadata(), "checkpoint": source}, indent=2, default=str)  # before the model is written
    atomic_write(path, write_checked)
    atomic_write_text(metadata_path(path), meta)
    log.info(f"exported {format} model to {str(path)!r} (outputs match the eager model within atol={ATOL:g}, "
             f"rtol={RTOL:g}); metadata in {metadata_path(path).name!r}")
    return path
