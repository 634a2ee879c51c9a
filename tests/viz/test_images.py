import numpy as np
import pytest
import torch
from viz_helpers import CLASSES, MEAN, STD, normalize

from pytorch_utils.errors import ConfigError
from pytorch_utils.viz import show_augmentations, show_batch
from pytorch_utils.viz.images import denormalize


def test_denormalize_inverts_normalization(uint8_images):
    x = normalize(uint8_images)
    out = denormalize(x, MEAN, STD)
    assert out.shape == uint8_images.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, uint8_images / 255.0, atol=1e-5)
    # single image, numpy input, channels last out
    one = denormalize(x[0].numpy(), MEAN, STD)
    np.testing.assert_allclose(one, uint8_images[0] / 255.0, atol=1e-5)


def test_denormalize_clips_to_unit_range():
    x = torch.full((1, 3, 4, 4), 100.0)
    out = denormalize(x, MEAN, STD)
    assert out.max() == 1.0
    assert denormalize(-x, MEAN, STD).min() == 0.0


def test_denormalize_rejects_mismatched_stats_and_takes_one_value_for_all():
    with pytest.raises(ValueError, match="broadcast"):  # 2 values for 3 channels
        denormalize(torch.zeros(2, 3, 4, 4), (0.5, 0.5), (0.5, 0.5))
    np.testing.assert_allclose(denormalize(torch.zeros(1, 3, 2, 2), 0.5, 0.25), np.full((1, 2, 2, 3), 0.5))


def test_show_batch_from_normalized_and_uint8(tmp_path, check_png, uint8_images, norm_images):
    targets = np.arange(len(uint8_images)) % 10
    path = tmp_path / "sub" / "batch.png"  # parent dir does not exist yet
    fig = show_batch(norm_images, targets, CLASSES, MEAN, STD, ncols=4, max_images=8, title="t", save=path)
    check_png(path, fig)
    axes_with_images = [ax for ax in fig.axes if ax.images]
    assert len(axes_with_images) == 8
    assert [ax.get_title() for ax in axes_with_images] == [CLASSES[t] for t in targets[:8]]
    # The image drawn is the de-normalized one.
    np.testing.assert_allclose(axes_with_images[0].images[0].get_array(), uint8_images[0] / 255.0, atol=1e-5)

    fig2 = show_batch(uint8_images, targets, CLASSES, preds=(targets + 1) % 10, save=tmp_path / "b2.png")
    check_png(tmp_path / "b2.png", fig2)
    titles = [ax.get_title() for ax in fig2.axes if ax.images]
    assert titles[0] == f"true: {CLASSES[0]}\npred: {CLASSES[1]}"  # two labelled lines, not "X / Y"
    assert all(t.startswith("true: ") and "\npred: " in t for t in titles)
    np.testing.assert_allclose(fig2.axes[0].images[0].get_array(), uint8_images[0] / 255.0, atol=1e-6)


def test_show_batch_needs_stats_for_normalized(norm_images):
    with pytest.raises(ConfigError):
        show_batch(norm_images, np.zeros(len(norm_images)), CLASSES)


def test_show_augmentations_rows_and_reproducible(tmp_path, check_png, uint8_images):
    calls = []

    def transform(img):  # random flip + brightness, output normalized CHW like the presets
        calls.append(img.shape)
        x = torch.from_numpy(img).float().div(255).permute(2, 0, 1)
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        x = (x * (0.5 + torch.rand(()))).clamp(0, 1)
        return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)

    targets = np.arange(len(uint8_images)) % 10
    state = torch.get_rng_state()
    path = tmp_path / "aug.png"
    fig = show_augmentations(uint8_images, transform, CLASSES, MEAN, STD, n=3, repeats=4, seed=1, save=path,
                             targets=targets)
    assert torch.equal(torch.get_rng_state(), state)  # caller's RNG untouched
    check_png(path, fig)
    assert len(calls) == 3 * 4
    grid = [ax for ax in fig.axes if ax.images]
    assert len(grid) == 3 * 5
    # First column is the untouched original.
    first = grid[0].images[0].get_array()
    assert any(np.allclose(first, img / 255.0) for img in uint8_images)
    # Same seed, same picture.
    fig_again = show_augmentations(uint8_images, transform, CLASSES, MEAN, STD, n=3, repeats=4, seed=1,
                                   targets=targets)
    again = [ax.images[0].get_array() for ax in fig_again.axes if ax.images]
    for a, b in zip([ax.images[0].get_array() for ax in grid], again):
        np.testing.assert_allclose(a, b)


def test_plots_leave_no_pyplot_figures_open(uint8_images):
    import matplotlib.pyplot as plt

    from pytorch_utils.viz import plot_history

    plt.close("all")
    for _ in range(25):  # pyplot would warn after 20 open figures
        show_batch(uint8_images, np.zeros(len(uint8_images)), CLASSES, max_images=4)
        plot_history([{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}])
    assert plt.get_fignums() == []


def test_names_from_files_are_drawn_as_written_never_as_mathtext(tmp_path, norm_images):
    """Between two `$` matplotlib parses mathtext: a class "a$b$c" came out in italics, "$\\frac$" crashed the save."""
    from matplotlib.cbook import is_math_text
    from matplotlib.text import Text

    from pytorch_utils.viz import (
        confusion_matrix,
        most_confused_pairs,
        per_class_report,
        plot_confusion_matrix,
        plot_history,
        plot_misclassified,
        plot_per_class_accuracy,
    )

    names, targets, preds = ["a$b$c", "$\\frac$", "plain"], torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 2])
    cm = confusion_matrix(targets, preds, 3)
    history = [{"epoch": e, "train_loss": 1.0 / e, "phase": phase} for e, phase in ((1, "$\\frac$"), (2, "a$b$c"))]
    figs = [show_batch(norm_images[:4], targets, names, MEAN, STD, preds=preds, save=tmp_path / "batch.png"),
            plot_misclassified(norm_images[:4], targets, preds, names, MEAN, STD, save=tmp_path / "wrong.png"),
            plot_confusion_matrix(cm, names, save=tmp_path / "cm.png"),
            plot_per_class_accuracy(cm, names, save=tmp_path / "acc.png"),
            plot_history(history, save=tmp_path / "curves.png")]
    texts = [t.get_text() for fig in figs for t in fig.findobj(Text)]
    assert not [t for t in texts if is_math_text(t)]
    assert sum("a\\$b\\$c" in t for t in texts) >= 5 and "phase: a\\$b\\$c" in texts
    # Tables and files keep the names as written.
    assert [r["class"] for r in per_class_report(targets, preds, names)][:3] == names
    assert most_confused_pairs(cm, names)[0] == ("a$b$c", "$\\frac$", 1)
