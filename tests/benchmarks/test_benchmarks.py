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
    runs = tmp_path / "runs"
    records = bench_s10.main(["--data", "synthetic", "--epochs", "2", "--train-limit", "128", "--test-limit", "64",
                              "--batch-size", "32", "--variants", "fast,dataloader-2w", "--out", str(out),
                              "--quiet", "--run-dir", str(runs), *SMALL_MODEL])
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
        # The probes saw the run's parts: data, a checkpoint (one, at the end, by default).
        assert rec["data_s"] > 0 and rec["checkpoint_s"] > 0 and rec["checkpoint_every"] == 2
        assert rec["lr_max"] > 0 and rec["lr_min"] == pytest.approx(rec["lr_max"] / 10, rel=1e-3)
        # Called as a function: the total counts from main(), and holds the setup (decode) and the variant.
        assert rec["wall_s_total_from"] == "main()" and rec["process_start_s"] is None
        assert rec["wall_s_total"] >= rec["wall_s"] + rec["decode_s"]
        assert rec["wall_s_total"] == pytest.approx(rec["setup_s"] + rec["variant_s"], rel=1e-4, abs=2e-3)
        assert rec["shared_lr"] is True
        assert rec["train_images"] == 128 and rec["test_images"] == 64 and rec["steps_per_epoch"] == 4
        assert rec["train_images_per_s"] > 0
    assert records[1]["num_workers"] == 2
    # One LR finder (the first variant's); the second variant trains with its LR_max/LR_min.
    first, second = records
    assert first["lr_source"] == "lr_finder" and first["lr_finder_s"] > 0 and first["lr_from_variant"] == "fast"
    assert first["lr_plot_s"] > 0  # the probe found the plot (viz.lr_finder.plot_lr_finder)
    assert second["lr_source"] == "shared" and second["lr_finder_s"] is None and second["lr_from_variant"] == "fast"
    assert (second["lr_max"], second["lr_min"]) == (first["lr_max"], first["lr_min"])
    meta = json.loads((runs / "dataloader-2w" / "run.json").read_text())
    assert meta["recipe"]["lr_finder"] is None and meta["recipe"]["checkpoint_every"] == 2
    params = meta["recipe"]["scheduler"]["params"]
    assert params["max_lr"] == pytest.approx(first["lr_max"], rel=1e-5)
    assert params["min_lr"] == pytest.approx(first["lr_min"], rel=1e-5)
    assert sorted(p.name for p in (runs / "fast" / "checkpoints").glob("epoch-*.pt")) == ["epoch-0002.pt"]
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
    from pytorch_utils.recipes import get_recipe

    args = bench_s10.parse_args(["--epochs", "3", "--batch-size", "256", "--compile", "--set", "tta=null"])
    recipe = bench_s10.build_recipe(args, *common.parse_variant("dataloader-8w")[:2], False)
    assert (recipe.epochs, recipe.batch_size, recipe.tta, recipe.loader, recipe.num_workers) == (
        3, 256, None, "dataloader", 8)
    assert bench_s10.build_recipe(bench_s10.parse_args([]), "gpu", None, True).epochs == 24  # the recipe's default
    # A shortened run gets the smoke profile's scaling (One Cycle peak 5 of 24 -> 0.625 of 3), the LR sweep and the
    # sizes it was given; the recipe's own length runs the recipe unchanged.
    assert recipe.scheduler.params == {"peak_epoch": 5 * 3 / 24}
    assert recipe.lr_finder == get_recipe("s10").lr_finder and recipe.train_limit is None
    assert common.shortened(get_recipe("s10"), 24) == get_recipe("s10")
    full = bench_s10.build_recipe(bench_s10.parse_args(["--epochs", "24"]), "gpu", None, False)
    assert full.scheduler == get_recipe("s10").scheduler and full.lr_finder == get_recipe("s10").lr_finder
    assert common.shortened(get_recipe("s10"), 2, lr_sweep=20).lr_finder.num_iter == 20
    assert bench_s10.build_recipe(bench_s10.parse_args([]), "gpu", None, False).checkpoint_every == 24
    assert bench_s10.build_recipe(args, "gpu", None, False).checkpoint_every == 3  # = --epochs
    every = bench_s10.parse_args(["--checkpoint-every", "1"])
    assert bench_s10.build_recipe(every, "gpu", None, False).checkpoint_every == 1
    via_set = bench_s10.parse_args(["--set", "checkpoint_every=5"])
    assert bench_s10.build_recipe(via_set, "gpu", None, False).checkpoint_every == 5
    assert bench_s10.parse_args([]).shared_lr is True and bench_s10.parse_args(["--no-shared-lr"]).shared_lr is False
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
        # CPU, amp auto -> fp32: float32 batches; cuDNN autotuning left alone off CUDA.
        assert rec["amp"] == "fp32" and rec["loader_dtype"] == "fp32"
        assert rec["cudnn_benchmark_option"] == "auto-off"
    assert records[0]["loader"] == "gpu" and records[1]["num_workers"] == 2


