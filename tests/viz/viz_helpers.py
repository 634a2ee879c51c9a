"""Helpers shared by the viz tests (a module, not conftest: `from conftest import` is ambiguous with several)."""
import numpy as np
import torch
import torch.nn as nn

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class TinyCamNet(nn.Module):
    """Two conv blocks with in-place ReLUs right after the CAM layer (the case that silently breaks GradCAM)."""

    cam_layer = "features.4"  # the second BN: its output is overwritten by the in-place ReLU that follows

    def __init__(self, num_classes: int = 10, inplace: bool = True):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=inplace),
            nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(inplace=inplace),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def make_uint8_images(n: int = 12, size: int = 32, seed: int = 0) -> np.ndarray:
    """Structured synthetic images (gradients + a bright square) so plots are visibly non-blank."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    imgs = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        base = np.stack([xx * 255 / size, yy * 255 / size, np.full_like(xx, 40 * (i % 6))], axis=-1)
        noise = rng.integers(0, 40, size=(size, size, 3))
        img = np.clip(base + noise, 0, 255)
        r, c = rng.integers(0, size - 10, size=2)
        img[r:r + 10, c:c + 10] = 255
        imgs[i] = img.astype(np.uint8)
    return imgs


def normalize(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalized float (N, 3, H, W), as the data loaders produce."""
    x = torch.from_numpy(images_uint8).float().div(255).permute(0, 3, 1, 2)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)



def leftover_hooks(model: nn.Module) -> list:
    """``(module name, hook dict)`` for every hook still registered on the model (should be none after viz calls)."""
    from torch.nn.modules import module as module_mod

    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    found = [(name, kind) for name, m in model.named_modules() for kind in kinds if getattr(m, kind, None)]
    for kind in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks"):
        if getattr(module_mod, kind, None):
            found.append(("<global>", kind))
    return found


def model_flags(model: nn.Module):
    """Per-module training flags and per-parameter requires_grad flags, to compare before/after a viz call."""
    return [(n, m.training) for n, m in model.named_modules()], [(n, p.requires_grad) for n, p in
                                                                  model.named_parameters()]


def partly_frozen(model: nn.Module, eval_module: nn.Module) -> nn.Module:
    """``model.train()`` with one submodule in eval mode and the first parameter frozen (a fine-tuning setup)."""
    model.train()
    eval_module.eval()
    next(model.parameters()).requires_grad_(False)
    return model
