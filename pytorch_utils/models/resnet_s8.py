"""The network the S8 seed trained on CIFAR-100: a CIFAR ResNet of BasicBlocks.

The S8 seed's overview names WRN-28-10, but the network its architecture section describes, and whose accuracies it
reports (about 82 % on CIFAR-100 after 200 epochs), is this one: 30,032,292 parameters for 100 classes.

    stem:   Conv3x3 3->64 (no bias) > BN > ReLU                 (no max-pool: 32x32 stays 32x32)
    stages: 4 x 5 BasicBlocks at widths 64, 128, 256, 512, strides 1, 2, 2, 2 (32, 16, 8, 4 px)
            block = Conv3x3 > BN > ReLU > Conv3x3 > BN, plus a 1x1 Conv (no bias) > BN projection where the shape
            changes, then the add and a ReLU (He et al., "Deep Residual Learning", 2016, option B shortcuts)
    head:   global average pool > Dropout > Linear 512->classes (with bias)

Cost per 32x32 image (``model_cost``; ``python benchmarks/model_costs.py`` prints the table): 1.46 G MACs against
WRN-28-10's 5.95 G, so an epoch is about a quarter of a WRN-28-10 epoch in arithmetic.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from pytorch_utils.models._registry import register_model

__all__ = ["BasicBlock", "S8ResNet", "s8_resnet"]


class BasicBlock(nn.Module):
    """Conv3x3(stride) > BN > ReLU > Conv3x3 > BN, plus the input, then ReLU.

    ``shortcut`` is a 1x1 Conv (no bias) > BN when the shape changes, else None (identity, no module).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False),
                                       nn.BatchNorm2d(c_out)) if stride != 1 or c_in != c_out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class S8ResNet(nn.Module):
    """The S8 seed's ResNet: (N, 3, H, W) with H, W >= 8 -> logits (N, num_classes).

    ``dropout`` is the Dropout before the Linear head (kept at p=0 so phases can change it); ``blocks`` BasicBlocks
    per stage, of ``widths`` channels.
    """

    cam_layer: str = "layer4"  # last stage (4x4 for 32x32 input) before global pooling

    def __init__(self, num_classes: int = 100, dropout: float = 0.0, blocks: int = 5, widths=(64, 128, 256, 512)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        c_in = widths[0]
        for i, (width, stride) in enumerate(zip(widths, (1, 2, 2, 2)), start=1):
            layers = [BasicBlock(c_in, width, stride)] + [BasicBlock(width, width) for _ in range(blocks - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*layers))
            c_in = width
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(self.dropout(x))


@register_model
def s8_resnet(num_classes: int = 100, dropout: float = 0.0) -> S8ResNet:
    """The network the S8 seed trained: 30,032,292 parameters for 100 classes (29,986,122 for 10); the S8 phases
    set ``dropout`` to 0.3 then 0.2."""
    return S8ResNet(num_classes=num_classes, dropout=dropout)
