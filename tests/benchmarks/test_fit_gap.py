"""benchmarks/fit_gap.py on a tiny CPU run: both splits evaluated in eval mode, the test split as the run saw it."""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import common, fit_gap  # noqa: E402


def test_fit_gap_measures_both_splits_as_the_run_read_them(tmp_path, capsys):
    from pytorch_utils.recipes import get_recipe, run_recipe

    recipe = get_recipe("strixbee_l1").replace(epochs=2, train_limit=64, test_limit=32, batch_size=16)
    result = run_recipe(recipe.with_peak_lr(0.05), data="synthetic", out_dir=tmp_path / "run", device="cpu",
                        progress=False)
    capsys.readouterr()
    out = tmp_path / "g.jsonl"
    assert fit_gap.main(["--run", str(tmp_path / "run"), "--data", "synthetic", "--out", str(out)]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(record)[:len(common.REQUIRED_KEYS)] == list(common.REQUIRED_KEYS)
    assert record["train_images"] == 64 and record["test_images"] == 32  # the run's limits, read from its recipe
    assert record["test_acc"] == round(result.final["test_acc"], 6)  # last checkpoint, eval mode: the run's figure
    assert abs(record["test_loss"] - result.history[-1]["test_loss"]) < 1e-4
    assert 0 <= record["train_acc_eval"] <= 100
    assert abs(record["gap_points"] - (record["train_acc_eval"] - record["test_acc"])) < 1e-4
    assert record["checkpoint"].endswith("epoch-0002.pt") and record["device"].startswith("CPU")
    assert json.loads(out.read_text()) == record
