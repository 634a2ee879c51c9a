"""benchmarks/fit_gap.py on tiny CPU runs: both splits evaluated in eval mode on plain images, the test split as the
run saw it, and the run folder and data checked."""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import common, fit_gap  # noqa: E402
from pytorch_utils.errors import ConfigError, DatasetError  # noqa: E402


@pytest.fixture(scope="module")
def l3_run(tmp_path_factory):
    """Strixbee level 3 (augmentation, dropout) for 2 epochs on 64 synthetic images."""
    from pytorch_utils.recipes import get_recipe, run_recipe

    out = tmp_path_factory.mktemp("fit_gap") / "run"
    recipe = get_recipe("strixbee_l3").replace(epochs=2, train_limit=64, test_limit=32, batch_size=16)
    return out, run_recipe(recipe.with_peak_lr(0.05), data="synthetic", out_dir=out, device="cpu", progress=False)


def test_fit_gap_measures_both_splits_in_eval_mode_on_plain_images(l3_run, tmp_path, capsys):
    from pytorch_utils.data import load_datasets, make_loader
    from pytorch_utils.inference import load_run
    from pytorch_utils.train.loop import evaluate

    out_dir, result = l3_run
    capsys.readouterr()
    out = tmp_path / "g.jsonl"
    assert fit_gap.main(["--run", str(out_dir), "--out", str(out)]) == 0  # data: the run's run.json
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(record)[:len(common.REQUIRED_KEYS)] == list(common.REQUIRED_KEYS)
    assert record["data"] == "synthetic" and record["device"].startswith("CPU")
    assert record["train_images"] == 64 and record["test_images"] == 32  # the run's limits, read from its recipe
    assert record["test_acc"] == round(result.final["test_acc"], 6)  # last checkpoint, eval mode: the run's figure
    assert abs(record["test_loss"] - result.history[-1]["test_loss"]) < 1e-4
    assert record["checkpoint"].endswith("epoch-0002.pt")
    # The train figure: the same checkpoint on the plain training images, unaugmented, dropout off.
    run = load_run(out_dir, which="last")
    train, _ = load_datasets("synthetic", train_limit=64, test_limit=32)
    loader = make_loader(train, batch_size=64, train=False, num_workers=0)
    loader.set_augmentation("test")
    assert record["train_acc_eval"] == round(evaluate(run.model, loader)["acc"], 6)
    assert record["gap_points"] == round(record["train_acc_eval"] - record["test_acc"], 6)
    assert json.loads(out.read_text()) == record


def test_fit_gap_refuses_other_data_and_a_file(l3_run, tmp_path):
    from PIL import Image

    out_dir, _ = l3_run
    for split, n in (("train", 40), ("test", 20)):  # two classes, enough images for the run's limits (64 / 32)
        for cls in ("ant", "bee"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (32, 32), (i, 100, 200)).save(tmp_path / split / cls / f"{i}.png")
    with pytest.raises(DatasetError, match="other classes than the run"):
        fit_gap.main(["--run", str(out_dir), "--data", str(tmp_path)])
    with pytest.raises(ConfigError, match="is a file: fit_gap needs the run folder"):
        fit_gap.main(["--run", str(out_dir / "history.json")])
