import json

import pytest

from pytorch_utils.cli import main
from pytorch_utils.errors import ConfigError, UnknownNameError
from pytorch_utils.recipes import Recipe, get_recipe, list_recipes, run_recipe, smoke_recipe
from pytorch_utils.recipes.base import parse_override
from pytorch_utils.train.schedules import ScheduleSpec

SMOKE = ["--smoke", "--data", "synthetic", "--epochs", "1", "--train-limit", "32", "--test-limit", "16",
         "--batch-size", "16", "--num-workers", "0", "--no-progress"]


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_runs_one_short_epoch_from_the_cli(name, tmp_path, capsys):
    code = main(["train", "--recipe", name, "--out-dir", str(tmp_path), *SMOKE])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "final test accuracy" in out
    history = json.loads((tmp_path / "history.json").read_text())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(history) == 1 and history[0]["epoch"] == 1
    assert summary["recipe"] == name and summary["test_acc"] == pytest.approx(history[0]["test_acc"])
    assert (tmp_path / "checkpoints" / "epoch-0001.pt").is_file()
    if get_recipe(name).lr_finder is not None:
        assert (tmp_path / "lr_finder.png").is_file()
        run = json.loads((tmp_path / "run.json").read_text())
        assert run["lr_finder"]["lr_min"] == pytest.approx(run["lr_finder"]["lr_max"] / 10)


def test_registered_recipes_match_the_spec():
    s10 = get_recipe("s10")
    assert (s10.model, s10.epochs, s10.batch_size, s10.optimizer) == ("s10_resnet", 24, 512, "adam")
    assert s10.scheduler.name == "one_cycle_linear" and s10.scheduler.params["peak_epoch"] == 5
    assert s10.lr_finder is not None and s10.augmentation == "standard"
    s8 = get_recipe("s8_c100")
    assert (s8.data, s8.batch_size, s8.epochs, s8.early_stopping_patience, s8.keep_last) == \
        ("cifar100", 256, 100, 15, 5)
    assert [(p.start, p.end, p.dropout, p.mixup_alpha) for p in s8.phases] == [(1, 60, 0.3, 0.2), (61, 100, 0.2, 0.15)]
    assert s8.phases[0].scheduler.name == "cosine_warm_restarts" and s8.phases[0].scheduler.params["T_0"] == 25
    assert s8.phases[1].scheduler.name == "cosine" and s8.label_smoothing == 0.1 and s8.weight_decay == 1e-3
    wrn = get_recipe("wrn_c10")
    assert [p.input_size for p in wrn.phases] == [32, 36, 40]
    assert (wrn.label_smoothing, wrn.mixup_alpha, wrn.cutmix_alpha, wrn.lr) == (0.2, 1.0, 1.0, 0.1)
    for level in (1, 2, 3):
        r = get_recipe(f"strixbee_l{level}")
        assert r.optimizer == "sgd" and r.scheduler.name == "plateau"
    assert get_recipe("strixbee_l1").augmentation == "test"
    assert get_recipe("strixbee_l3").augmentation == "standard"


def test_recipe_overrides_and_errors():
    r = get_recipe("s10", epochs=2)
    assert r.epochs == 2 and get_recipe("s10").epochs == 24  # registry hands out fresh copies
    with pytest.raises(ConfigError, match="valid fields"):
        r.replace(epoks=3)
    with pytest.raises(UnknownNameError, match="valid recipes: default, s10"):
        get_recipe("s11")
    assert parse_override(r, "epochs=3") == {"epochs": 3}
    assert parse_override(r, "lr=1") == {"lr": 1.0}
    assert parse_override(r, "tta=flip") == {"tta": "flip"}
    assert parse_override(r, 'model_kwargs={"dropout": 0.1}') == {"model_kwargs": {"dropout": 0.1}}
    assert parse_override(r, 'scheduler={"name": "cosine"}')["scheduler"] == ScheduleSpec("cosine")
    with pytest.raises(ConfigError):
        parse_override(r, "epochs")
    with pytest.raises(ConfigError):
        Recipe(epochs=0).validate()


