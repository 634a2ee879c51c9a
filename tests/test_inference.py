"""load_run / predict on a tiny trained run: metadata saved, EMA weights, image kinds, resizing, clear errors."""
import functools
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from pytorch_utils import load_run, predict
from pytorch_utils.data.transforms import test_preset
from pytorch_utils.errors import CheckpointError, ConfigError, DatasetError, UnknownNameError
from pytorch_utils.inference import as_loaded_run, load_images
from pytorch_utils.recipes import run_recipe
from pytorch_utils.train.loop import evaluate

TINY = dict(data="synthetic", epochs=1, train_limit=64, test_limit=32, batch_size=16, num_workers=0, progress=False,
            lr_finder=None)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = run_recipe("strixbee_l1", out_dir=out, device="cpu", ema_decay=0.9, **TINY)
    return out, result


def test_checkpoint_and_run_json_carry_what_predict_needs(run):
    out, result = run
    saved = json.loads((out / "run.json").read_text())
    ckpt = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    for config in (saved, ckpt["config"]):
        assert config["classes"] == list(result.classes)
        assert config["mean"] == pytest.approx(result.mean) and config["std"] == pytest.approx(result.std)
        assert config["input_size"] == [32, 32]
    assert [r["epoch"] for r in json.loads((out / "history.json").read_text())] == [1]
    assert (out / "history.csv").read_text().splitlines()[0].startswith("epoch,")


def test_load_run_gives_the_ema_weights_and_the_metadata(run):
    out, result = run
    loaded = load_run(out)
    assert loaded.weights == "ema" and loaded.source.name == "best.pt"
    assert loaded.classes == list(result.classes) and loaded.input_size == (32, 32)
    assert loaded.recipe["model"] == "strixbee_l1" and not loaded.model.training
    for (name, a), b in zip(loaded.model.state_dict().items(), result.eval_model.state_dict().values()):
        assert torch.equal(a, b.cpu()), name  # the EMA copy, not the raw model
    assert load_run(out, which="last").source.name == "epoch-0001.pt"


def test_predict_matches_the_test_transform_and_the_model(run):
    out, result = run
    loaded = load_run(out)
    images = result.test_loader.dataset.images[:5]  # uint8 (5, 32, 32, 3)
    preds = predict(loaded, images, top_k=3)
    tf = test_preset(result.mean, result.std)
    with torch.no_grad():
        probs = torch.softmax(loaded.model(torch.stack([tf(im) for im in images])), dim=1)
    assert len(preds) == 5
    for p, row in zip(preds, probs):
        top = row.topk(3)
        assert p["index"] == top.indices.tolist() and p["probs"] == pytest.approx(top.values.tolist(), abs=1e-6)
        assert p["classes"] == [loaded.classes[i] for i in p["index"]]
        assert p["probs"] == sorted(p["probs"], reverse=True) and 0 <= p["probs"][-1] <= p["probs"][0] <= 1
    # The same images as files (PNG: lossless), as PIL images and through the run folder give the same answer.
    assert predict(out, [Image.fromarray(im) for im in images], top_k=3) == [
        {**p, "input": f"image {i}"} for i, p in enumerate(preds)]
    flip = predict(loaded, images[:2], top_k=1, tta="flip")
    assert len(flip) == 2 and 0 < flip[0]["probs"][0] <= 1


def test_predict_on_files_of_other_sizes_and_modes_and_a_folder(run, tmp_path, caplog):
    out, _ = run
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "big.jpg")
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), mode="L").save(tmp_path / "gray.png")
    Image.fromarray(rng.integers(0, 256, (40, 30, 4), dtype=np.uint8), mode="RGBA").save(tmp_path / "rgba.png")
    (tmp_path / "notes.txt").write_text("not an image")  # ignored in a folder: not an image suffix
    with caplog.at_level(logging.INFO, logger="pytorch_utils"):
        preds = predict(out, tmp_path, top_k=2)
    assert [p["input"].rsplit("/", 1)[-1] for p in preds] == ["big.jpg", "gray.png", "rgba.png"]
    assert all(len(p["classes"]) == 2 for p in preds)
    assert "resized 2 of 3 image(s)" in caplog.text and "to the training size 32x32" in caplog.text
    single = predict(out, str(tmp_path / "gray.png"), top_k=2)[0]
    assert single["index"] == preds[1]["index"]
    assert single["probs"] == pytest.approx(preds[1]["probs"], abs=1e-6)  # float32: batch of 1 vs 3


