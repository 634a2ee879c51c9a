"""export: TorchScript and ONNX files + metadata, checked against the eager model; predict on the exported files."""
import errno
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn

import pytorch_utils
import pytorch_utils.exporting as ex
import pytorch_utils.io as io_module
from pytorch_utils import export, load_run, predict
from pytorch_utils.cli import main
from pytorch_utils.errors import CheckpointError, ConfigError, DiskFullError, ExportError
from pytorch_utils.exporting import ATOL, RTOL
from pytorch_utils.inference import LoadedRun, metadata_path


@pytest.mark.parametrize("fmt, name", [("torchscript", "model.pt"), ("onnx", "model.onnx")])
def test_export_writes_model_and_metadata_and_predict_reads_it(run_dir, tmp_path, fmt, name):
    path = export(run_dir, tmp_path / "nested" / name, format=fmt)
    assert path.is_file() and path == tmp_path / "nested" / name
    meta = json.loads(metadata_path(path).read_text())
    loaded = load_run(run_dir)
    assert meta["classes"] == loaded.classes and meta["input_size"] == [32, 32]
    assert meta["mean"] == pytest.approx(loaded.mean) and meta["recipe"]["model"] == "strixbee_l1"
    images = np.random.default_rng(0).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
    eager, exported = predict(loaded, images, top_k=3), predict(path, images, top_k=3, trust_code=True)
    for a, b in zip(eager, exported):
        assert a["index"] == b["index"] and a["probs"] == pytest.approx(b["probs"], abs=1e-4)
    assert not list(path.parent.glob(".*tmp*"))  # no temporary left behind
    assert pytorch_utils.export is export  # the package attribute stays the function


def test_exported_batch_size_is_free_and_the_tolerance_is_stated(run_dir, tmp_path):
    path = export(run_dir, tmp_path / "m.onnx", format="onnx")
    run = load_run(path)
    assert run.weights == "onnx" and run.model(torch.zeros(7, 3, 32, 32)).shape == (7, 10)
    assert ATOL == RTOL == 1e-4 and "1e-4" in export.__doc__