def test_run_recipe_python_api_returns_model_and_history(tmp_path):
    result = run_recipe("strixbee_l1", "synthetic", tmp_path, epochs=2, train_limit=256, test_limit=64,
                        batch_size=32, num_workers=0, progress=False)
    assert len(result.history) == 2 and result.final["epochs_run"] == 2
    assert result.classes == tuple(f"class_{i}" for i in range(10))
    assert result.final["parameters"] == 83_368
    assert (tmp_path / "summary.json").is_file()


def test_resume_continues_a_recipe_run(tmp_path):
    kw = dict(train_limit=64, test_limit=32, batch_size=16, num_workers=0, progress=False)
    full = run_recipe("strixbee_l3", "synthetic", tmp_path / "full", epochs=3, **kw)
    run_recipe("strixbee_l3", "synthetic", tmp_path / "part", epochs=2, **kw)
    resumed = run_recipe("strixbee_l3", "synthetic", tmp_path / "part", epochs=3, resume=True, **kw)
    strip = lambda h: [{k: v for k, v in r.items() if "seconds" not in k} for r in h]  # noqa: E731
    # The 2-epoch run's plateau scheduler and data order are the same as the first 2 epochs of the 3-epoch run.
    assert strip(resumed.history) == strip(full.history)


def test_num_classes_mismatch_is_reported(tmp_path, cifar_zip):
    with pytest.raises(ConfigError, match="num_classes=100"):
        run_recipe("strixbee_l1", str(cifar_zip), tmp_path, epochs=1, num_classes=100, train_limit=20, test_limit=20,
                   progress=False)


def test_model_head_mismatch_is_reported():
    from pytorch_utils.models import create_model
    from pytorch_utils.recipes.runner import check_model_data

    with pytest.raises(ConfigError, match="outputs 100 classes but the data has 10"):
        check_model_data(create_model("strixbee_l1", num_classes=100), 10)


TINY = dict(train_limit=64, test_limit=32, batch_size=16, num_workers=0, progress=False)


def _strip(history):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in history]


def test_fresh_run_moves_an_earlier_run_aside_instead_of_mixing_checkpoints(tmp_path):
    run_recipe("strixbee_l1", "synthetic", tmp_path, epochs=3, keep_last=2, **TINY)
    old_best = (tmp_path / "checkpoints" / "best.pt").read_bytes()
    run_recipe("strixbee_l1", "synthetic", tmp_path, epochs=1, **TINY)  # no resume: a new run
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.pt", "epoch-0001.pt"]
    (previous,) = (tmp_path / "previous").iterdir()
    assert sorted(p.name for p in (previous / "checkpoints").iterdir()) == ["best.pt", "epoch-0002.pt",
                                                                           "epoch-0003.pt"]
    assert (previous / "checkpoints" / "best.pt").read_bytes() == old_best  # nothing lost
    assert len(json.loads((previous / "history.json").read_text())) == 3
    assert len(json.loads((tmp_path / "history.json").read_text())) == 1


def test_resume_with_changed_settings_is_refused_before_any_work(tmp_path):
    from pytorch_utils.errors import CheckpointError

    run_recipe("strixbee_l1", "synthetic", tmp_path, epochs=1, **TINY)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(CheckpointError, match=r"lr: saved 0\.05, now 0\.001"):
        run_recipe("strixbee_l1", "synthetic", tmp_path, epochs=2, lr=0.001, resume=True, **TINY)
    with pytest.raises(CheckpointError, match="holds a 'strixbee_l1' model but the model to restore is 'strixbee_l2'"):
        run_recipe("strixbee_l1", "synthetic", tmp_path, epochs=2, model="strixbee_l2", resume=True, **TINY)
    with pytest.raises(CheckpointError, match="data: saved 'synthetic'"):
        run_recipe("strixbee_l1", "cifar10", tmp_path, epochs=2, resume=True, **TINY)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before  # run.json untouched


def test_resume_may_extend_a_plateau_run_but_not_a_one_cycle_run(tmp_path):
    kw = dict(TINY, model="strixbee_l1", lr_finder=None,
              scheduler=ScheduleSpec("one_cycle_linear", {"max_lr": 0.05, "min_lr": 0.005, "peak_epoch": 1}))
    run_recipe("s10", "synthetic", tmp_path, epochs=2, **kw)
    from pytorch_utils.errors import CheckpointError

    with pytest.raises(CheckpointError, match="epochs: saved 2, now 3"):
        run_recipe("s10", "synthetic", tmp_path, epochs=3, resume=True, **kw)


