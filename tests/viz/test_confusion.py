import numpy as np
import pytest
import torch

from pytorch_utils.viz import (
    confusion_matrix,
    most_confused_pairs,
    per_class_report,
    plot_confusion_matrix,
    plot_per_class_accuracy,
)
from pytorch_utils.viz.confusion import per_class_accuracy

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
    with pytest.raises(ValueError):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError):
        confusion_matrix([0, -1], [0, 1], 3)
    with pytest.raises(ValueError):
        confusion_matrix([0, 1], [0], 3)


@pytest.mark.parametrize("num_classes", [3, 7])
def test_confusion_matrix_equals_sklearn(num_classes):
    """Pinned to scikit-learn's confusion_matrix (also for classes without samples or predictions)."""
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    rng = np.random.default_rng(num_classes)
    t, p = rng.integers(0, 3, 500), rng.integers(0, num_classes, 500)
    np.testing.assert_array_equal(confusion_matrix(t, p, num_classes),
                                  sk_confusion_matrix(t, p, labels=np.arange(num_classes)))


def test_per_class_report_equals_sklearn_classification_report():
    """Pinned to scikit-learn's classification_report (per class, macro and weighted averages)."""
    from sklearn.metrics import classification_report

    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, 300)
    p = np.where(rng.random(300) < 0.6, t, rng.integers(0, 4, 300))
    p[p == 3] = 2  # a class that is never predicted: sklearn's zero_division=0
    theirs = classification_report(t, p, labels=range(4), target_names=NAMES + ["bird"], output_dict=True,
                                   zero_division=0)
    for row in per_class_report(t, p, NAMES + ["bird"]):
        ref = theirs[row["class"]]
        assert row["support"] == ref["support"]
        np.testing.assert_allclose([row["precision"], row["recall"], row["f1"]],
                                   [ref["precision"], ref["recall"], ref["f1-score"]], rtol=1e-12)


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


def _cm100(seed=0):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 100, 5000)
    p = np.where(rng.random(5000) < 0.6, t, rng.integers(0, 100, 5000))
    return confusion_matrix(t, p, 100)


NAMES100 = [f"class_{i}" for i in range(100)]


def test_confusion_matrix_many_classes_hides_diagonal(tmp_path, check_png):
    cm = _cm100()
    fig = plot_confusion_matrix(cm, NAMES100, save=tmp_path / "cm100.png")
    check_png(tmp_path / "cm100.png", fig)
    ax = fig.axes[0]
    mesh = ax.collections[0]
    data = np.ma.getmaskarray(mesh.get_array()).reshape(100, 100)
    assert data[np.eye(100, dtype=bool)].all() and not data[~np.eye(100, dtype=bool)].any()  # diagonal masked
    off = cm[~np.eye(100, dtype=bool)]
    assert mesh.norm.vmax == off.max() < cm.diagonal().max()  # the scale spans the mistakes only
    assert "diagonal" in ax.get_title() and "hidden" in ax.get_title()
    # normalized: off-diagonal fractions set the scale, not 1.0
    fig = plot_confusion_matrix(cm, NAMES100, normalize="true")
    assert fig.axes[0].collections[0].norm.vmax < 0.2
    # explicit opt-out, and small matrices keep their diagonal by default
    fig = plot_confusion_matrix(cm, NAMES100, hide_diagonal=False)
    assert fig.axes[0].collections[0].norm.vmax == cm.max() and "hidden" not in fig.axes[0].get_title()
    fig = plot_confusion_matrix(EXPECTED, NAMES)
    assert not np.ma.getmaskarray(fig.axes[0].collections[0].get_array()).any()


def test_count_colorbar_has_integer_ticks():
    fig = plot_confusion_matrix(EXPECTED, NAMES)  # counts 0..2: the default locator gives 0.25 steps
    fig.canvas.draw()
    cbar = fig.axes[0].collections[0].colorbar
    ticks = cbar.get_ticks()
    assert len(ticks) >= 2 and np.all(np.equal(np.mod(ticks, 1), 0))
    fig = plot_confusion_matrix(EXPECTED, NAMES, normalize="true")
    assert not np.all(np.equal(np.mod(fig.axes[0].collections[0].colorbar.get_ticks(), 1), 0))  # fractions stay


def test_per_class_accuracy_100_classes_horizontal_sorted(tmp_path, check_png):
    cm = _cm100()
    acc = per_class_accuracy(cm)
    fig = plot_per_class_accuracy(cm, NAMES100, save=tmp_path / "pca100.png")
    check_png(tmp_path / "pca100.png", fig)
    ax = fig.axes[0]
    widths = [p.get_width() for p in ax.patches]
    assert len(widths) == 100 and widths == sorted(widths)  # horizontal, weakest first
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == NAMES100[int(np.argmin(acc))] and sorted(labels) == sorted(NAMES100)
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # first row on top
    assert fig.get_figheight() >= 0.15 * 100  # grows with the class count: one readable row per class
    assert min(t.get_fontsize() for t in ax.get_yticklabels()) >= 6
    assert len(ax.texts) == 100  # a value on every bar
    fig = plot_per_class_accuracy(cm, NAMES100, order="index")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES100
    np.testing.assert_allclose([p.get_width() for p in ax.patches], acc)
    with pytest.raises(KeyError):
        plot_per_class_accuracy(cm, NAMES100, order="alphabetical")


def test_per_class_accuracy_sorted_few_classes_and_labels_above_line():
    fig = plot_per_class_accuracy(EXPECTED, NAMES, order="sorted")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "frog", "dog"]
    assert [t.get_text() for t in ax.texts] == ["33.3", "50.0", "66.7"]
    line = next(l for l in ax.get_lines() if l.get_label().startswith("overall"))
    # The value labels sit on a white box above the dashed overall line, so it never strikes through them.
    for text in ax.texts:
        box = text.get_bbox_patch()
        assert box is not None and box.get_facecolor()[:3] == (1.0, 1.0, 1.0)
        assert text.get_zorder() > line.get_zorder()
    assert all(p.get_zorder() > line.get_zorder() for p in ax.patches)
    # The overall value is in the title: a legend in any corner would cover some bar's label.
    assert ax.get_legend() is None and "overall 50.00%" in ax.get_title()  # 5 of 10 right