def test_wrn_loader_dtype_follows_amp_like_the_recipe_runner():
    import torch

    from pytorch_utils.data import load_datasets

    assert bench_wrn_throughput.loader_dtype("gpu", torch.bfloat16) is torch.bfloat16
    assert bench_wrn_throughput.loader_dtype("gpu", torch.float16) is torch.float32
    assert bench_wrn_throughput.loader_dtype("gpu", None) is torch.float32
    assert bench_wrn_throughput.loader_dtype("dataloader", torch.bfloat16) is torch.float32
    args = bench_wrn_throughput.parse_args(["--batch-size", "8", "--amp", "bf16"])
    train_ds, _ = load_datasets("synthetic", train_limit=32, test_limit=10, seed=0)
    loader = bench_wrn_throughput.build_loader(train_ds, "gpu", None, args, torch.device("cpu"), False,
                                               torch.bfloat16)
    x, _ = next(iter(loader))
    assert x.dtype is torch.bfloat16


def test_wrn_cudnn_benchmark_defaults_on_for_cuda():
    import torch

    parse = bench_wrn_throughput.parse_args
    assert parse([]).cudnn_benchmark is None
    assert parse(["--cudnn-benchmark"]).cudnn_benchmark is True
    assert parse(["--no-cudnn-benchmark"]).cudnn_benchmark is False
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        assert common.apply_cudnn_benchmark(None, torch.device("cpu")) == "auto-off"
        assert torch.backends.cudnn.benchmark is False
        assert common.apply_cudnn_benchmark(None, torch.device("cuda")) == "auto-on"  # sets the flag only
        assert torch.backends.cudnn.benchmark is True
        assert common.apply_cudnn_benchmark(False, torch.device("cuda")) == "off"
        assert torch.backends.cudnn.benchmark is False
        assert common.apply_cudnn_benchmark(True, torch.device("cpu")) == "on"
    finally:
        torch.backends.cudnn.benchmark = before


def test_with_shared_lrs_fills_the_schedules_like_run_recipe():
    from pytorch_utils.recipes import get_recipe

    s10 = bench_s10.with_shared_lrs(get_recipe("s10"), 0.02, 0.002)
    assert s10.lr_finder is None and s10.scheduler.name == "one_cycle_linear"
    assert s10.scheduler.params == {"peak_epoch": 5, "max_lr": 0.02, "min_lr": 0.002}
    assert get_recipe("s10").lr_finder is not None  # the registered recipe is untouched
    wrn = bench_s10.with_shared_lrs(get_recipe("wrn_c10"), 0.3, 0.03)
    cyclic = wrn.phases[0].scheduler
    assert (cyclic.params["max_lr"], cyclic.params["base_lr"]) == (0.3, 0.03)
    assert "max_lr" not in wrn.phases[1].scheduler.params  # cosine has no max_lr


def test_process_age_and_data_description():
    age = common.process_age_s()
    assert age is None or age > 0
    assert common.data_description("../shared/data/cifar10-jpeg.zip") == "JPEG CIFAR-10 copy"
    assert common.data_description("synthetic") == "synthetic data"


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
