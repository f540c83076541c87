"""UpKern: initialise a large-kernel MedNeXt from a trained small-kernel one (2D and 3D).

Every tensor whose shape matches is copied; every convolution weight that differs only in its
spatial kernel size is resized by (bi/tri)linear interpolation with ``align_corners=False``; any
other difference is refused with an error naming the tensor. The result is a report, not prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_checkpoint, state_dict_of

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


class UpKernError(ValueError):
    """The source cannot initialise the target (a tensor differs in more than kernel size)."""


def upkern_tensor(weight: torch.Tensor, kernel_size: int | tuple[int, ...]) -> torch.Tensor:
    """Resize a conv weight ``[out, in/groups, *k]`` to a new spatial kernel size.

    The spatial axes are interpolated linearly per (out, in) kernel with ``align_corners=False``,
    exactly as ``torch.nn.functional.interpolate`` does.
    """
    spatial = weight.ndim - 2
    if spatial not in _MODES:
        raise ValueError(f"expected a conv weight with 1-3 spatial axes, got shape {tuple(weight.shape)}")
    size = (kernel_size,) * spatial if isinstance(kernel_size, int) else tuple(kernel_size)
    if len(size) != spatial:
        raise ValueError(f"kernel_size {size} has {len(size)} axes but the weight has {spatial} spatial axes")
    out = F.interpolate(weight.detach().float(), size=size, mode=_MODES[spatial], align_corners=False)
    return out.to(weight.dtype)


@dataclass
class UpKernReport:
    """What :func:`upkern` did to each tensor of the target."""

    copied: list[str] = field(default_factory=list)
    resized: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused

    def summary(self) -> str:
        return (f"UpKern: {len(self.copied)} tensors copied, {len(self.resized)} kernels resized, "
                f"{len(self.refused)} refused")

    def __str__(self) -> str:
        lines = [self.summary()]
        lines += [f"  resized {n}: {list(a)} -> {list(b)}" for n, a, b in self.resized]
        lines += [f"  REFUSED {n}: {why}" for n, why in self.refused]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>resized</td><td><code>{n}</code></td><td>{list(a)} &rarr; {list(b)}</td></tr>"
                       for n, a, b in self.resized)
        rows += "".join(f"<tr><td><b>refused</b></td><td><code>{n}</code></td><td>{why}</td></tr>"
                        for n, why in self.refused)
        return (f"<p><b>{self.summary()}</b></p><table><tr><th>action</th><th>tensor</th><th>detail</th></tr>"
                f"{rows}</table>")


def _source_state(source: nn.Module | dict | str | Path) -> dict[str, torch.Tensor]:
    if isinstance(source, nn.Module):
        return source.state_dict()
    if isinstance(source, (str, Path)):
        return state_dict_of(load_checkpoint(source))
    if isinstance(source, dict):
        return state_dict_of(source)
    raise TypeError(f"source must be a model, a state dict or a checkpoint path, got {type(source).__name__}")


def upkern(target: nn.Module, source: nn.Module | dict | str | Path, *, strict: bool = True) -> UpKernReport:
    """Initialise ``target`` (e.g. a k5 MedNeXt) in place from ``source`` (e.g. a trained k3 one).

    Args:
        target: the model to initialise; modified in place.
        source: a model, a state dict (ours, or a checkpoint dict holding one) or a checkpoint path.
        strict: raise :class:`UpKernError` when any tensor is refused or missing (default); with
            ``strict=False`` refused tensors keep their fresh initialisation and are listed.

    Returns:
        An :class:`UpKernReport` listing what was copied, resized and refused.
    """
    src = _source_state(source)
    report = UpKernReport()
    new_state: dict[str, Any] = {}
    target_state = target.state_dict()
    for name, tgt in target_state.items():
        if name not in src:
            report.refused.append((name, "missing from the source"))
            continue
        s = src[name]
        if s.shape == tgt.shape:
            new_state[name] = s.to(dtype=tgt.dtype)
            report.copied.append(name)
        elif s.ndim == tgt.ndim >= 3 and s.shape[:2] == tgt.shape[:2]:
            new_state[name] = upkern_tensor(s, tuple(tgt.shape[2:])).to(dtype=tgt.dtype)
            report.resized.append((name, tuple(s.shape[2:]), tuple(tgt.shape[2:])))
        else:
            report.refused.append((name, (f"source shape {list(s.shape)} vs target {list(tgt.shape)}: "
                                          "not a kernel-size difference (width, depth or class count differ)")))
    extra = sorted(set(src) - set(target_state))
    for name in extra:
        report.refused.append((name, "in the source but not in the target"))
    if strict and report.refused:
        raise UpKernError(
            f"UpKern refused {len(report.refused)} tensor(s); source and target must differ only in kernel size:\n"
            + "\n".join(f"  {n}: {why}" for n, why in report.refused)
            + "\nbuild the target with the source's widths, depths and classes, or pass strict=False"
        )
    target.load_state_dict(new_state, strict=False)
    return report
