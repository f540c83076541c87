"""Dice + cross-entropy loss with deep supervision, as in the MedNeXt / nnU-Net v1 recipe.

The network returns ``[full, 1/2, 1/4, 1/8, 1/16]`` logits with deep supervision. Each output is
compared with the label map downsampled to its size by nearest neighbour (so labels stay
integers), and the per-output losses are mixed with weights proportional to ``1/2^i`` with the
lowest resolution weighted 0, normalised to sum 1. The zero-weighted term is still computed so
every head takes part in the graph (DistributedDataParallel insists that all parameters do).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

__all__ = ["DeepSupervisionLoss", "deep_supervision_weights", "make_loss"]


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """Weights ``1/2^i`` for outputs ``i = 0..n-1``, the last (lowest resolution) set to 0, summing to 1.

    A single output gets weight 1 (plain training without deep supervision).
    """
    if n_outputs < 1:
        raise ValueError(f"n_outputs={n_outputs} must be >= 1")
    if n_outputs == 1:
        return [1.0]
    raw = [1.0 / 2**i for i in range(n_outputs)]
    raw[-1] = 0.0
    total = sum(raw)
    return [w / total for w in raw]


class DeepSupervisionLoss(nn.Module):
    """Apply ``base_loss`` to every deep-supervision output against a nearest-downsampled label.

    Args:
        base_loss: loss taking ``(logits, label)`` with ``label`` shaped ``[N, 1, *spatial]``.
        weights: one weight per output; ``None`` uses :func:`deep_supervision_weights`.

    ``forward(outputs, label)`` accepts a tensor (one output) or a list/tuple of tensors.
    """

    def __init__(self, base_loss: nn.Module, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.base_loss = base_loss
        self.weights = None if weights is None else [float(w) for w in weights]

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], label: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        weights = self.weights or deep_supervision_weights(len(outputs))
        if len(weights) != len(outputs):
            raise ValueError(f"{len(weights)} deep-supervision weights for {len(outputs)} outputs: "
                             "pass one weight per output (or weights=None)")
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for weight, logits in zip(weights, outputs):
            target = label
            if tuple(target.shape[2:]) != tuple(logits.shape[2:]):
                target = F.interpolate(label.float(), size=logits.shape[2:], mode="nearest")
            # Loss in float32 even under autocast: the soft Dice sums are sensitive to fp16 range.
            total = total + weight * self.base_loss(logits.float(), target)
        return total


def make_loss(*, batch_dice: bool = True) -> DeepSupervisionLoss:
    """The paper's loss: MONAI ``DiceCELoss`` (softmax, one-hot labels, Dice over foreground
    classes, equal Dice and CE weights), wrapped for deep supervision (one tensor output works too).

    ``batch_dice`` pools the Dice sums over the batch as nnU-Net does for 3D full-resolution
    training, which keeps the loss defined when a patch misses a class.
    """
    base = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=batch_dice,
                      smooth_nr=1e-5, smooth_dr=1e-5)
    return DeepSupervisionLoss(base)