class _Branchy(nn.Module):
    """A forward whose branch depends on the data: tracing records one branch only."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        y = self.fc(x.flatten(1))
        return y if x.mean() > 0 else -y


def test_a_trace_that_differs_from_eager_is_refused_and_keeps_the_old_file(tmp_path, monkeypatch):
    run = LoadedRun(model=_Branchy(), classes=["a", "b"], mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(4, 4))
    good = tmp_path / "m.pt"
    good.write_bytes(b"an earlier export")
    # Check batch of ones (mean > 0) for the eager output, random data for the trace: the branches differ.
    real_randn = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *a, **k: -real_randn(*a, **k).abs())
    import pytorch_utils.exporting as ex

    real_trace = torch.jit.trace
    monkeypatch.setattr(ex.torch.jit, "trace", lambda m, x: real_trace(m, x.abs()))
    with pytest.raises(ExportError, match="differ from the eager model's .*atol=0.0001"):
        export(run, good, format="torchscript")
    assert good.read_bytes() == b"an earlier export" and not list(tmp_path.glob(".*"))


def test_clear_errors(run_dir, tmp_path):
    with pytest.raises(ConfigError, match="format must be one of 'torchscript', 'onnx'"):
        export(run_dir, tmp_path / "m.pt", format="tflite")
    lonely = tmp_path / "lonely.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(lonely))
    with pytest.raises(CheckpointError, match="no metadata file 'lonely.pt.json'"):
        predict(lonely, np.zeros((32, 32, 3), np.uint8))


def test_missing_onnx_extra_is_named(run_dir, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name.split(".")[0] in ("onnx", "onnxscript"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(ConfigError, match=r'pip install "pytorch_utils\[onnx\]"'):
        export(run_dir, tmp_path / "m.onnx", format="onnx")


@pytest.fixture
def run_copy(run_dir, tmp_path):
    """A copy of the run as ``tmp_path/R``, with ``tmp_path/important.txt`` beside it (outside the run folder)."""
    (tmp_path / "important.txt").write_text("keep me")
    return shutil.copytree(run_dir, tmp_path / "R")


@pytest.mark.parametrize("fmt, name, planted", [
    ("torchscript", "model.pt", ".model.tmp.pt"), ("onnx", "model.onnx", ".model.tmp.onnx"),  # the old fixed names
    ("torchscript", "model.pt", "model.pt"), ("torchscript", "model.pt", "model.pt.json")])   # the final names
def test_a_planted_symlink_never_makes_export_write_outside_the_run(run_copy, fmt, name, planted, capsys):
    (run_copy / planted).symlink_to("../important.txt")
    assert main(["export", "--run", str(run_copy), "--format", fmt]) == 0
    assert (run_copy.parent / "important.txt").read_text() == "keep me"
    for written in (run_copy / name, run_copy / f"{name}.json"):
        assert written.is_file() and not written.is_symlink()
    assert not [p for p in run_copy.glob(".*") if p.name != planted]  # no temporary left


def _full_disk(self, data):
    with open(self, "wb") as fh:
        fh.write(data[:10])  # a partial file, as a real full disk leaves
    raise OSError(errno.ENOSPC, "No space left on device")


def test_export_on_a_full_disk_is_one_line_and_leaves_no_temporary(run_copy, monkeypatch, capsys):
    (run_copy / "model.pt").write_bytes(b"an earlier export")
    before = sorted(os.listdir(run_copy))
    # torch.jit.save straight onto a full disk aborts the process (a C++ terminate, exit 134): export saves into
    # memory first, and this Python write of the bytes is what meets the full disk.
    monkeypatch.setattr(pathlib.Path, "write_bytes", _full_disk)
    with pytest.raises(DiskFullError, match=f"^no space left on the disk holding {str(run_copy)!r} while writing "
                                            "'model.pt'; "):
        export(run_copy, run_copy / "model.pt")
    assert main(["export", "--run", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no space left") and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(os.listdir(run_copy)) == before and (run_copy / "model.pt").read_bytes() == b"an earlier export"


def test_export_into_a_read_only_folder_is_one_config_error(run_copy, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(io_module.tempfile, "NamedTemporaryFile", read_only)
    monkeypatch.setattr(io_module.tempfile, "mkstemp", read_only)
    with pytest.raises(ConfigError, match=rf"^output directory {str(run_copy)!r} is not writable \(Read-only"):
        export(run_copy, run_copy / "model.pt")
    assert not list(run_copy.glob("model.pt*"))


def test_onnx_weights_that_need_a_second_data_file_are_refused(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(ex.OnnxModel, "MAX_BYTES", 1000)  # the 83k-parameter model stands in for one over 1.5 GiB
    with pytest.raises(ExportError, match="GiB of weights: an ONNX file over 1.5 GiB needs a second data "
                                          "file, which export does not write; use format='torchscript'"):
        export(run_dir, tmp_path / "m.onnx", format="onnx")
    assert not list(tmp_path.iterdir())


def test_exporting_s10_prints_no_tracer_warning_and_the_cli_one_line(run_dir, tmp_path, capsys):
    import warnings

    from pytorch_utils.models import create_model

    run = LoadedRun(model=create_model("s10_resnet"), classes=list("abcdefghij"), mean=(0.5,) * 3, std=(0.25,) * 3,
                    input_size=(32, 32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export(run, tmp_path / "s10.pt")
    assert [str(w.message) for w in caught] == []  # its input-shape check traced as a constant, as it should
    capsys.readouterr()
    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path / "m.pt")]) == 0
    out = capsys.readouterr()
    assert out.out.count("\n") == 1 and "exported torchscript model to" in out.out and not out.err


def test_an_onnx_graph_over_the_load_bound_is_refused_at_export(run_dir, tmp_path, monkeypatch):
    import pytorch_utils.inference as inference

    monkeypatch.setattr(inference, "ONNX_VALUES", 1000)  # strixbee_l1 makes 277k values per image
    with pytest.raises(ExportError, match=r"graph is refused on loading \(its tensors .* hold over 1,000 values per "
                                          r"image\); use format='torchscript'"):
        export(run_dir, tmp_path / "m.onnx", format="onnx")
    assert not list(tmp_path.iterdir())
