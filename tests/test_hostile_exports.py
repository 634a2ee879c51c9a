import logging

"""Exported files from strangers (issue 20) and exports that outlived their run (issue 21): every refusal is one line,
made before the file can allocate or run anything."""
import contextlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pytorch_utils import export, load_run, predict
from pytorch_utils.cli import main, printable
from pytorch_utils.errors import CheckpointError, ConfigError
from pytorch_utils.inference import ONNX_OPS, metadata_path
from pytorch_utils.models import create_model, list_models

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402


@pytest.fixture(scope="module")
def onnx_file(run_dir, tmp_path_factory):
    return export(run_dir, tmp_path_factory.mktemp("export") / "m.onnx", format="onnx")


def _planted(onnx_file, tmp_path, graph, name="evil.onnx"):
    """``graph`` saved as ``tmp_path/name`` with the good export's metadata beside it."""
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    shutil.copy(metadata_path(onnx_file), metadata_path(path))
    return path


def _graph(nodes, initializers=(), out_shape=("batch", 10)):
    return helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                        ["batch", 3, 32, 32])],
                             [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
                             initializer=list(initializers))


def test_the_allowed_operators_are_those_every_registered_model_exports(tmp_path):
    """ONNX_OPS is the union of the operators in an export of each registered model: no more, no less (one model per
    class, the smallest: the operators come from the class's forward, not from its widths)."""
    from pytorch_utils.exporting import _onnx_writer

    with torch.device("meta"):
        models = sorted((sum(p.numel() for p in m.parameters()), name, type(m)) for name in list_models()
                        for m in [create_model(name)])
    used = set()
    for name in {cls: name for _, name, cls in reversed(models)}.values():
        _onnx_writer(create_model(name).eval(), torch.randn(2, 3, 32, 32))(str(tmp_path / f"{name}.onnx"))
        used |= {n.op_type for n in onnx.load(str(tmp_path / f"{name}.onnx")).graph.node}
    assert used == ONNX_OPS


def test_an_operator_export_never_writes_is_refused_by_name(onnx_file, tmp_path, monkeypatch):
    # 1 KB that would allocate 40000 x 40000 floats (6.4 GB) when run.
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [40000, 40000])
    path = _planted(onnx_file, tmp_path, _graph([helper.make_node("ConstantOfShape", ["shape"], ["logits"])], [shape],
                                                [40000, 40000]))
    assert path.stat().st_size < 1024
    ran = []
    monkeypatch.setattr("onnx.reference.ReferenceEvaluator.run", lambda *a, **k: ran.append(a))
    with pytest.raises(CheckpointError, match="evil.onnx.* uses operator ConstantOfShape, which pytorch_utils exports "
                                              "never contain") as info:
        predict(path, np.zeros((1, 32, 32, 3), np.uint8))
    assert "\n" not in str(info.value) and not ran


@pytest.mark.parametrize("nodes, initializers", [
    # Allowed operators, hostile sizes: a broadcast Add of two 160 KB constants makes 40000 x 40000 values ...
    ([helper.make_node("Add", ["a", "b"], ["logits"])],
     [helper.make_tensor("a", TensorProto.FLOAT, [40000, 1], [0.0] * 40000),
      helper.make_tensor("b", TensorProto.FLOAT, [1, 40000], [0.0] * 40000)]),
    # ... and a convolution padded by 100000 pixels a side makes a 200032 x 200032 map per image.
    ([helper.make_node("Conv", ["input", "w"], ["logits"], pads=[100000] * 4)],
     [helper.make_tensor("w", TensorProto.FLOAT, [10, 3, 1, 1], [0.0] * 30)]),
])
def test_tensors_over_the_bound_are_refused_before_anything_runs(onnx_file, tmp_path, nodes, initializers):
    path = _planted(onnx_file, tmp_path, _graph(nodes, initializers, out_shape=None))
    with pytest.raises(CheckpointError, match="leave a shape open or hold over 268,435,456 values per image") as info:
        load_run(path)
    assert "\n" not in str(info.value)


