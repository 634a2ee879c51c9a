"""Batch-level MixUp and CutMix on the device, with label smoothing folded in once, returning soft targets: train
with :class:`SoftTargetCrossEntropy` (not a CrossEntropyLoss with ``label_smoothing``: they are already smoothed).
For the same lambda, box and partner, images and targets equal timm's ``Mixup`` (a test pins them)."""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def smooth_one_hot(targets: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot rows with ``smoothing`` spread uniformly: on = 1 - s + s/C, off = s/C (rows sum to 1)."""
    return F.one_hot(targets.long(), num_classes).float() * (1.0 - smoothing) + smoothing / num_classes


def cutmix_box(height: int, width: int, lam: float, generator: Optional[torch.Generator] = None
               ) -> Tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: a box covering about ``1 - lam`` of the image, centred uniformly, clipped to it."""
    ratio = (1.0 - lam) ** 0.5
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(height, (1,), generator=generator))
    cx = int(torch.randint(width, (1,), generator=generator))
    return (max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height),
            max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width))


class Mixer:
    """MixUp or CutMix, chosen per batch (CutMix with ``switch_prob`` when both alphas are > 0), for a ``prob``
    share of batches. Alphas are Beta(alpha, alpha) parameters, 0 disables; attributes may change between epochs
    (the recipe checks the values). Random numbers come from torch's RNGs, so a seeded, checkpointed run replays the
    same mixing.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 switch_prob: float = 0.5, prob: float = 1.0, label_smoothing: float = 0.0):
        self.num_classes, self.label_smoothing = num_classes, float(label_smoothing)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.switch_prob, self.prob = float(switch_prob), float(prob)
        self.last = {"method": None, "lam": 1.0}  # what the previous call did, for tests and debugging

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def _sample_lam(self, alpha: float) -> float:
        return float(torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha)).sample())

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) inputs and (N,) int labels -> (inputs, soft targets (N, K))."""
        soft = smooth_one_hot(targets, self.num_classes, self.label_smoothing)
        self.last = {"method": None, "lam": 1.0}
        if not self.active or float(torch.rand(())) >= self.prob:
            return inputs, soft
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or float(torch.rand(())) < self.switch_prob)
        perm = torch.randperm(inputs.shape[0], device=inputs.device)
        if use_cutmix:
            h, w = inputs.shape[-2:]
            y0, y1, x0, x1 = cutmix_box(h, w, self._sample_lam(self.cutmix_alpha))
            inputs = inputs.clone()
            inputs[..., y0:y1, x0:x1] = inputs[perm][..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)  # the clipped box may be smaller: the area pasted
        else:
            lam = self._sample_lam(self.mixup_alpha)
            inputs = inputs * lam + inputs[perm] * (1.0 - lam)
        self.last = {"method": "cutmix" if use_cutmix else "mixup", "lam": lam}
        return inputs, soft * lam + soft[perm] * (1.0 - lam)


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy against soft target rows (N, K); hard integer targets are accepted too (one-hot)."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.dim() == 1:
            return F.cross_entropy(logits, targets)
        return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
