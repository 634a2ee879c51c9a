"""Training engine and techniques: loops, schedules, mixing, checkpoints, early stopping, LR finder, TTA."""
from pytorch_utils.train.loop import evaluate, fit, train_one_epoch
from pytorch_utils.train.state import Callback, TrainConfig

__all__ = ["Callback", "TrainConfig", "evaluate", "fit", "train_one_epoch"]
