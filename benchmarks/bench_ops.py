"""Op-level CPU measurements behind the fast-path choices in ``mednext_lite/fast/``.

Each row times two or three ways of computing the same thing, alternating them (A B C, C B A, ...)
and printing medians in milliseconds:

* ``norm``: GroupNorm with one group per channel, forward + backward: PyTorch's kernel on a
  channels-last tensor, ours (``PerChannelGroupNorm``) on the same tensor, PyTorch's kernel on a
  channels-first copy; and each one's max |error| of the output against a float64 run.
* ``wgrad``: the 2D depthwise weight gradient on NHWC tensors, one k x k oneDNN call against
  ``depthwise_weight_grad_2d``'s k x 3 strips.
* ``pointwise``: a 2D 1x1 conv forward + backward on NHWC tensors, oneDNN's conv against ``F.linear``.
* ``transposed``: the up blocks' stride-2 transposed depthwise conv, forward + backward on
  channels-last tensors: PyTorch's kernel against ``DepthwiseTransposedConv2d/3d``, with the max
  |difference| of the outputs.
* ``normconv``: per-channel GroupNorm then the 1x1 expansion, forward + backward: PyTorch's
  GroupNorm and conv on a channels-first copy, our ``PerChannelGroupNorm`` then the conv on the
  channels-last tensor, and the folded ``_NormPointwise``; each one's max |error| against float64.
* ``adamw``: one AdamW step over MedNeXt-S's parameters (deep supervision on, the trainer's
  hyper-parameters): PyTorch's per-tensor loop, its ``foreach`` kernels and its ``fused`` kernel,
  and the fused kernel's largest difference from the loop after five steps.

    python benchmarks/bench_ops.py                 # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mednext_lite.fast.conv import (
    DepthwiseTransposedConv2d,
    DepthwiseTransposedConv3d,
    depthwise_weight_grad_2d,
    pointwise_conv,
)
from mednext_lite.fast.layout import channels_last_format
from mednext_lite.fast.norm import PerChannelGroupNorm, _NormPointwise


def medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time (ms) of each callable, run in alternating order after one warm-up each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for i in range(repeats):
        for name in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(1e3 * (time.perf_counter() - t0))
    return {name: statistics.median(t) for name, t in times.items()}


def table_header(title: str, *columns: str) -> None:
    """Print a section title and the header rows of its Markdown table."""
    print(f"\n## {title}")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))


def bench_norm(repeats: int) -> None:
    table_header("GroupNorm, one group per channel, forward + backward (ms); max |output error| vs float64",
                 "input", "PyTorch NHWC", "ours NHWC", "PyTorch NCHW", "error PyTorch NHWC", "error ours", "error NCHW")
    for shape in ((1, 32, 256, 256), (1, 64, 128, 128), (1, 128, 64, 64), (1, 32, 64, 64, 64)):
        norm_row(shape, repeats)


def _step(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Forward ``x`` through ``fn`` and backward ``grad``; the output, detached."""
    x = x.detach().requires_grad_(True)
    out = fn(x)
    out.backward(grad)
    return out.detach()


def norm_row(shape: tuple[int, ...], repeats: int) -> None:
    torch.manual_seed(0)
    c, fmt = shape[1], channels_last_format(len(shape) - 2)
    ours = PerChannelGroupNorm(c)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5), ours.bias.uniform_(-1, 1)
    theirs, truth = torch.nn.GroupNorm(c, c), torch.nn.GroupNorm(c, c).double()
    theirs.load_state_dict(ours.state_dict())
    truth.load_state_dict(ours.state_dict())
    x = (torch.randn(shape) * 3 + 5).contiguous(memory_format=fmt)  # an offset mean, as after a conv
    grad = torch.randn(shape).contiguous(memory_format=fmt)
    ways = {"nhwc": (theirs, x, grad), "ours": (ours, x, grad), "nchw": (theirs, x.contiguous(), grad.contiguous())}
    ms = medians({k: (lambda a=a: _step(*a)) for k, a in ways.items()}, repeats)
    y64 = truth(x.double()).detach()
    err = {k: float((_step(*a).double() - y64).abs().max()) for k, a in ways.items()}
    print(f"| {'x'.join(map(str, shape))} | {ms['nhwc']:.1f} | {ms['ours']:.1f} | {ms['nchw']:.1f} "
          f"| {err['nhwc']:.1e} | {err['ours']:.1e} | {err['nchw']:.1e} |", flush=True)


