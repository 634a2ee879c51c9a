import os
import struct
import zipfile

import pytest
import torch
from _helpers import Interrupt, TinyNet, state_equal, synthetic_loaders

from pytorch_utils.errors import CheckpointError, ConfigError
from pytorch_utils.train import Callback, TrainConfig, fit
from pytorch_utils.train.callbacks import Phase, PhaseSchedule
from pytorch_utils.train.checkpoints import (
    FORMAT,
    CheckpointManager,
    HubPusher,
    latest_checkpoint,
    link_or_copy,
    load_checkpoint,
    repair_best,
    restore_model,
    save_checkpoint,
)
from pytorch_utils.train.mixing import Mixer, SoftTargetCrossEntropy
from pytorch_utils.train.schedules import ScheduleSpec
from pytorch_utils.utils import seed_everything

QUIET = TrainConfig(progress=False)

PHASES = [
    Phase(1, 2, "a", dropout=0.2, mixup_alpha=0.4, augmentation="standard",
          scheduler=ScheduleSpec("one_cycle_linear", {"max_lr": 0.2, "min_lr": 0.02, "peak_epoch": 1})),
    Phase(3, 4, "b", dropout=0.05, mixup_alpha=0.0, cutmix_alpha=1.0, augmentation="reduced",
          scheduler=ScheduleSpec("cosine", {"lr": 0.05})),
]


def run(ckpt_dir, epochs=4, resume=False, interrupt_after=None, keep_last=5):
    seed_everything(0)
    train, test = synthetic_loaders(n=128, test_n=64, num_classes=4, batch_size=32)
    model = TinyNet(num_classes=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    callbacks = [CheckpointManager(ckpt_dir, keep_last=keep_last), PhaseSchedule(PHASES)]
    if interrupt_after:
        callbacks.append(Interrupt(interrupt_after))
    try:
        hist = fit(model, train, test, epochs=epochs, optimizer=opt, criterion=SoftTargetCrossEntropy(),
                   callbacks=callbacks, resume=latest_checkpoint(ckpt_dir) if resume else None,
                   config=TrainConfig(mixer=Mixer(4, label_smoothing=0.1), progress=False))
    except KeyboardInterrupt:
        return None, model
    return hist, model


def strip(history):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in history]


@pytest.mark.parametrize("interrupt_after", [1, 2, 3])  # mid-phase, at the phase boundary, in phase 2
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, interrupt_after):
    ref_hist, ref_model = run(tmp_path / "ref")
    hist, _ = run(tmp_path / "run", interrupt_after=interrupt_after)
    assert hist is None
    hist, model = run(tmp_path / "run", resume=True)
    assert strip(hist) == strip(ref_hist)
    assert state_equal(model.state_dict(), ref_model.state_dict())
    assert [r["phase"] for r in hist] == ["a", "a", "b", "b"]


def test_keep_last_n_plus_best(tmp_path):
    run(tmp_path, epochs=4, keep_last=2)
    names = sorted(os.listdir(tmp_path))
    assert names == ["best.pt", "epoch-0003.pt", "epoch-0004.pt"]
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["best"]["epoch"] == best["epoch"]
    assert best["history"][-1]["epoch"] == best["epoch"]


def test_checkpoint_contents_load_weights_only(tmp_path):
    run(tmp_path, epochs=1)
    ckpt = torch.load(tmp_path / "epoch-0001.pt", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "steps_per_epoch", "history", "rng",
                "config", "version"):
        assert key in ckpt
    assert ckpt["format"] == FORMAT and ckpt["steps_per_epoch"] == 4 and ckpt["step"] == 4
    assert ckpt["epoch"] == 1 and ckpt["history"][0]["checkpoint"] == "epoch-0001.pt"


def test_corrupt_newest_checkpoint_is_reported_and_skipped(tmp_path):
    run(tmp_path, epochs=3)
    newest = tmp_path / "epoch-0003.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a kill mid-copy
    skipped = []
    with pytest.warns(RuntimeWarning, match="epoch-0003.pt"):
        ckpt = latest_checkpoint(tmp_path, skipped)
    assert ckpt["epoch"] == 2 and skipped == [str(newest)] and ckpt["_path"] == str(tmp_path / "epoch-0002.pt")
    assert latest_checkpoint(tmp_path / "none") is None
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(newest)


