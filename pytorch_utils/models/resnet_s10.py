"""S10 custom ResNet for CIFAR-10 (the "DAWNBench ResNet" of the course's S10 session).

Every layer is its own module inside ``nn.Sequential``s, so torchsummary lists exactly the course's layers in forward
order; the residual adds live in ``forward``.
"""
import torch
import torch.nn as nn

from pytorch_utils.errors import InputShapeError
from pytorch_utils.models._registry import register_model

__all__ = ["S10ResNet", "s10_resnet"]


def _conv_bn_relu(c_in: int, c_out: int, dropout: float, pool: bool = False) -> list:
    """Conv3x3 (> MaxPool 2, before BN as in the course's model) > BN > ReLU > Dropout, as a list of modules."""
    conv = nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1, bias=False)
    return [conv, *([nn.MaxPool2d(2)] if pool else []), nn.BatchNorm2d(c_out), nn.ReLU(), nn.Dropout(dropout)]


class S10ResNet(nn.Module):
    """Prep, layer1 (+R1), layer2, layer3 (+R2), MaxPool 4 > Linear: (N, 3, 32, 32) -> logits (N, num_classes).

    ``dropout`` is the probability of every Dropout module (kept at 0 so the summary table is stable).
    """

    cam_layer: str = "pool:input"  # x + res2(x) (4x4x512) as it enters MaxPool 4: the residual sum, skip included

    def __init__(self, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        self.prep = nn.Sequential(*_conv_bn_relu(3, 64, dropout))
        self.layer1 = nn.Sequential(*_conv_bn_relu(64, 128, dropout, pool=True))
        self.res1 = nn.Sequential(*_conv_bn_relu(128, 128, dropout), *_conv_bn_relu(128, 128, dropout))
        self.layer2 = nn.Sequential(*_conv_bn_relu(128, 256, dropout, pool=True))
        self.layer3 = nn.Sequential(*_conv_bn_relu(256, 512, dropout, pool=True))
        self.res2 = nn.Sequential(*_conv_bn_relu(512, 512, dropout), *_conv_bn_relu(512, 512, dropout))
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, 32, 32):
            raise InputShapeError(f"S10ResNet expects input of shape (N, 3, 32, 32), got {tuple(x.shape)}; resize or "
                                  "crop images to 3x32x32 (the MaxPool 4 head needs a 4x4 map after three 2x poolings)")
        x = self.prep(x)
        x = self.layer1(x)
        x = x + self.res1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = x + self.res2(x)
        # torch.flatten rather than an nn.Flatten module: the course's table lists no Flatten layer.
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model
def s10_resnet(num_classes: int = 10, dropout: float = 0.0) -> S10ResNet:
    """S10 custom ResNet (6,573,130 parameters for 10 classes)."""
    return S10ResNet(num_classes=num_classes, dropout=dropout)
