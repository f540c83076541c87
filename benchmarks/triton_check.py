"""GPU check of the Triton depthwise kernels: equal to PyTorch in fp32/bf16/fp16, and timed per direction.

For each kernel size, operation (stride-1 conv, stride-2 conv of a down block, stride-2 transposed
conv of an up block), dtype and layout, at a 128^3-like shape (default batch 2, 32 channels), it
checks our forward, input gradient and weight gradient against PyTorch's, then times each of the
three directions for ours and for PyTorch (``aten.convolution_backward`` with one output mask, so
each direction is timed alone), median of ``--repeats`` CUDA-event timings after warm-up.
Correctness, per tensor: fp32 within 1e-4 of the largest magnitude of PyTorch's fp32 result;
bf16/fp16 (fp32 accumulation, one rounding) within one unit in the last place of the fp32 result
computed from the same rounded inputs, plus 1e-4 of its largest magnitude for the sum's own error.
Prints PASS/FAIL lines and a Markdown table (``--json`` writes the rows); exit status 1 on any FAIL.
A time guard (``--budget-s``) skips the rows it can no longer afford; compile time is reported.
Usage on a CUDA machine:  python benchmarks/triton_check.py [--json out.json]
On a CPU, ``TRITON_INTERPRET=1 python benchmarks/triton_check.py --size 9 --channels 4 --batch 1``
runs the same code through Triton's interpreter (the times then mean nothing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from mednext_lite.fast import triton_depthwise as tdw

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OPS = ("conv_s1", "conv_s2", "convT_s2")


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median milliseconds of ``fn()`` after two warm-up calls."""
    for _ in range(2):
        fn()
    if device.type != "cuda":
        t = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            t.append((time.perf_counter() - start) * 1e3)
        return statistics.median(t)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def directions(op: str, x, w, b, gy, stride: int, pad: list[int]):
    """The three directions, ours and PyTorch's, as zero-argument callables."""
    k = list(w.shape[2:])
    transposed = op.startswith("convT")
    c = x.shape[1]
    ops = torch.ops.mednext_lite
    aten_bwd = torch.ops.aten.convolution_backward.default
    common = ([stride] * 3, pad, [1, 1, 1], transposed, [0, 0, 0], c)
    if transposed:
        out_size = list(gy.shape[2:])
        ours = {
            "forward": lambda: ops.dw_conv_transpose(x, w, b, stride, pad, out_size),
            "grad_input": lambda: ops.dw_conv(gy, w, None, stride, pad),
            "grad_weight": lambda: ops.dw_conv_weight_grad(x, gy, k, stride, pad),
        }
        theirs_fwd = lambda: F.conv_transpose3d(x, w, b, stride=stride, padding=pad, groups=c)
    else:
        ours = {
            "forward": lambda: ops.dw_conv(x, w, b, stride, pad),
            "grad_input": lambda: ops.dw_conv_transpose(gy, w, None, stride, pad, list(x.shape[2:])),
            "grad_weight": lambda: ops.dw_conv_weight_grad(gy, x, k, stride, pad),
        }
        theirs_fwd = lambda: F.conv3d(x, w, b, stride=stride, padding=pad, groups=c)
    theirs = {
        "forward": theirs_fwd,
        "grad_input": lambda: aten_bwd(gy, x, w, None, *common, [True, False, False])[0],
        "grad_weight": lambda: aten_bwd(gy, x, w, None, *common, [False, True, False])[1],
    }
    return ours, theirs


