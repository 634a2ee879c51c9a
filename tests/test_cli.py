import json
import subprocess
import sys

import pytest

from pytorch_utils.cli import build_parser, main


def test_models_lists_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "s10_resnet" in out and "6,573,130" in out and "36,489,290" in out
    assert main(["models", "--num-classes", "100"]) == 0
    assert "36,546,980" in capsys.readouterr().out


def test_recipes_lists_names(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in ("s10", "wrn_c10", "s8_c100", "strixbee_l1"):
        assert name in out


def test_train_model_on_synthetic_end_to_end(tmp_path, capsys):
    code = main(["train", "--model", "strixbee_l1", "--data", "synthetic", "--epochs", "2", "--train-limit", "256",
                 "--test-limit", "64", "--batch-size", "32", "--num-workers", "0", "--out-dir", str(tmp_path),
                 "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "epoch   1" in out and "epoch   2" in out and "final test accuracy" in out
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert f"{history[-1]['test_acc']:.2f}%" in out


def test_train_on_zip_subset(tmp_path, capsys, cifar_zip):
    code = main(["train", "--model", "strixbee_l1", "--data", str(cifar_zip), "--epochs", "1", "--train-limit", "200",
                 "--test-limit", "100", "--batch-size", "50", "--num-workers", "0", "--out-dir", str(tmp_path),
                 "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "200 train / 100 test, 10 classes" in out


@pytest.mark.parametrize("argv,message", [
    (["train", "--model", "resnet9000", "--data", "synthetic"], "unknown model 'resnet9000'; valid models:"),
    (["train", "--recipe", "nope", "--data", "synthetic"], "unknown recipe 'nope'; valid recipes:"),
    (["train", "--data", "/no/such/dir", "--epochs", "1"], "does not exist"),
    (["train", "--data", "synthetic", "--set", "epoks=1"], "unknown recipe field"),
    (["train", "--data", "synthetic", "--resume", "--out-dir", "{tmp}"], "resume requested"),
])
def test_clear_errors_exit_2(argv, message, capsys, tmp_path):
    argv = [a.replace("{tmp}", str(tmp_path / "empty")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_help_is_clear():
    text = build_parser().format_help()
    assert "train" in text and "models" in text
    proc = subprocess.run([sys.executable, "-m", "pytorch_utils", "train", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for flag in ("--recipe", "--model", "--data", "--epochs", "--batch-size", "--train-limit", "--test-limit",
                 "--resume", "--out-dir", "--set"):
        assert flag in proc.stdout


def test_accumulate_steps_flag_sets_the_recipe_field_and_quiet_silences_epoch_lines(tmp_path, capsys):
    code = main(["train", "--model", "strixbee_l1", "--data", "synthetic", "--epochs", "1", "--train-limit", "64",
                 "--test-limit", "32", "--batch-size", "16", "--num-workers", "0", "--no-progress",
                 "--accumulate-steps", "2", "--quiet", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "epoch   1" not in out and "final test accuracy" in out
    assert json.loads((tmp_path / "run.json").read_text())["recipe"]["accumulate_steps"] == 2
    import logging

    logging.getLogger("pytorch_utils").setLevel(logging.INFO)  # --quiet set the package logger; give it back