def test_metadata_input_size_must_match_the_graph_and_the_bound(run_dir, onnx_file, tmp_path):
    path = Path(shutil.copy(onnx_file, tmp_path / "m.onnx"))
    meta = json.loads(metadata_path(onnx_file).read_text())
    for size, message in (([2048, 2048], "input_size of 2 integers from 8 to 1024"),
                          ([64, 64], r"input_size \[64, 64\] for a graph whose input is \['batch', 3, 32, 32\]")):
        metadata_path(path).write_text(json.dumps({**meta, "input_size": size}))
        with pytest.raises(CheckpointError, match=message) as info:
            load_run(path)
        assert "\n" not in str(info.value)
    # A 32-px run whose checkpoint claims 64 px: S10's head cannot take it, found on the meta device.
    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    (tmp_path / "s10" / "checkpoints").mkdir(parents=True)
    ckpt.update(model_name="s10_resnet", model=create_model("s10_resnet").state_dict())
    ckpt["config"]["recipe"]["model"], ckpt["config"]["input_size"] = "s10_resnet", [64, 64]
    torch.save(ckpt, tmp_path / "s10" / "checkpoints" / "best.pt")
    with pytest.raises(CheckpointError, match="model cannot be built or take its input_size .*expects input of shape "
                                              r"\(N, 3, 32, 32\), got \(1, 3, 64, 64\)"):
        load_run(tmp_path / "s10")


def test_an_onnx_run_takes_no_more_images_than_keep_its_tensors_bounded(onnx_file, monkeypatch):
    import pytorch_utils.inference as inference

    per_image = inference.ONNX_VALUES // load_run(onnx_file).model.max_batch  # 277k values for strixbee_l1 at 32 px
    monkeypatch.setattr(inference, "ONNX_VALUES", 2 * per_image + 1)
    run, batches = load_run(onnx_file), []
    real = run.model._session.run
    run.model._session.run = lambda names, feed: batches.append(len(feed["input"])) or real(names, feed)
    assert run.model.max_batch == 2 and len(predict(run, np.zeros((5, 32, 32, 3), np.uint8))) == 5
    assert batches == [2, 2, 1]


def test_metadata_is_read_no_further_than_1_mib(onnx_file, tmp_path, monkeypatch):
    path = Path(shutil.copy(onnx_file, tmp_path / "m.onnx"))
    meta = json.loads(metadata_path(onnx_file).read_text())
    metadata_path(path).write_text(json.dumps({**meta, "recipe": {"notes": "x" * 3 * 2**20}}))  # 3 MB, valid JSON
    with pytest.raises(CheckpointError, match=r"m.onnx.json' is not readable JSON of at most 1,048,576 bytes") as info:
        load_run(path)
    assert "\n" not in str(info.value)


def _torchscript_checkpoint(tmp_path):
    """A run folder whose best.pt is a TorchScript archive, stored as torch.save stores (no compression)."""
    import zipfile

    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "ts.pt"))
    (tmp_path / "R" / "checkpoints").mkdir(parents=True)
    with zipfile.ZipFile(tmp_path / "ts.pt") as src, \
            zipfile.ZipFile(tmp_path / "R" / "checkpoints" / "best.pt", "w", zipfile.ZIP_STORED) as dst:
        for member in src.infolist():
            dst.writestr(member.filename, src.read(member))
    return tmp_path / "R"


