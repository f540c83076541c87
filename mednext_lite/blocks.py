"""The MedNeXt building blocks of the paper's figure, written once for 2D and 3D.

A block is a depthwise k^d conv, a per-channel norm, a 1x1 expansion to R*C channels, GELU, an
optional GRN and a 1x1 compression, plus the input; the down and up blocks stride (or transpose) the
depthwise conv and have a 1x1 residual conv. The layers are PyTorch's, with CPU fast paths of their
own (:mod:`mednext_lite.fast`) that change how the sums are formed, never which.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .fast.conv import depthwise_conv, pointwise_conv, transposed_depthwise_conv
from .fast.norm import PerChannelGroupNorm, norm_pointwise
from .fast.residual import padded_sum, padded_sum_applies

NORMS = ("group", "layer")


def conv_op(spatial_dims: int, transposed: bool = False) -> type[nn.Module]:
    """Return the convolution class for ``spatial_dims`` (2 or 3), optionally transposed."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims={spatial_dims!r} is not supported: use 2 or 3")
    if transposed:
        return nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a channels-first tensor, per voxel, in 2D or 3D."""

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


class GRN(nn.Module):
    """Global response norm (ConvNeXt-V2): channels compete through their spatial L2 norm; it starts
    as the identity (``gamma`` and ``beta`` are zero)."""

    def __init__(self, num_channels: int, spatial_dims: int) -> None:
        super().__init__()
        shape = (1, num_channels) + (1,) * spatial_dims
        self.gamma = nn.Parameter(torch.zeros(shape))
        self.beta = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, ord=2, dim=tuple(range(2, x.ndim)), keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


def pad_start(x: torch.Tensor) -> torch.Tensor:
    """One zero voxel before the first of every spatial axis (2n - 1 -> 2n), as the reference pads."""
    return F.pad(x, (1, 0) * (x.ndim - 2))


def make_norm(norm: str, channels: int) -> nn.Module:
    """GroupNorm with one group per channel (the paper's choice) or a channels-first LayerNorm."""
    if norm == "group":
        return PerChannelGroupNorm(channels, eps=1e-5)
    if norm == "layer":
        return ChannelsFirstLayerNorm(channels, eps=1e-5)
    raise ValueError(f"norm={norm!r} is not supported: use one of {NORMS}")


class MedNeXtBlock(nn.Module):
    """One MedNeXt block: depthwise conv -> norm -> 1x1 expand -> GELU -> [GRN] -> 1x1 compress (+ input).

    Args:
        in_channels: channels C entering the block.
        out_channels: channels leaving it (``in_channels`` when ``None``).
        expansion_ratio: R, the width of the inverted bottleneck is R*C.
        kernel_size: k of the depthwise convolution (odd).
        spatial_dims: 2 or 3.
        norm: ``"group"`` (GroupNorm, one group per channel) or ``"layer"`` (channels-first LayerNorm).
        grn: insert a global response norm after the activation.
        residual: add the input to the output (the identity add only: the down and up blocks set it
            ``False`` and add their own ``res_conv`` instead).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        expansion_ratio: int = 4,
        kernel_size: int = 3,
        spatial_dims: int = 3,
        norm: str = "group",
        grn: bool = False,
        residual: bool = True,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        if kernel_size % 2 != 1 or kernel_size < 1:
            raise ValueError(f"kernel_size={kernel_size} must be a positive odd number, e.g. 3, 5 or 7")
        if expansion_ratio < 1:
            raise ValueError(f"expansion_ratio={expansion_ratio} must be >= 1")
        if residual and in_channels != out_channels:
            raise ValueError(
                f"an identity residual needs in_channels == out_channels, got {in_channels} -> {out_channels}: "
                "pass residual=False or equal widths"
            )
        hidden = expansion_ratio * in_channels
        self.spatial_dims = spatial_dims
        self.conv1 = self.make_conv1(spatial_dims, in_channels, kernel_size)
        self.norm = make_norm(norm, in_channels)
        self.conv2 = pointwise_conv(spatial_dims, in_channels, hidden)
        self.act = nn.GELU()
        self.grn = GRN(hidden, spatial_dims) if grn else nn.Identity()
        self.conv3 = pointwise_conv(spatial_dims, hidden, out_channels)
        self.residual = residual
        self.checkpoint_expansion = False  # recompute expansion() in backward (MedNeXt.set_grad_checkpointing)

    @staticmethod
    def make_conv1(spatial_dims: int, channels: int, kernel_size: int) -> nn.Module:
        """The block's ``conv1``: a stride-1 depthwise k^d convolution."""
        return depthwise_conv(spatial_dims, channels, kernel_size)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The block without its residual path: the depthwise conv, then :meth:`expansion`."""
        x = self.conv1(x)
        if self.checkpoint_expansion and torch.is_grad_enabled():
            return checkpoint(self.expansion, x, use_reentrant=False)
        return self.expansion(x)

    def expansion(self, x: torch.Tensor) -> torch.Tensor:
        """The block after its depthwise conv, one line per layer of the figure: the wide (R*C) part.

        The norm and the 1x1 expansion share one line, ``conv2(norm(x))``, because the CPU fast path
        folds them into one matrix product (``docs/kernels.md``).
        """
        x = norm_pointwise(x, self.norm, self.conv2)  # self.conv2(self.norm(x))
        x = self.act(x)
        x = self.grn(x)
        return self.conv3(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch(x)
        return x + y if self.residual else y


class MedNeXtDownBlock(MedNeXtBlock):
    """2x downsampling block: the MedNeXt block with a stride-2 depthwise conv and C -> 2C output.

    Its residual path is a stride-2 1x1 conv ``res_conv`` (built when ``conv_residual``); there is no
    identity add (``residual`` is ``False``).
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, *, conv_residual: bool = True,
                 **kwargs) -> None:
        out_channels = 2 * in_channels if out_channels is None else out_channels
        super().__init__(in_channels, out_channels, residual=False, **kwargs)  # no identity add: res_conv
        self.res_conv = pointwise_conv(self.spatial_dims, in_channels, out_channels, stride=2) if conv_residual else None

    @staticmethod
    def make_conv1(spatial_dims: int, channels: int, kernel_size: int) -> nn.Module:
        """The down block's ``conv1``: a stride-2 depthwise k^d convolution (PyTorch's own)."""
        return conv_op(spatial_dims)(channels, channels, kernel_size, stride=2, padding=kernel_size // 2,
                                     groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch(x)
        return y if self.res_conv is None else y + self.res_conv(x)


class MedNeXtUpBlock(MedNeXtBlock):
    """2x upsampling block: a transposed stride-2 depthwise conv and C -> C/2 output.

    The transposed conv gives 2n-1 voxels per axis, padded at the start to 2n as in the reference;
    the residual path ``res_conv`` (when ``conv_residual``) is a stride-2 1x1 transposed conv, padded alike.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, *, conv_residual: bool = True,
                 **kwargs) -> None:
        out_channels = in_channels // 2 if out_channels is None else out_channels
        super().__init__(in_channels, out_channels, residual=False, **kwargs)  # no identity add: res_conv
        self.res_conv = (
            conv_op(self.spatial_dims, transposed=True)(in_channels, out_channels, 1, stride=2) if conv_residual
            else None
        )

    @staticmethod
    def make_conv1(spatial_dims: int, channels: int, kernel_size: int) -> nn.Module:
        """The up block's ``conv1``: a stride-2 transposed depthwise k^d convolution, 2n - 1 voxels from n."""
        return transposed_depthwise_conv(spatial_dims, channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch(x)
        if self.res_conv is None:
            return pad_start(y)
        if padded_sum_applies(x, self.res_conv):
            return padded_sum(y, self.res_conv, x)  # the sum below, written into one buffer
        return pad_start(y) + pad_start(self.res_conv(x))


class Head(nn.Module):
    """1x1 conv from features to class logits (the reference's 1x1 *transposed* conv is the same map,
    its weight stored [in, out, 1...]; :mod:`mednext_lite.interop` transposes it)."""

    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int = 3) -> None:
        super().__init__()
        self.conv = pointwise_conv(spatial_dims, in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
