"""Memory layouts: which one MedNeXt runs in on each device, and converting tensors and models to it.

A layout changes where numbers sit in memory, never which numbers are computed. On CPU, oneDNN's
depthwise kernels (above all their weight gradients) are much faster channels-last (NDHWC / NHWC)
than channels-first, so ``MedNeXt`` resolves its ``"auto"`` layout here on every forward; the
measurements are in ``docs/kernels.md``.
"""

from __future__ import annotations

import torch
from torch import nn

from . import enabled

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def channels_last_format(spatial_dims: int) -> torch.memory_format:
    """The channels-last memory format for ``spatial_dims`` 2 (NHWC) or 3 (NDHWC)."""
    if spatial_dims == 2:
        return torch.channels_last
    if spatial_dims == 3:
        return torch.channels_last_3d
    raise ValueError(f"spatial_dims={spatial_dims!r} is not supported: use 2 or 3")


def preferred_memory_format(device: str | torch.device, spatial_dims: int) -> torch.memory_format:
    """The layout MedNeXt trains fastest in on ``device``: channels-last on CPU, the default elsewhere
    (on a GPU channels-last did not pay, ``docs/performance.md``) and whenever
    :func:`mednext_lite.fast.enabled` is off."""
    device = torch.device(device)
    fast = channels_last_format(spatial_dims)  # validates spatial_dims
    if device.type == "cpu" and enabled():
        return fast
    return torch.contiguous_format


def resolve_memory_format(preference: str, device: str | torch.device, spatial_dims: int) -> torch.memory_format:
    """Turn ``"auto"``, ``"channels_last"`` or ``"contiguous"`` into a ``torch.memory_format``."""
    if preference == "auto":
        return preferred_memory_format(device, spatial_dims)
    if preference == "channels_last":
        return channels_last_format(spatial_dims)
    if preference == "contiguous":
        channels_last_format(spatial_dims)
        return torch.contiguous_format
    raise ValueError(f"memory_format={preference!r} is not one of {MEMORY_FORMATS}: pick one of those")


def as_memory_format(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``x.contiguous(memory_format=...)``, where a one-channel tensor also gets channels-last strides.

    Why: PyTorch leaves a one-channel tensor's strides channels-first (both layouts hold its numbers
    in the same order), so a conv on it returns channels-first and its 32-channel output then costs a
    copy into channels-last, forward and backward. With explicit channels-last strides (the same
    memory, no copy) the conv writes channels-last itself.
    """
    x = x.contiguous(memory_format=memory_format)
    if x.shape[1] == 1 and memory_format in (torch.channels_last, torch.channels_last_3d) and x.stride(1) != 1:
        x = x.as_strided(x.shape, (x.stride(0), 1, *x.stride()[2:]))
    return x


def to_channels_last(model: nn.Module) -> nn.Module:
    """Store every conv weight channels-last and make a MedNeXt run channels-last on any device.

    ``MedNeXt`` already runs channels-last on CPU by default (see :func:`preferred_memory_format`);
    this forces it elsewhere, e.g. to compare layouts on a GPU. Returns the same model, converted in
    place. Parameters keep their shapes and values, so state dicts and optimisers are unaffected.
    """
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if param.ndim in (4, 5):
                param.data = param.data.contiguous(memory_format=channels_last_format(param.ndim - 2))
    if hasattr(model, "set_memory_format"):
        model.set_memory_format("channels_last")
    return model
