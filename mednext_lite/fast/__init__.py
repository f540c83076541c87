"""CPU fast paths for MedNeXt's layers: they change where numbers sit or how they are summed, never the maths.

Every fast path asks one predicate, :func:`applies`, whether a tensor may take it, and one switch,
:func:`enabled`, turns all of them off (plain PyTorch kernels, as the reference runs them; the
``"auto"`` memory layout then resolves to the default channels-first one too). What each path
computes, why it is the same maths and what it gains: ``docs/kernels.md``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _module_api  # the global hook registries

_enabled = True


def enabled(flag: bool | None = None) -> bool:
    """Return whether the fast paths are on; with ``flag``, first turn them on or off.

    Returns the setting in force before the call, so ``previous = fast.enabled(False)`` followed by
    ``fast.enabled(previous)`` restores it. Process-wide (not per thread).
    """
    global _enabled
    previous = _enabled
    if flag is not None:
        if not isinstance(flag, bool):
            raise TypeError(f"flag={flag!r} must be True, False or None (to only read the switch)")
        _enabled = flag
    return previous


def _has_hooks(module: nn.Module) -> bool:
    """Whether ``module`` carries forward or backward hooks of its own."""
    return bool(module._forward_hooks or module._forward_pre_hooks
                or module._backward_hooks or module._backward_pre_hooks)


def _global_hooks() -> bool:
    """Whether hooks registered for every module are waiting to see modules run."""
    return bool(_module_api._global_forward_hooks or _module_api._global_forward_pre_hooks
                or _module_api._global_backward_hooks or _module_api._global_backward_pre_hooks)


def applies(x: torch.Tensor, *modules: nn.Module) -> bool:
    """Whether ``x`` may take a fast path: the switch on, a float32/float64 CPU tensor outside CPU
    autocast (whose dtypes a hand-written backward would not see), 4-D or 5-D and channels-last.

    ``modules`` are those a fast path runs without calling them (a norm folded into a conv): with
    hooks on any of them, or hooks registered for all modules, the path does not apply, so every
    hook sees its module run. Channels-last means channels innermost (``x.stride(1) == 1``) too: a
    one-channel channels-first tensor passes PyTorch's channels-last contiguity test, and taking a
    fast path would hand it on channels-last (see :func:`mednext_lite.fast.layout.as_memory_format`).
    """
    if not (_enabled and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.ndim in (4, 5)):
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    layout = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
    if not (x.stride(1) == 1 and x.is_contiguous(memory_format=layout)):
        return False
    return not modules or not (_global_hooks() or any(_has_hooks(m) for m in modules))
