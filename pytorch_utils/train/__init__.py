"""Training engine and techniques: loops, schedules, mixing, checkpoints, early stopping, LR finder, TTA."""
from pytorch_utils.train.loop import (  # noqa: F401
    Callback, History, TrainConfig, TrainState, evaluate, fit, run_fit, scheduler_interval, train_one_epoch,
)
from pytorch_utils.utils import seed_everything  # noqa: F401
