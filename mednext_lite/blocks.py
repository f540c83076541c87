"""The MedNeXt building blocks, written once for 2D and 3D.

Every block follows the paper's figure: a depthwise k^d convolution, a per-channel norm, a 1x1
expansion to R*C channels, GELU, an optional global response norm, and a 1x1 compression. The down
and up blocks are the same block with a strided (or transposed) depthwise convolution and their own
1x1 residual path. The spatial dimensionality is chosen once, through :func:`conv_op`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .perf import channels_last_format

NORMS = ("group", "layer")


def conv_op(spatial_dims: int, transposed: bool = False) -> type[nn.Module]:
    """Return the convolution class for ``spatial_dims`` (2 or 3), optionally transposed."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims={spatial_dims!r} is not supported: use 2 or 3")
    if transposed:
        return nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


class _Pointwise:
    """A 1x1 convolution that runs as one matrix product over the channel axis when its input is
    channels-last (NHWC / NDHWC), and as the ordinary convolution otherwise.

    Why: for batch-1 inputs below ~20k rows PyTorch routes a 1x1 conv to a native kernel that
    returns channels-first, so the network's layout flipped back and forth (a copy each time);
    ``F.linear`` on the channels-last view keeps the layout and measured 1.2-1.5x faster forward +
    backward than the conv (benchmarks/bench_model.py, 2-core EPYC). Weight shape, parameter names,
    hooks and ``isinstance(m, nn.ConvNd)`` are those of the conv, so nothing else notices.

    A strided 1x1 conv is a 1x1 conv of every ``stride``-th voxel: on channels-last tensors it
    slices first, which skips 3/4 (2D) or 7/8 (3D) of the work and sidesteps PyTorch 2.13's CPU
    backward of strided 1x1 convs on channels-last tensors, which crashes the process for some
    shapes (e.g. 8 -> 16 channels at 48x48, batch 2). Channels-first inputs run the ordinary
    convolution, bit for bit the reference's kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.stride(1) == 1 and x.shape[1] > 1:  # channels innermost: channels-last
            step = self.stride[0]
            if step == 1 and x.ndim == 4:  # 2D: oneDNN's NHWC 1x1 conv keeps NHWC; 0.85-1.44x F.linear's speed
                return super().forward(x)
            if step > 1:
                x = x[(...,) + (slice(None, None, step),) * (x.ndim - 2)]
            return F.linear(x.movedim(1, -1), self.weight.flatten(1), self.bias).movedim(-1, 1)
        return super().forward(x)


class PointwiseConv2d(_Pointwise, nn.Conv2d):
    """2D 1x1 convolution; see :class:`_Pointwise`."""


class PointwiseConv3d(_Pointwise, nn.Conv3d):
    """3D 1x1 convolution; see :class:`_Pointwise`."""


def pointwise_conv(spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1) -> nn.Module:
    """A 1x1 convolution for ``spatial_dims`` 2 or 3, fast in both memory layouts."""
    conv_op(spatial_dims)  # validates spatial_dims
    cls = PointwiseConv2d if spatial_dims == 2 else PointwiseConv3d
    return cls(in_channels, out_channels, kernel_size=1, stride=stride)


def _depthwise_weight_grad_2d(grad: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
    """Weight gradient of a stride-1, 'same'-padded k x k depthwise conv on NHWC tensors, in k x 3 strips.

    Why: oneDNN's NHWC depthwise weight gradient is fast for kernels at most 3 wide and much slower
    from 4 wide on. A k x k kernel's gradient is the gradient of ceil(k/3) k x 3 kernels, each seeing
    the input shifted by 3 columns: 3.0-4.6x faster than the k x k call for k = 5 and 7 (32 channels
    at 256^2, 2 cores, benchmarks/bench_ops.py), equal to float rounding.
    """
    c, p, width = x.shape[1], k // 2, x.shape[-1]
    if k <= 3:
        return torch.ops.aten.convolution_backward(
            grad, x, x.new_empty((c, 1, k, k)), None, [1, 1], [p, p], [1, 1], False, [0, 0], c, [False, True, False]
        )[1]
    strips = -(-k // 3)
    x_pad = F.pad(x, (p, p + 3 * strips - k, 0, 0))
    strip_w = x.new_empty((c, 1, k, 3))
    parts = [
        torch.ops.aten.convolution_backward(
            grad, x_pad[..., 3 * s: 3 * s + width + 2], strip_w, None, [1, 1], [p, 0], [1, 1], False, [0, 0], c,
            [False, True, False],
        )[1]
        for s in range(strips)
    ]
    return torch.cat(parts, dim=-1)[..., :k]


class _DepthwiseGrad(torch.autograd.Function):
    """Stride-1 depthwise convolution whose backward pass is made of forward-direction convolutions.

    Why: on CPU, oneDNN's backward of a channels-last depthwise conv costs ~10x its forward. The
    same gradients come from two depthwise convs that run at forward speed: grad-input is the conv
    of grad-output with the flipped kernel, and grad-weight is the correlation of the padded input
    with grad-output, i.e. a depthwise conv whose *kernel* is grad-output (batch folded into the
    group's input channels). Measured on 32 channels at 64^3, 2 cores: 2x (k3) to 1.4-2.7x (k5)
    faster backward; values agree to float rounding. In 2D that folded conv is slow (a 256^2
    "kernel"), so the 2D weight gradient comes from :func:`_depthwise_weight_grad_2d` instead.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        conv = F.conv3d if x.ndim == 5 else F.conv2d
        return conv(x, weight, bias, padding=padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        p, (n, c), spatial = ctx.padding, x.shape[:2], tuple(range(2, x.ndim))
        conv = F.conv3d if x.ndim == 5 else F.conv2d
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = conv(grad, weight.flip(spatial), padding=p, groups=c)
        if ctx.needs_input_grad[1] and x.ndim == 4:
            grad_w = _depthwise_weight_grad_2d(grad, x, weight.shape[-1])
        elif ctx.needs_input_grad[1]:
            # group c of this conv: its n input channels are x[:, c] (padded), its one kernel grad[:, c]
            x_pad = F.pad(x, (p, p) * len(spatial))
            x_groups = x_pad.transpose(0, 1).reshape(1, c * n, *x_pad.shape[2:])
            grad_w = conv(x_groups, grad.transpose(0, 1), groups=c).reshape(weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, *spatial))
        return grad_x, grad_w, grad_b, None


class _Depthwise:
    """A stride-1 depthwise convolution that uses :class:`_DepthwiseGrad` on channels-last CPU tensors
    (outside autocast, whose dtypes the hand-written backward would not see)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
                and x.is_contiguous(memory_format=channels_last_format(x.ndim - 2))):
            return _DepthwiseGrad.apply(x, self.weight, self.bias, self.padding[0])
        return super().forward(x)


class DepthwiseConv2d(_Depthwise, nn.Conv2d):
    """2D stride-1 depthwise convolution; see :class:`_DepthwiseGrad`."""


class DepthwiseConv3d(_Depthwise, nn.Conv3d):
    """3D stride-1 depthwise convolution; see :class:`_DepthwiseGrad`."""


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a channels-first tensor, per pixel/voxel.

    Works for any number of spatial dims (the reference's version broadcasts its affine for 3D only).
    """

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
    """Global response normalisation (ConvNeXt-V2): channels compete through their spatial L2 norm.

    ``gamma`` and ``beta`` start at zero, so a freshly built GRN is the identity.
    """

    def __init__(self, num_channels: int, spatial_dims: int) -> None:
        super().__init__()
        shape = (1, num_channels) + (1,) * spatial_dims
        self.gamma = nn.Parameter(torch.zeros(shape))
        self.beta = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, ord=2, dim=tuple(range(2, x.ndim)), keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class _PerChannelNorm(torch.autograd.Function):
    """GroupNorm with one group per channel on a channels-last CPU tensor, in a few memory passes.

    Why: PyTorch's channels-last CPU GroupNorm is 1.6-2.9x slower than this in 2D (forward + backward,
    32-128 channels at 64^2-256^2, 2 cores; about equal at 32 channels x 64^3) and 26-260x less exact:
    3e-5 to 3e-4 against 1e-6 from a float64 run, which is what the channels-first kernel and this
    reach (benchmarks/bench_ops.py). The statistics are two-pass
    (mean, then the mean square of the centred values) and the centred values are kept for backward.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        n, c = x.shape[:2]
        rows = x.movedim(1, -1).reshape(n, -1, c)  # a view: channels-last keeps channels innermost
        m = rows.shape[1]
        centred = rows - rows.sum(1, keepdim=True) / m
        rstd = torch.rsqrt((centred * centred).sum(1, keepdim=True) / m + eps)
        ctx.save_for_backward(centred, weight, rstd)
        y = torch.addcmul(bias, centred, rstd * weight)
        return y.view(n, *x.shape[2:], c).movedim(-1, 1)

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
        grad_x = grad_x.view(n, *grad.shape[2:], c).movedim(-1, 1)
        return grad_x, sum_g_xhat.sum(0).view(c), sum_g.sum(0).view(c), None


class PerChannelGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` with one group per channel that runs :class:`_PerChannelNorm` on channels-last
    float CPU tensors and PyTorch's kernel otherwise. Parameters and state-dict keys are GroupNorm's."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__(num_groups=channels, num_channels=channels, eps=eps, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.ndim in (4, 5)
                and x.is_contiguous(memory_format=channels_last_format(x.ndim - 2))):
            return _PerChannelNorm.apply(x, self.weight, self.bias, self.eps)
        return super().forward(x)


def make_norm(norm: str, channels: int) -> nn.Module:
    """GroupNorm with one group per channel (the paper's choice) or a channels-first LayerNorm."""
    if norm == "group":
        return PerChannelGroupNorm(channels, eps=1e-5)
    if norm == "layer":
        return ChannelsFirstLayerNorm(channels, eps=1e-5)
    raise ValueError(f"norm={norm!r} is not supported: use one of {NORMS}")


class MedNeXtBlock(nn.Module):
    """One MedNeXt block: depthwise conv -> norm -> 1x1 expand -> GELU -> [GRN] -> 1x1 compress.

    Args:
        in_channels: channels C entering the block.
        out_channels: channels leaving it (``in_channels`` when ``None``).
        expansion_ratio: R, the width of the inverted bottleneck is R*C.
        kernel_size: k of the depthwise convolution (odd).
        spatial_dims: 2 or 3.
        norm: ``"group"`` (GroupNorm, one group per channel) or ``"layer"`` (channels-first LayerNorm).
        grn: insert a global response norm after the activation.
        residual: add the input to the output (only meaningful when in and out widths agree).
    """

    depthwise_stride = 1
    depthwise_transposed = False

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
        depthwise = conv_op(spatial_dims, self.depthwise_transposed)  # validates spatial_dims
        if self.depthwise_stride == 1 and not self.depthwise_transposed:
            depthwise = DepthwiseConv2d if spatial_dims == 2 else DepthwiseConv3d
        hidden = expansion_ratio * in_channels
        self.spatial_dims = spatial_dims
        self.conv1 = depthwise(
            in_channels, in_channels, kernel_size,
            stride=self.depthwise_stride, padding=kernel_size // 2, groups=in_channels,
        )
        self.norm = make_norm(norm, in_channels)
        self.conv2 = pointwise_conv(spatial_dims, in_channels, hidden)
        self.act = nn.GELU()
        self.grn = GRN(hidden, spatial_dims) if grn else nn.Identity()
        self.conv3 = pointwise_conv(spatial_dims, hidden, out_channels)
        if residual and in_channels != out_channels:
            raise ValueError(
                f"an identity residual needs in_channels == out_channels, got {in_channels} -> {out_channels}: "
                "pass residual=False or equal widths"
            )
        self.residual = residual

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The block without its residual path."""
        return self.conv3(self.grn(self.act(self.conv2(self.norm(self.conv1(x))))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch(x)
        return x + y if self.residual else y


class MedNeXtDownBlock(MedNeXtBlock):
    """2x downsampling block: the MedNeXt block with a stride-2 depthwise conv and C -> 2C output.

    The residual path is a stride-2 1x1 conv (``residual=True``); there is no identity add.
    """

    depthwise_stride = 2

    def __init__(self, in_channels: int, out_channels: int | None = None, *, residual: bool = True, **kwargs) -> None:
        out_channels = 2 * in_channels if out_channels is None else out_channels
        super().__init__(in_channels, out_channels, residual=False, **kwargs)
        self.res_conv = pointwise_conv(self.spatial_dims, in_channels, out_channels, stride=2) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch(x)
        return y if self.res_conv is None else y + self.res_conv(x)


class MedNeXtUpBlock(MedNeXtBlock):
    """2x upsampling block: a transposed stride-2 depthwise conv and C -> C/2 output.

    The transposed conv gives 2n-1 voxels per axis; one voxel is padded at the start (low-index
    side) of every spatial axis to reach 2n, as in the reference implementation. The residual path
    is a stride-2 1x1 transposed conv, padded the same way.
    """

    depthwise_stride = 2
    depthwise_transposed = True

    def __init__(self, in_channels: int, out_channels: int | None = None, *, residual: bool = True, **kwargs) -> None:
        out_channels = in_channels // 2 if out_channels is None else out_channels
        super().__init__(in_channels, out_channels, residual=False, **kwargs)
        self.res_conv = (
            conv_op(self.spatial_dims, transposed=True)(in_channels, out_channels, 1, stride=2) if residual else None
        )

    def _pad_start(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (1, 0) * self.spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._pad_start(self.branch(x))
        return y if self.res_conv is None else y + self._pad_start(self.res_conv(x))


class Head(nn.Module):
    """1x1 convolution from features to class logits.

    The reference uses a 1x1 *transposed* conv, which is the same map with its weight stored as
    [in, out, 1...]; we use a plain conv and transpose the weight in :mod:`mednext_lite.interop`.
    """

    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int = 3) -> None:
        super().__init__()
        self.conv = pointwise_conv(spatial_dims, in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
