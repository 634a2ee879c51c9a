"""Wide ResNet (Zagoruyko & Komodakis, "Wide Residual Networks", 2016) in the layout of wide-resnet.pytorch.

Pre-activation blocks with biased convolutions and the stride on the second conv, so parameter counts match that
implementation (WRN-28-10: 36,489,290 for 10 classes, 36,546,980 for 100). Adaptive average pooling in the head
lets the progressively resized 36x36 and 40x40 training inputs work too. ReLU and pooling are functional and an
identity shortcut is no module, so torchsummary lists the course's rows of that implementation (78 for WRN-28-10).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from pytorch_utils.errors import InputShapeError
from pytorch_utils.models._registry import register_model

__all__ = ["WideBasicBlock", "WideResNet", "wide_resnet", "wrn28_10", "wrn16_2"]


class WideBasicBlock(nn.Module):
    """BN > ReLU > Conv3x3 > Dropout > BN > ReLU > Conv3x3(stride), plus the input.

    ``shortcut`` is a 1x1 conv on shape change, else None (no module, hence no torchsummary row). The Dropout is kept
    at p=0 so schedules can raise it.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=True)
        self.dropout = nn.Dropout(dropout)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=3, stride=stride, padding=1, bias=True)
        self.shortcut = nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride) if stride != 1 or c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv1(F.relu(self.bn1(x))))
        out = self.conv2(F.relu(self.bn2(out)))
        # The shortcut sees the raw input, not the pre-activated one, as in wide-resnet.pytorch; it runs after conv2
        # so its torchsummary row follows conv2's, as in the course's table.
        return out + (x if self.shortcut is None else self.shortcut(x))


class WideResNet(nn.Module):
    """WRN-depth-k: (N, 3, H, W) with H, W >= 8 -> logits (N, num_classes).

    ``depth`` = 6n + 4 (n blocks per stage); stage widths 16k, 32k, 64k for ``widen_factor`` k; ``dropout`` inside
    every block (change ``module.p`` at run time for phases). ``create_model`` checks the values.
    """

    cam_layer: str = "layer3"  # last stage (8x8 for 32x32 input) before the final BN/ReLU and global pooling

    def __init__(self, depth: int = 28, widen_factor: int = 10, dropout: float = 0.0, num_classes: int = 10):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=True)
        for i, (c_in, c_out, stride) in enumerate(zip(widths, widths[1:], (1, 2, 2)), start=1):
            # n blocks a stage; only the first changes width/stride.
            blocks = [WideBasicBlock(c_in, c_out, stride, dropout)] + [WideBasicBlock(c_out, c_out, 1, dropout)
                                                                       for _ in range(n - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] < 8 or x.shape[3] < 8:
            raise InputShapeError(f"WideResNet expects input of shape (N, 3, H, W) with H, W >= 8, got "
                                  f"{tuple(x.shape)}; pass RGB image batches (e.g. 3x32x32)")
        x = self.conv1(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1)
        return self.fc(torch.flatten(x, 1))


@register_model
def wide_resnet(num_classes: int = 10, depth: int = 28, widen_factor: int = 10, dropout: float = 0.0) -> WideResNet:
    """Wide ResNet of any valid depth (6n + 4) and width."""
    return WideResNet(depth=depth, widen_factor=widen_factor, dropout=dropout, num_classes=num_classes)


@register_model
def wrn28_10(num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WRN-28-10: 36,489,290 parameters for 10 classes, 36,546,980 for 100 (S8 dropout: 0.3 then 0.2)."""
    return WideResNet(depth=28, widen_factor=10, dropout=dropout, num_classes=num_classes)


@register_model
def wrn16_2(num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WRN-16-2, a small variant for tests and quick runs (692,810 parameters for 10 classes)."""
    return WideResNet(depth=16, widen_factor=2, dropout=dropout, num_classes=num_classes)
