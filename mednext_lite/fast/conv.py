"""Convolution modules for the blocks: 1x1, depthwise and transposed depthwise, each with a CPU fast path.

Each module is the PyTorch conv it subclasses (weights, parameter names, hooks, ``isinstance``), and
its ``forward`` is one choice: the fast kernel where :func:`mednext_lite.fast.applies` says so,
PyTorch's otherwise. The kernels compute the same sums from faster ops; ``docs/kernels.md`` derives
them and gives their measured speed. The depthwise modules also run the Triton kernels of
:mod:`mednext_lite.fast.triton_depthwise` when asked to (:func:`set_kernels`, opt-in); that choice is
made here and nowhere else.
"""

from __future__ import annotations

import functools
import importlib

import torch
import torch.nn.functional as F
from torch import nn

from . import applies, enabled

#: The depthwise kernel choices: PyTorch's (with the CPU fast paths), the Triton kernels, or
#: ``"auto"``, the Triton kernels only where :data:`AUTO_TRITON` lists the GPU and the op.
KERNELS = ("pytorch", "triton", "auto")

#: GPU name (``torch.cuda.get_device_name()``) -> the ``(op, kernel size)`` pairs for which
#: ``benchmarks/gpu_kernels.py`` (run by ``benchmarks/gpu_check.sh``) measured a bf16 and fp32
#: MedNeXt training step faster with the Triton kernel than with PyTorch's; ops as in
#: ``benchmarks/triton_check.py``: ``"conv_s1"`` (the blocks') and ``"convT_s2"`` (the up blocks').
#: Empty: no GPU run has measured them yet, so ``"auto"`` runs PyTorch's kernels everywhere. The
#: script prints the entry to paste here from its measured table.
AUTO_TRITON: dict[str, frozenset[tuple[str, int]]] = {}


def _triton():
    """The Triton kernels' module, imported on first need (importing triton costs about a second)."""
    return importlib.import_module("mednext_lite.fast.triton_depthwise")


@functools.cache
def _gpu_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def check_kernels(kernels: str) -> str:
    """Return ``kernels`` if it is one of :data:`KERNELS` and can be used here, else raise naming the fix."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels={kernels!r} is not one of {KERNELS}: pick one of those ('pytorch' unless "
                         "the Triton kernels are wanted)")
    if kernels == "triton" and _triton().triton is None:
        raise RuntimeError("kernels='triton' needs triton: pip install triton (Linux), or use kernels='pytorch'")
    return kernels


def _takes_triton(module: nn.Module, x: torch.Tensor, op: str) -> bool:
    """Whether ``module`` runs ``x`` on the Triton kernels: chosen for it (``"triton"``, or ``"auto"``
    on a GPU listed in :data:`AUTO_TRITON` for this op and kernel size), the fast switch on, and the
    kernels able to run on ``x``'s device (CUDA, or any device under ``TRITON_INTERPRET=1``).
    Elsewhere (a CPU tensor, no triton) PyTorch's kernels run, as with ``"pytorch"``."""
    kernels = module.kernels
    if kernels == "pytorch" or not enabled():
        return False
    if kernels == "auto":
        if x.device.type != "cuda":
            return False
        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        if (op, module.kernel_size[0]) not in AUTO_TRITON.get(_gpu_name(index), ()):
            return False
    return _triton().available(x.device)