def test_resume_may_extend_a_phase_run_whose_spans_stay_put(tmp_path):
    # S8's first phase (warm restarts, T_0 given) does not depend on the run length: 1 epoch, then 2, is one run.
    kw = dict(TINY, model="strixbee_l3", model_kwargs={})
    full = run_recipe("s8_c100", "synthetic", tmp_path / "full", epochs=2, **kw)
    run_recipe("s8_c100", "synthetic", tmp_path / "part", epochs=1, **kw)
    resumed = run_recipe("s8_c100", "synthetic", tmp_path / "part", epochs=2, resume="required", **kw)
    assert _strip(resumed.history) == _strip(full.history)


def test_resumed_lr_finder_run_reuses_the_checkpointed_lrs(tmp_path):
    kw = dict(TINY, model="strixbee_l1", train_limit=256)
    s10 = smoke_recipe(get_recipe("s10"), "synthetic", epochs=2)  # the One Cycle peak scaled into 2 epochs
    full = run_recipe(s10, "synthetic", tmp_path / "full", **kw)
    part = tmp_path / "part"
    run_recipe(s10, "synthetic", part, **kw)
    # Simulate a kill after epoch 1 and a run.json rewritten by something else: the checkpoint is the truth.
    (part / "checkpoints" / "epoch-0002.pt").unlink()
    run = json.loads((part / "run.json").read_text())
    run["lr_finder"] = {"lr_max": 123.0, "lr_min": 12.3}
    (part / "run.json").write_text(json.dumps(run))
    resumed = run_recipe(s10, "synthetic", part, resume=True, **kw)
    assert resumed.lr_finder is None  # no second sweep
    assert _strip(resumed.history) == _strip(full.history)


def test_resume_after_a_kill_before_the_first_checkpoint_starts_over(tmp_path):
    full = run_recipe("strixbee_l1", "synthetic", tmp_path / "full", epochs=1, **TINY)
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "run.json").write_text("{}")  # what a run leaves when killed during its first epoch
    resumed = run_recipe("strixbee_l1", "synthetic", killed, epochs=1, resume="required", **TINY)
    assert _strip(resumed.history) == _strip(full.history)


def test_with_peak_lr_replaces_the_finder_and_sets_the_schedule():
    s10 = get_recipe("s10").with_peak_lr(0.01)
    assert s10.lr_finder is None and s10.lr == 0.01
    assert s10.scheduler.params == {"peak_epoch": 5, "max_lr": 0.01, "min_lr": pytest.approx(0.001)}
    default = get_recipe("default").with_peak_lr(0.02)
    assert default.scheduler.name == "onecycle" and default.scheduler.params["max_lr"] == 0.02
    s8 = get_recipe("s8_c100").with_peak_lr(0.05)
    assert [p.scheduler.params["lr"] for p in s8.phases] == [0.05, 0.05]
    with pytest.raises(ConfigError, match="'lr' must be > 0"):
        get_recipe("s10").with_peak_lr(-1)


def test_cli_lr_sets_the_peak_the_optimizer_sees(tmp_path, capsys):
    assert main(["train", "--model", "strixbee_l1", "--lr", "0.02", "--out-dir", str(tmp_path), *SMOKE]) == 0
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["recipe"]["scheduler"]["params"]["max_lr"] == 0.02 and run["recipe"]["lr"] == 0.02
    assert main(["train", "--recipe", "s10", "--model", "strixbee_l1", "--no-lr-finder", "--lr", "0.01",
                 "--out-dir", str(tmp_path / "s10"), *SMOKE]) == 0
    assert not (tmp_path / "s10" / "lr_finder.png").exists()


