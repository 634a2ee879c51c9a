import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from viz_helpers import CLASSES, MEAN, STD, leftover_hooks, model_flags, partly_frozen

from pytorch_utils.errors import ConfigError
from pytorch_utils.train.loop import evaluate
from pytorch_utils.viz import plot_misclassified, select_misclassified
from pytorch_utils.viz.misclassified import find_misclassified

# index:       0  1  2  3  4  5  6  7
TARGETS = np.array([0, 1, 2, 3, 0, 1, 2, 3])
PREDS = np.array([0, 2, 2, 1, 3, 1, 0, 3])  # wrong: 1, 3, 4, 6
PROBS = np.full((8, 4), 0.1)
PROBS[np.arange(8), TARGETS] = [0.7, 0.05, 0.7, 0.20, 0.01, 0.7, 0.30, 0.7]  # true-class prob
PROBS[np.arange(8), PREDS] = np.where(PREDS == TARGETS, PROBS[np.arange(8), PREDS], 0.6)


def test_find_misclassified_first():
    assert find_misclassified(PREDS, TARGETS).tolist() == [1, 3, 4, 6]
    assert find_misclassified(torch.tensor(PREDS), torch.tensor(TARGETS), k=2).tolist() == [1, 3]
    assert find_misclassified(TARGETS, TARGETS).tolist() == []


def test_find_misclassified_worst_by_prob_and_loss():
    # lowest true-class probability first: 4 (0.01), 1 (0.05), 3 (0.20), 6 (0.30)
    assert find_misclassified(PREDS, TARGETS, probs=PROBS, order="worst").tolist() == [4, 1, 3, 6]
    losses = np.array([9.0, 1.0, 9.0, 3.0, 2.0, 9.0, 5.0, 9.0])  # huge losses on right items must not leak in
    assert find_misclassified(PREDS, TARGETS, losses=losses, order="worst", k=3).tolist() == [6, 3, 4]


def test_find_misclassified_bad_input():
    with pytest.raises(ConfigError):
        find_misclassified(PREDS, TARGETS, order="worst")  # nothing to rank by
    with pytest.raises(ValueError):  # numpy refuses to compare arrays of different lengths
        find_misclassified(PREDS[:3], TARGETS)
    with pytest.raises(ConfigError):
        find_misclassified(PREDS, TARGETS, order="best")


def test_plot_misclassified_titles_and_grid(tmp_path, check_png, norm_images):
    imgs = norm_images[:8]
    path = tmp_path / "mis.png"
    fig = plot_misclassified(imgs, TARGETS, PREDS, CLASSES[:4], MEAN, STD, probs=PROBS, k=3, save=path)
    check_png(path, fig)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert titles == ["true: airplane\npred: cat (60%)", "true: automobile\npred: bird (60%)",
                      "true: cat\npred: automobile (60%)"]
    # k larger than the number of mistakes: exactly the 4 wrong ones; grid sized from k (2x2 here).
    fig = plot_misclassified(imgs, TARGETS, PREDS, None, MEAN, STD, k=16, order="first")
    assert len([ax for ax in fig.axes if ax.images]) == 4 and len(fig.axes) == 4
    assert fig.axes[0].get_title() == "true: 1\npred: 2"


def test_plot_misclassified_many_classes_and_none_wrong(tmp_path, check_png, norm_images):
    n = len(norm_images)
    targets = np.arange(n) * 7 % 100
    preds = (targets + 1) % 100
    names = [f"class_{i}" for i in range(100)]
    fig = plot_misclassified(norm_images, targets, preds, names, MEAN, STD, k=10, ncols=5,
                             save=tmp_path / "m100.png")
    check_png(tmp_path / "m100.png", fig)
    assert len(fig.axes) == 10
    fig = plot_misclassified(norm_images, targets, targets, names, MEAN, STD, save=tmp_path / "none.png")
    assert (tmp_path / "none.png").exists() and not any(ax.images for ax in fig.axes)


def misclassified_from_model(model, loader, k):
    """The evaluation happens outside viz; viz selects from its result."""
    return select_misclassified(evaluate(model, loader, return_outputs=True, return_inputs=True), k=k)


def test_misclassified_from_an_evaluation(tiny_model, norm_images):
    targets = torch.arange(len(norm_images)) % 10
    loader = DataLoader(TensorDataset(norm_images, targets), batch_size=5)
    tiny_model.train()
    out = misclassified_from_model(tiny_model, loader, k=4)
    assert tiny_model.training  # mode restored
    with torch.no_grad():
        tiny_model.eval()
        logits = tiny_model(norm_images)
        tiny_model.train()
    preds = logits.argmax(1)
    wrong = (preds != targets).nonzero().flatten()
    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    expected = wrong[losses[wrong].argsort(descending=True)][:4]
    assert out["indices"].tolist() == expected.tolist()
    assert torch.equal(out["preds"], preds[expected]) and torch.equal(out["targets"], targets[expected])
    torch.testing.assert_close(out["images"], norm_images[expected])
    assert out["probs"].shape == (len(expected), 10)
    assert out["num_wrong"] == len(wrong) and out["samples"] == len(targets)


def test_misclassified_from_an_evaluation_keeps_per_module_modes(tiny_model, norm_images):
    loader = DataLoader(TensorDataset(norm_images, torch.arange(len(norm_images)) % 10), batch_size=5)
    model = partly_frozen(tiny_model, tiny_model.features[4])
    before = model_flags(model)
    misclassified_from_model(model, loader, k=4)
    assert model_flags(model) == before  # the frozen BN stays in eval mode, the rest in train mode
    assert leftover_hooks(model) == []
