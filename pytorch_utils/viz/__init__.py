"""Plots for training runs: results in (``evaluate``'s dict, a history, an LR-finder result; a model only for
GradCAM), a pyplot-free matplotlib ``Figure`` out, saved as PNG with ``save=path`` (see ``images.py``)."""
from pytorch_utils.viz.confusion import (confusion_matrix, most_confused_pairs, per_class_accuracy, per_class_csv,
                                         per_class_markdown, per_class_report, plot_confusion_matrix,
                                         plot_per_class_accuracy)
from pytorch_utils.viz.curves import clean_history, plot_history
from pytorch_utils.viz.gradcam import conv_layer_names, gradcam, overlay_heatmap, plot_gradcam, resolve_target_layer
from pytorch_utils.viz.images import SAVE_DPI, denormalize, show_augmentations, show_batch
from pytorch_utils.viz.lr_finder import plot_lr_finder
from pytorch_utils.viz.misclassified import find_misclassified, plot_misclassified, select_misclassified
from pytorch_utils.viz.report import ReportData, ReportSettings, report, show_report

__all__ = [
    "SAVE_DPI", "denormalize", "show_batch", "show_augmentations", "plot_history", "clean_history",
    "find_misclassified", "plot_misclassified", "select_misclassified", "confusion_matrix", "plot_confusion_matrix",
    "per_class_accuracy", "plot_per_class_accuracy", "most_confused_pairs", "per_class_report",
    "per_class_markdown", "per_class_csv", "plot_lr_finder", "gradcam", "plot_gradcam", "resolve_target_layer",
    "conv_layer_names", "overlay_heatmap", "report", "show_report", "ReportData",
    "ReportSettings",
]