@pytest.mark.parametrize("override, message", [
    ({"epochs": "abc"}, "'epochs' must be int"),
    ({"batch_size": "32"}, "'batch_size' must be int"),
    ({"epochs": True}, "'epochs' must be int"),
    ({"monitor": "bogus"}, "'monitor' must be one of"),
    ({"label_smoothing": 1.5}, "'label_smoothing' must be >= 0 and < 1"),
    ({"keep_last": 0}, "'keep_last' must be >= 1"),
    ({"scheduler": "cosine"}, "'scheduler' must be ScheduleSpec or None"),
    ({"train_limit": 0}, "'train_limit' must be >= 1"),
    ({"ema_decay": 1.0}, "'ema_decay' must be > 0 and < 1"),
    ({"grad_clip": -1}, "'grad_clip' must be > 0"),
    ({"grad_clip": float("nan")}, "'grad_clip' must be > 0"),
    ({"lr": float("inf")}, "'lr' must be > 0"),
    ({"weight_decay": float("inf")}, "'weight_decay' must be >= 0"),
    ({"momentum": -1}, "'momentum' must be >= 0"),
    ({"seed": 2**70}, "'seed' must be >= 0 and <= 4294967295"),
    ({"augmentation_kwargs": {"cutuot": 16}}, "cutuot"),
    ({"augmentation_kwargs": {"size": "abc"}}, "size"),
    ({"augmentation_kwargs": {"size": -5}}, "size"),
    ({"seed": 10**400}, "'seed' must be >= 0"),
    ({"phases": [1]}, "'phases' must be list"),
    ({"scheduler": {"name": "cosine", "params": None}}, "'params' must be dict"),
])
def test_recipe_values_are_checked_by_name(override, message):
    with pytest.raises(ConfigError, match=message):
        get_recipe("default").replace(**override).validate()


@pytest.mark.parametrize("text, message", [
    ("model_kwargs={bad", "not valid JSON"),
    ("epochs=abc", "not valid JSON"),
    ('scheduler={"foo": 1}', r"scheduler takes the keys name, params; got foo$"),
    ('scheduler={"name": "plateau", "kwargs": {}}', r"scheduler takes the keys name, params; got kwargs$"),
    ('phases=[{"start": 1, "end": 2}, {"x": 1}]', r"phases\[1\] takes the keys start, end, name, .*; got x$"),
    ("epochs=2.5", "'epochs' must be int"),
])
def test_bad_cli_overrides_are_clear_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_override(get_recipe("default"), text)


def test_default_recipe_trains_the_s10_resnet_well_above_chance(tmp_path, capsys):
    # The main job: `train --model s10_resnet --data synthetic --epochs 2` (on a subset to stay fast).
    code = main(["train", "--model", "s10_resnet", "--data", "synthetic", "--epochs", "2", "--train-limit", "512",
                 "--test-limit", "256", "--batch-size", "64", "--num-workers", "0", "--no-progress",
                 "--out-dir", str(tmp_path)])
    assert code == 0
    history = json.loads((tmp_path / "history.json").read_text())
    assert history[-1]["test_acc"] > 50.0  # chance is 10 %
    assert "final test accuracy" in capsys.readouterr().out


def test_s8_offers_the_seeds_own_network_beside_wrn28_10():
    wrn, resnet = get_recipe("s8_c100"), get_recipe("s8_c100_resnet")
    assert (wrn.model, resnet.model) == ("wrn28_10", "s8_resnet")
    assert resnet.replace(model="wrn28_10", name="s8_c100", description=wrn.description) == wrn


# ------------------------------------------------------------------ one list per set of names, checked before work
def _cli_choices(dest):
    import argparse

    from pytorch_utils.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    return tuple(next(a for a in sub._actions if a.dest == dest).choices)


def test_cli_choices_are_the_package_name_lists():
    from pytorch_utils.data.transforms import list_presets
    from pytorch_utils.recipes.base import LOADER_KINDS, OPTIMIZERS
    from pytorch_utils.train.tta import TTA_MODES
    from pytorch_utils.utils import AMP_MODES

    assert _cli_choices("optimizer") == tuple(OPTIMIZERS.names()) == ("adam", "adamw", "sgd")
    assert _cli_choices("augmentation") == tuple(list_presets())
    assert _cli_choices("tta") == TTA_MODES and _cli_choices("amp") == AMP_MODES
    assert _cli_choices("loader") == LOADER_KINDS