def test_resume_required_without_checkpoint(tmp_path):
    from pytorch_utils.recipes import run_recipe

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "epoch-0001.pt").write_bytes(b"cut short")
    with pytest.raises(CheckpointError, match=r"holds no checkpoint \(corrupt: .*epoch-0001.pt\)"), \
            pytest.warns(RuntimeWarning, match="corrupt"):
        run_recipe("strixbee_l1", "synthetic", tmp_path, resume="required", progress=False)


def test_a_checkpoint_of_a_newer_format_is_refused_naming_its_version_and_an_older_one_is_read(tmp_path):
    save_checkpoint({"format": 3, "version": "0.9.0", "model": {}}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match=r"pytorch_utils 0.9.0 \(checkpoint format 3, this version reads up to 2"):
        load_checkpoint(tmp_path / "new.pt")
    save_checkpoint({"format": 1, "version": "0.1.0", "model": {}}, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["version"] == "0.1.0"  # predict/export of an older run still work
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a pytorch_utils checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_deflate_compressed_checkpoint_is_refused_before_torch_load(tmp_path):
    save_checkpoint({"format": FORMAT, "model": {"w": torch.zeros(100_000)}}, tmp_path / "plain.pt")
    bomb = tmp_path / "epoch-0001.pt"  # the same members re-zipped with Deflate: 400 kB of zeros in about 1 kB
    with zipfile.ZipFile(tmp_path / "plain.pt") as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for member in src.infolist():
            dst.writestr(member.filename, src.read(member))
    assert bomb.stat().st_size < 20_000 and load_checkpoint(tmp_path / "plain.pt")["model"]["w"].numel() == 100_000
    with pytest.raises(CheckpointError, match="compressed members") as info:
        load_checkpoint(bomb)
    assert str(bomb) in str(info.value) and "\n" not in str(info.value)


def test_a_checkpoint_declaring_a_huge_file_list_is_refused_before_zipfile_reads_it(tmp_path):
    path = tmp_path / "epoch-0001.pt"
    save_checkpoint({"format": FORMAT, "model": {"w": torch.zeros(3)}}, path)
    raw = bytearray(path.read_bytes())
    # torch.save writes zip64's end record, whose size every zipfile reads: a million entries' worth
    struct.pack_into("<Q", raw, raw.rindex(b"PK\x06\x06") + 40, 200 << 20)
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="declares a file list of 209,715,200 bytes") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "delete it" in str(info.value)


@pytest.mark.parametrize("plant", ["fifo", "dev_zero_link"])
def test_a_fifo_or_device_at_a_checkpoint_name_is_refused_without_being_opened(tmp_path, plant):
    best = tmp_path / "best.pt"
    if plant == "fifo":
        os.mkfifo(best)  # a plain open waits for a writer forever
    else:
        best.symlink_to("/dev/zero")  # a read never ends
    with pytest.raises(CheckpointError, match="not a regular file") as info:
        load_checkpoint(best)
    assert str(best) in str(info.value) and "\n" not in str(info.value)
    ckpt = {"format": FORMAT, "model": {}, "epoch": 1, "best": {"monitor": "test_acc", "value": 1.0, "epoch": 1}}
    save_checkpoint(ckpt, tmp_path / "epoch-0001.pt")
    assert repair_best(tmp_path, ckpt) == best  # what resume does with best.pt: replaced by the best epoch's file
    assert load_checkpoint(best)["epoch"] == 1 and (tmp_path / "epoch-0001.pt").is_file()


def test_checkpoint_from_other_model_is_refused(tmp_path):
    from pytorch_utils.models import create_model

    a = create_model("strixbee_l1")
    save_checkpoint({"format": FORMAT, "model_name": "strixbee_l1", "model": a.state_dict()}, tmp_path / "a.pt")
    ckpt = load_checkpoint(tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match="strixbee_l1.*strixbee_l2"):
        restore_model(create_model("strixbee_l2"), ckpt)
    other = TinyNet()  # no model_name: the shapes decide
    with pytest.raises(CheckpointError, match="does not fit"):
        restore_model(other, ckpt)


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    save_checkpoint({"format": FORMAT, "model": {"w": torch.ones(2)}}, path)

    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"format": FORMAT, "model": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["x.pt"]  # no temp file left behind