def test_clear_errors(run, tmp_path):
    out, _ = run
    for folder, problem in ((tmp_path, "holds no training run"), (tmp_path / "absent", "absent' does not exist")):
        with pytest.raises(CheckpointError, match=problem):
            load_run(folder)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="cannot decode image .*broken.jpg"):
        predict(out, bad)
    (tmp_path / "x.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(DatasetError, match="cannot decode image .*x.jpg .*accepted formats: JPEG, PNG"):
        predict(out, tmp_path / "x.jpg")  # PostScript is refused by name: no Ghostscript is started
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="cannot decode image .*missing.png"):
        predict(out, [tmp_path / "missing.png"])
    with pytest.raises(DatasetError, match="holds no images"):
        predict(out, tmp_path / "empty")
    with pytest.raises(ConfigError, match="top_k must be"):
        predict(out, np.zeros((32, 32, 3), np.uint8), top_k=0)
    with pytest.raises(ConfigError, match="bare model"):
        predict(torch.nn.Linear(2, 2), np.zeros((32, 32, 3), np.uint8))


def test_a_checkpoint_of_another_model_is_refused(run, tmp_path):
    out, _ = run
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    ckpt = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    ckpt["config"]["recipe"]["model"] = "strixbee_l2"
    torch.save(ckpt, other / "checkpoints" / "best.pt")
    with pytest.raises(CheckpointError, match="strixbee_l1.*strixbee_l2|strixbee_l2.*strixbee_l1"):
        load_run(other)


def test_a_run_without_metadata_is_refused_saying_how_to_redo_it(run, tmp_path):
    out, _ = run
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    ckpt = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    for key in ("classes", "mean", "std", "input_size"):
        del ckpt["config"][key]
    torch.save(ckpt, old / "checkpoints" / "best.pt")
    with pytest.raises(CheckpointError, match="lacks classes, mean, std, input_size .*train the run again") as info:
        load_run(old)
    assert "\n" not in str(info.value)


def test_predict_tta_equals_evaluates_tta(run):
    """One TTA: predict(tta=...) gives the probabilities evaluate(tta=...) gives on the same normalized batch."""
    out, result = run
    loaded = load_run(out)
    images = result.test_loader.dataset.images[:6]
    batch = torch.stack([test_preset(result.mean, result.std)(im) for im in images])
    loader = DataLoader(TensorDataset(batch, torch.zeros(len(batch), dtype=torch.long)), batch_size=4)
    n = len(loaded.classes)
    for mode in ("flip", "flip_translate"):
        want = evaluate(loaded.model, loader, tta=mode, return_outputs=True)["probs"]
        for got in (predict(loaded, images, top_k=n, tta=mode), predict(loaded, batch, top_k=n, tta=mode)):
            probs = torch.zeros(len(images), n)
            for i, p in enumerate(got):
                probs[i, p["index"]] = torch.tensor(p["probs"])
            assert torch.allclose(probs, want, atol=1e-6)
    with pytest.raises(UnknownNameError, match="unknown tta 'mirror'"):
        predict(loaded, images, tta="mirror")


def test_16_bit_images_and_run_results_are_read_as_the_run_did(run, tmp_path):
    out, result = run
    Image.fromarray(np.full((32, 32), 30000, dtype=np.uint16)).save(tmp_path / "deep.png")
    ((_, image),) = load_images(tmp_path / "deep.png")
    assert image.shape == (32, 32, 3) and abs(int(image[0, 0, 0]) - 117) <= 1  # 30000 / 257, not clipped to 255
    assert as_loaded_run(result).input_size == load_run(out).input_size == (32, 32)


# ---- files from strangers (issue 20): code runs only on opt-in, metadata is checked before anything is built ----

@pytest.fixture(scope="module")
def script_file(run, tmp_path_factory):
    from pytorch_utils import export

    return export(run[0], tmp_path_factory.mktemp("export") / "model.pt", format="torchscript")


def test_torchscript_loads_only_with_trust_code(run, script_file, monkeypatch):
    images = np.zeros((2, 32, 32, 3), np.uint8)
    trusted = predict(script_file, images, top_k=2, trust_code=True)
    assert load_run(script_file, trust_code=True).weights == "torchscript"
    loads = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loads.append(a))
    for attempt in (lambda: load_run(script_file), lambda: predict(script_file, images)):
        with pytest.raises(CheckpointError, match="is TorchScript, a program that runs when loaded: pass "
                                                  "trust_code=True .*run folder.*ONNX") as info:
            attempt()
        assert "\n" not in str(info.value)
    assert loads == []  # refused before the file is opened as a program
    assert [p["index"] for p in predict(run[0], images, top_k=2)] == [p["index"] for p in trusted]


