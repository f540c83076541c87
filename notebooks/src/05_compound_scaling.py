# %% [markdown]
# # 05 · Compound scaling: depth, width and kernel size
#
# **What you will learn**
# - what each scaling axis of MedNeXt costs: parameters, multiply-accumulates (MACs), receptive field,
#   and the measured time and memory of one training step (memory counted net of what the process
#   already holds, so that each axis's own cost shows);
# - to reproduce the paper's S/B/M/L table exactly, and why its "GFlops" are conv MACs plus a little;
# - how to compare scaled networks in a training ablation without fooling yourself: several seeds,
#   the spread drawn, the validation cases counted, and no ranking the seeds do not support;
# - to sweep this notebook with papermill and collect the runs into one table.
#
# Before this lesson: Dice and the synthetic task (lesson 03), training with the paper's recipe
# (lesson 04). After it, lesson 06 grows a trained k3 network into a k5 one (UpKern).
#
# `size` picks the amount of work: `"ci"` (what the tests run: one seed, which cannot rank the arms),
# `"class"` (about 5 minutes on a 2-core CPU, 3 seeds per arm) or `"gpu"` (3D training and 128^3
# steps on one GPU). Any parameter set by hand wins over the size.

# %% [parameters]
size = "class"  # "ci": what CI runs; "class": about 5 minutes on a 2-core CPU; "gpu": a real run on one GPU
variants = None  # presets in the reference table, e.g. ["S", "B", "M", "L"]
kernels = None  # kernel sizes of the reference table, e.g. [3, 5]
spatial_dims = None  # 3 or 2: the reference table and the scaling grid
grid_depth = None  # block-count multipliers of the scaling grid
grid_width = None  # expansion-ratio multipliers
grid_kernel = None  # kernel sizes of the grid
grid_base_width = None  # C of the base network of the grid, with one block per stage and ratio 2
input_size = None  # spatial size per axis of the grid's measured step (batch 2) and its MACs
timing_repeats = None  # timed training steps per grid point (the median is reported)
measure = True  # measure step time and memory per grid point (False: count only)
train_ablation = True  # train the base network and one step along each axis on the synthetic task
n_seeds = None  # training seeds per arm (3 or more to compare arms)
ablation_spatial_dims = None
ablation_patch = None
ablation_batch = None
ablation_epochs = None
ablation_iters = None
ablation_augment = None
n_train = None  # cases of the synthetic task; one fifth of them validate each run
output_dir = "runs/05_compound_scaling"
seed = 0
device = "auto"

# %%
import csv
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from mednext_lite import MedNeXt, MedNeXtConfig, compound_scale, get_preset, preset_config
from mednext_lite.fast.allocator import keep_freed_memory
from mednext_lite.lesson import Lesson, collect_csv, sized
from mednext_lite.profile import count_macs, count_parameters, receptive_field

p = sized(size, {
    "ci": dict(variants=["S", "B"], kernels=[3, 5], spatial_dims=3, grid_depth=[1, 2], grid_width=[1],
               grid_kernel=[3, 5], grid_base_width=16, input_size=32, timing_repeats=3, n_seeds=1,
               ablation_spatial_dims=2, ablation_patch=48, ablation_batch=8, ablation_epochs=2, ablation_iters=8,
               ablation_augment=False, n_train=10),
    "class": dict(variants=["S", "B", "M", "L"], kernels=[3, 5], spatial_dims=3, grid_depth=[1, 2],
                  grid_width=[1, 2], grid_kernel=[3, 5], grid_base_width=16, input_size=32, timing_repeats=3,
                  n_seeds=3, ablation_spatial_dims=2, ablation_patch=64, ablation_batch=8, ablation_epochs=2,
                  ablation_iters=24, ablation_augment=False, n_train=20),
    "gpu": dict(variants=["S", "B", "M", "L"], kernels=[3, 5], spatial_dims=3, grid_depth=[1, 2],
                grid_width=[1, 2], grid_kernel=[3, 5, 7], grid_base_width=32, input_size=128, timing_repeats=5,
                n_seeds=5, ablation_spatial_dims=3, ablation_patch=48, ablation_batch=2, ablation_epochs=20,
                ablation_iters=100, ablation_augment=True, n_train=40),
}, variants=variants, kernels=kernels, spatial_dims=spatial_dims, grid_depth=grid_depth, grid_width=grid_width,
   grid_kernel=grid_kernel, grid_base_width=grid_base_width, input_size=input_size, timing_repeats=timing_repeats,
   n_seeds=n_seeds, ablation_spatial_dims=ablation_spatial_dims, ablation_patch=ablation_patch,
   ablation_batch=ablation_batch, ablation_epochs=ablation_epochs, ablation_iters=ablation_iters,
   ablation_augment=ablation_augment, n_train=n_train)
