"""Profiling a MedNeXt: parameters, convolution MACs, receptive field and step memory.

MACs are counted on PyTorch's ``meta`` device: the network runs on shapes only, so MedNeXt-L on a
128^3 input is counted in about a second and allocates nothing. Memory is measured for real:
CUDA allocator statistics on a GPU, the peak resident set size of a fresh child process on CPU.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import queue as queue_module
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .model import LEVELS, MedNeXt, MedNeXtConfig
from .variants import FAMILIES, PRESETS, preset_config, preset_names

_CONVS = (nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose2d, nn.ConvTranspose3d)


def count_parameters(model: nn.Module | MedNeXtConfig, trainable_only: bool = False) -> int:
    """Number of parameters of a model (or of the model a config builds, counted on ``meta``)."""
    if isinstance(model, MedNeXtConfig):
        with torch.device("meta"):
            model = MedNeXt(model)
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _conv_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    kernel = math.prod(module.kernel_size)
    if isinstance(module, _TRANSPOSED):
        # every input voxel is scattered through the kernel into out_channels/groups outputs
        return inp.numel() * kernel * module.out_channels // module.groups
    return out.numel() * kernel * module.in_channels // module.groups


def count_macs(model: nn.Module | MedNeXtConfig, input_size: Sequence[int], batch_size: int = 1) -> int:
    """Multiply-accumulates of all convolutions for one forward pass at ``input_size`` (spatial).

    Runs on the ``meta`` device, so it is fast and memory-free for any model size.
    """
    config = model if isinstance(model, MedNeXtConfig) else getattr(model, "config", None)
    if config is None:
        raise TypeError("count_macs needs a MedNeXt or a MedNeXtConfig")
    input_size = tuple(int(s) for s in input_size)
    if len(input_size) != config.spatial_dims:
        raise ValueError(f"input_size {input_size} has {len(input_size)} axes; this is a {config.spatial_dims}D model")
    with torch.device("meta"):
        net = MedNeXt(config).eval()
    total = 0

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += _conv_macs(module, args[0], out)

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, _CONVS + _TRANSPOSED)]
    try:
        with torch.no_grad():
            net(torch.empty(batch_size, config.in_channels, *input_size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return total


def _support_path(x: torch.Tensor, config: MedNeXtConfig) -> torch.Tensor:
    """The network's spatial wiring along one axis, with all-ones kernels on a 1-channel signal.

    1x1 convs, GELU and GRN do not move information between positions and are left out; so is
    GroupNorm, whose per-image statistics reach everywhere but carry no local structure.
    """
    import torch.nn.functional as F

    def ones(k: int) -> torch.Tensor:
        return torch.ones(1, 1, k, dtype=x.dtype)

    def block(x: torch.Tensor, k: int) -> torch.Tensor:
        y = F.conv1d(x, ones(k), padding=k // 2)
        return x + y if config.residual else y

    def down(x: torch.Tensor, k: int) -> torch.Tensor:
        y = F.conv1d(x, ones(k), stride=2, padding=k // 2)
        return y + x[..., ::2] if config.residual_up_down else y

    def up(x: torch.Tensor, k: int) -> torch.Tensor:
        y = F.pad(F.conv_transpose1d(x, ones(k), stride=2, padding=k // 2), (1, 0))
        if config.residual_up_down:
            y = y + F.pad(F.conv_transpose1d(x, ones(1), stride=2), (1, 0))
        return y

    ke, kd, b = config.enc_kernel_size, config.dec_kernel_size, config.block_counts
    skips = []
    for level in range(LEVELS):
        for _ in range(b[level]):
            x = block(x, ke)
        skips.append(x)
        x = down(x, ke)
    for _ in range(b[LEVELS]):
        x = block(x, kd)
    for level in reversed(range(LEVELS)):
        x = up(x, kd) + skips[level]
        for _ in range(b[2 * LEVELS - level]):
            x = block(x, kd)
    return x


def receptive_field(config: MedNeXtConfig) -> int:
    """Theoretical receptive field (voxels per axis) of the full-resolution output.

    Exact for the network's wiring: the depthwise, strided and transposed convolutions, the
    residual paths and the skips are replayed along one axis with all-ones kernels, and the
    widest input support over one period of output positions (2^4 = 16, because the transposed
    convs treat even and odd positions differently) is returned. The classic closed formula
    sum((k-1) * stride-product) does not hold for transposed convolutions, hence the replay.
    """
    grow = sum((k - 1) * 2 ** min(s, 2 * LEVELS - s) for s, k in enumerate(
        [config.enc_kernel_size] * LEVELS + [config.dec_kernel_size] * (LEVELS + 1)))
    bound = 2 * (max(config.block_counts) + 1) * grow + 64
    n = 16 * math.ceil(bound / 16)
    x = torch.zeros(1, 1, n, dtype=torch.float64, requires_grad=True)
    y = _support_path(x, config)
    widest = 0
    for o in range(n // 2, n // 2 + 2**LEVELS):
        (grad,) = torch.autograd.grad(y[0, 0, o], x, retain_graph=True)
        idx = torch.nonzero(grad[0, 0]).flatten()
        widest = max(widest, int(idx.max() - idx.min()) + 1)
    return widest


def _train_step(model: MedNeXt, x: torch.Tensor, opt: torch.optim.Optimizer) -> None:
    out = model(x)
    (out[0] if isinstance(out, list) else out).float().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _step_in_child(queue: Any, config_dict: dict, input_shape: tuple, grad_checkpointing: Any,
                   channels_last: bool) -> None:
    model = MedNeXt(MedNeXtConfig.from_dict(config_dict)).set_grad_checkpointing(grad_checkpointing)
    model.set_memory_format("channels_last" if channels_last else "auto")
    x = torch.randn(*input_shape)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _train_step(model, x, opt)  # warm-up: the optimizer state exists before the measured step
    _reset_peak_rss()
    t0 = time.perf_counter()
    _train_step(model, x, opt)
    queue.put({"peak_rss_bytes": _peak_rss_bytes(), "seconds": time.perf_counter() - t0})


def _reset_peak_rss() -> bool:
    """Restart this process's resident-set high-water mark (Linux >= 4.0); False where impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _proc_status_bytes(key: str) -> int:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``, ...) in bytes, or 0 where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _peak_rss_bytes() -> int:
    """This process's resident-set high-water mark: ``VmHWM`` on Linux, else ``ru_maxrss``.

    Not ``ru_maxrss`` on Linux: it survives exec, so a spawned child starts with its parent's peak,
    and a large parent (a test runner) hides the difference between two smaller children.
    """
    peak = _proc_status_bytes("VmHWM")
    if peak:
        return peak
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux/BSD KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def measure_step_memory(
    model: MedNeXt | MedNeXtConfig,
    input_shape: Sequence[int],
    *,
    grad_checkpointing: Any = None,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
) -> dict[str, float]:
    """Peak memory and time of one training step (forward, backward, AdamW step).

    On CUDA: ``torch.cuda.max_memory_allocated`` around the step (``peak_bytes``). On CPU the
    step runs in a fresh spawned process after a warm-up step, and ``peak_bytes`` is that process's
    peak resident set size during the measured step (``VmHWM``, reset just before it) -- a
    whole-process high-water mark, so compare configurations measured the same way rather than
    reading it as tensor bytes alone.
    """
    config = model if isinstance(model, MedNeXtConfig) else model.config
    if grad_checkpointing is None:  # the model's own policy, per stage ("block"/"expansion"/None)
        grad_checkpointing = getattr(model, "checkpoint_policy", False)
    input_shape = tuple(int(s) for s in input_shape)
    device = torch.device(device)
    if device.type == "cuda":
        net = MedNeXt(config).to(device).set_grad_checkpointing(grad_checkpointing)
        if not isinstance(model, MedNeXtConfig):
            net.load_state_dict(model.state_dict())
        x = torch.randn(*input_shape, device=device)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        _train_step(net, x, opt)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        _train_step(net, x, opt)
        torch.cuda.synchronize(device)
        return {"peak_bytes": float(torch.cuda.max_memory_allocated(device)), "seconds": time.perf_counter() - t0}
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_step_in_child,
                       args=(queue, config.to_dict(), input_shape, grad_checkpointing, channels_last))
    proc.start()
    try:
        while True:
            try:
                result = queue.get(timeout=1.0)
                break
            except queue_module.Empty:
                if not proc.is_alive():
                    raise RuntimeError(
                        f"the measuring process died (exit code {proc.exitcode}) before reporting: "
                        f"input {input_shape} probably needs more memory than this machine has; try a smaller one"
                    ) from None
    finally:
        proc.join(timeout=60)
    return {"peak_bytes": float(result["peak_rss_bytes"]), "seconds": float(result["seconds"])}