def _bad_checkpoint(run, tmp_path, change):
    ckpt = torch.load(run[0] / "checkpoints" / "best.pt", weights_only=True)
    change(ckpt)
    (tmp_path / "bad" / "checkpoints").mkdir(parents=True, exist_ok=True)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)  # torch.save recurses; torch.load(weights_only=True) reads any depth
    try:
        torch.save(ckpt, tmp_path / "bad" / "checkpoints" / "best.pt")
    finally:
        sys.setrecursionlimit(limit)
    return tmp_path / "bad"


def _wide(**kwargs):
    """An attacker's change: the checkpoint (name and config) claims a Wide ResNet with ``kwargs``."""
    return lambda c: (c.update(model_name="wide_resnet"), c["config"]["recipe"].update(model="wide_resnet",
                                                                                      model_kwargs=kwargs))


@pytest.mark.parametrize("change, message", [
    (_wide(depth=1000, widen_factor=100), "'depth' must be >= 10 and <= 40, got 1000"),
    (_wide(depth=40, widen_factor=20), "'wide_resnet'.*does not fit its weights"),
    (lambda c: c["config"]["recipe"].update(model_kwargs=[[[1]]]), "model cannot be built"),
    (lambda c: c["config"].update(input_size=[60000, 60000]), "input_size of 2 integers from 8 to 1024"),
    (lambda c: c["config"].update(classes=["cat", "dog"]), "2 class names for weights with 10 outputs"),
    (lambda c: c["config"].update(classes=list(range(10))), "classes that are not a list of names"),
    (lambda c: c["config"].update(mean=[0.5, float("nan"), 0.5]), "mean and std of 3 finite numbers"),
    (lambda c: c["config"].update(std=[0.5, 0.0, 0.5]), "std > 0"),
    (lambda c: c["config"].update(mean=[125.3, 123.0, 113.9]), r"on the \[0, 1\] scale"),  # named here, not later
    (lambda c: c["config"]["recipe"].update(description={(1, 2): 3}), "recipe JSON cannot hold"),  # for export
    (lambda c: c.update(config=[1, 2]), "lacks classes"),
    (lambda c: c["config"]["recipe"].update(model=functools.reduce(lambda a, _: [a], range(5000), [])),
     "recipe JSON cannot hold \\(too deep"),
])
def test_a_checkpoint_config_is_checked_before_any_model_is_built(run, tmp_path, monkeypatch, change, message):
    import pytorch_utils.models as models

    built, real = [], models.create_model
    monkeypatch.setattr(models, "create_model", lambda *a, **k: built.append(torch.empty(0).device.type) or
                        real(*a, **k))
    with pytest.raises(CheckpointError, match=f"checkpoint .*best.pt.*{message}") as info:
        load_run(_bad_checkpoint(run, tmp_path, change))
    assert "\n" not in str(info.value) and set(built) <= {"meta"}  # nothing built at full size


@pytest.mark.parametrize("meta, message", [
    ('[' * 100000 + ']' * 100000, "not readable JSON"),
    ("{}" + " " * 2**20, "not readable JSON of at most 1,048,576 bytes"),  # valid JSON, but longer than export writes
    ("[1, 2]", "lacks classes"),
    ({"classes": functools.reduce(lambda a, _: [a], range(500), ["x"])}, "classes that are not a list of names"),
    ({"input_size": [0, 0]}, "input_size of 2 integers from 8 to 1024"),
    ({"input_size": [60000, 60000]}, "input_size of 2 integers from 8 to 1024"),
    ({"input_size": "32"}, "input_size of 2 integers"),
    ({"mean": [0.5, 0.5]}, "mean and std of 3 finite numbers"),
    ({"mean": [-5, -5, -5]}, r"on the \[0, 1\] scale"),
    ({"std": [63.0, 62.1, 66.7]}, r"on the \[0, 1\] scale"),
    ({"classes": ["cat", "dog"]}, "2 class names for weights with 10 outputs"),
])
def test_malformed_export_metadata_is_one_line(script_file, tmp_path, meta, message):
    import shutil

    path = Path(shutil.copy(script_file, tmp_path / "m.pt"))
    good = json.loads(Path(f"{script_file}.json").read_text())
    Path(f"{path}.json").write_text(meta if isinstance(meta, str) else json.dumps({**good, **meta}))
    with pytest.raises(CheckpointError, match=f"metadata .*m.pt.json.*{message}") as info:
        load_run(path, trust_code=True)
    assert "\n" not in str(info.value) and len(str(info.value)) < 1000


