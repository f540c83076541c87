"""Per-channel GroupNorm on channels-last CPU tensors, and the same norm folded into the 1x1 conv after it.

Both use two-pass statistics (the mean, then the mean square of the centred values), as exact as
PyTorch's channels-first GroupNorm; its channels-last kernel is slower and less exact. The
derivations and measurements are in ``docs/kernels.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import applies


def _centred_rows(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A channels-last ``x`` as rows ``[n, voxels, c]`` minus their per-channel mean, and 1 / std."""
    n, c = x.shape[:2]
    rows = x.movedim(1, -1).reshape(n, -1, c)  # a view: channels-last keeps channels innermost
    m = rows.shape[1]
    centred = rows - rows.sum(1, keepdim=True) / m
    return centred, torch.rsqrt((centred * centred).sum(1, keepdim=True) / m + eps)


def _as_channels_last(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Rows ``[n, voxels, c]`` back as an ``[n, c, *spatial]`` channels-last view, spatial from ``like``."""
    return rows.view(rows.shape[0], *like.shape[2:], rows.shape[-1]).movedim(-1, 1)


class _PerChannelNorm(torch.autograd.Function):
    """GroupNorm with one group per channel on a channels-last tensor, in a few memory passes;
    the centred values are kept for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        centred, rstd = _centred_rows(x, eps)
        ctx.save_for_backward(centred, weight, rstd)
        return _as_channels_last(torch.addcmul(bias, centred, rstd * weight), x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        centred, weight, rstd = ctx.saved_tensors
        n, m, c = centred.shape
        g = grad.movedim(1, -1).reshape(n, m, c)
        sum_g = g.sum(1, keepdim=True)
        sum_g_xhat = (g * centred).sum(1, keepdim=True) * rstd
        scale = rstd * weight
        # dx = scale * (g - mean(g) - xhat * mean(g * xhat)), with xhat = centred * rstd
        grad_x = torch.addcmul(-scale * sum_g / m, g, scale)
        grad_x.addcmul_(centred, -scale * rstd * sum_g_xhat / m)
        return _as_channels_last(grad_x, grad), sum_g_xhat.sum(0).view(c), sum_g.sum(0).view(c), None


class PerChannelGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` with one group per channel; channels-last CPU inputs run :class:`_PerChannelNorm`.
    Parameters and state-dict keys are GroupNorm's."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__(num_groups=channels, num_channels=channels, eps=eps, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if applies(x):
            return _PerChannelNorm.apply(x, self.weight, self.bias, self.eps)
        return super().forward(x)


def _runs_as_nhwc_conv(x: torch.Tensor) -> bool:
    """Whether the folded 1x1 conv can be oneDNN's NHWC conv (one 2D image: one weight, bias fused)
    rather than a batched matrix product (a weight per sample; in 3D, PyTorch's batch-1 1x1 conv
    would return channels-first)."""
    return x.ndim == 4 and x.shape[0] == 1


class _NormPointwise(torch.autograd.Function):
    """Per-channel GroupNorm followed by a 1x1 conv, as one matrix product of the centred input.

    Why: the norm's scale folds into the 1x1 conv's weight and its shift into the bias,
    ``W (c * rstd * gamma + beta) + b = (W * rstd * gamma) c + (W beta + b)`` with ``c`` the centred
    input, so the normalised tensor is never written or read, and the norm's backward reductions
    fall out of the matrix products the conv's backward does anyway; what is left of the norm's
    backward is one in-place update of grad-input.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, eps, weight, bias):
        centred, rstd = _centred_rows(x, eps)
        w = weight.flatten(1)
        w_n = w * (rstd * gamma)  # [n, out, c]: the norm's per-sample scale, folded in
        ctx.save_for_backward(centred, rstd, gamma, beta, w, w_n)
        bias = bias + w @ beta
        if _runs_as_nhwc_conv(x):  # one weight, bias fused; timings in docs/kernels.md
            return F.conv2d(_as_channels_last(centred, x), w_n[0, :, :, None, None], bias)
        return _as_channels_last(torch.baddbmm(bias, centred, w_n.transpose(1, 2)), x)

    @staticmethod
    def backward(ctx, grad):
        centred, rstd, gamma, beta, w, w_n = ctx.saved_tensors
        n, m, c = centred.shape
        if _runs_as_nhwc_conv(grad):
            grad_x, g_w_n, g_sum = torch.ops.aten.convolution_backward(
                grad, _as_channels_last(centred, grad), w_n[0, :, :, None, None], [w_n.shape[1]], [1, 1], [0, 0],
                [1, 1], False, [0, 0], 1, [True, True, True],
            )
            grad_x, g_w_n, g_sum = grad_x.movedim(1, -1).reshape(n, m, c), g_w_n.view(1, -1, c), g_sum[None]
        else:
            g = grad.movedim(1, -1).reshape(n, m, -1)
            grad_x = torch.bmm(g, w_n)
            g_w_n = torch.bmm(g.transpose(1, 2), centred)  # [n, out, c]: gradient of the folded weight
            g_sum = g.sum(1)  # [n, out]
        grad_bias = g_sum.sum(0)  # [out]: b and W beta are shared by the whole batch
        grad_weight = (g_w_n * (rstd * gamma)).sum(0) + grad_bias[:, None] * beta
        grad_scale = (g_w_n * w).sum(1, keepdim=True)  # [n, 1, c]
        grad_gamma = (grad_scale * rstd).sum((0, 1))
        grad_beta = grad_bias @ w
        # x = centred + mean: grad_x = d/dc - its mean over voxels, with rstd's dependence on c
        shift = torch.bmm(g_sum[:, None], w_n) / m
        grad_x.addcmul_(centred, grad_scale * gamma * rstd.pow(3) / m, value=-1).sub_(shift)
        grad_weight = grad_weight.view(-1, c, *(1,) * (grad.ndim - 2))
        return _as_channels_last(grad_x, grad), grad_gamma, grad_beta, None, grad_weight, grad_bias


def fold_applies(x: torch.Tensor, norm: nn.Module, conv: nn.Module) -> bool:
    """Whether ``conv(norm(x))`` may run as :class:`_NormPointwise`: a per-channel GroupNorm, and
    :func:`mednext_lite.fast.applies` for ``x`` with hooks on neither module."""
    return isinstance(norm, PerChannelGroupNorm) and applies(x, norm, conv)


def norm_pointwise(x: torch.Tensor, norm: nn.Module, conv: nn.Module) -> torch.Tensor:
    """``conv(norm(x))`` for a norm and the stride-1 1x1 conv after it, folded into one product where
    :func:`fold_applies`."""
    if fold_applies(x, norm, conv):
        return _NormPointwise.apply(x, norm.weight, norm.bias, norm.eps, conv.weight, conv.bias)
    return conv(norm(x))
