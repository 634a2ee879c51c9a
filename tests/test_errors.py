"""Bad inputs end in a specific exception (or a one-line CLI error, exit 2) that names the problem, before any
saved work is lost. One test per case of the reliability issue's list."""
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn
from _helpers import TinyNet, plain_loader, synthetic_loaders, tensor_data
from PIL import Image

from pytorch_utils.cli import main
from pytorch_utils.data import ArrayDataset, load_datasets, make_loader
from pytorch_utils.data.folders import load_image_folder
from pytorch_utils.data.synthetic import make_synthetic
from pytorch_utils.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    DatasetNotFoundError,
    InputShapeError,
    NonFiniteLossError,
    PytorchUtilsError,
    UnknownNameError,
)
from pytorch_utils.models import create_model
from pytorch_utils.recipes import get_recipe
from pytorch_utils.recipes.runner import check_model_data
from pytorch_utils.train import fit
from pytorch_utils.train.checkpoints import CheckpointManager, load_checkpoint
from pytorch_utils.train.lr_finder import LRFinderSpec
from pytorch_utils.train.state import Callback, TrainConfig
from pytorch_utils.utils import resolve_device


def cli_error(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_unknown_model_and_recipe_list_valid_names(capsys):
    with pytest.raises(UnknownNameError, match="valid models: s10_resnet"):
        create_model("resnet50")
    with pytest.raises(UnknownNameError, match="valid recipes: default"):
        get_recipe("s9")
    assert "valid models" in cli_error(["train", "--model", "vgg", "--data", "synthetic"], capsys)


def test_dataset_path_missing_or_empty(tmp_path, capsys):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_datasets(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError):
        load_image_folder(tmp_path / "empty")
    assert "does not exist" in cli_error(["train", "--data", str(tmp_path / "x.zip"), "--epochs", "1"], capsys)


def test_zip_without_split_class_layout(tmp_path):
    path = tmp_path / "flat.zip"
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    with zipfile.ZipFile(path, "w") as zf:
        zf.write(img, "a.png")
    with pytest.raises(DatasetError, match="train"):
        load_image_folder(path, "train")


def test_mixed_sizes_and_non_rgb(tmp_path):
    for cls, size, mode in (("cat", 32, "RGB"), ("dog", 40, "RGB")):
        (tmp_path / "mixed" / "train" / cls).mkdir(parents=True)
        Image.new(mode, (size, size)).save(tmp_path / "mixed" / "train" / cls / "0.png")
    with pytest.raises(DatasetError, match="size"):
        load_image_folder(tmp_path / "mixed", "train")
    (tmp_path / "gray" / "train" / "cat").mkdir(parents=True)
    Image.new("L", (32, 32)).save(tmp_path / "gray" / "train" / "cat" / "0.png")
    # Grayscale is converted to RGB on load now (issue 12 item 4), no longer refused.
    assert load_image_folder(tmp_path / "gray", "train").images.shape == (1, 32, 32, 3)


def test_labels_out_of_range():
    with pytest.raises(DatasetError, match="12"):
        ArrayDataset(np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 12]), classes=[str(i) for i in range(10)])
    x, y = tensor_data(32, num_classes=4)
    model = TinyNet(num_classes=3)  # labels go up to 3
    with pytest.raises(ConfigError, match="labels range over"):
        fit(model, plain_loader(x, y, 16), None, epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            config=TrainConfig(progress=False))


def test_num_classes_mismatch_between_model_and_data():
    with pytest.raises(ConfigError, match="outputs 100 classes but the data has 10"):
        check_model_data(create_model("strixbee_l2", num_classes=100), 10)


def test_batch_larger_than_dataset_with_drop_last(capsys):
    ds = make_synthetic(20)
    with pytest.raises(ConfigError, match="no batch would be produced"):
        make_loader(ds, 64, train=True)
    err = cli_error(["train", "--model", "strixbee_l1", "--data", "synthetic", "--train-limit", "32",
                     "--batch-size", "64", "--epochs", "1", "--num-workers", "0"], capsys)
    assert "--batch-size 64" in err  # the library says batch_size=64; the CLI names its flag


def test_input_size_the_model_cannot_take():
    with pytest.raises(InputShapeError, match="32"):
        create_model("s10_resnet")(torch.randn(2, 3, 28, 28))
    with pytest.raises(InputShapeError):
        create_model("wrn16_2")(torch.randn(2, 1, 32, 32))


