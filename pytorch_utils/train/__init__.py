"""Training engine and techniques: loops, schedules, mixing, checkpoints, early stopping, LR finder, TTA."""
from pytorch_utils.train.loop import evaluate, fit, train_one_epoch
from pytorch_utils.train.state import Callback, History, TrainConfig, TrainState

__all__ = ["Callback", "History", "TrainConfig", "TrainState", "evaluate", "fit", "train_one_epoch"]
