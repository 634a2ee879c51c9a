import numpy as np
import pytest
import torch

from pytorch_utils.errors import ConfigError
from pytorch_utils.viz import (confusion_matrix, most_confused_pairs, per_class_accuracy, plot_confusion_matrix,
                               plot_per_class_accuracy)

TARGETS = [0, 0, 0, 1, 1, 2, 2, 2, 2, 1]
PREDS = [0, 1, 1, 1, 2, 2, 0, 0, 2, 1]
# hand-computed: rows true, cols pred
EXPECTED = np.array([[1, 2, 0],
                     [0, 2, 1],
                     [2, 0, 2]])
NAMES = ["cat", "dog", "frog"]


def test_confusion_matrix_counts():
    cm = confusion_matrix(TARGETS, PREDS, 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, EXPECTED)
    np.testing.assert_array_equal(confusion_matrix(torch.tensor(TARGETS), torch.tensor(PREDS), 4)[:3, :3], EXPECTED)
    assert confusion_matrix([], [], 3).sum() == 0


def test_confusion_matrix_rejects_bad_labels():
    with pytest.raises(ConfigError):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ConfigError):
        confusion_matrix([0, 1], [0], 3)


def test_per_class_accuracy_values():
    acc = per_class_accuracy(EXPECTED)
    np.testing.assert_allclose(acc, [100 / 3, 200 / 3, 50.0])
    acc = per_class_accuracy(np.array([[3, 1], [0, 0]]))  # class without samples -> NaN
    assert acc[0] == 75.0 and np.isnan(acc[1])


def test_most_confused_pairs_order():
    pairs = most_confused_pairs(EXPECTED, NAMES)
    # (cat->dog 2) and (frog->cat 2) tie: (true, pred) index order; diagonal and zeros excluded.
    assert pairs == [("cat", "dog", 2), ("frog", "cat", 2), ("dog", "frog", 1)]
    assert most_confused_pairs(EXPECTED, NAMES, k=1) == [("cat", "dog", 2)]
    assert most_confused_pairs(np.eye(3, dtype=np.int64) * 5, NAMES) == []


def test_plot_confusion_matrix_counts_and_normalized(tmp_path, check_png):
    path = tmp_path / "cm" / "cm.png"
    fig = plot_confusion_matrix(EXPECTED, NAMES, save=path)
    check_png(path, fig)
    ax = fig.axes[0]
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == sorted(str(v) for v in EXPECTED.flatten())
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    fig = plot_confusion_matrix(EXPECTED, NAMES, normalize="true", save=tmp_path / "cmn.png")
    check_png(tmp_path / "cmn.png", fig)
    assert "0.67" in [t.get_text() for t in fig.axes[0].texts]


def test_plot_confusion_matrix_many_classes_no_annotations(tmp_path, check_png):
    rng = np.random.default_rng(0)
    t = rng.integers(0, 100, 3000)
    p = np.where(rng.random(3000) < 0.6, t, rng.integers(0, 100, 3000))
    cm = confusion_matrix(t, p, 100)
    fig = plot_confusion_matrix(cm, [f"c{i}" for i in range(100)], save=tmp_path / "cm100.png")
    check_png(tmp_path / "cm100.png", fig)
    assert fig.axes[0].texts == [] or len(fig.axes[0].texts) == 0


def test_plot_into_given_axes_returns_its_figure(tmp_path):
    from matplotlib.figure import Figure

    outer = Figure(figsize=(8, 4))
    ax1, ax2 = outer.subplots(1, 2)
    assert plot_confusion_matrix(EXPECTED, NAMES, ax=ax1) is outer
    assert plot_per_class_accuracy(EXPECTED, NAMES, ax=ax2, save=tmp_path / "both.png") is outer
    assert (tmp_path / "both.png").exists()


def test_plot_per_class_accuracy_values(tmp_path, check_png):
    path = tmp_path / "pca.png"
    fig = plot_per_class_accuracy(EXPECTED, NAMES, save=path)
    check_png(path, fig)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, [100 / 3, 200 / 3, 50.0])
    assert [t.get_text() for t in ax.texts] == ["33.3", "66.7", "50.0"]