def bench_wgrad(repeats: int) -> None:
    table_header("2D depthwise weight gradient, NHWC, 1 x 32 x 256^2 (ms)",
                 "kernel", "oneDNN k x k", "k x 3 strips", "speed-up")
    c = 32
    x = torch.randn(1, c, 256, 256).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(1, c, 256, 256).contiguous(memory_format=torch.channels_last)
    for k in (3, 5, 7):
        w = torch.empty(c, 1, k, k)
        def direct(k: int = k, w: torch.Tensor = w) -> object:
            return torch.ops.aten.convolution_backward(
                grad, x, w, None, [1, 1], [k // 2] * 2, [1, 1], False, [0, 0], c, [False, True, False])

        ms = medians({"direct": direct, "strips": lambda k=k: depthwise_weight_grad_2d(grad, x, k)}, repeats)
        print(f"| {k} | {ms['direct']:.1f} | {ms['strips']:.1f} | {ms['direct'] / ms['strips']:.2f}x |", flush=True)


def bench_pointwise(repeats: int) -> None:
    table_header("2D 1x1 conv, NHWC, forward + backward (ms)", "input", "out channels", "oneDNN conv", "F.linear",
                 "speed-up")
    for (c, size), out in (((32, 256), 64), ((64, 256), 32), ((64, 128), 128), ((256, 32), 512)):
        pointwise_row(c, size, out, repeats)


def pointwise_row(c: int, size: int, out: int, repeats: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, c, size, size).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    w = torch.randn(out, c, 1, 1, requires_grad=True)
    grad = torch.randn(1, out, size, size).contiguous(memory_format=torch.channels_last)
    ms = medians({"conv": lambda: F.conv2d(x, w).backward(grad),
                  "linear": lambda: F.linear(x.movedim(1, -1), w.flatten(1)).movedim(-1, 1).backward(grad)}, repeats)
    print(f"| {c} x {size}^2 | {out} | {ms['conv']:.1f} | {ms['linear']:.1f} "
          f"| {ms['linear'] / ms['conv']:.2f}x |", flush=True)


def bench_transposed(repeats: int) -> None:
    table_header("Up block's transposed depthwise conv (stride 2), channels-last, forward + backward (ms)",
                 "input -> output", "k", "PyTorch", "ours", "speed-up", "max abs diff")
    for c, size, dims in ((64, 128, 2), (128, 64, 2), (64, 32, 3)):
        for k in (3, 5):
            torch.manual_seed(0)
            cls = DepthwiseTransposedConv2d if dims == 2 else DepthwiseTransposedConv3d
            ours = cls(c, c, k, stride=2, padding=k // 2, groups=c)
            theirs = getattr(torch.nn, f"ConvTranspose{dims}d")(c, c, k, stride=2, padding=k // 2, groups=c)
            theirs.load_state_dict(ours.state_dict())
            x = torch.randn(1, c, *(size,) * dims).contiguous(memory_format=channels_last_format(dims))
            grad = torch.randn(1, c, *(2 * size - 1,) * dims).contiguous(memory_format=channels_last_format(dims))
            ms = medians({"theirs": lambda m=theirs, x=x, g=grad: _step(m, x, g),
                          "ours": lambda m=ours, x=x, g=grad: _step(m, x, g)}, repeats)
            diff = float((_step(ours, x, grad) - _step(theirs, x, grad)).abs().max())
            print(f"| {c} x {size}^{dims} -> {2 * size - 1}^{dims} | {k} | {ms['theirs']:.1f} | {ms['ours']:.1f} "
                  f"| {ms['theirs'] / ms['ours']:.2f}x | {diff:.1e} |", flush=True)


def bench_normconv(repeats: int) -> None:
    table_header("Per-channel GroupNorm then the 1x1 expansion (C -> 2C), forward + backward (ms); "
                 "max |output error| vs float64", "input", "PyTorch NCHW", "ours norm then conv, NHWC", "folded, NHWC",
                 "folded vs NCHW", "error NCHW", "error folded")
    for shape in ((1, 32, 256, 256), (1, 64, 128, 128), (1, 256, 32, 32), (1, 32, 64, 64, 64), (2, 64, 32, 32, 32)):
        normconv_row(shape, repeats)


def normconv_row(shape: tuple[int, ...], repeats: int) -> None:
    torch.manual_seed(0)
    c, dims = shape[1], len(shape) - 2
    fmt = channels_last_format(dims)
    norm, conv = PerChannelGroupNorm(c), pointwise_conv(dims, c, 2 * c)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-1, 1)
    conv_fn = getattr(F, f"conv{dims}d")
    x = (torch.randn(shape) * 3 + 5).contiguous(memory_format=fmt)  # an offset mean, as after a conv
    grad = torch.randn(shape[0], 2 * c, *shape[2:]).contiguous(memory_format=fmt)

    def nchw(t: torch.Tensor) -> torch.Tensor:
        return conv_fn(F.group_norm(t, c, norm.weight, norm.bias, norm.eps), conv.weight, conv.bias)

    def folded(t: torch.Tensor) -> torch.Tensor:
        return _NormPointwise.apply(t, norm.weight, norm.bias, norm.eps, conv.weight, conv.bias)

    ways = {"nchw": (nchw, x.contiguous(), grad.contiguous()), "separate": (lambda t: conv(norm(t)), x, grad),
            "folded": (folded, x, grad)}
    ms = medians({k: (lambda a=a: _step(*a)) for k, a in ways.items()}, repeats)
    with torch.no_grad():
        y64 = conv_fn(F.group_norm(x.double(), c, norm.weight.double(), norm.bias.double(), norm.eps),
                      conv.weight.double(), conv.bias.double())
    err = {k: float((_step(*ways[k]).double() - y64).abs().max()) for k in ("nchw", "folded")}
    print(f"| {'x'.join(map(str, shape))} | {ms['nchw']:.1f} | {ms['separate']:.1f} | {ms['folded']:.1f} "
          f"| {ms['nchw'] / ms['folded']:.2f}x | {err['nchw']:.1e} | {err['folded']:.1e} |", flush=True)


def bench_adamw(repeats: int) -> None:
    from mednext_lite import create_mednext

    table_header("AdamW step over MedNeXt-S's parameters (ms)", "model", "tensors", "loop", "foreach", "fused",
                 "fused vs loop", "fused max abs diff after 5 steps")
    for dims in (3, 2):
        torch.manual_seed(0)
        params = list(create_mednext("S", 1, 3, 3, dims, deep_supervision=True).parameters())
        twins = {name: [q.detach().clone().requires_grad_(True) for q in params] for name in ("loop", "foreach", "fused")}
        kinds = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
        opts = {name: torch.optim.AdamW(twins[name], lr=1e-3, eps=1e-4, weight_decay=3e-5, **kinds[name])
                for name in kinds}
        for step in range(5):  # the same gradients into each copy, then compare
            grads = [torch.randn_like(q) for q in params]
            for name in kinds:
                for q, g in zip(twins[name], grads):
                    q.grad = g.clone()
                opts[name].step()
        diff = max(float((a.detach() - b.detach()).abs().max()) for a, b in zip(twins["loop"], twins["fused"]))
        ms = medians({name: opts[name].step for name in kinds}, repeats)
        print(f"| {dims}D S | {len(params)} | {ms['loop']:.1f} | {ms['foreach']:.1f} | {ms['fused']:.1f} "
              f"| {ms['loop'] / ms['fused']:.2f}x | {diff:.1e} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="norm,wgrad,pointwise,transposed,normconv,adamw",
                   help="comma-separated subset of norm, wgrad, pointwise, transposed, normconv, adamw")
    p.add_argument("--repeats", type=int, default=11)
    args = p.parse_args(argv)
    print(f"# mednext_lite op benchmark: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} alternating runs")
    sections = {"norm": bench_norm, "wgrad": bench_wgrad, "pointwise": bench_pointwise,
                "transposed": bench_transposed, "normconv": bench_normconv, "adamw": bench_adamw}
    for name in args.only.split(","):
        sections[name.strip()](args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
