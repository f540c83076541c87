"""CPU benchmark: mednext_lite's MedNeXt against MONAI's at identical maths.

Sections (``--only`` picks some, comma-separated):

* ``train``: S preset, forward + backward + AdamW step at batch 1, 64^3 (3D) and 256^2 (2D), k3 and k5,
  float32. MONAI's network is built, its weights are copied into ours with
  ``mednext_lite.interop.convert_monai_state_dict`` and the outputs are checked equal first.
* ``ckpt``: M preset, our step under each gradient-checkpointing policy: off, ``"block"`` (whole
  blocks recomputed) and ``"expansion"`` (only the wide part after each depthwise conv), stepped in
  turn, with the largest gradient difference to the ``off`` step.
* ``infer``: sliding-window inference of one 128^3 volume (MONAI's ``sliding_window_inference``,
  64^3 windows, overlap 0.25), volumes per minute, both networks in the same call.
* ``peak``: our training step's achieved GFLOP/s next to a 4096^2 float32 matmul in the same run,
  and the ceiling that matmul rate puts on any speed-up of the same maths.
* ``alloc``: our 3D k3 step with glibc's default allocator settings against the same step after
  ``mednext_lite.fast.allocator.keep_freed_memory()`` (what the trainer does on CPU).

``--keep-freed-memory`` applies that switch to every worker, ours and MONAI's alike, so that the
train/ckpt/infer ratios compare the networks, not the allocator settings.

How it measures. Each network lives in its own worker process; the parent tells the workers to step
in turn (A B, B A, A B, ...) so that load from other users of the machine hits both alike, and reports
medians of wall-clock and of process CPU time, and the ratio of medians. Peak memory is each worker's
resident-set high-water mark (``VmHWM``, reset just before the first step) minus its resident size
just before that step: a whole-process measure, valid for torch's CPU allocator, unlike tracemalloc.

    python benchmarks/bench_model.py                 # everything (about 40 minutes on a busy 2-core VM)
    python benchmarks/bench_model.py --only train --repeats 3 --size3d 32 --size2d 128   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mednext_lite.profile import _proc_status_bytes, _reset_peak_rss

SECTIONS = ("train", "peak", "ckpt", "infer", "alloc")


# --------------------------------------------------------------------------------------------
# worker side: one network per process
# --------------------------------------------------------------------------------------------
def _build(spec: dict[str, Any]) -> torch.nn.Module:
    """MONAI's S/M network with seeded weights, or ours carrying exactly those weights."""
    from monai.networks.nets.mednext import create_mednext as monai_mednext

    from mednext_lite import MedNeXt, create_mednext
    from mednext_lite.interop import convert_monai_state_dict

    torch.manual_seed(0)
    if spec["impl"] == "monai":
        return monai_mednext(spec["variant"], spec["dims"], 1, spec["classes"], spec["k"], deep_supervision=False)
    if spec["variant"] == "S":
        theirs = monai_mednext("S", spec["dims"], 1, spec["classes"], spec["k"], deep_supervision=False)
        sd, config = convert_monai_state_dict(theirs.state_dict())
        model = MedNeXt(config)
        model.load_state_dict(sd)
    else:  # MONAI's B/M/L are a different network (see interop); ours is built on its own
        model = create_mednext(spec["variant"], 1, spec["classes"], spec["k"], spec["dims"])
    model.set_grad_checkpointing(spec.get("ckpt", False))
    model.set_memory_format(spec.get("memory_format", "auto"))
    return model