lesson = Lesson(output_dir, seed=seed, device=device)
lesson.record(size=size, **p)
print(f"size={size!r}:", p)
started = time.perf_counter()

# %% [markdown]
# ## 1. The published presets, reproduced
# S, B, M and L differ in expansion ratios R (width) and blocks per stage B (depth); k is 3 or 5.
# These are the figures a faithful MedNeXt must reproduce (in_channels 1, 3 classes, no deep
# supervision; MACs of all convolutions at 1x128^3 in 3D and 1x512^2 in 2D):

# %%
REFERENCE_PARAMS = {  # (variant, spatial_dims, kernel) -> parameters
    ("S", 3, 3): 5_550_947, ("S", 3, 5): 5_980_579, ("S", 2, 3): 5_472_035, ("S", 2, 5): 5_542_179,
    ("B", 3, 3): 10_526_339, ("B", 3, 5): 10_955_971, ("B", 2, 3): 10_447_427, ("B", 2, 5): 10_517_571,
    ("M", 3, 3): 17_548_995, ("M", 3, 5): 18_260_867, ("M", 2, 3): 17_418_243, ("M", 2, 5): 17_534_467,
    ("L", 3, 3): 61_779_299, ("L", 3, 5): 62_992_931, ("L", 2, 3): 61_556_387, ("L", 2, 5): 61_754_531,
}
REFERENCE_GMACS = {  # (variant, spatial_dims, kernel) -> conv GMAC
    ("S", 3, 3): 127.3, ("S", 3, 5): 165.6, ("B", 3, 3): 166.7, ("B", 3, 5): 205.0,
    ("M", 3, 3): 243.6, ("M", 3, 5): 303.7, ("L", 3, 3): 494.6, ("L", 3, 5): 558.9,
    ("S", 2, 3): 35.42, ("S", 2, 5): 36.64, ("B", 2, 3): 57.61, ("B", 2, 5): 58.82,
    ("M", 2, 3): 88.10, ("M", 2, 5): 90.07, ("L", 2, 3): 243.11, ("L", 2, 5): 245.52,
}
DEEP_SUPERVISION_EXTRA = 2_892
dims = p["spatial_dims"]

ref_size = (128,) * 3 if dims == 3 else (512, 512)
table = []
for v, k in itertools.product(p["variants"], p["kernels"]):
    cfg = preset_config(v, in_channels=1, num_classes=3, kernel_size=k, spatial_dims=dims)
    row = {"variant": v, "kernel": k, "params": count_parameters(cfg), "gmacs": count_macs(cfg, ref_size) / 1e9,
           "receptive_field": receptive_field(cfg)}
    row["ref_params"] = REFERENCE_PARAMS[(v, dims, k)]
    row["ref_gmacs"] = REFERENCE_GMACS[(v, dims, k)]
    if dims == 3:
        # the paper's own table (3D), kept with each preset: millions of parameters, "GFlops" at 128^3
        preset, column = get_preset(v), (3, 5).index(k)
        row["paper_params_m"], row["paper_gflops"] = preset.paper_params_m[column], preset.paper_gflops[column]
    table.append(row)
    print(f"MedNeXt-{v} k{k} {dims}D: {row['params']:>11,} params (reference {row['ref_params']:>11,})  "
          f"{row['gmacs']:7.2f} GMAC (reference {row['ref_gmacs']:7.2f})  receptive field {row['receptive_field']}")

for row in table:
    assert row["params"] == row["ref_params"], f"MedNeXt-{row['variant']} k{row['kernel']} parameter count differs"
    assert abs(row["gmacs"] - row["ref_gmacs"]) < 0.06, f"MedNeXt-{row['variant']} k{row['kernel']} MACs differ"
ds = preset_config(p["variants"][0], 1, 3, p["kernels"][0], dims, deep_supervision=True)
assert count_parameters(ds) - table[0]["params"] == DEEP_SUPERVISION_EXTRA
print(f"\nall {len(table)} rows equal the reference; deep supervision adds {DEEP_SUPERVISION_EXTRA:,} parameters")