def test_planted_symlinks_at_checkpoint_names_are_replaced_and_their_targets_untouched(tmp_path):
    outside = tmp_path / "important.txt"
    outside.write_text("keep me")
    ckpts = tmp_path / "run"
    ckpts.mkdir()
    for name in ("epoch-0001.pt", "best.pt", ".epoch-0001.pt.tmp", ".best.pt.link.tmp"):  # final and old fixed names
        (ckpts / name).symlink_to("../important.txt")
    seed_everything(0)
    train, test = synthetic_loaders(n=32, test_n=16)
    model = TinyNet()
    fit(model, train, test, epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        callbacks=[CheckpointManager(ckpts)], config=QUIET)
    assert outside.read_text() == "keep me"
    for name in ("epoch-0001.pt", "best.pt"):
        assert not (ckpts / name).is_symlink() and load_checkpoint(ckpts / name)["epoch"] == 1


def test_link_or_copy_copies_where_hard_links_fail_and_leaves_no_temporary(tmp_path, monkeypatch):
    src = save_checkpoint({"format": FORMAT, "model": {"w": torch.ones(2)}, "epoch": 1}, tmp_path / "epoch-0001.pt")
    (tmp_path / "best.pt").symlink_to(tmp_path / "elsewhere.pt")

    def no_links(a, b):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    link_or_copy(src, tmp_path / "best.pt")
    assert not (tmp_path / "best.pt").is_symlink() and load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    assert (tmp_path / "best.pt").stat().st_ino != src.stat().st_ino  # a copy
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "epoch-0001.pt"]


def test_save_checkpoint_never_creates_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="not writable"):
        save_checkpoint({"format": FORMAT, "model": {}}, tmp_path / "gone" / "epoch-0001.pt")
    assert not (tmp_path / "gone").exists()


def test_the_manager_makes_its_folder_but_never_a_missing_run_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"'.*gone/checkpoints' is not writable \(No such file or directory\)"):
        CheckpointManager(tmp_path / "gone" / "checkpoints")  # an unmounted Drive: not re-created on the local disk
    assert not (tmp_path / "gone").exists()
    CheckpointManager(tmp_path / "checkpoints")
    assert (tmp_path / "checkpoints").is_dir()


def test_unwritable_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(ConfigError, match="not writable"):
        CheckpointManager(blocker / "ckpts")


def test_hub_pusher_without_token_fails_clearly(monkeypatch):
    pytest.importorskip("huggingface_hub")
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ConfigError, match="token"):
        HubPusher("me/model")


def test_hub_push_failure_is_recorded_not_fatal(tmp_path):
    pusher = HubPusher.__new__(HubPusher)  # skip the network-bound constructor

    class DeadApi:
        def upload_file(self, **kw):
            raise ConnectionError("no network")

    pusher.api, pusher.repo_id, pusher.every, pusher.push_best, pusher.errors = DeadApi(), "me/m", 1, True, []
    (tmp_path / "best.pt").write_bytes(b"x")
    (tmp_path / "epoch-0001.pt").write_bytes(b"x")
    record = {}
    with pytest.warns(RuntimeWarning, match="no network"):
        pusher.maybe_push(tmp_path, tmp_path / "epoch-0001.pt", 1, True, record)
    assert "failed" in record["hub_error"]


def test_checkpoint_every_n_epochs_keeps_last_and_best(tmp_path):
    seed_everything(0)
    train, test = synthetic_loaders(n=64, test_n=32)
    model = TinyNet()
    hist = fit(model, train, test, epochs=5, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
               callbacks=[CheckpointManager(tmp_path, every=2)], config=QUIET)
    names = sorted(p.name for p in tmp_path.glob("epoch-*.pt"))
    assert names == ["epoch-0002.pt", "epoch-0004.pt", "epoch-0005.pt"]  # every 2nd + the last
    best_epoch = max(hist, key=lambda r: r["test_acc"])["epoch"]
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == best_epoch
    assert [r.get("checkpoint") for r in hist] == [None, "epoch-0002.pt", None, "epoch-0004.pt", "epoch-0005.pt"]


