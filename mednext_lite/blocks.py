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
from torch.nn.modules import module as _module_api  # the global hook registries

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
        if x.stride(1) == 1:  # channels innermost: channels-last (one channel: see perf.as_memory_format)
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


def _stuff(t: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """A channels-last zero tensor of spatial size ``spatial`` holding ``t`` at every second position
    of every spatial axis: the input a stride-2 transposed conv sees as a stride-1 conv."""
    out = t.new_zeros((t.shape[0], *spatial, t.shape[1])).movedim(-1, 1)
    out[(...,) + (slice(None, None, 2),) * len(spatial)] = t
    return out


def _depthwise_weight_grad_2d(grad: torch.Tensor, x: torch.Tensor, k: int, stride: int = 1) -> torch.Tensor:
    """Weight gradient of a k x k depthwise conv2d(x, w, stride, padding k // 2) on NHWC tensors, in k x 3 strips.

    Why: oneDNN's NHWC depthwise weight gradient is fast for kernels at most 3 wide and much slower
    from 4 wide on. A k x k kernel's gradient is the gradient of ceil(k/3) k x 3 kernels, each seeing
    the input shifted by 3 columns: 3.0-4.6x faster than the k x k call for k = 5 and 7 at stride 1
    (32 channels at 256^2, 2 cores, benchmarks/bench_ops.py), equal to float rounding.
    """
    c, p = x.shape[1], k // 2
    if k <= 3:
        return torch.ops.aten.convolution_backward(
            grad, x, x.new_empty((c, 1, k, k)), None, [stride] * 2, [p, p], [1, 1], False, [0, 0], c,
            [False, True, False],
        )[1]
    strips, span = -(-k // 3), stride * (grad.shape[-1] - 1) + 3  # input columns one strip reads
    x_pad = F.pad(x, (p, 3 * (strips - 1) + span - p - x.shape[-1], 0, 0))
    strip_w = x.new_empty((c, 1, k, 3))
    parts = [
        torch.ops.aten.convolution_backward(
            grad, x_pad[..., 3 * s: 3 * s + span], strip_w, None, [stride] * 2, [p, 0], [1, 1], False, [0, 0], c,
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


class _TransposedDepthwiseGrad(torch.autograd.Function):
    """Stride-2 transposed depthwise convolution (the up blocks') from stride-1 and stride-2 forward convs.

    Why: PyTorch's CPU kernel for a transposed depthwise conv is slow in both directions. The same
    maths from fast kernels: forward is a stride-1 depthwise conv of the zero-stuffed input with the
    flipped kernel; grad-input is the stride-2 depthwise conv of grad-output with the kernel itself;
    grad-weight is the weight gradient of that stride-2 conv with the input in the role of
    grad-output (k x 3 strips in 2D). Forward + backward on channels-last tensors, 2 cores: 1.58-3.05x
    faster in 2D (64 channels at 128^2, 128 at 64^2; k3 and k5) and 1.37-1.61x in 3D (64 channels,
    32^3 -> 63^3) over two runs of ``benchmarks/bench_ops.py --only transposed``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        spatial, k = tuple(range(2, x.ndim)), weight.shape[-1]
        conv = F.conv3d if x.ndim == 5 else F.conv2d
        stuffed = _stuff(x, tuple(2 * n - 1 for n in x.shape[2:]))
        return conv(stuffed, weight.flip(spatial), bias, padding=k - 1 - padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        p, c, k, dims = ctx.padding, x.shape[1], weight.shape[-1], x.ndim - 2
        conv = F.conv3d if dims == 3 else F.conv2d
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = conv(grad, weight, stride=2, padding=p, groups=c)
        if ctx.needs_input_grad[1] and dims == 2:
            grad_w = _depthwise_weight_grad_2d(x, grad, k, stride=2)
        elif ctx.needs_input_grad[1]:
            grad_w = torch.ops.aten.convolution_backward(
                x, grad, weight, None, [2] * dims, [p] * dims, [1] * dims, False, [0] * dims, c, [False, True, False]
            )[1]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, *range(2, grad.ndim)))
        return grad_x, grad_w, grad_b, None


class _DepthwiseTransposed:
    """A stride-2 transposed depthwise conv that uses :class:`_TransposedDepthwiseGrad` on channels-last
    CPU tensors (outside autocast) and PyTorch's kernel otherwise."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if (output_size is None and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
                and x.is_contiguous(memory_format=channels_last_format(x.ndim - 2))):
            return _TransposedDepthwiseGrad.apply(x, self.weight, self.bias, self.padding[0])
        return super().forward(x, output_size)


class DepthwiseTransposedConv2d(_DepthwiseTransposed, nn.ConvTranspose2d):
    """2D stride-2 transposed depthwise convolution; see :class:`_TransposedDepthwiseGrad`."""


class DepthwiseTransposedConv3d(_DepthwiseTransposed, nn.ConvTranspose3d):
    """3D stride-2 transposed depthwise convolution; see :class:`_TransposedDepthwiseGrad`."""


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


def _one_2d_image(x: torch.Tensor) -> bool:
    """Whether the folded 1x1 conv can be oneDNN's NHWC conv (one 2D image: one weight, bias fused)
    rather than a batched matrix product (a per-sample weight; in 3D, PyTorch's batch-1 1x1 conv
    would return channels-first, see :class:`_Pointwise`)."""
    return x.ndim == 4 and x.shape[0] == 1


class _NormPointwise(torch.autograd.Function):
    """Per-channel GroupNorm followed by a 1x1 conv, as one matrix product of the centred input.

    Why: the norm's scale folds into the 1x1 conv's weight and its shift into the bias,
    ``W (c * rstd * gamma + beta) + b = (W * rstd * gamma) c + (W beta + b)`` with ``c`` the centred
    input, so the normalised tensor is never written or read, and the norm's backward reductions
    fall out of the matrix products the conv's backward does anyway (the sum of grad-output and the
    weight gradient); what is left of the norm's backward is one in-place update of grad-input.
    Channels-last CPU tensors only; the statistics are the two-pass ones of :class:`_PerChannelNorm`,
    as exact as PyTorch's channels-first GroupNorm + conv (``benchmarks/bench_ops.py --only normconv``
    prints both errors against float64, and the times).
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, eps, weight, bias):
        n, c = x.shape[:2]
        rows = x.movedim(1, -1).reshape(n, -1, c)  # a view: channels-last keeps channels innermost
        m = rows.shape[1]
        centred = rows - rows.sum(1, keepdim=True) / m
        rstd = torch.rsqrt((centred * centred).sum(1, keepdim=True) / m + eps)
        w = weight.flatten(1)
        w_n = w * (rstd * gamma)  # [n, out, c]: the norm's per-sample scale, folded in
        ctx.save_for_backward(centred, rstd, gamma, beta, w, w_n)
        bias = bias + w @ beta
        if _one_2d_image(x):  # oneDNN's NHWC 1x1 conv: bias fused, 1.0-1.3x the matrix product's speed
            centred_nhwc = centred.view(n, *x.shape[2:], c).movedim(-1, 1)
            return F.conv2d(centred_nhwc, w_n[0, :, :, None, None], bias)
        out = torch.baddbmm(bias, centred, w_n.transpose(1, 2))
        return out.view(n, *x.shape[2:], -1).movedim(-1, 1)

    @staticmethod
    def backward(ctx, grad):
        centred, rstd, gamma, beta, w, w_n = ctx.saved_tensors
        n, m, c = centred.shape
        if _one_2d_image(grad):
            centred_nhwc = centred.view(n, *grad.shape[2:], c).movedim(-1, 1)
            grad_x, g_w_n, g_sum = torch.ops.aten.convolution_backward(
                grad, centred_nhwc, w_n[0, :, :, None, None], [w_n.shape[1]], [1, 1], [0, 0], [1, 1], False,
                [0, 0], 1, [True, True, True],
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
        grad_x = grad_x.view(n, *grad.shape[2:], c).movedim(-1, 1)
        grad_weight = grad_weight.view(-1, c, *(1,) * (grad.ndim - 2))
        return grad_x, grad_gamma, grad_beta, None, grad_weight, grad_bias


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


def _has_hooks(module: nn.Module) -> bool:
    """Whether forward hooks (the module's own or global ones) expect to see ``module`` run."""
    return bool(module._forward_hooks or module._forward_pre_hooks
                or _module_api._global_forward_hooks or _module_api._global_forward_pre_hooks)


def make_norm(norm: str, channels: int) -> nn.Module:
    """GroupNorm with one group per channel (the paper's choice) or a channels-first LayerNorm."""
    if norm == "group":
        return PerChannelGroupNorm(channels, eps=1e-5)
    if norm == "layer":
        return ChannelsFirstLayerNorm(channels, eps=1e-5)
    raise ValueError(f"norm={norm!r} is not supported: use one of {NORMS}")


class _PaddedSum(torch.autograd.Function):
    """``pad_start(branch) + pad_start(stuffed product + bias)`` for the up block, in one output buffer.

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
        elif self.depthwise_stride == 2 and self.depthwise_transposed:
            depthwise = DepthwiseTransposedConv2d if spatial_dims == 2 else DepthwiseTransposedConv3d
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
        x = self.conv1(x)
        if self._fused_norm_applies(x):
            norm, conv = self.norm, self.conv2
            x = _NormPointwise.apply(x, norm.weight, norm.bias, norm.eps, conv.weight, conv.bias)
        else:
            x = self.conv2(self.norm(x))
        return self.conv3(self.grn(self.act(x)))

    def _fused_norm_applies(self, x: torch.Tensor) -> bool:
        """Whether norm + expansion can run as :class:`_NormPointwise`: a per-channel GroupNorm on a
        channels-last float CPU tensor outside autocast, with no hooks that would miss the two modules."""
        return (isinstance(self.norm, PerChannelGroupNorm) and x.device.type == "cpu"
                and x.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled("cpu")
                and x.is_contiguous(memory_format=channels_last_format(self.spatial_dims))
                and not any(_has_hooks(m) for m in (self.norm, self.conv2)))

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
        y = self.branch(x)
        if self.res_conv is not None and x.stride(1) == 1 and x.shape[1] > 1:  # channels-last
            return self._add_residual(y, x)
        y = self._pad_start(y)
        return y if self.res_conv is None else y + self._pad_start(self.res_conv(x))

    def _add_residual(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The padded branch output ``y`` plus the padded stride-2 1x1 transposed conv of ``x``.

        The transposed 1x1 conv writes ``x @ W`` at every second voxel and its bias everywhere else;
        after the start padding, the products sit at odd indices and the bias on all but the first
        index of every axis. So the conv is a matrix product over the input's voxels (PyTorch's CPU
        kernel runs it as a general transposed conv over the output grid), and :class:`_PaddedSum`
        writes the sum in one buffer.
        """
        product = F.linear(x.movedim(1, -1), self.res_conv.weight.flatten(1).t()).movedim(-1, 1)
        return _PaddedSum.apply(y, product, self.res_conv.bias)


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
