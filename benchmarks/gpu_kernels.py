"""GPU check of the Triton depthwise kernels inside MedNeXt: profiler share, training steps, checkpointing policies.

Run by ``benchmarks/gpu_check.sh`` (its ``kernels`` section, after ``benchmarks/triton_check.py``'s
per-op table). Three parts, one JSON file (``--json``):

1. profiler share: the fraction of one training step's GPU time spent in depthwise-convolution
   kernels (names matching ``depthwise`` or ``_dw_``), ours bf16 on PyTorch's kernels and on the
   Triton kernels, with the step's largest kernels listed so unmatched cuDNN kernels are visible;
2. one table of training steps (forward + backward + AdamW, batch 1, ``--size``^3): MONAI vs ours
   on PyTorch's kernels vs ours on the Triton kernels (``model.set_kernels("triton")``), for each
   preset, kernel size and dtype (fp32, bf16 autocast), plus L k5 when it fits; median of
   ``--repeats`` steps after ``--warmup`` (which also compiles the Triton kernels), peak memory;
3. the checkpointing policies (off, block, expansion) of the M preset in bf16: step time and peak
   memory.

It ends with the ``AUTO_TRITON`` entry (``mednext_lite/fast/conv.py``) these numbers support: the
kernel sizes at which the Triton step beat PyTorch's in every measured row (both dtypes, every
preset), with the ops that ``--ops-json`` (triton_check.py's JSON) shows faster summed over the
three directions in the default layout. A time guard skips rows once ``--budget-s`` is spent.
``--device cpu`` dry-runs every code path at a tiny ``--size`` through Triton's interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import build, measure_step, step_fn, sync

DTYPES = {"fp32": None, "bf16": torch.bfloat16}
DEPTHWISE = re.compile(r"depthwise|_dw_", re.IGNORECASE)


def _device_us(evt) -> float:
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(evt, name):
            return float(getattr(evt, name))
    return 0.0


def profile_share(model, step, device: torch.device) -> dict:
    """Share of one step's device time (CPU time on a dry run) in depthwise kernels, and the top kernels."""
    from torch.profiler import ProfilerActivity, profile

    step(), sync(device)
    activities = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        step()
        sync(device)
    events = prof.key_averages()
    timed = [(e.key, _device_us(e) if device.type == "cuda" else float(e.self_cpu_time_total)) for e in events]
    if device.type == "cuda":  # kernels only: the CPU-side op events carry no device time of their own
        timed = [(k, t) for k, t in timed if t > 0]
    total = sum(t for _, t in timed) or 1.0
    dw = sum(t for k, t in timed if DEPTHWISE.search(k))
    top = sorted(timed, key=lambda kt: -kt[1])[:8]
    return {"share": dw / total, "depthwise_ms": dw / 1e3, "total_ms": total / 1e3,
            "top": [{"kernel": k[:90], "ms": t / 1e3} for k, t in top]}


def make(impl: str, variant: str, k: int, device: torch.device, kernels: str = "pytorch", ckpt=False):
    model = build(impl, variant, k, device)
    if impl == "ours":
        model.set_kernels(kernels).set_grad_checkpointing(ckpt)
    return model


def run_row(impl, variant, k, amp, kernels, ckpt, x, y, args, device) -> dict:
    model = make(impl, variant, k, device, kernels, ckpt)
    measured = measure_step(model, model.parameters(), x, y, amp, args, device)
    del model
    if measured is None:
        return {"oom": True}
    ms, first_s, peak = measured
    return {"ms": ms, "first_step_s": first_s, "peak_gib": peak}


