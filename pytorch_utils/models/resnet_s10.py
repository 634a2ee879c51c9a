"""S10 custom ResNet for CIFAR-10 (the "DAWNBench ResNet" of the course's S10 session).

Every container is an ``nn.Sequential`` and every layer its own module, so torchsummary (which hooks every module
except Sequentials) lists exactly the course's layers in forward order; the residual adds live in ``forward``.
"""
import numbers

import torch
import torch.nn as nn

from pytorch_utils.errors import ConfigError, InputShapeError
from pytorch_utils.models import register_model

__all__ = ["S10ResNet", "s10_resnet"]


def _conv_bn_relu(c_in: int, c_out: int, dropout: float, pool: bool = False) -> list:
    """Conv3x3 (> MaxPool 2) > BN > ReLU > Dropout, as a list of modules to splice into a Sequential."""
    layers = [nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1, bias=False)]
    if pool:
        # Pooling before BN (as in the course's model) normalises the 2x smaller map, which is what the seed model did.
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), nn.ReLU(), nn.Dropout(dropout)]
    return layers


class S10ResNet(nn.Module):
    """The course's S10 custom ResNet: prep, layer1 (+R1), layer2, layer3 (+R2), MaxPool 4 > Linear.

    Args:
        num_classes: size of the output layer (6,573,130 parameters for 10 classes).
        dropout: probability of every Dropout module; 0 keeps the modules so the summary table is stable.
    Input must be (N, 3, 32, 32); the output is logits of shape (N, num_classes).
    """

    cam_layer: str = "pool:input"  # x + res2(x) (4x4x512) as it enters MaxPool 4: the residual sum, skip included

    def __init__(self, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        _check_args(num_classes, dropout)
        self.prep = nn.Sequential(*_conv_bn_relu(3, 64, dropout))
        self.layer1 = nn.Sequential(*_conv_bn_relu(64, 128, dropout, pool=True))
        self.res1 = nn.Sequential(*_conv_bn_relu(128, 128, dropout), *_conv_bn_relu(128, 128, dropout))
        self.layer2 = nn.Sequential(*_conv_bn_relu(128, 256, dropout, pool=True))
        self.layer3 = nn.Sequential(*_conv_bn_relu(256, 512, dropout, pool=True))
        self.res2 = nn.Sequential(*_conv_bn_relu(512, 512, dropout), *_conv_bn_relu(512, 512, dropout))
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for a batch x of shape (N, 3, 32, 32); raises InputShapeError otherwise."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, 32, 32):
            raise InputShapeError(
                f"S10ResNet expects input of shape (N, 3, 32, 32), got {tuple(x.shape)}; "
                "resize or crop images to 3x32x32 (the MaxPool 4 head needs a 4x4 map after three 2x poolings)"
            )
        x = self.prep(x)
        x = self.layer1(x)
        x = x + self.res1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = x + self.res2(x)
        # torch.flatten rather than an nn.Flatten module: the course's table lists no Flatten layer.
        return self.fc(torch.flatten(self.pool(x), 1))


def _check_args(num_classes: int, dropout: float) -> None:
    """Raise ConfigError for a non-positive class count or a dropout outside [0, 1)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")


@register_model
def s10_resnet(num_classes: int = 10, dropout: float = 0.0) -> S10ResNet:
    """S10 custom ResNet (6,573,130 parameters for 10 classes).

    Args:
        num_classes: output size.
        dropout: probability for every Dropout module.
    Returns:
        an ``S10ResNet`` returning logits.
    """
    return S10ResNet(num_classes=num_classes, dropout=dropout)
