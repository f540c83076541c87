"""Run MedNeXt at its fastest on the device at hand, with the maths unchanged.

The network's cost is dominated by depthwise k^d convolutions, whose speed depends far more on the
memory layout than on anything else: on CPU, oneDNN's depthwise kernels (and above all their
weight gradients) are an order of magnitude faster in channels-last layout (NDHWC / NHWC) than in
PyTorch's default channels-first one. A layout changes where numbers sit in memory, never which
numbers are computed, so results agree to float rounding. This module picks the layout per device
(``MedNeXt`` asks it on every forward, so the fast path is the default), converts models
explicitly when wanted, and lists the other speed switches for a device in one place.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def channels_last_format(spatial_dims: int) -> torch.memory_format:
    """The channels-last memory format for ``spatial_dims`` 2 (NHWC) or 3 (NDHWC)."""
    if spatial_dims == 2:
        return torch.channels_last
    if spatial_dims == 3:
        return torch.channels_last_3d
    raise ValueError(f"spatial_dims={spatial_dims!r} is not supported: use 2 or 3")


def preferred_memory_format(device: str | torch.device, spatial_dims: int) -> torch.memory_format:
    """The layout MedNeXt trains fastest in on ``device``.

    CPU, 3D and 2D: channels-last. 3D: a depthwise conv's forward + backward on 32 channels at 64^3
    measured 4x (k3) and 17x (k5) faster than channels-first on 2 EPYC cores; whole S step 1.8x / 3.5x.
    2D (256^2): 1.07-1.27x (k3) and 1.34-1.50x (k5) the speed of MONAI's channels-first step of the
    same maths over seven runs (benchmarks/results/cpu_2026-11-27_b.md), once the norm, the 1x1
    convs and the depthwise convs got channels-last versions of their own (see
    :mod:`mednext_lite.blocks`; before those, channels-last measured 0.87x in 2D). Other devices: the default layout; on one H100,
    channels-last made a bf16 S step 0.85x as fast at k3 and 1.05x at k5 (README, "GPU").
    """
    device = torch.device(device)
    fast = channels_last_format(spatial_dims)  # validates spatial_dims
    if device.type == "cpu":
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
        for name, param in list(module.named_parameters(recurse=False)):
            if param.ndim in (4, 5):
                fmt = channels_last_format(param.ndim - 2)
                param.data = param.data.contiguous(memory_format=fmt)
    if hasattr(model, "set_memory_format"):
        model.set_memory_format("channels_last")
    return model


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt() parameter numbers
_INT_MAX = 2**31 - 1


def keep_freed_memory(threshold_bytes: int = 2**30) -> bool:
    """Let this process reuse freed CPU tensor memory instead of handing it back to the OS each time.

    Why: glibc serves every allocation above 32 MiB (a 3D feature map of 32 channels at 64^3 is
    33.5 MiB) with a fresh ``mmap`` and returns it on ``free``, so each such tensor pays page faults
    and zero-filling again, many times per training step. Raising glibc's mmap and trim thresholds
    to ``threshold_bytes`` keeps those blocks in the heap for the next step. Measured on a MedNeXt-S
    k3 64^3 CPU training step (2 cores): 4.87 s -> 2.17 s (``benchmarks/bench_model.py --only alloc``);
    MONAI's network gains alike (``--keep-freed-memory``; benchmarks/results/cpu_2026-11-27_b.md). The price: the process
    keeps its peak memory after a peak. Process-wide, so call it once, early (the trainer does on
    CPU). Returns ``False`` where the C library has no ``mallopt`` (macOS, musl, Windows).
    """
    if not 0 < threshold_bytes <= _INT_MAX:
        raise ValueError(f"threshold_bytes={threshold_bytes} must be in 1..{_INT_MAX} (mallopt takes a C int)")
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim = min(2 * threshold_bytes, _INT_MAX)
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))


def fastest_settings(device: str | torch.device) -> dict[str, Any]:
    """The speed switches for ``device``, as one dict a training or inference script can apply.

    Keys: ``memory_format`` (the string for ``MedNeXt.set_memory_format``), ``autocast_dtype``
    (``torch.bfloat16`` on GPUs that support it, else ``None``: CPU autocast is left off, since it
    changes the numbers and the CPU benchmarks measure float32), ``compile`` (whether to
    ``torch.compile``: it made an H100 training step 1.31x (k3) / 1.14x (k5) faster with bf16, but
    compiling that step took tens of seconds at least, so ``False``; see the README's GPU table),
    ``cudnn_benchmark`` (let cuDNN pick its fastest algorithm for a fixed patch size),
    ``keep_freed_memory`` (call :func:`keep_freed_memory` once: on CPU, unless memory is what
    you are short of, e.g. with gradient checkpointing).
    """
    device = torch.device(device)
    if device.type == "cuda":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return {"memory_format": "auto", "autocast_dtype": torch.bfloat16 if bf16 else None,
                "compile": False, "cudnn_benchmark": True, "keep_freed_memory": False}
    return {"memory_format": "auto", "autocast_dtype": None, "compile": False, "cudnn_benchmark": False,
            "keep_freed_memory": True}
