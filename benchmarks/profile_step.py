"""Where a training step's time goes: 1x1 convolutions, the other convolutions, and everything else.

One MedNeXt-S training step (forward + backward + AdamW, batch 1, float32, CPU) of ours and of
MONAI's network at identical maths, under ``torch.profiler``; each op's own time is put in one of
three bins, and the median of ``--repeats`` profiled steps is printed per bin. The 1x1 convolutions
are matrix products (GEMMs) that both networks hand to the same oneDNN/MKL kernels, so the table
shows how much of a step any rewrite of the rest could win back:

    python benchmarks/profile_step.py --dims 2 --size 256      # the 2D step of the benchmark
    python benchmarks/profile_step.py --dims 3 --size 64 --kernels 3
    python benchmarks/profile_step.py --dims 2 --size 256 --top 12   # and the heaviest ops by name
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch.nn.functional as F
from bench_model import _build  # the same networks, MONAI's weights copied into ours

CONV_OPS = {"aten::convolution_backward", "aten::mkldnn_convolution", "aten::_convolution", "aten::convolution",
            "aten::slow_conv_transpose2d", "aten::slow_conv_transpose3d", "aten::thnn_conv2d", "aten::mm",
            "aten::addmm", "aten::bmm", "aten::baddbmm"}
GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
BINS = ("1x1 conv (GEMM)", "other conv", "everything else")


def bin_of(event) -> str:
    if event.key not in CONV_OPS:
        return BINS[2]
    if event.key in GEMM_OPS:  # our channels-last 1x1 convs (3D, or with the norm folded in) as matrix products
        return BINS[0]
    weight = next((s for s in event.input_shapes if len(s) in (4, 5) and s[2:] and all(d == 1 for d in s[2:])), None)
    return BINS[0] if weight is not None and weight[0] > 1 and weight[1] > 1 else BINS[1]


def profile(model: torch.nn.Module, dims: int, size: int, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per bin, and per op name (self time), over ``repeats`` profiled steps."""
    x = torch.randn(1, 1, *(size,) * dims)
    y = torch.randint(0, 3, (1, *(size,) * dims))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(2):
        step()
    runs, per_op = [], []
    for _ in range(repeats):
        with torch.profiler.profile(record_shapes=True) as prof:
            step()
        bins, ops = dict.fromkeys(BINS, 0.0), {}
        for event in prof.key_averages(group_by_input_shape=True):
            bins[bin_of(event)] += event.self_cpu_time_total / 1e6
            ops[event.key] = ops.get(event.key, 0.0) + event.self_cpu_time_total / 1e6
        runs.append(bins)
        per_op.append(ops)
    names = set().union(*per_op)
    return ({b: statistics.median(r[b] for r in runs) for b in BINS},
            {n: statistics.median(r.get(n, 0.0) for r in per_op) for n in names})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dims", type=int, default=2, choices=(2, 3))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--kernels", type=int, nargs="+", default=[3, 5])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--top", type=int, default=0, help="also list the N ops with the most self time, per network")
    args = p.parse_args(argv)
    print(f"# one S training step, {'x'.join([str(args.size)] * args.dims)}, batch 1, float32, "
          f"{torch.get_num_threads()} threads; seconds of op time (profiled, median of {args.repeats})")
    print("| k | network | " + " | ".join(BINS) + " | total |")
    print("|---|---|" + "---|" * (len(BINS) + 1))
    tops = {}
    for k in args.kernels:
        for impl in ("monai", "ours"):
            spec = {"impl": impl, "variant": "S", "dims": args.dims, "k": k, "classes": 3}
            bins, ops = profile(_build(spec), args.dims, args.size, args.repeats)
            total = sum(bins.values())
            cells = " | ".join(f"{bins[b]:.3f} ({100 * bins[b] / total:.0f}%)" for b in BINS)
            name = "MONAI" if impl == "monai" else "ours"
            print(f"| {k} | {name} | {cells} | {total:.3f} |", flush=True)
            tops[(k, name)] = ops
    for (k, name), ops in tops.items() if args.top else ():
        print(f"\n## k{k}, {name}: the {args.top} ops with the most self time (s)")
        print("| op | s |\n|---|---|")
        for op, sec in sorted(ops.items(), key=lambda item: -item[1])[:args.top]:
            print(f"| {op} | {sec:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