def test_a_torchscript_checkpoint_is_refused_in_one_line_without_warnings(tmp_path, capsys):
    run = _torchscript_checkpoint(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning would fail the load
        with pytest.raises(CheckpointError, match="best.pt"):
            load_run(run)
    capsys.readouterr()
    assert main(["predict", "--run", str(run), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Warning" not in err


def test_export_of_an_exported_file_names_no_python_argument(run_dir, tmp_path, capsys):
    script = export(run_dir, tmp_path / "m.pt")
    loads = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.jit, "load", lambda *a, **k: loads.append(a))
        with pytest.raises(ConfigError, match="not an already exported file: pass the run folder"):
            export(script, tmp_path / "again.pt")
        assert main(["export", "--run", str(script)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass the run folder" in err and "trust_code" not in err and not loads


def test_an_export_is_refused_once_its_run_has_changed(run_dir, tmp_path, capsys, caplog):
    run = Path(shutil.copytree(run_dir, tmp_path / "R"))
    assert main(["export", "--run", str(run), "--format", "onnx"]) == 0
    assert json.loads((run / "model.onnx.json").read_text())["checkpoint"]["path"] == "checkpoints/best.pt"
    elsewhere = export(run, tmp_path / "deploy" / "s.onnx", format="onnx")
    lonely = Path(shutil.copy(elsewhere, tmp_path / "lonely.onnx"))  # copied away from any run: nothing to compare
    shutil.copy(metadata_path(elsewhere), metadata_path(lonely))
    copied = Path(shutil.copytree(run, tmp_path / "copy"))  # a copy of the run and its export stays current
    for current in (run / "model.onnx", elsewhere, lonely, copied / "model.onnx"):
        assert load_run(current).weights == "onnx"
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    ckpt["epoch"] += 1  # the run went on: best.pt is another file
    torch.save(ckpt, run / "checkpoints" / "best.pt")
    for stale in (run / "model.onnx", elsewhere):
        with pytest.raises(CheckpointError, match=f"{stale.name}' was exported from .*best.pt', changed since: "
                                                  "export the run again") as info:
            load_run(stale)
        assert "\n" not in str(info.value)
    assert load_run(lonely).weights == load_run(copied / "model.onnx").weights == "onnx"
    with caplog.at_level(logging.WARNING, logger="pytorch_utils"):
        load_run(lonely)  # its run is not here: used, with a line saying it cannot be checked
    assert "which is not here: it cannot be checked against its run" in caplog.text
    capsys.readouterr()
    assert main(["predict", "--run", str(run / "model.onnx"), str(tmp_path)]) == 2
    assert "was exported from" in capsys.readouterr().err


def test_printable_escapes_bidi_zero_width_and_separators():
    text = "cat\u202egod\u200b\u2066x\u2069\u2028\u2029\x1b\n\udcff"  # U+DCFF: a path byte that is not UTF-8
    assert printable(text) == "cat\\u202egod\\u200b\\u2066x\\u2069\\u2028\\u2029\\x1b\\x0a\\udcff"
    assert printable("héllo 日本 ok") == "héllo 日本 ok"


def test_the_checkpoint_named_in_metadata_is_hashed_in_bounded_memory_and_any_name_is_one_line(onnx_file, tmp_path):
    import resource

    meta = json.loads(metadata_path(onnx_file).read_text())
    fake = tmp_path / "r" / "checkpoints"  # a "run" beside the file: run.json and a 300 MB best.pt (sparse on disk)
    fake.mkdir(parents=True)
    (tmp_path / "r" / "run.json").write_text("{}")
    with open(fake / "best.pt", "wb") as fh:
        fh.truncate(300 << 20)
    for i, name in enumerate(["r/checkpoints/best.pt", ("a" * 300 + "/") * 3 + "best.pt"]):  # the 2nd: ENAMETOOLONG
        path = Path(shutil.copy(onnx_file, tmp_path / f"m{i}.onnx"))
        metadata_path(path).write_text(json.dumps({**meta, "checkpoint": {"path": name, "sha256": "0"}}))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(CheckpointError, match="changed since") if i == 0 else contextlib.nullcontext():
            load_run(path)
        assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 100  # 300 MB if read at once


def test_an_onnx_file_larger_than_export_writes_is_refused_before_it_is_read(onnx_file, monkeypatch):
    monkeypatch.setattr("pytorch_utils.inference.OnnxModel.MAX_BYTES", onnx_file.stat().st_size - 1)
    monkeypatch.setattr(onnx, "load", lambda *a, **k: pytest.fail("read"))
    with pytest.raises(CheckpointError, match=r"m.onnx' is no onnx model .*over the 0.0 GiB export writes at most"):
        load_run(onnx_file)


def test_a_checkpoint_whose_recipe_export_cannot_write_is_refused_before_any_file_is_written(run_dir, tmp_path,
                                                                                              capsys):
    run = Path(shutil.copytree(run_dir, tmp_path / "R"))
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    ckpt["config"]["recipe"]["description"] = {(1, 2): "tuple keys"}  # weights_only pickles hold them; JSON cannot
    torch.save(ckpt, run / "checkpoints" / "best.pt")
    assert main(["export", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "best.pt' has a recipe JSON cannot hold" in err
    assert not (run / "model.pt").exists()


def test_a_missing_path_and_a_report_of_a_file_are_named_as_such(run_dir, tmp_path):
    from pytorch_utils.errors import ConfigError
    from pytorch_utils.viz import report_run

    with pytest.raises(CheckpointError, match="model.pt' does not exist; pass a run folder"):
        load_run(tmp_path / "gone" / "model.pt")
    exported = export(run_dir, tmp_path / "m.onnx", format="onnx")
    with pytest.raises(ConfigError, match="m.onnx' is a file: a report is made from a run folder"):
        report_run(exported)
    assert not (tmp_path / "report").exists()
