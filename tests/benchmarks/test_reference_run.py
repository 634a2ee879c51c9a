"""benchmarks/reference_run.py end to end on the CPU with tiny settings: the report's PNGs, a titled index and
``run.json`` with the facts of the run."""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import common, reference_run  # noqa: E402


def test_reference_run_writes_report_and_run_json(tmp_path, capsys):
    assets = tmp_path / "assets"
    code = reference_run.main(["--recipe", "strixbee_l1", "--data", "synthetic", "--epochs", "1",
                               "--train-limit", "64", "--test-limit", "32", "--set", "batch_size=16",
                               "--device", "cpu", "--assets", str(assets), "--out-dir", str(tmp_path / "run")])
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    printed = json.loads(lines[0])

    for name in ("curves", "misclassified", "confusion_matrix", "per_class_accuracy"):
        png = assets / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    run = json.loads((assets / "run.json").read_text())
    for key in common.REQUIRED_KEYS:
        assert key in run, key
    assert run["bench"] == "reference_run" and run["recipe"] == "strixbee_l1" and run["epochs"] == 1
    assert run["data"] == "synthetic" and run["device"].startswith("CPU") and run["torch"]
    assert run["wall_s"] > 0 and 0 <= run["test_acc"] <= 100
    assert "--epochs 1" in run["command"] and "benchmarks.reference_run" in run["command"]
    assert "git" in run and run["recipe_fields"]["epochs"] == 1 and run["train_images"] == 64
    assert {k: v for k, v in run.items() if k != "recipe_fields"} == printed

    # The report is titled with recipe, data, epochs and device.
    title = (assets / "index.md").read_text().splitlines()[0]
    assert title == "# " + run["title"]
    assert "strixbee_l1" in title and "synthetic data" in title and "1 epoch" in title and "CPU" in title


def test_report_title_names_the_jpeg_copy():
    title = reference_run.report_title("s10", "local-data/cifar10-jpeg.zip", "NVIDIA H100 80GB HBM3", 24)
    assert title == "s10: JPEG CIFAR-10 copy, 24 epochs, NVIDIA H100 80GB HBM3"


def test_git_commit_ignores_the_runs_own_assets(tmp_path, monkeypatch):
    """A run writes its plots under assets/ before the commit is read: that alone is not '+dirty'; code is."""
    import subprocess

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "curves.png").write_bytes(b"old")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "c")
    monkeypatch.setattr(common, "REPO", tmp_path)
    clean = common.git_commit()
    assert clean is not None and not clean.endswith("+dirty")
    (tmp_path / "assets" / "curves.png").write_bytes(b"new")
    assert common.git_commit() == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert common.git_commit() == clean + "+dirty"