def worker(spec: dict[str, Any]) -> None:
    """Answer ``check PATH`` / ``step`` / ``infer`` / ``mem`` / ``quit`` lines on stdin with JSON lines."""
    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    if spec.get("keep_freed_memory"):
        from mednext_lite.fast.allocator import keep_freed_memory

        keep_freed_memory()
    model = _build(spec)
    size = (spec["size"],) * spec["dims"]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, *size, generator=gen)
    y = torch.randint(0, spec["classes"], (1, *size), generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    volume = torch.randn(1, 1, *(spec.get("infer_size", 128),) * spec["dims"], generator=gen)
    base_rss, reset = 0, False
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        reply: dict[str, Any] = {}
        if cmd == "check":
            model.eval()
            with torch.no_grad():
                torch.save(model(x), arg)
            model.train()
        elif cmd == "grads":
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            torch.save({n: p.grad for n, p in model.named_parameters()}, arg)
            opt.zero_grad(set_to_none=True)
        elif cmd == "step":
            if not base_rss:
                base_rss, reset = _proc_status_bytes("VmRSS"), _reset_peak_rss()
            w0, c0 = time.perf_counter(), time.process_time()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            reply = {"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0}
        elif cmd == "infer":
            from monai.inferers import sliding_window_inference

            model.eval()
            w0, c0 = time.perf_counter(), time.process_time()
            with torch.no_grad():
                sliding_window_inference(volume, (spec["size"],) * spec["dims"], 2, model, overlap=0.25)
            reply = {"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0}
            model.train()
        elif cmd == "mem":
            peak = _proc_status_bytes("VmHWM")
            reply = {"base_rss": base_rss, "peak_rss": peak, "step_peak": peak - base_rss, "reset": reset}
        elif cmd == "quit":
            return
        print(json.dumps(reply), flush=True)


# --------------------------------------------------------------------------------------------
# parent side
# --------------------------------------------------------------------------------------------
class Worker:
    """A worker process holding one network, driven line by line."""

    def __init__(self, spec: dict[str, Any]) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.spec = spec
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(spec)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env=env,
        )

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.spec} died (exit code {self.proc.wait()}) on {command!r}")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.ask("quit")
        except (RuntimeError, BrokenPipeError, json.JSONDecodeError):
            pass
        self.proc.wait(timeout=60)


def interleave(a: Worker, b: Worker, command: str, repeats: int, budget_s: float, *, warmup: bool = True,
               between=None) -> tuple[list, list]:
    """Alternate ``command`` between two workers (A B, B A, ...), after one warm-up each.

    ``between()``, when given, runs in this process after every pair, while both workers are idle.
    """
    if warmup:
        a.ask(command), b.ask(command)  # oneDNN primitives, optimiser state, allocator
    ra, rb, t0 = [], [], time.perf_counter()
    for i in range(repeats):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        r1, r2 = first.ask(command), second.ask(command)
        (ra, rb)[first is b].append(r1)
        (ra, rb)[second is b].append(r2)
        if between is not None:
            between()
        if i + 1 >= 3 and time.perf_counter() - t0 > budget_s:
            break  # enough for a median; the table says how many
    return ra, rb


def med(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def spread(rows: list[dict], key: str) -> str:
    """Min-max around the median, as a percentage of it: how noisy the machine was."""
    values = [r[key] for r in rows]
    m = statistics.median(values)
    return f"{100 * (max(values) - min(values)) / m:.0f}%"


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def check_equal(a: Worker, b: Worker) -> float:
    """Max |difference| of the two networks' eval-mode outputs on the benchmark input."""
    with tempfile.TemporaryDirectory() as tmp:
        pa, pb = os.path.join(tmp, "a.pt"), os.path.join(tmp, "b.pt")
        a.ask(f"check {pa}"), b.ask(f"check {pb}")
        ya, yb = torch.load(pa), torch.load(pb)
    diff = float((ya - yb).abs().max())
    scale = float(yb.abs().max())
    # 1e-5 of the logits' scale: both sides round differently (summation order) and land ~1e-6 of
    # the scale apart (tests/test_interop.py); a wrong weight mapping would differ by O(scale).
    if not diff <= 1e-5 * max(scale, 1.0):
        raise SystemExit(f"outputs differ by {diff:.3g} (scale {scale:.3g}): the comparison would be meaningless")
    return diff


def bench_train(args: argparse.Namespace, rows: list[dict]) -> None:
    print("\n## Training step, S preset, batch 1, float32 (ours: default fast path; MONAI: its default)")
    print("| input | k | ours s (median) | MONAI s (median) | speed-up wall | speed-up CPU time "
          "| ours peak MiB | MONAI peak MiB | n | spread ours/MONAI | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for dims, size in [(d, args.size3d if d == 3 else args.size2d) for d in args.dims]:
        for k in args.kernels:
            spec = {"variant": "S", "dims": dims, "k": k, "size": size, "classes": 3, "threads": args.threads,
                    "keep_freed_memory": args.keep_freed_memory}
            ours, theirs = Worker(dict(spec, impl="ours")), Worker(dict(spec, impl="monai"))
            try:
                diff = check_equal(ours, theirs)
                matmul: list[float] = []
                ro, rm = interleave(ours, theirs, "step", args.repeats, args.budget_s,
                                    between=lambda log=matmul: log.append(matmul_gflops()))
                mo, mm = ours.ask("mem"), theirs.ask("mem")
            finally:
                ours.close(), theirs.close()
            row = {"section": "train", "dims": dims, "size": size, "k": k, "n": len(ro),
                   "ours_s": med(ro, "wall"), "monai_s": med(rm, "wall"),
                   "ours_cpu_s": med(ro, "cpu"), "monai_cpu_s": med(rm, "cpu"),
                   "ours_peak": mo["step_peak"], "monai_peak": mm["step_peak"], "max_abs_diff": diff,
                   "ours_rss": mo["peak_rss"], "monai_rss": mm["peak_rss"], "matmul_gflops": statistics.median(matmul)}
            row["speedup"] = row["monai_s"] / row["ours_s"]
            row["speedup_cpu"] = row["monai_cpu_s"] / row["ours_cpu_s"]
            rows.append(row)
            print(f"| {'x'.join([str(size)] * dims)} | {k} | {row['ours_s']:.2f} | {row['monai_s']:.2f} "
                  f"| **{row['speedup']:.2f}x** | {row['speedup_cpu']:.2f}x | {mib(row['ours_peak'])} "
                  f"| {mib(row['monai_peak'])} | {len(ro)} | {spread(ro, 'wall')}/{spread(rm, 'wall')} "
                  f"| {diff:.1e} |", flush=True)


def step_pair(args: argparse.Namespace, spec: dict[str, Any], variants: dict[str, dict[str, Any]],
              column: str) -> tuple[dict[str, float], dict[str, float]]:
    """Two of our workers that differ only by ``variants`` (label -> spec changes), stepped in turn;
    prints their rows and returns ({label: median step s}, {label: peak step bytes})."""
    print(f"| {column} | step s (median) | peak step MiB | n |")
    print("|---|---|---|---|")
    (la, va), (lb, vb) = variants.items()
    a, b = Worker(dict(spec, **va)), Worker(dict(spec, **vb))
    try:
        ra, rb = interleave(a, b, "step", args.repeats, args.budget_s)
        ma, mb = a.ask("mem"), b.ask("mem")
    finally:
        a.close(), b.close()
    for name, r, m in ((la, ra, ma), (lb, rb, mb)):
        print(f"| {name} | {med(r, 'wall'):.2f} | {mib(m['step_peak'])} | {len(r)} |")
    return {la: med(ra, "wall"), lb: med(rb, "wall")}, {la: ma["step_peak"], lb: mb["step_peak"]}


def round_robin(workers: list[Worker], command: str, repeats: int, budget_s: float) -> list[list[dict]]:
    """``command`` on every worker in turn, the order rotated each round, after one warm-up each."""
    for w in workers:
        w.ask(command)
    results: list[list[dict]] = [[] for _ in workers]
    t0 = time.perf_counter()
    for i in range(repeats):
        for j in range(len(workers)):
            k = (i + j) % len(workers)
            results[k].append(workers[k].ask(command))
        if i + 1 >= 3 and time.perf_counter() - t0 > budget_s:
            break
    return results


CKPT_POLICIES = {"off": False, "block": "block", "expansion": "expansion"}


def bench_ckpt(args: argparse.Namespace, rows: list[dict]) -> None:
    size, variant = args.size3d, args.ckpt_variant
    print(f"\n## Gradient checkpointing policies, {variant} preset, k3, 1x1x{size}^3, batch 1, float32")
    spec = {"variant": variant, "dims": 3, "k": 3, "size": size, "classes": 3, "impl": "ours",
            "threads": args.threads, "keep_freed_memory": args.keep_freed_memory}
    workers = [Worker(dict(spec, ckpt=policy)) for policy in CKPT_POLICIES.values()]
    try:
        results = round_robin(workers, "step", args.repeats, args.budget_s)
        mems = [w.ask("mem") for w in workers]
        with tempfile.TemporaryDirectory() as tmp:  # after the memory reading, which it would change
            grads = []
            for i, w in enumerate(workers):
                w.ask(f"grads {tmp}/{i}.pt")
                grads.append(torch.load(f"{tmp}/{i}.pt"))
    finally:
        for w in workers:
            w.close()
    print("| policy | step s (median) | time vs off | peak step MiB | memory vs off | max grad diff vs off | n |")
    print("|---|---|---|---|---|---|---|")
    # one row for the section: <key>_s and <key>_peak per policy ("on" is "block", as set_grad_checkpointing(True))
    row: dict[str, Any] = {"section": "ckpt", "variant": variant, "size": size}
    for (name, _), r, m, g in zip(CKPT_POLICIES.items(), results, mems, grads):
        key = {"block": "on"}.get(name, name)
        row[f"{key}_s"], row[f"{key}_peak"], row[f"{key}_n"] = med(r, "wall"), m["step_peak"], len(r)
        row[f"{key}_grad_diff"] = max(float((g[n] - grads[0][n]).abs().max()) for n in g)
        print(f"| {name} | {row[f'{key}_s']:.2f} | x{row[f'{key}_s'] / row['off_s']:.2f} | {mib(m['step_peak'])} "
              f"| x{m['step_peak'] / row['off_peak']:.2f} | {row[f'{key}_grad_diff']:.1e} | {len(r)} |", flush=True)
    row["memory_ratio"], row["time_ratio"] = row["on_peak"] / row["off_peak"], row["on_s"] / row["off_s"]
    row["expansion_memory_ratio"] = row["expansion_peak"] / row["off_peak"]
    row["expansion_time_ratio"] = row["expansion_s"] / row["off_s"]
    rows.append(row)


def bench_infer(args: argparse.Namespace, rows: list[dict]) -> None:
    n = args.infer_size
    print(f"\n## Sliding-window inference, S preset, one {n}^3 volume, {args.size3d}^3 windows, overlap 0.25")
    print("| k | ours volumes/min | MONAI volumes/min | speed-up | n |")
    print("|---|---|---|---|---|")
    for k in args.infer_kernels:
        spec = {"variant": "S", "dims": 3, "k": k, "size": args.size3d, "classes": 3, "infer_size": n,
                "threads": args.threads, "keep_freed_memory": args.keep_freed_memory}
        ours, theirs = Worker(dict(spec, impl="ours")), Worker(dict(spec, impl="monai"))
        try:
            check_equal(ours, theirs)
            # no separate warm-up: each call runs 27 windows, the first of which warms up
            ro, rm = interleave(ours, theirs, "infer", args.infer_repeats, args.budget_s, warmup=False)
        finally:
            ours.close(), theirs.close()
        row = {"section": "infer", "k": k, "n": len(ro), "ours_vpm": 60 / med(ro, "wall"), "monai_vpm": 60 / med(rm, "wall")}
        row["speedup"] = row["ours_vpm"] / row["monai_vpm"]
        rows.append(row)
        print(f"| {k} | {row['ours_vpm']:.2f} | {row['monai_vpm']:.2f} | **{row['speedup']:.2f}x** | {len(ro)} |")


def bench_alloc(args: argparse.Namespace, rows: list[dict]) -> None:
    size = args.size3d
    print(f"\n## Allocator, S preset, k3, 1x1x{size}^3, batch 1, ours: glibc defaults vs keep_freed_memory()")
    spec = {"variant": "S", "dims": 3, "k": 3, "size": size, "classes": 3, "impl": "ours", "threads": args.threads}
    secs, peak = step_pair(args, spec, {"glibc defaults": {"keep_freed_memory": False},
                                        "keep_freed_memory()": {"keep_freed_memory": True}}, "allocator")
    row = {"section": "alloc", "size": size, "default_s": secs["glibc defaults"], "kept_s": secs["keep_freed_memory()"],
           "default_peak": peak["glibc defaults"], "kept_peak": peak["keep_freed_memory()"]}
    row["speedup"] = row["default_s"] / row["kept_s"]
    rows.append(row)
    print(f"\nkeep_freed_memory(): step x{row['speedup']:.2f} faster")


def matmul_gflops(n: int = 4096, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def bench_peak(args: argparse.Namespace, rows: list[dict]) -> None:
    """Achieved GFLOP/s of our training steps (from the ``train`` rows) next to a float32 matmul's,
    the matmul measured in the same run between the interleaved steps."""
    from mednext_lite.profile import count_macs
    from mednext_lite.variants import preset_config

    train = [r for r in rows if r["section"] == "train"]
    if not train:
        print("\n(peak needs the train section: run with --only train,peak)")
        return
    print("\n## Achieved throughput vs the machine (float32)")
    print("| what | GFLOP/s | share of matmul |")
    print("|---|---|---|")
    for r in train:
        # a training step costs ~3 forward passes (forward, grad-input, grad-weight); 1 MAC = 2 FLOP
        flops = 6 * count_macs(preset_config("S", 1, 3, r["k"], r["dims"]), (r["size"],) * r["dims"])
        for who in ("ours", "monai"):
            achieved = flops / r[f"{who}_s"] / 1e9
            r[f"{who}_gflops"] = achieved
            print(f"| MedNeXt-S k{r['k']} {'x'.join([str(r['size'])] * r['dims'])} training step, "
                  f"{'ours' if who == 'ours' else 'MONAI'} (6 x conv MACs / median step) | {achieved:.1f} "
                  f"| {100 * achieved / r['matmul_gflops']:.1f}% |")
    peak = statistics.median(r["matmul_gflops"] for r in train)
    print(f"| float32 matmul 4096x4096 (torch/MKL), median between the steps | {peak:.0f} | 100% |")

    # The same FLOPs can take no less than FLOPs / matmul rate, whoever computes them; MONAI's time
    # over that floor is the highest speed-up any implementation of the same maths could reach here.
    print("\n## Ceiling: the step's conv FLOPs at the matmul rate (same maths, nothing else costs anything)")
    print("| input | k | GFLOP per step | floor s | MONAI s | highest possible speed-up | ours |")
    print("|---|---|---|---|---|---|---|")
    for r in train:
        flops = r["ours_gflops"] * r["ours_s"]
        r["floor_s"] = flops / r["matmul_gflops"]
        r["ceiling"] = r["monai_s"] / r["floor_s"]
        print(f"| {'x'.join([str(r['size'])] * r['dims'])} | {r['k']} | {flops:.1f} | {r['floor_s']:.2f} "
              f"| {r['monai_s']:.2f} | {r['ceiling']:.2f}x | {r['speedup']:.2f}x |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed repeats per pair (after a warm-up)")
    p.add_argument("--infer-repeats", type=int, default=2)
    p.add_argument("--budget-s", type=float, default=300.0,
                   help="stop repeating a pair after this many seconds (at least 3 repeats are kept)")
    p.add_argument("--size3d", type=int, default=64)
    p.add_argument("--ckpt-variant", default="M", help="preset of the ckpt section")
    p.add_argument("--size2d", type=int, default=256)
    p.add_argument("--infer-size", type=int, default=128)
    p.add_argument("--kernels", type=int, nargs="+", default=[3, 5])
    p.add_argument("--dims", type=int, nargs="+", default=[3, 2], choices=(2, 3), help="spatial dims for train")
    p.add_argument("--infer-kernels", type=int, nargs="+", default=[3])
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default)")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="apply mednext_lite.fast.allocator.keep_freed_memory() in every worker, ours and MONAI's")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {sorted(unknown)}: choose from {SECTIONS}")
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"# mednext_lite benchmark: {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, allocator: "
          f"{'keep_freed_memory() in every worker' if args.keep_freed_memory else 'glibc defaults'}, "
          f"load average {os.getloadavg()[0]:.1f} at start, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    rows: list[dict] = []
    started = time.perf_counter()
    for section in chosen:
        {"train": bench_train, "ckpt": bench_ckpt, "infer": bench_infer, "peak": bench_peak,
         "alloc": bench_alloc}[section](args, rows)
        if args.json:  # after every section, so an interrupted run keeps what it measured
            args.json.write_text(json.dumps(rows, indent=1))
    print(f"\n(total {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.1f} at the end)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