def auto_entry(steps: list[dict], ops: dict | None) -> set[tuple[str, int]]:
    """(op, k) pairs for AUTO_TRITON: k where every Triton step row beat its PyTorch row, restricted
    to the ops triton_check.py measured faster (all three directions summed, contiguous layout)."""
    winners = set()
    for k in {r["k"] for r in steps}:
        pairs = [(r, next((p for p in steps if p["label"] == "ours PyTorch kernels" and
                          (p["variant"], p["k"], p["dtype"]) == (r["variant"], r["k"], r["dtype"])), None))
                 for r in steps if r["k"] == k and r["label"] == "ours Triton kernels"]
        pairs = [(r, p) for r, p in pairs if p is not None and "ms" in r and "ms" in p]
        if pairs and all(r["ms"] < p["ms"] for r, p in pairs):
            winners.add(k)
    entry = set()
    for k in winners:
        for op in ("conv_s1", "convT_s2"):
            if ops is None:
                entry.add((op, k))
                continue
            rows = [r for r in ops["rows"] if r["k"] == k and r["op"] == op and r["layout"] == "contiguous"]
            by_dtype: dict[str, list] = {}
            for r in rows:
                by_dtype.setdefault(r["dtype"], []).append(r)
            if by_dtype and all(sum(r["ours_ms"] for r in rs) < sum(r["torch_ms"] for r in rs)
                                for rs in by_dtype.values()):
                entry.add((op, k))
    return entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--variants", nargs="+", default=["S", "B"])
    p.add_argument("--kernels", type=int, nargs="+", default=[3, 5])
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=list(DTYPES))
    p.add_argument("--large", default="L", help="preset of the extra k5 rows, when the budget allows ('' for none)")
    p.add_argument("--ckpt-variant", default="M", help="preset of the checkpointing-policy rows ('' for none)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--budget-s", type=float, default=420.0)
    p.add_argument("--ops-json", type=Path, help="benchmarks/triton_check.py's --json output")
    p.add_argument("--json", type=Path)
    p.add_argument("--device", default="cuda", help="'cpu' only to dry-run this script at a tiny --size")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this script is for a CUDA machine (benchmarks/gpu_check.sh runs it)")
        return 2
    if device.type == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels' first use, which compiles them
    from mednext_lite.fast import triton_depthwise as tdw

    if not tdw.available(device):
        print(f"the Triton kernels cannot run on {device} (is triton installed?): nothing to compare")
        return 2
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU dry run (Triton interpreter)"
    print(f"# gpu_kernels on {name}: torch {torch.__version__}, triton {tdw.triton.__version__}, "
          f"1x1x{args.size}^3, batch 1, median of {args.repeats} steps")
    start = time.perf_counter()
    out: dict = {"device": name, "args": {k: str(v) for k, v in vars(args).items()}}
    size = (args.size,) * 3
    x = torch.randn(1, 1, *size, device=device, generator=torch.Generator(device).manual_seed(1))
    y = torch.randint(0, 3, (1, *size), device=device, generator=torch.Generator(device).manual_seed(2))

    def save():
        if args.json:  # after every part and row, so a run cut short keeps what it measured
            args.json.write_text(json.dumps(out, indent=1))

    # 1. profiler share
    print("\n## Depthwise share of one step's GPU time (S k3, bf16 autocast)")
    out["profile"] = {}
    for kernels in ("pytorch", "triton"):
        model = make("ours", "S", 3, device, kernels)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        share = profile_share(model, step_fn(model, x, y, opt, torch.bfloat16), device)
        out["profile"][kernels] = share
        print(f"- {kernels} kernels: {100 * share['share']:.0f}% of {share['total_ms']:.1f} ms in depthwise kernels; "
              "largest: " + "; ".join(f"{t['kernel'][:50]} {t['ms']:.2f} ms" for t in share["top"][:4]), flush=True)
        del model, opt
    save()

    # 2. training steps
    print("\n| model | k | dtype | kernels | step ms | vs MONAI | vs ours PyTorch kernels | peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    jobs = [(v, k, d) for v in args.variants for k in args.kernels for d in args.dtypes]
    if args.large:
        jobs += [(args.large, 5, d) for d in args.dtypes]
    out["steps"] = steps = []
    for variant, k, dtype in jobs:
        base = {}
        for impl, label, kernels in (("monai", "MONAI", "pytorch"), ("ours", "ours PyTorch kernels", "pytorch"),
                                     ("ours", "ours Triton kernels", "triton")):
            row = {"variant": variant, "k": k, "dtype": dtype, "label": label}
            if time.perf_counter() - start > args.budget_s:
                print(f"| MedNeXt-{variant} | {k} | {dtype} | {label} | skipped: time budget spent | | | |")
                continue
            row.update(run_row(impl, variant, k, DTYPES[dtype], kernels, False, x, y, args, device))
            steps.append(row)
            if row.get("oom"):
                print(f"| MedNeXt-{variant} | {k} | {dtype} | {label} | out of memory | | | |", flush=True)
                continue
            base[label] = row["ms"]
            vs_monai = f"{base['MONAI'] / row['ms']:.2f}x" if "MONAI" in base else "n/a"
            vs_ours = (f"{base['ours PyTorch kernels'] / row['ms']:.2f}x" if "ours PyTorch kernels" in base
                       else "n/a")
            what = f"MedNeXt-{variant}" + ("" if variant == "S" else " (MONAI's differs)")
            print(f"| {what} | {k} | {dtype} | {label} | {row['ms']:.1f} | {vs_monai} | {vs_ours} "
                  f"| {row['peak_gib']:.2f} |", flush=True)
            save()

    # 3. checkpointing policies
    if args.ckpt_variant:
        print(f"\n## Checkpointing policies, MedNeXt-{args.ckpt_variant} k3, bf16, PyTorch kernels")
        print("| policy | step ms | peak GiB |")
        print("|---|---|---|")
        out["ckpt"] = []
        for policy in (False, "block", "expansion"):
            label = policy or "off"
            if time.perf_counter() - start > args.budget_s:
                print(f"| {label} | skipped: time budget spent | |")
                continue
            row = {"policy": label, **run_row("ours", args.ckpt_variant, 3, torch.bfloat16, "pytorch", policy,
                                              x, y, args, device)}
            out["ckpt"].append(row)
            print(f"| {label} | " + ("out of memory | |" if row.get("oom") else
                                     f"{row['ms']:.1f} | {row['peak_gib']:.2f} |"), flush=True)
            save()

    ops = json.loads(args.ops_json.read_text()) if args.ops_json and args.ops_json.exists() else None
    entry = sorted(auto_entry(steps, ops))
    out["auto_triton"] = entry
    print("\nAUTO_TRITON entry these rows support (mednext_lite/fast/conv.py): "
          + (f"{name!r}: frozenset({entry!r})" if entry else "none (no kernel size won in every row)"))
    print(f"(gpu_kernels total {time.perf_counter() - start:.0f} s)")
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
