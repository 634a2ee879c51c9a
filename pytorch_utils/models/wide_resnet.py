"""Wide ResNet (Zagoruyko & Komodakis, "Wide Residual Networks", 2016), in the layout of the wide-resnet.pytorch implementation.

Pre-activation blocks with biased convolutions and the stride on the second conv, so parameter counts match that
implementation (WRN-28-10: 36,489,290 for 10 classes, 36,546,980 for 100). The head uses adaptive average pooling
instead of a fixed 8x8 pool, so the progressively resized 36x36 and 40x40 training inputs work too.

ReLU and the global average pool are functional and an identity shortcut is no module at all, as in
wide-resnet.pytorch: torchsummary then lists the same rows as the course's table of that implementation (per block
BatchNorm2d, Conv2d, Dropout, BatchNorm2d, Conv2d, the shortcut Conv2d where the shape changes, and the block's
own row; 78 rows for WRN-28-10). None of these carry parameters, so state_dict keys are unchanged.
"""
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

from pytorch_utils.errors import ConfigError, InputShapeError
from pytorch_utils.models import register_model

__all__ = ["WideBasicBlock", "WideResNet", "wide_resnet", "wrn28_10", "wrn16_2"]


class WideBasicBlock(nn.Module):
    """BN > ReLU > Conv3x3 > Dropout > BN > ReLU > Conv3x3(stride), plus a 1x1 conv shortcut on shape change.

    ``shortcut`` is None for an identity shortcut (no module, hence no torchsummary row).

    Args:
        c_in: input channels.
        c_out: output channels.
        stride: stride of the second conv (and of the shortcut).
        dropout: probability of the Dropout between the convs (module kept at p=0 so schedules can raise it).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=True)
        self.dropout = nn.Dropout(dropout)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=3, stride=stride, padding=1, bias=True)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output: residual branch plus (projected) input."""
        out = self.dropout(self.conv1(F.relu(self.bn1(x))))
        out = self.conv2(F.relu(self.bn2(out)))
        # The shortcut sees the raw input, not the pre-activated one, as in wide-resnet.pytorch; it runs after conv2
        # so its torchsummary row follows conv2's, as in the course's table.
        return out + (x if self.shortcut is None else self.shortcut(x))


class WideResNet(nn.Module):
    """Wide ResNet WRN-depth-k for 32x32-ish images (any size >= 8x8).

    Args:
        depth: total depth; (depth - 4) must be a positive multiple of 6 (blocks per stage = (depth - 4) / 6).
        widen_factor: k; stage widths are 16k, 32k, 64k.
        dropout: probability of the Dropout inside every block (change ``module.p`` at run time for phases).
        num_classes: output size.
    Input (N, 3, H, W) with H, W >= 8; output logits (N, num_classes).
    """

    cam_layer: str = "layer3"  # last stage (8x8 for 32x32 input) before the final BN/ReLU and global pooling

    def __init__(self, depth: int = 28, widen_factor: int = 10, dropout: float = 0.0, num_classes: int = 10):
        super().__init__()
        _check_args(depth, widen_factor, dropout, num_classes)
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=True)
        self.layer1 = self._stage(widths[0], widths[1], n, stride=1, dropout=dropout)
        self.layer2 = self._stage(widths[1], widths[2], n, stride=2, dropout=dropout)
        self.layer3 = self._stage(widths[2], widths[3], n, stride=2, dropout=dropout)
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

    @staticmethod
    def _stage(c_in: int, c_out: int, n: int, stride: int, dropout: float) -> nn.Sequential:
        """n blocks; only the first changes width/stride."""
        blocks = [WideBasicBlock(c_in, c_out, stride, dropout)]
        blocks += [WideBasicBlock(c_out, c_out, 1, dropout) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for x of shape (N, 3, H, W), H and W >= 8; raises InputShapeError otherwise."""
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] < 8 or x.shape[3] < 8:
            raise InputShapeError(
                f"WideResNet expects input of shape (N, 3, H, W) with H, W >= 8, got {tuple(x.shape)}; "
                "pass RGB image batches (e.g. 3x32x32)"
            )
        x = self.conv1(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1)
        return self.fc(torch.flatten(x, 1))


def _check_args(depth, widen_factor, dropout, num_classes) -> None:
    """Raise ConfigError for a depth that does not give whole stages, or other out-of-range options."""
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 10 or (depth - 4) % 6:
        raise ConfigError(
            f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, 40...), got {depth!r}"
        )
    if isinstance(widen_factor, bool) or not isinstance(widen_factor, numbers.Integral) or widen_factor < 1:
        raise ConfigError(f"widen_factor must be a positive integer, got {widen_factor!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")


@register_model
def wide_resnet(num_classes: int = 10, depth: int = 28, widen_factor: int = 10, dropout: float = 0.0) -> WideResNet:
    """Wide ResNet of any valid depth/width.

    Args:
        num_classes: output size.
        depth: 6n + 4 (default 28).
        widen_factor: width multiplier k (default 10).
        dropout: in-block Dropout probability.
    Returns:
        a ``WideResNet`` returning logits.
    """
    return WideResNet(depth=depth, widen_factor=widen_factor, dropout=dropout, num_classes=num_classes)


@register_model
def wrn28_10(num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WRN-28-10: 36,489,290 parameters for 10 classes, 36,546,980 for 100.

    Args:
        num_classes: output size.
        dropout: in-block Dropout probability (S8 uses 0.3 then 0.2).
    Returns:
        a ``WideResNet`` returning logits.
    """
    return WideResNet(depth=28, widen_factor=10, dropout=dropout, num_classes=num_classes)


@register_model
def wrn16_2(num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WRN-16-2, a small variant for tests and quick runs (692,810 parameters for 10 classes).

    Args:
        num_classes: output size.
        dropout: in-block Dropout probability.
    Returns:
        a ``WideResNet`` returning logits.
    """
    return WideResNet(depth=16, widen_factor=2, dropout=dropout, num_classes=num_classes)
