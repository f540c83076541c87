"""Reference solutions for notebooks/07_exercises.ipynb (for teachers and CI; students: try first!).

CI runs the sheet with ``solutions="solutions/07_exercises_solutions.py"``; the sheet then replaces
each blank answer by the one below, and ``mednext_lite.exercises.verify_checkers`` proves every
checker accepts these and rejects a known mistake with the right hint.
"""

import numpy as np
import torch.nn.functional as F


def block_forward(block, x):
    h = block.conv1(x)  # depthwise k^d conv
    h = block.norm(h)  # GroupNorm, one group per channel
    h = block.act(block.conv2(h))  # 1x1 expansion to R*C, GELU
    return x + block.conv3(h)  # 1x1 compression to C, residual


def block_parameters(C, R, k, spatial_dims):
    depthwise = C * k**spatial_dims + C
    norm = 2 * C
    expand = C * R * C + R * C
    compress = R * C * C + C
    return depthwise + norm + expand + compress


def receptive_field(layers):
    rf, jump = 1, 1
    for kernel, stride in layers:
        rf += (kernel - 1) * jump
        jump *= stride
    return rf


def upkern(weight, k):
    mode = "trilinear" if weight.ndim == 5 else "bilinear"
    return F.interpolate(weight, size=(k,) * (weight.ndim - 2), mode=mode, align_corners=False)


def window_limits(level, width):
    return level - width / 2, level + width / 2


lung_window = (-600, 1500)


def dice(pred, truth):
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else 2 * np.logical_and(pred, truth).sum() / total


dice_table = {"best": "MedNeXt-S k5", "hardest": "tail", "best_mean": 0.785}

SOLUTIONS = {
    "block_forward": block_forward, "block_parameters": block_parameters, "receptive_field": receptive_field,
    "upkern": upkern, "window_limits": window_limits, "lung_window": lung_window, "dice": dice,
    "dice_table": dice_table,
}
