"""The benchmark scripts run end to end on the CPU with tiny settings and print well-formed JSON records.

The numbers themselves are not checked (timings belong in benchmarks/, never in unit tests): only that every record
has the agreed keys, that the timing split adds up, and that the scripts leave the package as they found it.
"""
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import bench_s10, bench_wrn_throughput, common  # noqa: E402

# A small model through the real S10 recipe code path (LR finder, One Cycle, checkpoints, TTA): the S10 ResNet
# itself costs ~0.4 s per batch of 64 on two CPU cores, too slow for a unit test.
SMALL_MODEL = ["--set", "model=strixbee_l1", "--set", "model_kwargs={}"]


def _check_common(rec, bench, variant):
    for key in common.REQUIRED_KEYS:
        assert key in rec, key
    assert rec["bench"] == bench and rec["variant"] == variant
    assert "error" not in rec, rec.get("error")
    assert rec["device"].startswith("CPU") and rec["device_type"] == "cpu" and rec["cpus"] >= 1
    assert rec["torch"] and rec["date"]
    assert rec["wall_s"] >= rec["wall_s_without_startup"] > 0
    assert rec["startup_s"] > 0
    assert rec["wall_s"] == pytest.approx(rec["startup_s"] + rec["wall_s_without_startup"]
                                          + rec.get("overhead_s", 0.0), rel=1e-4, abs=2e-3)


def test_s10_two_paths_records(tmp_path):
    import pytorch_utils.recipes.runner as runner
    import pytorch_utils.train.checkpoints as checkpoints
    from pytorch_utils.train.loop import fit

    original_save = checkpoints.save_checkpoint
    out = tmp_path / "s10.jsonl"
    records = bench_s10.main(["--data", "synthetic", "--epochs", "2", "--train-limit", "128", "--test-limit", "64",
                              "--batch-size", "32", "--variants", "fast,dataloader-2w", "--out", str(out),
                              "--quiet", *SMALL_MODEL])
    assert [r["variant"] for r in records] == ["fast", "dataloader-2w"]
    for rec, loader in zip(records, ("gpu", "dataloader")):
        _check_common(rec, "s10", rec["variant"])
        assert rec["epochs"] == 2 and len(rec["epoch_seconds"]) == 2
        assert rec["wall_s_without_startup"] == pytest.approx(sum(rec["epoch_seconds"]), abs=1e-3)
        assert 0 <= rec["test_acc"] <= 100 and 0 <= rec["best_test_acc"] <= 100
        assert rec["overhead_s"] >= 0
        assert rec["loader"] == loader and rec["model"] == "strixbee_l1" and rec["recipe"] == "s10"
        assert rec["amp"] == "fp32" and rec["channels_last"] is False and rec["compile"] is False
        assert rec["compile_warmup_s"] is None
        # The probes saw the run's parts: data, LR finder (the S10 recipe has one), a checkpoint per epoch.
        assert rec["data_s"] > 0 and rec["lr_finder_s"] > 0 and rec["checkpoint_s"] > 0
        assert rec["lr_max"] > 0 and rec["lr_min"] == pytest.approx(rec["lr_max"] / 10, rel=1e-3)
        assert rec["train_images"] == 128 and rec["test_images"] == 64 and rec["steps_per_epoch"] == 4
        assert rec["train_images_per_s"] > 0
    assert records[1]["num_workers"] == 2
    # --out holds exactly the printed records.
    assert [json.loads(line) for line in out.read_text().splitlines()] == records
    # The timing probes are gone after the run.
    assert runner.fit is fit and checkpoints.save_checkpoint is original_save


def test_s10_failed_variant_is_recorded_and_the_rest_run():
    records = bench_s10.main(["--data", "synthetic", "--epochs", "1", "--train-limit", "16", "--test-limit", "16",
                              "--batch-size", "32", "--variants", "fast,dataloader-0w", "--quiet", *SMALL_MODEL])
    assert [r["variant"] for r in records] == ["fast", "dataloader-0w"]
    for rec in records:  # 16 images cannot fill one batch of 32 with drop_last
        assert "batch_size" in rec["error"] and rec["wall_s"] is None and rec["test_acc"] is None


def test_s10_options_reach_the_recipe():
    args = bench_s10.parse_args(["--epochs", "3", "--batch-size", "256", "--compile", "--set", "tta=null"])
    recipe = bench_s10.build_recipe(args, *common.parse_variant("dataloader-8w")[:2], False)
    assert (recipe.epochs, recipe.batch_size, recipe.tta, recipe.loader, recipe.num_workers) == (
        3, 256, None, "dataloader", 8)
    assert bench_s10.build_recipe(bench_s10.parse_args([]), "gpu", None, True).epochs == 24  # the recipe's default
    assert common.parse_variant("fast") == ("gpu", None, False)
    assert common.parse_variant("fast-compile") == ("gpu", None, True)
    with pytest.raises(SystemExit):
        common.split_variants("fast,dataloader")


def test_wrn_throughput_records(tmp_path):
    records = bench_wrn_throughput.main(["--model", "wrn16_2", "--steps", "3", "--warmup", "1", "--batch-size", "16",
                                         "--train-limit", "256", "--variants", "fast,dataloader-2w"])
    assert [r["variant"] for r in records] == ["fast", "dataloader-2w"]
    for rec in records:
        _check_common(rec, "wrn_throughput", rec["variant"])
        assert rec["epochs"] is None and rec["test_acc"] is None
        assert rec["images_per_s"] == pytest.approx(3 * 16 / rec["wall_s_without_startup"], rel=1e-3)
        assert rec["images_per_s"] > 0 and rec["steps"] == 3 and rec["warmup_steps"] == 1
        assert rec["model"] == "wrn16_2" and rec["parameters"] > 0 and math.isfinite(rec["train_loss"])
    assert records[0]["loader"] == "gpu" and records[1]["num_workers"] == 2


def test_s10_on_the_jpeg_zip(cifar_zip):
    (rec,) = bench_s10.main(["--data", str(cifar_zip), "--epochs", "1", "--train-limit", "100", "--test-limit", "50",
                             "--batch-size", "20", "--variants", "fast", "--quiet", *SMALL_MODEL])
    _check_common(rec, "s10", "fast")
    assert rec["data"] == "cifar10-jpeg.zip" and rec["decode_s"] > 0
    assert rec["train_images"] == 100 and rec["test_images"] == 50 and 0 <= rec["test_acc"] <= 100


def test_emit_orders_fills_and_appends(tmp_path, capsys):
    out = tmp_path / "sub" / "r.jsonl"
    written = common.emit({"extra": (1.234567, float("nan")), "bench": "b", "wall_s": 2.0}, out=str(out))
    line = capsys.readouterr().out.strip()
    assert json.loads(line) == written == json.loads(out.read_text())
    assert list(written)[:len(common.REQUIRED_KEYS)] == list(common.REQUIRED_KEYS)
    assert written["test_acc"] is None and written["extra"] == [1.23457, None]
    common.emit({"bench": "c"}, out=str(out))
    assert len(out.read_text().splitlines()) == 2