def test_predict_reads_a_folder_one_image_at_a_time(run, tmp_path, monkeypatch):
    import weakref

    import pytorch_utils.inference as inference

    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    alive, real = [], inference.open_image

    def spy(path):
        image = real(path)
        assert sum(ref() is not None for ref in alive) == 0  # every earlier full-size image already released
        alive.append(weakref.ref(image))
        return image

    monkeypatch.setattr(inference, "open_image", spy)
    preds = predict(run[0], tmp_path, top_k=1, batch_size=4)
    assert len(alive) == len(preds) == 6 and [p["input"] for p in preds] == sorted(p["input"] for p in preds)


@pytest.mark.parametrize("size", [[10**400, 32], [32, -10**400]])
def test_huge_integers_in_metadata_are_refused_in_one_line(run, script_file, tmp_path, size):
    import shutil

    path = Path(shutil.copy(script_file, tmp_path / "m.pt"))
    Path(f"{path}.json").write_text(json.dumps({**json.loads(Path(f"{script_file}.json").read_text()),
                                                "input_size": size, "mean": [10**400, 0.5, 0.5]}))
    with pytest.raises(CheckpointError, match="metadata .*m.pt.json.*mean and std of 3 finite") as info:
        load_run(path, trust_code=True)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match=r"best.pt.*input_size of 2 integers") as info:
        load_run(_bad_checkpoint(run, tmp_path, lambda c: c["config"].update(input_size=size)))
    assert "\n" not in str(info.value)


def test_logits_wider_than_the_class_names_are_one_line(run, tmp_path):
    loaded = load_run(run[0])
    loaded.classes, loaded.source = ["cat", "dog"], tmp_path / "m.onnx"  # an ONNX file left its output width open
    with pytest.raises(CheckpointError, match=r"m.onnx' gives logits of shape \(1, 10\) for 2 class names") as info:
        predict(loaded, np.zeros((1, 32, 32, 3), np.uint8))
    assert "\n" not in str(info.value)


def test_a_fifo_is_never_opened(run, tmp_path, monkeypatch):
    import os

    import pytorch_utils.inference as inference

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "b.png")  # opening it would block until a writer comes
    real = inference.open_image
    monkeypatch.setattr(inference, "open_image", lambda p: real(p) if Path(p).name != "b.png" else pytest.fail(p))
    assert [p["input"] for p in predict(run[0], tmp_path, top_k=1)] == [str(tmp_path / "a.png")]
    with pytest.raises(DatasetError, match=r"b.png. is no regular file \(a FIFO") as info:
        predict(run[0], tmp_path / "b.png")
    assert "\n" not in str(info.value)


# ---- runs that survive Colab (issue 21) ----------------------------------------------------------------------------

def test_uint8_tensors_from_torchvision_read_image_are_images(run, tmp_path):
    from torchvision.io import read_image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), mode="L").save(tmp_path / "g.png")
    color, gray = read_image(str(tmp_path / "a.png")), read_image(str(tmp_path / "g.png"))
    assert color.shape == (3, 40, 30) and gray.shape == (1, 32, 32) and color.dtype == torch.uint8
    want = predict(run[0], [tmp_path / "a.png", tmp_path / "g.png"], top_k=3)
    strip = [{k: v for k, v in p.items() if k != "input"} for p in want]
    assert [{k: v for k, v in p.items() if k != "input"} for p in predict(run[0], [color, gray], top_k=3)] == strip
    batch = predict(run[0], torch.stack([color[:, :32, :30]] * 2), top_k=3)  # (N, 3, H, W)
    assert [p["input"] for p in batch] == ["image 0.0", "image 0.1"] and batch[0]["index"] == batch[1]["index"]


def test_a_diverged_model_is_refused_instead_of_nan_percentages(run):
    loaded = load_run(run[0])
    with torch.no_grad():
        next(loaded.model.parameters()).fill_(float("nan"))
    with pytest.raises(CheckpointError, match=r"best.pt' gives NaN or infinite logits \(its training diverged\)"):
        predict(loaded, np.zeros((2, 32, 32, 3), np.uint8))


def test_an_unreadable_file_in_a_folder_is_skipped_and_named(run, tmp_path, caplog):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg")
    with caplog.at_level(logging.WARNING, logger="pytorch_utils"):
        preds = predict(run[0], tmp_path, top_k=1)
    assert [p["input"] for p in preds] == [str(tmp_path / "a.png")]
    assert "skipped: cannot decode image" in caplog.text and "b.jpg" in caplog.text
    (tmp_path / "a.png").unlink()
    with pytest.raises(DatasetError, match="no image could be read"):
        predict(run[0], tmp_path)
    with pytest.raises(DatasetError, match="cannot decode image .*b.jpg"):  # a file named on its own still fails
        predict(run[0], [tmp_path / "b.jpg"])