def _autocast_operands(x: torch.Tensor, *params: torch.Tensor | None) -> list[torch.Tensor | None]:
    """``x`` and the parameters in the autocast dtype inside an autocast region, as ``F.conv3d`` would
    run them (the Triton ops keep their inputs' dtype and cast nothing themselves)."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return [x, *params]
    dtype = torch.get_autocast_dtype(device)
    return [t if t is None or t.dtype == torch.float64 else t.to(dtype) for t in (x, *params)]


def set_kernels(model: nn.Module, kernels: str) -> nn.Module:
    """Make every depthwise module of ``model`` run ``kernels`` (one of :data:`KERNELS`); returns ``model``.

    The down blocks' stride-2 depthwise convs are PyTorch's own modules and keep PyTorch's kernel.
    """
    check_kernels(kernels)
    for module in model.modules():
        if isinstance(module, (_Depthwise, _DepthwiseTransposed)):
            module.kernels = kernels
    return model


def _for_dims(spatial_dims: int, classes: tuple[type[nn.Module], type[nn.Module]]) -> type[nn.Module]:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims={spatial_dims!r} is not supported: use 2 or 3")
    return classes[spatial_dims - 2]


# -- 1x1 ----------------------------------------------------------------------------------------------

def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int) -> torch.Tensor:
    """A 1x1 conv of a channels-last tensor as a matrix product over its channel axis, keeping the layout.

    A strided 1x1 conv is the 1x1 conv of every ``stride``-th voxel, so it slices first and skips
    3/4 (2D) or 7/8 (3D) of the work. A stride-1 2D conv stays oneDNN's NHWC conv, as fast as the
    product there. Only PyTorch ops, so autograd and autocast see through it.
    """
    if stride == 1 and x.ndim == 4:
        return F.conv2d(x, weight, bias)
    if stride > 1:
        x = x[(...,) + (slice(None, None, stride),) * (x.ndim - 2)]
    return F.linear(x.movedim(1, -1), weight.flatten(1), bias).movedim(-1, 1)


def _pytorch_would_crash(x: torch.Tensor, stride: int) -> bool:
    """Whether PyTorch 2.13's own strided 1x1 conv could crash the process on ``x``: its CPU backward on
    channels-last tensors does for some shapes (e.g. 8 -> 16 channels at 48x48, batch 2), in float32
    and under autocast alike. :func:`pointwise` computes the same conv without it, switch on or off."""
    return stride > 1 and x.device.type == "cpu" and x.shape[1] > 1 and x.stride(1) == 1


class _Pointwise:
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if applies(x) or _pytorch_would_crash(x, self.stride[0]):
            return pointwise(x, self.weight, self.bias, self.stride[0])
        return super().forward(x)


class PointwiseConv2d(_Pointwise, nn.Conv2d):
    """2D 1x1 convolution; channels-last CPU inputs run :func:`pointwise`."""


class PointwiseConv3d(_Pointwise, nn.Conv3d):
    """3D 1x1 convolution; channels-last CPU inputs run :func:`pointwise`."""


def pointwise_conv(spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1) -> nn.Module:
    """A 1x1 convolution for ``spatial_dims`` 2 or 3."""
    cls = _for_dims(spatial_dims, (PointwiseConv2d, PointwiseConv3d))
    return cls(in_channels, out_channels, kernel_size=1, stride=stride)


# -- depthwise, stride 1 ------------------------------------------------------------------------------

def _conv(x: torch.Tensor):
    return F.conv3d if x.ndim == 5 else F.conv2d


def depthwise_weight_grad_2d(grad: torch.Tensor, x: torch.Tensor, k: int, stride: int = 1) -> torch.Tensor:
    """Weight gradient of a k x k depthwise conv2d(x, w, stride, padding k // 2) on NHWC tensors, in k x 3 strips.

    Why: oneDNN's NHWC depthwise weight gradient is fast for kernels at most 3 wide and much slower
    from 4 wide on. A k x k kernel's gradient is the gradient of ceil(k/3) k x 3 kernels, each seeing
    the input shifted by 3 columns; equal to float rounding.
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

    Why: on CPU, oneDNN's backward of a channels-last depthwise conv is far slower than its forward
    (figures: docs/kernels.md). The
    same gradients come from convs that run at forward speed: grad-input is the conv of grad-output
    with the flipped kernel, and grad-weight the correlation of the padded input with grad-output,
    a depthwise conv whose *kernel* is grad-output (batch folded into each group's input channels).
    In 2D that folded conv is slow (a 256^2 "kernel"): :func:`depthwise_weight_grad_2d` instead.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return _conv(x)(x, weight, bias, padding=padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        p, (n, c), spatial, conv = ctx.padding, x.shape[:2], tuple(range(2, x.ndim)), _conv(x)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = conv(grad, weight.flip(spatial), padding=p, groups=c)
        if ctx.needs_input_grad[1] and x.ndim == 4:
            grad_w = depthwise_weight_grad_2d(grad, x, weight.shape[-1])
        elif ctx.needs_input_grad[1]:
            # group c of this conv: its n input channels are x[:, c] (padded), its one kernel grad[:, c]
            x_pad = F.pad(x, (p, p) * len(spatial))
            x_groups = x_pad.transpose(0, 1).reshape(1, c * n, *x_pad.shape[2:])
            grad_w = conv(x_groups, grad.transpose(0, 1), groups=c).reshape(weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, *spatial))
        return grad_x, grad_w, grad_b, None


class _Depthwise:
    kernels = "pytorch"  # see set_kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _takes_triton(self, x, "conv_s1"):
            x, weight, bias = _autocast_operands(x, self.weight, self.bias)
            return _triton().depthwise_conv(x, weight, bias, stride=1, padding=self.padding[0])
        if applies(x):
            return _DepthwiseGrad.apply(x, self.weight, self.bias, self.padding[0])
        return super().forward(x)


class DepthwiseConv2d(_Depthwise, nn.Conv2d):
    """2D stride-1 depthwise convolution; channels-last CPU inputs run :class:`_DepthwiseGrad`."""


class DepthwiseConv3d(_Depthwise, nn.Conv3d):
    """3D stride-1 depthwise convolution; channels-last CPU inputs run :class:`_DepthwiseGrad`."""


def depthwise_conv(spatial_dims: int, channels: int, kernel_size: int) -> nn.Module:
    """A stride-1 depthwise k^d convolution with 'same' padding."""
    cls = _for_dims(spatial_dims, (DepthwiseConv2d, DepthwiseConv3d))
    return cls(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)


# -- transposed depthwise, stride 2 -------------------------------------------------------------------

def _zero_stuffed(t: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """A channels-last zero tensor of spatial size ``spatial`` holding ``t`` at every second position
    of every spatial axis: the input a stride-2 transposed conv sees as a stride-1 conv."""
    out = t.new_zeros((t.shape[0], *spatial, t.shape[1])).movedim(-1, 1)
    out[(...,) + (slice(None, None, 2),) * len(spatial)] = t
    return out


class _TransposedDepthwiseGrad(torch.autograd.Function):
    """Stride-2 transposed depthwise convolution (the up blocks') from stride-1 and stride-2 forward convs.

    Why: PyTorch's CPU kernel for a transposed depthwise conv is slow in both directions. The same
    maths from fast kernels: forward is a stride-1 depthwise conv of the zero-stuffed input with the
    flipped kernel; grad-input is the stride-2 depthwise conv of grad-output with the kernel itself;
    grad-weight is the weight gradient of that stride-2 conv with the input in the role of
    grad-output (k x 3 strips in 2D).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        spatial, k = tuple(range(2, x.ndim)), weight.shape[-1]
        stuffed = _zero_stuffed(x, tuple(2 * n - 1 for n in x.shape[2:]))
        return _conv(x)(stuffed, weight.flip(spatial), bias, padding=k - 1 - padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        p, c, k, dims = ctx.padding, x.shape[1], weight.shape[-1], x.ndim - 2
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _conv(x)(grad, weight, stride=2, padding=p, groups=c)
        if ctx.needs_input_grad[1] and dims == 2:
            grad_w = depthwise_weight_grad_2d(x, grad, k, stride=2)
        elif ctx.needs_input_grad[1]:
            grad_w = torch.ops.aten.convolution_backward(
                x, grad, weight, None, [2] * dims, [p] * dims, [1] * dims, False, [0] * dims, c, [False, True, False]
            )[1]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, *range(2, grad.ndim)))
        return grad_x, grad_w, grad_b, None


class _DepthwiseTransposed:
    kernels = "pytorch"  # see set_kernels

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is None and _takes_triton(self, x, "convT_s2"):
            x, weight, bias = _autocast_operands(x, self.weight, self.bias)
            return _triton().depthwise_conv_transpose(x, weight, bias, stride=2, padding=self.padding[0])
        if output_size is None and applies(x):
            return _TransposedDepthwiseGrad.apply(x, self.weight, self.bias, self.padding[0])
        return super().forward(x, output_size)


class DepthwiseTransposedConv2d(_DepthwiseTransposed, nn.ConvTranspose2d):
    """2D stride-2 transposed depthwise convolution; channels-last CPU inputs run
    :class:`_TransposedDepthwiseGrad`."""


class DepthwiseTransposedConv3d(_DepthwiseTransposed, nn.ConvTranspose3d):
    """3D stride-2 transposed depthwise convolution; channels-last CPU inputs run
    :class:`_TransposedDepthwiseGrad`."""


def transposed_depthwise_conv(spatial_dims: int, channels: int, kernel_size: int) -> nn.Module:
    """A stride-2 transposed depthwise k^d convolution, padding k // 2: 2n - 1 voxels from n."""
    cls = _for_dims(spatial_dims, (DepthwiseTransposedConv2d, DepthwiseTransposedConv3d))
    return cls(channels, channels, kernel_size, stride=2, padding=kernel_size // 2, groups=channels)
