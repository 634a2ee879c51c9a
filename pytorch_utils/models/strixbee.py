"""Strixbee levels (the course's student framework): small CIFAR-10 CNNs, each under 100k parameters.

All levels share one layout, three stages of 3x3 conv blocks separated by "transitions" (a 1x1 conv that squeezes
to 16 channels, then a 2x downsampling), and a global-average-pool > Linear head without bias (a 1x1 conv; without
the bias, widths that are multiples of 8 give exactly the seed's level-1 count):

    stage1 (32x32): 3->8->16->32     trans1: 1x1 32->16 > down    stage2 (16x16): 16->16->32->48
    trans2: 1x1 48->16 > down        stage3 (8x8): 16->40->56->56 > GAP > Linear 56->num_classes (no bias)

Every conv block is Conv (no bias) > BN > ReLU > Dropout. Squeezing to 16 channels before each downsampling keeps
the level-2 stride-2 convolutions cheap (2 x 2,336 parameters) so every level stays under 100k.

- level 1: down = MaxPool 2, dropout 0: **83,368** parameters for 10 classes, the seed's count
- level 2: down = 3x3 stride-2 conv block, dropout 0 (88,040 parameters)
- level 3: level 2 with Dropout 0.05 after every block (88,040 parameters; Cutout is a data preset)
"""
import numbers

import torch
import torch.nn as nn

from pytorch_utils.errors import ConfigError
from pytorch_utils.models import register_model

__all__ = ["StrixbeeNet", "strixbee_l1", "strixbee_l2", "strixbee_l3"]

_DOWNSAMPLE = ("maxpool", "conv")


def _block(c_in: int, c_out: int, dropout: float, kernel_size: int = 3, stride: int = 1) -> list:
    """Conv > BN > ReLU > Dropout as a list of modules (Dropout kept at p=0 so all levels share one layout)."""
    return [
        nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.Dropout(dropout),
    ]


class StrixbeeNet(nn.Module):
    """The Strixbee CNN shared by all levels.

    Args:
        num_classes: output size.
        dropout: probability of the Dropout after every conv block.
        downsample: "maxpool" (level 1) or "conv" (3x3 stride-2 conv block, levels 2 and 3).
    Input (N, 3, H, W) (32x32 for CIFAR); output logits (N, num_classes).
    """

    cam_layer: str = "stage3"  # last spatial stage (8x8 for 32x32 input) before global pooling

    def __init__(self, num_classes: int = 10, dropout: float = 0.0, downsample: str = "maxpool"):
        super().__init__()
        _check_args(num_classes, dropout, downsample)
        self.stage1 = nn.Sequential(*_block(3, 8, dropout), *_block(8, 16, dropout), *_block(16, 32, dropout))
        self.trans1 = self._transition(32, 16, dropout, downsample)
        self.stage2 = nn.Sequential(*_block(16, 16, dropout), *_block(16, 32, dropout), *_block(32, 48, dropout))
        self.trans2 = self._transition(48, 16, dropout, downsample)
        self.stage3 = nn.Sequential(*_block(16, 40, dropout), *_block(40, 56, dropout), *_block(56, 56, dropout))
        self.pool = nn.AdaptiveAvgPool2d(1)
        # A Linear (not a 1x1 conv) so tools that read the head's width (class-count checks) find it.
        self.fc = nn.Linear(56, num_classes, bias=False)

    @staticmethod
    def _transition(c_in: int, c_out: int, dropout: float, downsample: str) -> nn.Sequential:
        """1x1 squeeze block followed by a 2x downsampling (MaxPool 2 or 3x3 stride-2 conv block)."""
        layers = _block(c_in, c_out, dropout, kernel_size=1)
        if downsample == "maxpool":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += _block(c_out, c_out, dropout, kernel_size=3, stride=2)
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for a batch x of shape (N, 3, H, W)."""
        x = self.trans1(self.stage1(x))
        x = self.trans2(self.stage2(x))
        x = self.pool(self.stage3(x))
        return self.fc(torch.flatten(x, 1))


def _check_args(num_classes, dropout, downsample) -> None:
    """Raise ConfigError for a bad class count, dropout or downsampling mode."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
    if downsample not in _DOWNSAMPLE:
        raise ConfigError(f"downsample must be one of {_DOWNSAMPLE}, got {downsample!r}")


@register_model
def strixbee_l1(num_classes: int = 10, dropout: float = 0.0) -> StrixbeeNet:
    """Strixbee level 1: plain CNN with max-pool downsampling, no dropout (83,368 parameters for 10 classes,
    the seed's count).

    Args:
        num_classes: output size.
        dropout: accepted for uniformity with level 3; the level-1 recipe keeps 0.
    Returns:
        a ``StrixbeeNet`` returning logits.
    """
    return StrixbeeNet(num_classes=num_classes, dropout=dropout, downsample="maxpool")


@register_model
def strixbee_l2(num_classes: int = 10, dropout: float = 0.0) -> StrixbeeNet:
    """Strixbee level 2: level 1 with each MaxPool replaced by a 3x3 stride-2 conv (88,040 parameters, 10 classes).

    Args:
        num_classes: output size.
        dropout: accepted for uniformity with level 3; the level-2 recipe keeps 0.
    Returns:
        a ``StrixbeeNet`` returning logits.
    """
    return StrixbeeNet(num_classes=num_classes, dropout=dropout, downsample="conv")


@register_model
def strixbee_l3(num_classes: int = 10, dropout: float = 0.05) -> StrixbeeNet:
    """Strixbee level 3: level 2 regularised by Dropout after every block (88,040 parameters for 10 classes).

    Cutout, the other level-3 regulariser, is a data preset, not part of the model.

    Args:
        num_classes: output size.
        dropout: Dropout probability after every conv block (default 0.05).
    Returns:
        a ``StrixbeeNet`` returning logits.
    """
    return StrixbeeNet(num_classes=num_classes, dropout=dropout, downsample="conv")