@pytest.mark.parametrize("override, error, words", [
    ({"model": "resnet9000"}, UnknownNameError, ["model", "resnet9000", "s10_resnet"]),
    ({"optimizer": "adamx"}, UnknownNameError, ["optimizer", "adamx", "adamw"]),
    ({"scheduler": ScheduleSpec("cosin")}, UnknownNameError, ["scheduler", "cosin", "cosine_warm_restarts"]),
    ({"augmentation": "strong"}, UnknownNameError, ["augmentation", "strong", "standard"]),
    ({"phases": [{"start": 1, "end": 2, "scheduler": {"name": "cosin"}}]}, UnknownNameError,
     ["phases[0].scheduler", "cosin"]),
    ({"phases": [{"start": 1, "end": 1}, {"start": 2, "end": 3, "augmentation": "wrm"}]}, UnknownNameError,
     ["phases[1].augmentation", "wrm", "wrn"]),
    ({"tta": "flipp"}, ConfigError, ["tta", "flipp", "flip_translate"]),
    ({"amp": "fp8"}, ConfigError, ["amp", "fp8", "bf16"]),
    ({"loader": "gpux"}, ConfigError, ["loader", "gpux", "dataloader"]),
    ({"phases": [{"start": 1, "end": 2, "dropout": "high"}]}, ConfigError, ["dropout", "float", "high"]),
])
def test_validate_checks_every_name_the_recipe_uses(override, error, words):
    with pytest.raises(error) as info:
        get_recipe("default").replace(**override).validate()
    assert all(w in str(info.value) for w in words), str(info.value)


def test_registered_recipes_use_only_registered_names():
    for name in list_recipes():
        get_recipe(name).validate()


def test_field_types_come_from_the_annotations():
    import dataclasses

    import pytorch_utils.recipes.base as base

    assert not hasattr(base, "_FIELD_TYPES")

    @dataclasses.dataclass
    class Extended(Recipe):  # a field added later is checked with no second table to update
        accumulate_steps: int = 1

    with pytest.raises(ConfigError, match="'accumulate_steps' must be int, got 'two'"):
        Extended(accumulate_steps="two").validate()
    assert Extended(accumulate_steps=2).validate().accumulate_steps == 2


def test_misspelled_phase_scheduler_from_the_cli_is_refused_before_any_data_or_lr_work(tmp_path, capsys, monkeypatch):
    import pytorch_utils.recipes.runner as runner
    import pytorch_utils.train.lr_finder as lr_finder

    def no_work(*args, **kwargs):
        raise AssertionError("data loading or the LR sweep ran before the recipe was checked")

    monkeypatch.setattr(runner, "load_datasets", no_work)
    monkeypatch.setattr(lr_finder, "find_lr", no_work)
    out = tmp_path / "run"
    code = main(["train", "--recipe", "s10", "--data", str(tmp_path / "no_such_data"), "--out-dir", str(out),
                 "--set", 'phases=[{"start": 1, "end": 24, "scheduler": {"name": "cosin"}}]'])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: unknown scheduler 'cosin'") and "phases[0].scheduler" in err
    assert "does not exist" not in err and "Traceback" not in err
    assert not out.exists()  # nothing was created either


def test_every_listed_name_works_where_it_is_used():
    import torch

    from pytorch_utils.recipes.base import OPTIMIZERS, build_optimizer
    from pytorch_utils.train.tta import TTA_MODES, get_tta
    from pytorch_utils.utils import AMP_MODES, amp_dtype_for

    model = torch.nn.Linear(4, 2)
    kinds = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    for name in OPTIMIZERS.names():
        opt = build_optimizer(get_recipe("default", optimizer=name, lr=0.02), model)
        assert type(opt) is kinds[name] and opt.param_groups[0]["lr"] == 0.02
    x = torch.randn(3, 3, 8, 8)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    for mode in TTA_MODES:
        fn = get_tta(mode)
        assert (fn is None) == (mode == "none") and (fn is None or fn(conv, x).shape == (3, 2))
    cpu = torch.device("cpu")
    assert [amp_dtype_for(m, cpu) for m in AMP_MODES if m != "fp16"] == [None, None, torch.bfloat16]


@pytest.mark.parametrize("sub", ["checkpoints", "previous"])
def test_a_run_subfolder_planted_as_a_link_is_refused(tmp_path, sub):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".notes.tmp").write_text("mine")
    run = tmp_path / "run"
    run.mkdir()
    (run / sub).symlink_to(outside)
    with pytest.raises(ConfigError, match=f"'{sub}' must be a folder of the run|{sub}.* must be a folder"):
        run_recipe("strixbee_l1", "synthetic", run, epochs=1, **TINY)
    assert [p.name for p in outside.iterdir()] == [".notes.tmp"]  # nothing written or deleted outside the run
