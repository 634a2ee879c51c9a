"""Per-epoch logs: history.json/.csv after every epoch (readable after a kill), read back, TensorBoard optional."""
import csv
import json

import pytest
import torch
import torch.nn as nn
from _helpers import Interrupt
from torch.utils.data import DataLoader, TensorDataset

from pytorch_utils import viz
from pytorch_utils.errors import ConfigError
from pytorch_utils.train.history import HistoryWriter, history_csv, read_history, summarize, write_history
from pytorch_utils.train.loop import fit
from pytorch_utils.train.state import TrainConfig


def _fit(out_dir, epochs, callbacks):
    torch.manual_seed(0)
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    model = nn.Linear(8, 2)
    return fit(model, loader, loader, epochs=epochs, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
               callbacks=callbacks, config=TrainConfig(progress=False))


def test_a_run_killed_mid_way_has_a_readable_history(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, 5, [HistoryWriter(tmp_path), Interrupt(3)])
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    records = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert float(rows[2]["test_acc"]) == pytest.approx(records[2]["test_acc"])
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries
    fig = viz.plot_history(tmp_path / "history.csv")  # the curves of the cut-off run
    assert len(fig.axes) >= 2


def test_files_match_the_returned_history_and_read_back_equal(tmp_path):
    history = _fit(tmp_path, 2, [HistoryWriter(tmp_path)])
    from_json, from_csv, from_dir = (read_history(tmp_path / "history.json"), read_history(tmp_path / "history.csv"),
                                     read_history(tmp_path))
    assert from_json == from_dir == json.loads(json.dumps(list(history)))
    for a, b in zip(from_csv, from_json):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k]) if isinstance(b[k], float) else a[k] == b[k]


def test_csv_cells_for_missing_values_and_nested_values():
    text = history_csv([{"epoch": 1, "lr": 0.1}, {"epoch": 2, "phase": 2, "extra": [1, 2], "lr": None}])
    assert text.splitlines() == ["epoch,lr,phase,extra", "1,0.1,,", '2,,2,"[1, 2]"']


def test_read_history_errors(tmp_path):
    with pytest.raises(ConfigError, match="is not a history .*pass a run folder holding history.json or history.csv"):
        read_history(tmp_path)
    for text in ('{"not": "a list"}', "[1, 2]", "{broken", "[" * 100_000 + "]" * 100_000):  # the last: a nesting bomb
        (tmp_path / "history.json").write_text(text)
        with pytest.raises(ConfigError, match="is not a history"):
            read_history(tmp_path / "history.json")
    write_history([{"epoch": 1, "early_stop": True}], tmp_path)
    assert read_history(tmp_path / "history.csv") == [{"epoch": 1, "early_stop": True}]


def test_a_huge_planted_history_is_refused_without_reading_it(tmp_path):
    import tracemalloc

    with open(tmp_path / "history.json", "wb") as fh:  # sparse: 3 GB on paper, nothing on disk
        fh.truncate(3 << 30)
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match=r"is not a history \(ValueError: over 67,108,864 bytes"):
            read_history(tmp_path)
        assert tracemalloc.get_traced_memory()[1] < 80 << 20  # read to the limit, not the 3 GB
    finally:
        tracemalloc.stop()


def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _fit(tmp_path, 2, [HistoryWriter(tmp_path, tensorboard=True)])
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert {"train_loss", "test_acc", "lr"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("test_acc")] == [1, 2]


def test_missing_tensorboard_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tb(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tb)
    with pytest.raises(ConfigError, match=r'pip install "pytorch_utils\[tensorboard\]"'):
        HistoryWriter(tmp_path, tensorboard=True)


def test_summarize_is_the_one_summary_of_a_history():
    records = [{"epoch": e, "train_acc": 30 + 5 * e, "test_acc": [40, 52, 50][e - 1], "test_loss": 2 / e}
               for e in (1, 2, 3)]
    records[-1]["early_stop"] = True
    assert summarize(records) == {"epochs_run": 3, "train_acc": 45, "test_acc": 50, "test_loss": 2 / 3,
                                  "best_test_acc": 52, "best_epoch": 2, "stopped_early": True}
    # An epoch without an evaluation: the last recorded values, not None.
    assert summarize(records + [{"epoch": 4, "train_acc": 60}])["test_acc"] == 50
    assert summarize([]) == {"epochs_run": 0, "train_acc": None, "test_acc": None, "test_loss": None,
                             "best_test_acc": None, "best_epoch": None, "stopped_early": False}
