"""Plots for training runs: results in (``evaluate``'s dict, a history, an LR-finder result; a model only for
GradCAM), a pyplot-free matplotlib ``Figure`` out, saved as PNG with ``save=path`` (see ``images.py``)."""
from pytorch_utils.viz.confusion import (
                                         confusion_matrix,
                                         most_confused_pairs,
                                         per_class_report,
                                         plot_confusion_matrix,
                                         plot_per_class_accuracy,
)
from pytorch_utils.viz.curves import plot_history
from pytorch_utils.viz.gradcam import gradcam, plot_gradcam
from pytorch_utils.viz.images import show_augmentations, show_batch
from pytorch_utils.viz.lr_finder import plot_lr_finder
from pytorch_utils.viz.misclassified import plot_misclassified, select_misclassified
from pytorch_utils.viz.report import ReportData, ReportSettings, report, report_run, show_report

__all__ = ["show_batch", "show_augmentations", "plot_history", "plot_misclassified", "select_misclassified",
           "confusion_matrix", "plot_confusion_matrix", "plot_per_class_accuracy", "most_confused_pairs",
           "per_class_report", "plot_lr_finder", "gradcam", "plot_gradcam", "report", "report_run", "show_report",
           "ReportData", "ReportSettings"]