# %% [markdown]
# **GFLOPs or MACs?** One multiply-accumulate (MAC, `a += w * x`) is two floating-point operations, so
# strictly 1 GMAC = 2 GFLOP. Most network papers, MedNeXt's included, follow the profiling tools'
# habit of calling MACs "FLOPs": the paper's 130 "GFlops" for MedNeXt-S k3 sit next to our 127.3
# conv GMAC, not next to 254.6 GFLOP. The 1-2 % left over is the element-wise work (norms,
# activations, GRN, residual adds) that the paper's counter includes and ours leaves out; conv MACs
# are the clean, reproducible number, and they are what this lesson calls "MACs" from here on.
# Parameters agree within 0.1 M (the paper's one decimal is not always rounded to nearest: S k5 has
# 5.98 M, printed 5.9).

# %%
if dims == 3:
    for row in table:
        gap = row["paper_gflops"] - row["gmacs"]
        print(f"MedNeXt-{row['variant']} k{row['kernel']}: params {row['params'] / 1e6:.2f}M vs paper "
              f"{row['paper_params_m']}M; conv GMAC {row['gmacs']:.1f} (= {2 * row['gmacs']:.1f} GFLOP strictly) "
              f"vs paper {row['paper_gflops']} 'GFlops' (+{gap:.1f}, {100 * gap / row['gmacs']:.1f}%)")
        assert abs(row["params"] / 1e6 - row["paper_params_m"]) < 0.1
        assert 0 < gap < 0.03 * row["gmacs"], "the paper's count = conv MACs + a few % of element-wise work"
        assert row["paper_gflops"] < 0.6 * (2 * row["gmacs"]), "the paper's 'GFlops' are MACs, not 2 x MACs"