def test_best_between_periodic_saves_is_held_in_memory_then_written(tmp_path):
    # With every=2 a new best at epoch 1 is not written at once (no full write per improvement in a fast run) but is
    # on disk after the epoch-2 save, and an exception in between still writes it.
    seed_everything(0)
    train, test = synthetic_loaders(n=64, test_n=32, batch_size=32)
    seen = []

    class Look(Callback):
        def on_epoch_complete(self, state, record):
            seen.append((state.epoch, (tmp_path / "best.pt").exists()))

    model = TinyNet()
    fit(model, train, test, epochs=2, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), config=QUIET,
        callbacks=[CheckpointManager(tmp_path, every=2), Look()])
    assert seen == [(1, False), (2, True)]

    class Boom(Callback):
        def on_epoch_start(self, state):
            if state.epoch == 1:
                raise KeyboardInterrupt

    out = tmp_path / "interrupted"
    model = TinyNet()
    with pytest.raises(KeyboardInterrupt):
        fit(model, train, test, epochs=4, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), config=QUIET,
            callbacks=[CheckpointManager(out, every=3), Boom()])
    best = load_checkpoint(out / "best.pt")
    assert best["epoch"] == 1 and not list(out.glob("epoch-*.pt"))
    assert state_equal(best["model"], model.state_dict())


def test_resumed_manager_keeps_the_best_so_far_and_clears_killed_writes(tmp_path):
    # The best so far comes from the restored history: a resumed epoch worse than it must not replace best.pt.
    seed_everything(0)
    train, test = synthetic_loaders(n=64, test_n=32)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(model, train, test, epochs=2, optimizer=opt, callbacks=[CheckpointManager(tmp_path)], config=QUIET)
    ckpt = latest_checkpoint(tmp_path)
    ckpt["history"][0]["test_acc"] = 1000.0  # epoch 1 holds the best value no later epoch can reach
    (tmp_path / ".epoch-0003.pt.tmp").write_bytes(b"a write killed half way")
    seen = []

    class Look(Callback):
        def on_fit_start(self, state):
            seen.append(sorted(p.name for p in tmp_path.iterdir()))

    manager = CheckpointManager(tmp_path)
    hist = fit(model, train, test, epochs=3, optimizer=opt, callbacks=[manager, Look()], resume=ckpt, config=QUIET)
    assert ".epoch-0003.pt.tmp" not in seen[0]
    assert manager.best == {"monitor": "test_acc", "value": 1000.0, "epoch": 1} and "best" not in hist[-1]
    assert load_checkpoint(tmp_path / "epoch-0003.pt")["best"]["epoch"] == 1


@pytest.mark.parametrize("saved, now, step, expected", [(4, 5, 8, 10), (8, 4, 16, 8), (4, 4, 8, 8)])
def test_restore_rescales_the_step_count_when_the_steps_per_epoch_changed(saved, now, step, expected):
    # Another batch size or a data folder that grew: the schedule continues from the same fraction of the run.
    from pytorch_utils.train.checkpoints import make_checkpoint, restore_state
    from pytorch_utils.train.state import TrainState

    def state(steps_per_epoch):
        model = TinyNet()
        return TrainState(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), criterion=None,
                          train_loader=None, test_loader=None, device=torch.device("cpu"), epochs=4,
                          steps_per_epoch=steps_per_epoch)

    old = state(saved)
    old.epoch, old.step = 2, step
    new = state(now)
    restore_state(new, make_checkpoint(old))
    assert (new.epoch, new.step) == (2, expected)
    assert state_equal(new.model.state_dict(), old.model.state_dict())


def test_a_checkpoint_of_expanded_views_is_refused(tmp_path):
    # 4e8 "weights" stored in 4 bytes: building the model for them would allocate gigabytes.
    save_checkpoint({"format": FORMAT, "model": {"w": torch.zeros(()).expand(20000, 20000)}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="expanded or sparse weight tensors"):
        load_checkpoint(tmp_path / "x.pt")
