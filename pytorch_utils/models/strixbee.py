"""Strixbee levels (the course's student framework): small CIFAR-10 CNNs, each under 100k parameters.

All levels share one layout, three stages of 3x3 conv blocks separated by "transitions" (a 1x1 conv that squeezes
to 16 channels, then a 2x downsampling), and a global-average-pool > Linear head without bias (with widths that
are multiples of 4, only a bias-free head gives exactly the seed's level-1 count):

    stage1 (32x32): 3->16->32->32    trans1: 1x1 32->16 > down    stage2 (16x16): 16->28->40->28
    trans2: 1x1 28->16 > down        stage3 (8x8): 16->32->44->64 > GAP > Linear 64->num_classes (no bias)

Every conv block is Conv (no bias) > BN > ReLU > Dropout; squeezing to 16 channels keeps the level-2 stride-2
convolutions cheap, so every level stays under 100k (level 1: **83,368**, the seed's count; levels 2 and 3: 88,040).
"""
import torch
import torch.nn as nn

from pytorch_utils.models._registry import register_model

__all__ = ["StrixbeeNet", "strixbee_l1", "strixbee_l2", "strixbee_l3"]


def _block(c_in: int, c_out: int, dropout: float, kernel_size: int = 3, stride: int = 1) -> list:
    """Conv > BN > ReLU > Dropout as a list of modules (Dropout kept at p=0 so all levels share one layout)."""
    conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
    return [conv, nn.BatchNorm2d(c_out), nn.ReLU(), nn.Dropout(dropout)]


class StrixbeeNet(nn.Module):
    """The Strixbee CNN of all levels: (N, 3, H, W) -> logits (N, num_classes).

    ``dropout`` follows every conv block; ``downsample`` is "maxpool" (level 1) or "conv" (3x3 stride-2 conv block).
    """

    cam_layer: str = "stage3"  # last spatial stage (8x8 for 32x32 input) before global pooling

    def __init__(self, num_classes: int = 10, dropout: float = 0.0, downsample: str = "maxpool"):
        super().__init__()
        # A 16-wide first block: an 8-wide one (also 83,368 in all) learned far slower in short runs.
        self.stage1 = nn.Sequential(*_block(3, 16, dropout), *_block(16, 32, dropout), *_block(32, 32, dropout))
        self.trans1 = self._transition(32, 16, dropout, downsample)
        self.stage2 = nn.Sequential(*_block(16, 28, dropout), *_block(28, 40, dropout), *_block(40, 28, dropout))
        self.trans2 = self._transition(28, 16, dropout, downsample)
        self.stage3 = nn.Sequential(*_block(16, 32, dropout), *_block(32, 44, dropout), *_block(44, 64, dropout))
        self.pool = nn.AdaptiveAvgPool2d(1)
        # A Linear (not a 1x1 conv) so tools that read the head's width (class-count checks) find it.
        self.fc = nn.Linear(64, num_classes, bias=False)

    @staticmethod
    def _transition(c_in: int, c_out: int, dropout: float, downsample: str) -> nn.Sequential:
        """1x1 squeeze block, then a 2x downsampling."""
        squeeze = _block(c_in, c_out, dropout, kernel_size=1)
        down = [nn.MaxPool2d(2)] if downsample == "maxpool" else _block(c_out, c_out, dropout, kernel_size=3, stride=2)
        return nn.Sequential(*squeeze, *down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trans1(self.stage1(x))
        x = self.trans2(self.stage2(x))
        x = self.pool(self.stage3(x))
        return self.fc(torch.flatten(x, 1))


@register_model
def strixbee_l1(num_classes: int = 10, dropout: float = 0.0) -> StrixbeeNet:
    """Level 1: max-pool downsampling, no dropout (83,368 parameters for 10 classes, the seed's count)."""
    return StrixbeeNet(num_classes=num_classes, dropout=dropout, downsample="maxpool")


@register_model
def strixbee_l2(num_classes: int = 10, dropout: float = 0.0) -> StrixbeeNet:
    """Level 2: each MaxPool replaced by a 3x3 stride-2 conv (88,040 parameters for 10 classes)."""
    return StrixbeeNet(num_classes=num_classes, dropout=dropout, downsample="conv")


@register_model
def strixbee_l3(num_classes: int = 10, dropout: float = 0.05) -> StrixbeeNet:
    """Level 3: level 2 with Dropout after every block (88,040 parameters; Cutout is a data preset)."""
    return StrixbeeNet(num_classes=num_classes, dropout=dropout, downsample="conv")
