"""What ``viz.report`` needs from a finished run, gathered here (evaluation belongs to train/recipes, not viz)."""
from typing import Optional

import torch.nn as nn

from pytorch_utils.train.loop import evaluate
from pytorch_utils.viz.report import ReportData

__all__ = ["report_data"]


def report_data(result, model: Optional[nn.Module] = None, train_transform=None) -> ReportData:
    """Evaluate a ``run_recipe`` result once on its test loader and bundle it for ``viz.report``.

    A plain evaluation (no test-time augmentation, so it can differ a little from the run's final number when the
    recipe uses TTA), kept with its inputs, logits and targets; plus the run's classes, mean/std, history and
    LR-finder result.

    Args:
        result: a :class:`~pytorch_utils.recipes.RunResult`.
        model: the model to evaluate and explain with GradCAM (default ``result.eval_model``: the EMA copy when the
            run kept one, which is what the run's test numbers measured).
        train_transform: a training transform to preview in the report (uint8 HWC -> normalized CHW), or None.
    Returns:
        a :class:`~pytorch_utils.viz.ReportData`; ``viz.report(report_data(result), out_dir)`` writes the report.
    """
    model = model if model is not None else result.eval_model
    evaluation = evaluate(model, result.test_loader, return_outputs=True, return_inputs=True)
    return ReportData(evaluation=evaluation, classes=list(result.classes), mean=result.mean, std=result.std,
                      history=list(result.history), lr_finder=result.lr_finder, model=model,
                      train_transform=train_transform)