with open(lesson.out / "presets.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)

# %% [markdown]
# ## 2. A scaling grid: what each axis costs
# Start from a small base network (C = `grid_base_width`, one block per stage, R = 2) and scale depth
# (blocks per stage), width (expansion ratio R) and kernel size independently with `compound_scale`.
# For every grid point we count parameters and MACs and compute the receptive field, then measure
# one training step (forward, backward, AdamW update) on the same input of batch 2:
# - **time**: the median of `timing_repeats` steps after a warm-up step, with the memory setting
#   the trainer uses on CPU (`keep_freed_memory`);
# - **memory the step itself needs**, in two ways. *Saved for backward*: the bytes of every tensor
#   autograd keeps from the forward pass for the backward pass (counted with
#   `torch.autograd.graph.saved_tensors_hooks`, each storage once): exact, and the bulk of a step's
#   memory. *Net peak*: on CPU, the resident-set high-water mark during one step minus the resident set
#   just before it, in a fresh Python process in which glibc serves every block over 128 KiB from
#   `mmap` and hands it back at `free` (`MALLOC_MMAP_THRESHOLD_`), so memory freed by the warm-up
#   step cannot be silently reused; on a GPU, `torch.cuda.max_memory_allocated` minus the memory
#   allocated before the step. A whole-process peak would add the ~300 MiB that Python and PyTorch
#   hold before any step and hide most of the differences between grid points.

# %%
RSS_CHILD = r"""
import json, sys
from pathlib import Path
import torch
from mednext_lite import MedNeXt, MedNeXtConfig

def status(key):  # a /proc/self/status field, in bytes
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(key + ":"))
    return int(line.split()[1]) * 1024

for job in json.loads(sys.stdin.read()):
    model = MedNeXt(MedNeXtConfig.from_dict(job["config"]))
    x = torch.randn(*job["shape"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for measured in (False, True):  # the warm-up step creates AdamW's state before the measured one
        if measured:
            before = status("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # restart the high-water mark (VmHWM) here
        out = model(x)
        (out[0] if isinstance(out, list) else out).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    print(json.dumps({"before": before, "peak": status("VmHWM")}), flush=True)
    del model, x, opt, out
"""


def train_step(model, x, opt):
    out = model(x)
    (out[0] if isinstance(out, list) else out).mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def saved_for_backward(model, x):
    """Bytes of the tensors autograd saves in one forward pass (each storage counted once)."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())


def step_seconds(cfg, shape, repeats, dev):
    """Median time of `repeats` training steps after one warm-up step, on `dev`."""
    model = MedNeXt(cfg).to(dev)
    x = torch.randn(*shape, device=dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    saved = saved_for_backward(model, x)
    times, net_gpu = [], None
    for i in range(repeats + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            before = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        train_step(model, x, opt)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            if i > 0:
                net_gpu = torch.cuda.max_memory_allocated(dev) - before
        if i > 0:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), saved, net_gpu


def net_peak_cpu(configs, shape):
    """(RSS before, net peak) in bytes of one training step per config, in one fresh process."""
    if not Path("/proc/self/clear_refs").exists():
        print("no /proc/self/clear_refs here (not Linux): the net CPU peak is not measured")
        return [(float("nan"), float("nan"))] * len(configs)
    jobs = json.dumps([{"config": c.to_dict(), "shape": list(shape)} for c in configs])
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    done = subprocess.run([sys.executable, "-c", RSS_CHILD], input=jobs, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the measuring process failed:\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    return [(r["before"], r["peak"] - r["before"]) for r in rows]


base = MedNeXtConfig(in_channels=1, num_classes=3, base_width=p["grid_base_width"], expansion_ratios=2,
                     block_counts=1, spatial_dims=dims)
shape = (2, 1) + (p["input_size"],) * dims  # the measured batch: 2 images of input_size^dims voxels
points = list(itertools.product(p["grid_depth"], p["grid_width"], p["grid_kernel"]))
configs = [compound_scale(base, depth=d, width=w, kernel_size=k) for d, w, k in points]
if lesson.device.type == "cpu":
    keep_freed_memory()  # what the trainer does on CPU: steps up to 2x faster
grid = []
for (d, w, k), cfg in zip(points, configs):
    row = {"config": f"d{d} w{w} k{k}", "depth": d, "width": w, "kernel": k, "spatial_dims": dims,
           "input_size": p["input_size"], "params": count_parameters(cfg),
           "gmacs": count_macs(cfg, shape[2:], batch_size=shape[0]) / 1e9, "receptive_field": receptive_field(cfg)}
    if measure:
        seconds, saved, net_gpu = step_seconds(cfg, shape, p["timing_repeats"], lesson.device)
        row.update(step_seconds=seconds, saved_mib=saved / 2**20)
        if net_gpu is not None:
            row["net_peak_mib"] = net_gpu / 2**20
    grid.append(row)
if measure and lesson.device.type == "cpu":
    for row, (before, net) in zip(grid, net_peak_cpu(configs, shape)):
        row["net_peak_mib"], row["process_before_mib"] = net / 2**20, before / 2**20
print(f"grid at batch {shape[0]} x {p['input_size']}^{dims}; MACs are for one forward pass of that batch")
for row in grid:
    print("  ".join(f"{key} {val:.3g}" if isinstance(val, float) else f"{key} {val}" for key, val in row.items()
                    if key not in ("spatial_dims", "input_size", "depth", "width", "kernel")))

# %% [markdown]
# What each axis does, checked on every pair of grid points that differ in one axis only:
# depth and width add parameters and MACs; kernel size adds MACs and a few parameters (depthwise
# kernels are a small share); depth and kernel widen the receptive field, width does not. Memory follows
# the activations: width (doubling R doubles the expanded R·C-channel tensors inside every block) and
# depth (more blocks keep more tensors) cost memory; a larger kernel keeps tensors of exactly the same
# shape, so it costs MACs and time but almost no memory.

# %%
def pairs(axis):
    """Pairs (smaller, larger) of grid rows that differ in `axis` only."""
    others = [a for a in ("depth", "width", "kernel") if a != axis]
    for a, b in itertools.combinations(grid, 2):
        if all(a[o] == b[o] for o in others) and a[axis] != b[axis]:
            yield (a, b) if a[axis] < b[axis] else (b, a)


for axis in ("depth", "width", "kernel"):
    for small, large in pairs(axis):
        assert large["params"] > small["params"] and large["gmacs"] > small["gmacs"], (axis, small, large)
        if axis == "width":
            assert large["receptive_field"] == small["receptive_field"], "width does not change the field"
        else:
            assert large["receptive_field"] > small["receptive_field"], f"{axis}: a wider field"
        if axis == "kernel":
            assert large["params"] < 1.5 * small["params"], "depthwise kernels are a small share of the parameters"
        if measure:
            ratio = large["saved_mib"] / small["saved_mib"]
            if axis == "kernel":
                assert ratio < 1.02, f"a larger kernel keeps same-shaped tensors ({ratio:.3f})"
            else:
                assert ratio > 1.2, f"{axis} must cost activation memory ({ratio:.3f})"
            if lesson.device.type == "cpu" and not np.isnan(large["net_peak_mib"]):
                for r in (small, large):  # the step needs at least what autograd keeps for it
                    assert r["net_peak_mib"] > 0.8 * r["saved_mib"], r

origin = grid[0]
print(f"relative to the base network {origin['config']}:")
for row in grid[1:]:
    line = (f"  {row['config']}: params x{row['params'] / origin['params']:.2f}, MACs x{row['gmacs'] / origin['gmacs']:.2f}"
            f", receptive field {origin['receptive_field']} -> {row['receptive_field']}")
    if measure:
        line += (f", step time x{row['step_seconds'] / origin['step_seconds']:.2f}"
                 f", saved for backward x{row['saved_mib'] / origin['saved_mib']:.2f}"
                 f", net peak x{row['net_peak_mib'] / origin['net_peak_mib']:.2f}")
    print(line)
if measure and "process_before_mib" in origin:
    print(f"the measuring process held {origin['process_before_mib']:.0f} MiB before the base network's step, "
          f"which itself needed {origin['net_peak_mib']:.0f} MiB more")

# %% [markdown]
# Time is measured, so it carries the noise of a shared machine (the median of a few steps damps it)
# and it does not follow MACs one to one: a depthwise convolution does few MACs per byte it reads and
# writes, so it runs at a lower rate than the dense 1x1 convolutions, and a larger kernel often costs
# more time than its extra MACs suggest. This lesson prints the time ratios and asserts none of them.

# %%
if measure:
    fig = Figure(figsize=(11, 8.5), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    panels = [("gmacs", "params", 1e-3, "parameters (thousands)", "parameters against MACs"),
              ("gmacs", "step_seconds", 1, "training step time, median (s)", "time of one training step"),
              ("gmacs", "net_peak_mib", 1, "net peak memory of one step (MiB)", "memory the step needs"),
              ("gmacs", "receptive_field", 1, "receptive field (voxels per axis)", "receptive field")]
    batch_label = f"{shape[0]} x ${p['input_size']}^{dims}$ voxels"
    markers = {w: m for w, m in zip(sorted({r["width"] for r in grid}), "os^D")}
    for ax, (xkey, ykey, scale, ylabel, title) in zip(axes, panels):
        xs, ys = [r[xkey] for r in grid], [r[ykey] * scale for r in grid]
        span_x, span_y = (max(xs) - min(xs)) or 1, (max(ys) - min(ys)) or 1
        placed = []
        for row, x, y in zip(grid, xs, ys):
            ax.scatter(x, y, color=f"C{sorted(set(p['grid_kernel'])).index(row['kernel'])}",
                       marker=markers[row["width"]], s=45, zorder=3)
            # a label that would sit on an earlier one goes below its point instead
            crowded = any(abs(x - px) < 0.12 * span_x and abs(y - py) < 0.06 * span_y for px, py in placed)
            ax.annotate(row["config"], (x, y), textcoords="offset points", xytext=(5, -11 if crowded else 4),
                        fontsize=8)
            placed.append((x, y))
        if ykey == "net_peak_mib":  # the exact lower bound beside the measured peak
            ax.scatter([r["gmacs"] for r in grid], [r["saved_mib"] for r in grid], color="black", marker="x",
                       s=30, zorder=4, label="saved for backward (exact)")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xlabel(f"conv GMAC, one forward pass of {batch_label}")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.margins(0.2)
        if ykey != "receptive_field":
            ax.set_ylim(bottom=0)  # from zero, so a ratio reads as a ratio
    handles = [axes[0].scatter([], [], color=f"C{i}", marker="o", label=f"kernel {k}")
               for i, k in enumerate(sorted(set(p["grid_kernel"])))]
    handles += [axes[0].scatter([], [], color="grey", marker=m, label=f"width x{w}") for w, m in markers.items()]
    axes[0].legend(handles=handles, fontsize=8, loc="upper left")
    device_name = "CPU, 1 process" if lesson.device.type == "cpu" else torch.cuda.get_device_name(lesson.device)
    fig.suptitle(f"Scaling grid from C={p['grid_base_width']}, B=1, R=2 (labels: d depth multiplier, w width multiplier, k kernel), "
                 f"batch {batch_label} on {device_name}")
    lesson.show(fig, "sweep")

# %% [markdown]
# Each row of the grid is also written to `results.csv` in `output_dir`, so a papermill sweep over
# this notebook (different `spatial_dims`, `input_size`, grids) leaves one CSV per run; see section 4.
#
# ## 3. What each axis buys? A small training ablation, with its error bars
# The base network and one step along each axis (depth x2, width x2, kernel 5) are trained with the
# same number of iterations (not the same compute: the right panel above shows the step times) on the
# synthetic "comma" task of lesson 02, whose two structures have the same intensity
# and differ only in shape and position, so a larger receptive field may help with them. Training is
# lesson 04's recipe (DiceCE loss with deep supervision, AdamW, poly schedule); the score is lesson 03's
# mean foreground Dice, of the **final** network on the held-out fold (no checkpoint is picked on the
# cases then scored).
#
# Each run holds out one fifth of the `n_train` cases for validation (2 cases at CI size, 4 at class
# size, 8 at GPU size; the printed table and the figure title repeat the count). One run decides
# nothing: a different seed (initial weights, patches drawn, and, since the trainer's
# split follows the seed, which cases are held out) moves Dice by more than the arms differ. So every
# arm is trained with `n_seeds` seeds; within a seed all arms share the same split and validation
# cases, so the **paired** difference d_s = arm_s - base_s removes what the case draw does to every arm
# alike (a seed whose held-out cases are hard lowers all arms together). Each verdict is therefore
# computed from the n paired differences, not from each arm's own spread: report mean(d) ± sd(d) and
# every d_s, and call an arm above or below the base only when every d_s has the same sign **and**
# |mean(d)| > 2 sd(d) / sqrt(n) (a paired, t-like margin of two standard errors). With 2-3 seeds this
# is a weak test (a proper 95 % t-test would need 4.3 standard errors at 3 seeds, 12.7 at 2), and one
# seed has no sd(d) and ranks nothing.

# %%
ablation = {}
ablation_seeds = [seed + i for i in range(p["n_seeds"])]
if train_ablation:
    from mednext_lite.data import make_synthetic_task, threshold_baseline
    from mednext_lite.train import train
    from mednext_lite.train_config import TrainConfig

    task = make_synthetic_task(lesson.out / "data", n_train=p["n_train"], n_test=0, flavour="mri", progress=False)
    arms = {"base": {}, "depth x2": {"block_counts": 2}, "width x2": {"expansion_ratios": 4}, "kernel 5": {"k": 5}}
    train_dims = p["ablation_spatial_dims"]
    for s, (arm, change) in itertools.product(ablation_seeds, arms.items()):
        overrides = {"base_width": p["grid_base_width"], "block_counts": 1, "expansion_ratios": 2}
        overrides.update({key: val for key, val in change.items() if key != "k"})
        run = lesson.run_dir(f"{arm.replace(' ', '_')}_seed{s}")
        cfg = TrainConfig(task_dir=str(task), run_dir=str(run), variant="S", kernel_size=change.get("k", 3),
                          spatial_dims=train_dims, model_overrides=overrides, epochs=p["ablation_epochs"],
                          iters_per_epoch=p["ablation_iters"], batch_size=p["ablation_batch"],
                          patch_size=(p["ablation_patch"],) * train_dims, augment=p["ablation_augment"],
                          val_every=p["ablation_epochs"], seed=s, device=str(lesson.device), progress=False)
        result = train(cfg)
        hist = result.history
        n_val = len(json.loads((run / "split.json").read_text())["val"])
        ablation.setdefault(arm, []).append({
            "seed": s, "dice": hist[-1]["val_dice_mean"], "first_loss": hist[0]["train_loss"],
            "last_loss": hist[-1]["train_loss"], "seconds": result.seconds, "n_val": n_val,
            "params": count_parameters(result.model)})
    baseline = threshold_baseline(task)
    n_val = ablation["base"][0]["n_val"]
    iterations = p["ablation_epochs"] * p["ablation_iters"]
    print(f"{len(arms)} arms x {len(ablation_seeds)} seed(s), {iterations} iterations of batch {p['ablation_batch']} "
          f"({train_dims}D patches of {p['ablation_patch']}), Dice of the final network on {n_val} validation cases "
          f"per seed")
    for arm, runs in ablation.items():
        for r in runs:
            print(f"  {arm:>9} seed {r['seed']}: {r['params']:>9,} params, loss {r['first_loss']:.3f} -> "
                  f"{r['last_loss']:.3f}, Dice {r['dice']:.3f}, {r['seconds']:.0f} s")
    print(f"intensity-threshold baseline (the fewest-voxel-error intensity rule, fitted and scored on all "
          f"{baseline['n_cases']} cases; lesson 03: a random head/tail split reaches about 0.50): "
          f"mean foreground Dice {baseline['mean_foreground_dice']:.3f}")
    for arm, runs in ablation.items():
        assert all(r["n_val"] == n_val for r in runs)
        if p["ablation_epochs"] > 1:
            for r in runs:
                assert r["last_loss"] < r["first_loss"], f"{arm} seed {r['seed']}: the loss must go down"

# %% [markdown]
# The comparison, in numbers: each arm's mean ± standard deviation over seeds (for reading, not for the
# verdict), then the paired differences to the base network, their mean ± sd, the margin 2 sd/sqrt(n)
# and the verdict of the rule above. With a single seed the numbers are printed, but they rank nothing.

# %%
verdicts, paired = {}, {}
if ablation:
    def mean_std(values):
        return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")

    base_dice = [r["dice"] for r in ablation["base"]]
    n = len(base_dice)
    print(f"rule: an arm differs from the base only when all {n} paired differences d_s = arm_s - base_s have one "
          "sign and |mean(d)| > 2 sd(d)/sqrt(n) (a t-like margin; with 2-3 seeds a weak test, one seed ranks nothing)")
    print(f"{'arm':>9}  {'Dice mean ± sd':>15}  {'d_s = arm - base, per seed':>28}  {'mean(d) ± sd(d)':>16}  "
          f"{'margin':>6}  verdict")
    for arm, runs in ablation.items():
        dice = [r["dice"] for r in runs]
        m, sd = mean_std(dice)
        own = f"{m:.3f} ± {sd:.3f}" if len(dice) > 1 else f"{m:.3f} (1 seed)"
        if arm == "base":
            print(f"{arm:>9}  {own:>15}  {'(the control)':>28}")
            continue
        d = [a - b for a, b in zip(dice, base_dice)]
        dm, dsd = mean_std(d)
        margin = 2 * dsd / np.sqrt(len(d)) if len(d) > 1 else float("nan")
        one_sign = all(x > 0 for x in d) or all(x < 0 for x in d)
        if len(d) < 2:
            verdict = "not ranked (one seed)"
        elif one_sign and abs(dm) > margin:
            verdict = f"{'above' if dm > 0 else 'below'} the base (paired: one sign, beyond the margin)"
        else:
            verdict = "no ranking (" + ("the signs differ" if not one_sign else "within the margin") + ")"
        verdicts[arm] = verdict
        paired[arm] = {"d": d, "mean": dm, "sd": dsd if len(d) > 1 else None,
                       "margin": margin if len(d) > 1 else None}
        spread = f"{dm:+.3f} ± {dsd:.3f}" if len(d) > 1 else f"{dm:+.3f}"
        print(f"{arm:>9}  {own:>15}  {', '.join(f'{x:+.3f}' for x in d):>28}  {spread:>16}  "
              f"{(f'{margin:.3f}' if len(d) > 1 else '-'):>6}  {verdict}")
    for arm, v in verdicts.items():  # each verdict follows the printed numbers
        st = paired[arm]
        passes = (n > 1 and abs(st["mean"]) > st["margin"]
                  and (all(x > 0 for x in st["d"]) or all(x < 0 for x in st["d"])))
        assert v.startswith("not ranked") == (n == 1) and (v.startswith(("above", "below")) == passes), (arm, v)
    ranked = {a: v.split(" (")[0] for a, v in verdicts.items() if v.startswith(("above", "below"))}
    if n < 2:
        print(f"\nsize={size!r} trains {p['n_seeds']} seed of {iterations} iterations scored on {n_val} cases: "
              "one seed cannot rank the arms, so no 'what each axis buys' chart is drawn. "
              "Run size='class' (3 seeds) or size='gpu' (5 seeds, 3D) for a comparison.")
    elif ranked:
        print(f"\nat size {size!r} ({n} seeds, {iterations} iterations, {n_val} validation cases per seed) the paired "
              "rule separates: " + "; ".join(f"{a} {v}" for a, v in ranked.items())
              + f". A weak test with {n} seeds; the other arms are not ranked against the base.")
    else:
        print(f"\nat size {size!r} ({n} seeds) no arm passes the paired rule: these runs rank no axis against the base.")

# %%
if ablation and p["n_seeds"] >= 3:
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    names = list(ablation)
    for i, arm in enumerate(names):
        dice = [r["dice"] for r in ablation[arm]]
        jitter = np.linspace(-0.12, 0.12, len(dice))
        ax1.scatter(i + jitter, dice, color=f"C{i}", alpha=0.6, s=25, label="one seed" if i == 0 else None)
        ax1.errorbar(i, np.mean(dice), yerr=np.std(dice, ddof=1), color="black", capsize=6, marker="_", ms=18,
                     label="mean ± std" if i == 0 else None)
    ax1.axhline(baseline["mean_foreground_dice"], color="grey", ls="--", label="intensity threshold rule (fewest voxel errors, fitted on these cases)")
    ax1.set_xticks(range(len(names)), names)
    ax1.set_ylabel("final validation Dice (mean foreground)")
    ax1.set_xlabel("arm (one scaling step from the base)")
    separated = [a for a, v in verdicts.items() if v.startswith(("above", "below"))]
    ax1.set_title(f"{len(ablation_seeds)} seeds x {n_val} validation cases, {iterations} iterations: "
                  + (f"paired rule separates from base: {', '.join(separated)}" if separated
                     else "paired rule: no arm separates from base"), fontsize=10)
    ax1.legend(fontsize=8)
    ax2.bar(names, [ablation[n][0]["params"] / 1e3 for n in names], color=[f"C{i}" for i in range(len(names))])
    for i, n in enumerate(names):
        ax2.annotate(f"{np.mean([r['seconds'] for r in ablation[n]]):.0f} s / run", (i, ablation[n][0]["params"] / 1e3),
                     ha="center", va="bottom", fontsize=8)
    ax2.set_ylabel("parameters (thousands)")
    ax2.set_xlabel("arm")
    ax2.set_title(f"what each arm costs (label: mean wall time of one run on {lesson.device.type})", fontsize=10)
    lesson.show(fig, "ablation")
if ablation:
    with open(lesson.out / "ablation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["arm", *ablation["base"][0]])
        writer.writeheader()
        writer.writerows({"arm": arm, **r} for arm, runs in ablation.items() for r in runs)

# %% [markdown]
# At these budgets the networks are far from trained (compare lesson 04's curves), so the ablation
# measures how fast each arm learns in its first iterations more than what it can reach; a wider or
# deeper network can start slower and win later. The paper's claim (larger kernels help once trained
# long enough, best when started with UpKern) needs the GPU size or more, and lesson 06.
#
# ## 4. Results for sweeps
# `results.csv` holds the grid and `ablation.csv` the training runs, one row per arm and seed. Sweep
# this notebook with papermill into several output folders, then gather all of them with `collect_csv`
# (and draw one table with `plot_sweep`):
#
# ```python
# import papermill as pm
# from mednext_lite.lesson import collect_csv, plot_sweep
# for dims in (2, 3):
#     pm.execute_notebook("05_compound_scaling.ipynb", f"runs/sweep/05_compound_scaling_{dims}d.ipynb",
#                         parameters={"size": "class", "spatial_dims": dims, "train_ablation": False,
#                                     "output_dir": f"runs/sweep/{dims}d"})
# rows = collect_csv("runs/sweep/*/results.csv")
# fig = plot_sweep(rows, "gmacs", "step_seconds", group="spatial_dims")
# ```

# %%
with open(lesson.out / "results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(grid[0]))
    writer.writeheader()
    writer.writerows(grid)
rows = collect_csv(str(lesson.out / "results.csv"))
assert len(rows) == len(grid) and [r["params"] for r in rows] == [r["params"] for r in grid]
lesson.record(presets=[{k: r[k] for k in ("variant", "kernel", "params", "gmacs")} for r in table],
              grid=grid, ablation=ablation, ablation_verdicts=verdicts, ablation_paired_differences=paired,
              n_val_cases=ablation["base"][0]["n_val"] if ablation else None,
              seconds=round(time.perf_counter() - started, 1))
print(f"{len(rows)} grid rows written and read back; lesson ran {time.perf_counter() - started:.0f} s")

# %% [markdown]
# ## Try this
# 1. Which axis buys the most receptive field per extra parameter? Per extra millisecond of step time?
#    Add both columns to `grid` and sort.
# 2. Run with `spatial_dims=2`: why do the 2D MACs grow so little from k3 to k5?
# 3. Put `model.set_grad_checkpointing(True)` into `step_seconds` and `RSS_CHILD`: how much memory does
#    it save per axis, and what does it cost in time?
# 4. Sweep `input_size` over 32, 48, 64 with papermill and plot step time and net peak memory against
#    voxels: which grows linearly?
# 5. Train the ablation with `ablation_iters` five times larger (class size, 3 seeds): do the paired
#    differences pass the rule now, which arm leads, and does any arm beat the threshold baseline?
