"""The up block's output on the fast path: its branch plus its 1x1 transposed residual conv, both
padded at the start (:func:`mednext_lite.blocks.pad_start`), written into one buffer.

The stride-2 1x1 transposed conv writes ``x @ W`` at every second voxel and its bias everywhere
else; after the one-voxel start padding the products sit at odd indices and the bias on all but
the first index of every axis. So on the fast path the conv is a matrix product over the input's
voxels (PyTorch's CPU kernel runs it as a general transposed conv over the output grid), and the
padded sum is written into one buffer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import applies
from .layout import channels_last_format


class _PaddedSum(torch.autograd.Function):
    """``pad_start(branch) + pad_start(stuffed product + bias)`` in one output buffer.

    The branch and the bias are written into the padded buffer in one pass (``torch.add`` into its
    interior), the products added at odd indices; backward hands out views of grad-output instead
    of the copies that padding and in-place updates of views cost under autograd.
    """

    @staticmethod
    def forward(ctx, branch: torch.Tensor, product: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, c, *spatial = branch.shape
        dims = len(spatial)
        out = branch.new_empty((n, *(s + 1 for s in spatial), c)).movedim(-1, 1)
        for axis in range(2, 2 + dims):
            out.narrow(axis, 0, 1).zero_()
        torch.add(branch, bias.view((1, c) + (1,) * dims), out=out[(...,) + (slice(1, None),) * dims])
        out[(...,) + (slice(1, None, 2),) * dims] += product
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        dims = grad.ndim - 2
        grad_branch = grad[(...,) + (slice(1, None),) * dims].contiguous(memory_format=channels_last_format(dims))
        grad_product = grad[(...,) + (slice(1, None, 2),) * dims]
        return grad_branch, grad_product, grad_branch.sum(dim=(0, *range(2, grad.ndim)))


def padded_sum_applies(x: torch.Tensor, res_conv: nn.Module) -> bool:
    """Whether :func:`padded_sum` may stand in for the up block's sum: :func:`mednext_lite.fast.applies`
    for ``x`` with no hooks on ``res_conv`` (which the fast path runs without calling it)."""
    return applies(x, res_conv)


def padded_sum(branch: torch.Tensor, res_conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``pad_start(branch) + pad_start(res_conv(x))`` for the up block's stride-2 1x1 transposed ``res_conv``,
    in one buffer; call it where :func:`padded_sum_applies` (the up block keeps the plain sum otherwise)."""
    product = F.linear(x.movedim(1, -1), res_conv.weight.flatten(1).t()).movedim(-1, 1)
    return _PaddedSum.apply(branch, product, res_conv.bias)