def check_case(k: int, op: str, dtype_name: str, layout: str, args, device) -> list[dict]:
    dtype = DTYPES[dtype_name]
    stride = 1 if op == "conv_s1" else 2
    pad = [k // 2] * 3
    size = args.size // 2 if op == "convT_s2" else args.size
    g = torch.Generator(device=device).manual_seed(k * 100 + stride)
    x = torch.randn(args.batch, args.channels, size, size, size, device=device, generator=g).to(dtype)
    w = (torch.randn(args.channels, 1, k, k, k, device=device, generator=g) / k**1.5).to(dtype)
    b = torch.randn(args.channels, device=device, generator=g).to(dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last_3d)
    if op == "convT_s2":
        out = F.conv_transpose3d(x.float(), w.float(), stride=2, padding=pad, groups=args.channels)
    else:
        out = F.conv3d(x.float(), w.float(), stride=stride, padding=pad, groups=args.channels)
    gy = torch.randn(out.shape, device=device, generator=g).to(dtype)
    if layout == "channels_last":
        gy = gy.to(memory_format=torch.channels_last_3d)
    ours, theirs = directions(op, x, w, b, gy, stride, pad)
    # the fp32 truth from the same (rounded) inputs
    _, ref_theirs = directions(op, x.float(), w.float(), b.float(), gy.float(), stride, pad)
    rows = []
    for direction in ("forward", "grad_input", "grad_weight"):
        t0 = time.perf_counter()
        got = ours[direction]()
        if device.type == "cuda":
            torch.cuda.synchronize()
        first_call_s = time.perf_counter() - t0  # includes Triton's compile for a new configuration
        ref = ref_theirs[direction]().float()
        err = (got.float() - ref).abs()
        scale = max(ref.abs().max().item(), 1e-30)
        if dtype == torch.float32:
            ok = err.max().item() <= 1e-4 * scale
        else:
            ok = bool((err <= torch.finfo(dtype).eps * ref.abs() + 1e-4 * scale).all())
        torch_err = (theirs[direction]().float() - ref).abs().max().item()
        row = {
            "k": k, "op": op, "dtype": dtype_name, "layout": layout, "direction": direction,
            "max_err": err.max().item(), "torch_max_err": torch_err, "scale": scale, "pass": ok,
            "first_call_s": round(first_call_s, 2),
            "ours_ms": timed(ours[direction], device, args.repeats),
            "torch_ms": timed(theirs[direction], device, args.repeats),
        }
        rows.append(row)
        print(f"{'PASS' if ok else 'FAIL'} k{k} {op} {dtype_name} {layout} {direction}: max error "
              f"{row['max_err']:.3g} (PyTorch's {torch_err:.3g}) of {scale:.3g}", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128, help="spatial size (the transposed conv gets size/2)")
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--kernels", type=int, nargs="+", default=[3, 5, 7])
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp32", "fp16"], choices=list(DTYPES))
    p.add_argument("--layouts", nargs="+", default=["channels_last", "contiguous"],
                   choices=["channels_last", "contiguous"])
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=420.0, help="skip the rows left once this is spent")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not tdw.available(device):
        print(f"FAIL the Triton kernels cannot run on {device}: run on a CUDA machine (or set TRITON_INTERPRET=1)")
        return 2
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (Triton interpreter)"
    print(f"# triton_check on {name}: torch {torch.__version__}, triton {tdw.triton.__version__}, "
          f"batch {args.batch}, {args.channels} channels, {args.size}^3")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False  # the fp32 reference must be fp32
    start = time.perf_counter()
    rows, skipped = [], 0
    # bf16 first (the dtype MedNeXt trains in), then the rest, so a short budget keeps the key rows
    for dtype_name in args.dtypes:
        for layout in args.layouts:
            for k in args.kernels:
                for op in args.ops:
                    if time.perf_counter() - start > args.budget_s:
                        skipped += 1
                        continue
                    rows.extend(check_case(k, op, dtype_name, layout, args, device))
    print("\n| k | op | dtype | layout | direction | ours ms | PyTorch ms | speed-up | first call s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['k']} | {r['op']} | {r['dtype']} | {r['layout']} | {r['direction']} | {r['ours_ms']:.3f} | "
              f"{r['torch_ms']:.3f} | {r['torch_ms'] / r['ours_ms']:.2f}x | {r['first_call_s']} |")
    failed = sum(not r["pass"] for r in rows)
    print(f"\n{len(rows) - failed} PASS, {failed} FAIL, {skipped} cases skipped by the {args.budget_s:.0f} s budget; "
          f"{time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "args": vars(args), "rows": rows}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
