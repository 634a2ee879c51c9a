"""What ``viz.report`` needs from a finished run, gathered here (evaluation belongs to train/recipes, not viz)."""
from typing import Optional

import torch.nn as nn

from pytorch_utils.train.loop import evaluate
from pytorch_utils.viz.report import ReportData

__all__ = ["report_data"]


def report_data(result, model: Optional[nn.Module] = None, train_transform=None) -> ReportData:
    """A ``run_recipe`` result evaluated once on its test loader (no TTA, so it can differ a little from the run's
    final number) and bundled with its classes, mean/std, history and LR finder for ``viz.report``.

    ``model``: default ``result.eval_model``; ``train_transform``: one to preview (uint8 HWC -> normalized CHW).
    """
    model = model if model is not None else result.eval_model
    evaluation = evaluate(model, result.test_loader, return_outputs=True, return_inputs=True)
    return ReportData(evaluation=evaluation, classes=list(result.classes), mean=result.mean, std=result.std,
                      history=list(result.history), lr_finder=result.lr_finder, model=model,
                      train_transform=train_transform)
