"""CLI predict / export / --tensorboard on a run trained through the CLI."""
import json

import numpy as np
import pytest
from PIL import Image

from pytorch_utils import predict
from pytorch_utils.cli import main
from pytorch_utils.train.tta import TTA_MODES

SMOKE = ["--data", "synthetic", "--epochs", "1", "--train-limit", "32", "--test-limit", "16", "--batch-size", "16",
         "--num-workers", "0", "--no-progress", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--recipe", "strixbee_l1", "--no-lr-finder", "--out-dir", str(out), *SMOKE]) == 0
    return out


def test_predict_prints_a_table_and_json(run_dir, tmp_path, capsys):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), mode="L").save(tmp_path / "b.png")
    capsys.readouterr()
    assert main(["predict", "--run", str(run_dir), str(tmp_path), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [line for line in lines if line.startswith(str(tmp_path))]
    assert len(rows) == 2 and all(line.count("%") == 2 for line in rows)
    assert main(["predict", "--run", str(run_dir), str(tmp_path / "a.png"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)  # only JSON on stdout (the resize note goes to stderr)
    assert data[0]["input"].endswith("a.png") and len(data[0]["classes"]) == 3
    for mode in TTA_MODES:  # the library's modes, each giving the library's answer
        want, _ = predict(str(run_dir), tmp_path / "a.png", top_k=3, tta=mode), capsys.readouterr()
        assert main(["predict", "--run", str(run_dir), str(tmp_path / "a.png"), "--json", "--tta", mode]) == 0
        assert json.loads(capsys.readouterr().out) == want


def test_predict_skips_an_unreadable_file_of_a_folder_and_fails_only_when_none_is_read(run_dir, tmp_path, capsys):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b\u202e.jpg").write_bytes(b"not a jpeg")
    capsys.readouterr()
    assert main(["predict", "--run", str(run_dir), str(tmp_path), "--json"]) == 0
    out = capsys.readouterr()
    assert [r["input"] for r in json.loads(out.out)] == [str(tmp_path / "a.png")]
    assert out.err.count("\n") == 1 and "skipped: cannot decode image" in out.err and "b\\u202e.jpg" in out.err
    (tmp_path / "a.png").unlink()
    assert main(["predict", "--run", str(run_dir), str(tmp_path)]) == 2
    assert capsys.readouterr().err.endswith("error: no image could be read (the files skipped are named above)\n")


def test_predict_errors_are_one_line(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--run", str(run_dir), str(tmp_path), "--tta", "rotate"])
    assert "--tta: invalid choice: 'rotate'" in capsys.readouterr().err
    assert main(["predict", "--run", str(tmp_path), str(tmp_path)]) == 2
    assert "holds no training run" in capsys.readouterr().err
    (tmp_path / "x.jpg").write_text("no")
    assert main(["predict", "--run", str(run_dir), str(tmp_path / "x.jpg")]) == 2
    assert "cannot decode image" in capsys.readouterr().err


@pytest.mark.parametrize("fmt, name", [("torchscript", "model.pt"), ("onnx", "model.onnx")])
def test_export_then_predict_on_the_file(run_dir, tmp_path, capsys, fmt, name):
    assert main(["export", "--run", str(run_dir), "--format", fmt]) == 0
    assert (run_dir / name).is_file() and (run_dir / f"{name}.json").is_file()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "z.png")
    capsys.readouterr()
    trust = ["--trust-code"] if fmt == "torchscript" else []  # ONNX runs no code from the file: no opt-in
    if trust:
        assert main(["predict", "--run", str(run_dir / name), str(tmp_path / "z.png")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and "a program that runs when loaded" in err
        assert "pass --trust-code only for a file you trust" in err and "run folder (weights-only) or an ONNX" in err
    assert main(["predict", "--run", str(run_dir / name), str(tmp_path / "z.png"), "--json", *trust]) == 0
    assert json.loads(capsys.readouterr().out)[0]["input"].endswith("z.png")
    meta = json.loads((run_dir / f"{name}.json").read_text())
    (run_dir / f"{name}.json").write_text(json.dumps({**meta, "classes": ["a", "b"], "input_size": [32, 32]}))
    assert main(["predict", "--run", str(run_dir / name), str(tmp_path / "z.png"), *trust]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 class names for weights with 10 outputs" in err


def test_text_from_files_is_printed_with_control_characters_escaped(run_dir, tmp_path, capsys):
    import torch

    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    ckpt["config"]["classes"] = ["\x1b[2Jcat\nfinal test accuracy: 99.99%"] * 10
    (tmp_path / "evil" / "checkpoints").mkdir(parents=True)
    torch.save(ckpt, tmp_path / "evil" / "checkpoints" / "best.pt")
    (tmp_path / "in\x1b[2J\nx").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "in\x1b[2J\nx" / "a\nb.png")
    capsys.readouterr()
    assert main(["predict", "--run", str(tmp_path / "evil"), str(tmp_path / "in\x1b[2J\nx"), "--top-k", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "\x1b" not in out and "\\x1b[2Jcat\\x0afinal test accuracy" in out
    assert main(["predict", "--run", str(tmp_path / "evil\x1b[2J"), str(tmp_path)]) == 2  # paths in errors too
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "evil\\x1b[2J" in err


def test_tensorboard_flag(tmp_path):
    pytest.importorskip("tensorboard")
    assert main(["train", "--recipe", "strixbee_l1", "--no-lr-finder", "--out-dir", str(tmp_path), "--tensorboard",
                 *SMOKE]) == 0
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "run.json").read_text())["recipe"]["tensorboard"] is True