class NaNFromEpoch(nn.Module):
    """Wraps a model; its output turns NaN from a given epoch on (set by the callback below)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.poison = inner, False

    def forward(self, x):
        out = self.inner(x)
        return out * float("nan") if self.poison else out


def test_nan_loss_stops_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    train, test = synthetic_loaders(n=64, test_n=32)
    model = NaNFromEpoch(TinyNet())

    class Poison(Callback):
        def on_epoch_start(self, state):
            state.model.poison = state.epoch + 1 >= 2

    with pytest.raises(NonFiniteLossError, match="epoch 2, step 0"):
        fit(model, train, test, epochs=3, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            callbacks=[CheckpointManager(tmp_path), Poison()], config=TrainConfig(progress=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "epoch-0001.pt"]
    ckpt = load_checkpoint(tmp_path / "epoch-0001.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_lr_finder_range_invalid():
    with pytest.raises(ConfigError, match="start_lr .*end_lr"):
        LRFinderSpec(start_lr=1.0, end_lr=0.1)
    with pytest.raises(ConfigError, match="start_lr"):
        LRFinderSpec(start_lr=-1e-3, end_lr=1.0)


def test_impossible_lr_finder_is_refused_before_the_missing_data_is_noticed(capsys):
    code = main(["train", "--recipe", "s10", "--data", "/nonexistent", "--set",
                 'lr_finder={"start_lr": 1.0, "end_lr": 0.001}'])
    err = capsys.readouterr().err
    assert code == 2 and "start_lr" in err and "end_lr" in err and "nonexistent" not in err
    code = main(["train", "--recipe", "s10", "--data", "/nonexistent", "--set", 'lr_finder={"suggestion": "best"}'])
    assert code == 2 and "suggestion" in capsys.readouterr().err


def test_checkpoint_from_a_different_model(tmp_path, capsys):
    base = ["train", "--data", "synthetic", "--epochs", "1", "--train-limit", "64", "--test-limit", "32",
            "--batch-size", "32", "--num-workers", "0", "--no-progress", "--out-dir", str(tmp_path)]
    assert main([*base, "--model", "strixbee_l1"]) == 0
    capsys.readouterr()
    err = cli_error([*base[:3], "--epochs", "2", *base[5:], "--model", "strixbee_l2", "--resume"], capsys)
    assert "strixbee_l1" in err and "strixbee_l2" in err
    assert load_checkpoint(tmp_path / "checkpoints" / "epoch-0001.pt")["model_name"] == "strixbee_l1"  # untouched


def test_resume_request_with_no_checkpoint(tmp_path, capsys):
    err = cli_error(["train", "--data", "synthetic", "--resume", "--out-dir", str(tmp_path)], capsys)
    assert "resume requested" in err and "no checkpoint" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_request_without_cuda(capsys):
    with pytest.warns(RuntimeWarning, match="falling back to the CPU"):
        assert resolve_device("cuda").type == "cpu"
    with pytest.raises(ConfigError, match="has no CUDA"):
        resolve_device("cuda", fallback=False)
    err = cli_error(["train", "--data", "synthetic", "--device", "cuda", "--strict-device"], capsys)
    assert "no CUDA" in err


def test_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    err = cli_error(["train", "--data", "synthetic", "--epochs", "1", "--out-dir", str(blocker / "run")], capsys)
    assert "not writable" in err


def test_every_library_error_is_a_pytorch_utils_error():
    for exc in (UnknownNameError, DatasetError, DatasetNotFoundError, ConfigError, InputShapeError,
                NonFiniteLossError, CheckpointError):
        assert issubclass(exc, PytorchUtilsError)


def test_bad_user_inputs_of_the_review_are_library_errors(tmp_path):
    from pytorch_utils.errors import ModelArgumentError

    assert issubclass(ModelArgumentError, ConfigError) and issubclass(ModelArgumentError, TypeError)
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "1.jpg").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="1.jpg"):
        load_image_folder(tmp_path, "train")
    with pytest.raises(ConfigError, match="valid|use"):
        resolve_device("gpu0")
    with pytest.raises(ModelArgumentError, match="foo"):
        create_model("s10_resnet", foo=1)
    with pytest.raises(ConfigError, match="train_limit"):
        load_datasets("synthetic", train_limit=0)
