"""GPU comparison table: MedNeXt S/B, k3/k5, 128^3, ours (fp32 / bf16 / channels-last / compile) vs MONAI.

Run by ``benchmarks/gpu_check.sh``; prints one Markdown table (and ``--json`` rows). Each row is the
median of ``--repeats`` timed training steps (forward + backward + AdamW, batch 1) after warm-up,
with ``torch.cuda.synchronize`` around each, and the peak of ``torch.cuda.max_memory_allocated``.
MONAI's S network is the same maths as ours (its weights are copied over and the outputs checked);
MONAI's B builds its down blocks with other expansion ratios (see ``mednext_lite.interop``), so the
B rows compare two slightly different networks and say so. The S fp32 rows also print the largest
output difference to MONAI, with PyTorch's default TF32 convolutions and in strict fp32. A global
time guard skips what is left once ``--budget-s`` is spent, so the script always finishes inside
the machine's slot; compile rows run last and print their compile + first-step time. ``--infer``
adds sliding-window inference rows, ``--only`` picks rows by label.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F


def build(impl: str, variant: str, k: int, device: torch.device):
    from monai.networks.nets.mednext import create_mednext as monai_mednext

    from mednext_lite import MedNeXt, create_mednext
    from mednext_lite.interop import convert_monai_state_dict

    torch.manual_seed(0)
    theirs = monai_mednext(variant, 3, 1, 3, k, deep_supervision=False)
    if impl == "monai":
        return theirs.to(device)
    if variant == "S":
        sd, config = convert_monai_state_dict(theirs.state_dict())
        ours = MedNeXt(config)
        ours.load_state_dict(sd)
    else:
        ours = create_mednext(variant, 1, 3, k, 3).set_grad_checkpointing(False)
    return ours.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_fn(model, x, y, opt, amp_dtype):
    def step():
        opt.zero_grad(set_to_none=True)
        ctx = torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
        with ctx:
            out = model(x)
        F.cross_entropy(out.float(), y).backward()
        opt.step()
    return step


def max_abs_diff(a, b, x, tf32: bool) -> float:
    """Largest output difference of two networks; ``tf32`` lets cuDNN/cuBLAS round fp32 inputs to
    TF32 (PyTorch's default for cuDNN convolutions), ``False`` forces full fp32 arithmetic."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        with torch.no_grad():
            return float((a(x) - b(x)).abs().max())
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def infer_rows(args, device: torch.device) -> None:
    """Sliding-window inference of one ``--infer-size``^3 volume in ``--size``^3 windows (overlap 0.25,
    Gaussian blending, 2 windows per batch): volumes per minute, median of ``--infer-repeats``."""
    from monai.inferers import sliding_window_inference

    n = args.infer_size
    print(f"\n# sliding-window inference, one {n}^3 volume, {args.size}^3 windows, overlap 0.25, "
          f"median of {args.infer_repeats}")
    print("| model | k | variant | volumes/min | vs MONAI fp32 |")
    print("|---|---|---|---|---|")
    volume = torch.randn(1, 1, n, n, n, device=device, generator=torch.Generator(device).manual_seed(3))
    for k in args.kernels:
        baseline = None
        for impl, label, amp in (("monai", "MONAI fp32", None), ("ours", "ours fp32", None),
                                 ("ours", "ours bf16", torch.bfloat16)):
            model = build(impl, "S", k, device).eval()

            def run(model=model, amp=amp):
                ctx = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()
                with torch.no_grad(), ctx:
                    sliding_window_inference(volume, (args.size,) * 3, 2, model, overlap=0.25, mode="gaussian")
            vpm = 60 / time_steps(run, args.infer_repeats, 1, device)[0]
            baseline = vpm if impl == "monai" else baseline
            print(f"| MedNeXt-S | {k} | {label} | {vpm:.1f} | {vpm / baseline:.2f}x |", flush=True)
            del model


def time_steps(step, repeats: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """Median seconds of ``repeats`` timed calls after ``warmup`` untimed ones, and the first call's
    seconds (for a compiled model: compilation plus its first step)."""
    first = None
    for _ in range(warmup):
        t0 = time.perf_counter()
        step()
        sync(device)
        first = time.perf_counter() - t0 if first is None else first
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), first if first is not None else times[0]


def measure_step(net, params, x, y, amp_dtype, args, device: torch.device) -> tuple[float, float, float] | None:
    """One configuration's training step: median ms, first step s (compile included) and peak GiB,
    with a fresh AdamW over ``params``; ``None`` when it ran out of GPU memory."""
    opt = torch.optim.AdamW(params, lr=1e-3)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        median_s, first_s = time_steps(step_fn(net, x, y, opt, amp_dtype), args.repeats, args.warmup, device)
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        del opt
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return 1000 * median_s, first_s, peak


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--variants", nargs="+", default=["S", "B"])
    p.add_argument("--kernels", type=int, nargs="+", default=[3, 5])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=330.0)
    p.add_argument("--compile", default="S", help="variants that also get a torch.compile row ('' for none)")
    p.add_argument("--compile-reserve-s", type=float, default=90.0,
                   help="a compile row starts only with at least this much of the budget left")
    p.add_argument("--only", default="", help="comma-separated label parts: run only the rows whose label "
                   "contains one, e.g. 'MONAI fp32,compile'")
    p.add_argument("--infer", action="store_true", help="also time sliding-window inference (S preset)")
    p.add_argument("--infer-size", type=int, default=256)
    p.add_argument("--infer-repeats", type=int, default=3)
    p.add_argument("--json", type=Path)
    p.add_argument("--train-json", type=Path, help="train_synthetic.py's --json output, added as the last row")
    p.add_argument("--device", default="cuda", help="'cpu' only to dry-run this script at a tiny --size")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this script is for a CUDA machine (benchmarks/gpu_check.sh runs it)")
        return 2
    from mednext_lite.fast.layout import to_channels_last

    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU dry run"
    print(f"# {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"cuDNN {torch.backends.cudnn.version()}, 1x1x{args.size}^3, batch 1, median of {args.repeats} steps")
    print("| model | k | variant | step ms | vs MONAI fp32 | peak GiB |")
    print("|---|---|---|---|---|---|")
    rows, start = [], time.perf_counter()
    size = (args.size,) * 3
    x = torch.randn(1, 1, *size, device=device, generator=torch.Generator(device).manual_seed(1))
    y = torch.randint(0, 3, (1, *size), device=device, generator=torch.Generator(device).manual_seed(2))
    plain = [("monai", "MONAI fp32", None, False, False), ("ours", "ours fp32", None, False, False),
             ("ours", "ours bf16", torch.bfloat16, False, False),
             ("ours", "ours bf16 + channels-last", torch.bfloat16, True, False)]
    compiled_row = ("ours", "ours bf16 + compile", torch.bfloat16, False, True)
    # compile rows go last: their compile time is the least predictable, so every other row prints first
    jobs = [(v, k, c) for v in args.variants for k in args.kernels for c in plain]
    jobs += [(v, k, compiled_row) for v in args.variants if v in args.compile for k in args.kernels]
    if args.only:
        jobs = [job for job in jobs if any(part in job[2][1] for part in args.only.split(","))]
    baselines: dict[tuple[str, int], float] = {}
    for variant, k, (impl, label, amp, cl, compiled) in jobs:
        left = args.budget_s - (time.perf_counter() - start)
        if left <= 0 or (compiled and left < args.compile_reserve_s):
            print(f"| MedNeXt-{variant} | {k} | {label} | skipped: time budget spent | | |", flush=True)
            continue
        model = build(impl, variant, k, device)
        if cl:
            to_channels_last(model)
        note = ""
        if impl == "ours" and variant == "S" and not cl and amp is None and not compiled:
            ref = build("monai", variant, k, device)
            note = " (max abs diff to MONAI " + ", ".join(
                f"{max_abs_diff(ref, model, x, tf32):.1e}{' with TF32' if tf32 else ' in strict fp32'}"
                for tf32 in ((True, False) if device.type == "cuda" else (False,))) + ")"
            del ref
        net = torch.compile(model) if compiled else model
        measured = measure_step(net, model.parameters(), x, y, amp, args, device)
        if measured is None:
            print(f"| MedNeXt-{variant} | {k} | {label} | out of memory | | |", flush=True)
            continue
        ms, first_s, peak = measured
        if impl == "monai":
            baselines[(variant, k)] = ms
        baseline = baselines.get((variant, k))
        ratio = f"{baseline / ms:.2f}x" if baseline else "n/a"
        what = f"MedNeXt-{variant}" + ("" if variant == "S" else " (MONAI's B differs: not identical maths)")
        if compiled:
            note = f" (compile + first step {first_s:.0f} s)"
        print(f"| {what} | {k} | {label}{note} | {ms:.1f} | {ratio} | {peak:.2f} |", flush=True)
        rows.append({"variant": variant, "k": k, "label": label, "ms": ms, "peak_gib": peak,
                     "speedup": baseline / ms if baseline else None, "first_step_s": first_s})
        if args.json:  # written after every row, so a run cut short keeps what it measured
            args.json.write_text(json.dumps(rows, indent=1))
        del model, net
    if args.infer:
        infer_rows(args, device)
    if args.train_json:
        if args.train_json.exists():
            t = json.loads(args.train_json.read_text())
            print(f"| synthetic-task training: {t['what']} | 3 | trainer defaults (amp auto) "
                  f"| {t['train_wall_s']:.0f} s in all | mean fg Dice {t['mednext_final_mean_dice']:.3f} "
                  f"(threshold {t['threshold_baseline_mean_dice']:.3f}) | |")
        else:
            print("| synthetic-task training | | | did not finish (see train.log) | | |")
    print(f"(total {time.perf_counter() - start:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