def preset_table(spatial_dims: int = 3, input_size: Sequence[int] | None = None,
                 in_channels: int = 1, num_classes: int = 3, family: str = "v1") -> list[dict[str, Any]]:
    """Parameters and conv GMACs of every preset of ``family`` (``"v1"``, ``"v2"`` or ``"all"``) at the
    kernel sizes it was published with (v1: k3 and k5; v2: k3), with the paper's figures beside them."""
    input_size = tuple(input_size or ((128,) * 3 if spatial_dims == 3 else (512, 512)))
    rows = []
    for name in preset_names(family):
        preset = PRESETS[name]
        for i, k in enumerate(preset.kernel_sizes):
            config = preset_config(name, in_channels, num_classes, k, spatial_dims)
            rows.append({
                "variant": name, "kernel": k, "spatial_dims": spatial_dims,
                "params": count_parameters(config),
                "gmacs": count_macs(config, input_size) / 1e9,
                "receptive_field": receptive_field(config),
                "paper_params_m": preset.paper_params_m[i] if spatial_dims == 3 and preset.paper_params_m else None,
                "paper_gflops": preset.paper_gflops[i] if spatial_dims == 3 and preset.paper_gflops else None,
            })
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of :func:`preset_table` rows (also valid Markdown)."""
    head = "| variant | k | params | paper params | conv GMAC | paper GFLOPs | receptive field |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        pp = f"{r['paper_params_m']:.1f}M" if r["paper_params_m"] else "-"
        pf = f"{r['paper_gflops']}" if r["paper_gflops"] else "-"
        lines.append(f"| {r['variant']} | {r['kernel']} | {r['params']:,} | {pp} | {r['gmacs']:.2f} | {pf} | "
                     f"{r['receptive_field']} |")
    return "\n".join(lines)


def _profile_command(args: argparse.Namespace) -> int:
    size = tuple(args.size) if args.size else None
    rows = preset_table(args.spatial_dims, size, args.in_channels, args.num_classes, args.family)
    shape = "x".join(map(str, size or ((128,) * 3 if args.spatial_dims == 3 else (512, 512))))
    print(f"MedNeXt presets, {args.spatial_dims}D, in_channels={args.in_channels}, "
          f"num_classes={args.num_classes}, input 1x{shape} (conv MACs counted on the meta device)\n")
    print(format_table(rows))
    if args.spatial_dims == 3:
        print("\nThe paper's GFLOPs also count element-wise layers, so they sit 1-2% above conv MACs.")
    return 0


def add_profile_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mednext-lite profile`` on an argparse subparsers object."""
    p = subparsers.add_parser("profile", help="parameter / MAC / receptive-field table of the presets",
                              description="Print parameters, conv GMACs and receptive field of every preset at "
                                          "its published kernel sizes, with the paper's figures beside ours.")
    p.add_argument("--spatial-dims", type=int, choices=(2, 3), default=3, help="2D or 3D networks (default 3)")
    p.add_argument("--size", type=int, nargs="+", help="input spatial size (default 128^3 in 3D, 512^2 in 2D)")
    p.add_argument("--in-channels", type=int, default=1, help="input modalities (default 1)")
    p.add_argument("--num-classes", type=int, default=3, help="output classes (default 3, as in the paper table)")
    p.add_argument("--family", choices=(*FAMILIES, "all"), default="v1",
                   help="v1: S/B/M/L at k3 and k5 (default); v2: V2-B/V2-W at k3; all: both")
    p.set_defaults(handler=_profile_command)
    return p
