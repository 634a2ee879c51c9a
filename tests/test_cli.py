import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

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

    assert logging.getLogger("pytorch_utils").level == logging.INFO  # --quiet lasts only as long as main()


@pytest.mark.parametrize("library, cli", [
    ("train_limit must be None or >= 1", "--train-limit must be None or >= 1"),
    ("pass download=True to fetch it, or point root= at the folder",
     "pass --download to fetch it, or point --root at the folder"),
    ("start a fresh run (resume=False)", "start a fresh run (without --resume)"),
    ("use amp='bf16' or amp=None on the CPU", "use --amp bf16 or --amp none on the CPU"),
    ("build the model with num_classes=10", "build the model with --set num_classes=10"),
    ("pass data='cifar10', root='/a b/c'", "pass --data cifar10, --root '/a b/c'"),
    ("choose another out_dir", "choose another --out-dir"),
    ("in '/runs/out_dir/x': no space left on device", "in '/runs/out_dir/x': no space left on device"),
    ("recipe field 'seed' must be >= 0, got -1", "--seed must be >= 0, got -1"),
    ("recipe field 'grad_clip' must be > 0, got -1", "--set grad_clip must be > 0, got -1"),
])
def test_cli_message_maps_python_arguments_to_this_commands_flags(library, cli):
    import argparse

    from pytorch_utils.cli import cli_message

    train = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    assert cli_message(library, train) == cli


@pytest.mark.parametrize("command", ["export", "report"])
def test_commands_that_write_to_out_name_that_flag(command):
    import argparse

    from pytorch_utils.cli import cli_message

    parser = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    assert cli_message("not writable (Read-only file system); choose another out_dir", parser) == \
        "not writable (Read-only file system); choose another --out"


def test_library_errors_name_arguments_and_the_cli_names_flags(tmp_path, capsys):
    from pytorch_utils.errors import ConfigError
    from pytorch_utils.recipes import run_recipe

    with pytest.raises(ConfigError) as info:
        run_recipe("default", data="synthetic", out_dir=tmp_path, train_limit=0)
    assert "'train_limit' must be" in str(info.value) and "--" not in str(info.value)
    assert main(["train", "--data", "synthetic", "--train-limit", "0", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--train-limit must be" in err and "train_limit" not in err


def test_a_torchvision_cifar_folder_given_as_data_suggests_the_cifar_name(tmp_path, capsys):
    from pytorch_utils.data import load_datasets
    from pytorch_utils.errors import DatasetError

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"")
    with pytest.raises(DatasetError, match=f"pass data='cifar10', root='{tmp_path}'"):
        load_datasets(str(folder))
    assert main(["train", "--data", str(folder), "--out-dir", str(tmp_path / "run")]) == 2
    assert f"--data cifar10, --root {tmp_path}" in capsys.readouterr().err


def test_notes_logged_during_a_cli_run_name_flags(tmp_path, capsys):
    argv = ["train", "--recipe", "strixbee_l1", "--data", "synthetic", "--epochs", "1", "--train-limit", "32",
            "--test-limit", "16", "--batch-size", "16", "--num-workers", "0", "--no-progress", "--out-dir",
            str(tmp_path)]
    assert main(argv) == 0 and main(argv) == 0  # the second run moves the first one's files aside, with a note
    out = capsys.readouterr().out
    assert "(--resume continues a run)" in out and "resume=True" not in out


@pytest.mark.parametrize("flags, message", [
    (["--seed", str(2**70)], f"error: --seed must be >= 0 and <= {2**32 - 1}, got {2**70}"),
    (["--device", "meta"], "error: invalid device 'meta'"),
])
def test_an_out_of_range_seed_and_the_meta_device_are_one_line_errors(flags, message, tmp_path, capsys):
    assert main(["train", "--data", "synthetic", "--epochs", "1", "--out-dir", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err


def test_report_rebuilds_a_runs_report_and_names_the_flag_when_its_data_moved(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--recipe", "strixbee_l1", "--data", "synthetic", "--epochs", "1", "--train-limit", "32",
                 "--test-limit", "16", "--batch-size", "16", "--num-workers", "0", "--quiet", "--out-dir",
                 str(run)]) == 0
    assert ") after 1 epoch, " in capsys.readouterr().out  # not "1 epochs"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["predict", "--run", str(run), str(tmp_path / "a.png"), "--top-k", "1"]) == 0
    out = capsys.readouterr()  # stdout holds the results alone (`predict ... | head`); notes go to stderr
    assert out.out.startswith(str(tmp_path / "a.png")) and out.out.count("\n") == 1 and "resized 1 of 1" in out.err
    assert main(["report", "--run", str(run)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"report: {run / 'report' / 'index.html'}"
    assert (run / "report" / "per_class.csv").is_file() and (run / "report" / "misclassified.png").is_file()
    (run / "run.json").write_text(json.dumps({"data": str(tmp_path / "moved")}))
    assert main(["report", "--run", str(run), "--out", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    assert "GradCAM pass --data where that test set is now (--root for CIFAR)" in out
    assert out.splitlines()[-1] == f"report: {tmp_path / 'again' / 'curves.png'}"
    assert main(["report", "--run", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nothing' does not exist; pass a run folder" in err and err.count("\n") == 1


def test_a_reader_that_goes_away_during_training_gets_no_traceback_per_log_line(tmp_path):
    """`train ... | head -2` printed a "--- Logging error ---" traceback for every later epoch line."""
    proc = subprocess.Popen([sys.executable, "-m", "pytorch_utils", "train", "--recipe", "strixbee_l1", "--data",
                             "synthetic", "--epochs", "2", "--train-limit", "32", "--test-limit", "16", "--batch-size",
                             "16", "--num-workers", "0", "--no-progress", "--out-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and err == ""
    assert (tmp_path / "checkpoints" / "epoch-0002.pt").is_file()  # the run itself went on to its end


def test_a_reader_that_goes_away_ends_the_output_quietly():
    """`python -m pytorch_utils models | head` ended in a BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "pytorch_utils", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""
