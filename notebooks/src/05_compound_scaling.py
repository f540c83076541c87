# %% [markdown]
# # 05 · Compound scaling: depth, width and kernel size
#
# **What you will learn**
# - what each scaling axis of MedNeXt costs: parameters, multiply-accumulates (MACs), receptive field,
#   and the measured time and memory of one training step;
# - to reproduce the paper's S/B/M/L table exactly, and why the paper's "GFlops" are a little higher;
# - what each axis buys in a small training ablation on the synthetic task;
# - to sweep this notebook with papermill and collect the runs into one table and plot.

# %% [parameters]
variants = ["S", "B", "M", "L"]  # presets in the reference table
kernels = [3, 5]
spatial_dims = 3
grid_depth = [1, 2]  # block-count multipliers of the scaling grid
grid_width = [1, 2]  # expansion-ratio multipliers
grid_kernel = [3, 5]
grid_base_width = 16  # C of the base network of the grid, with one block per stage and ratio 2
input_size = 64  # spatial size per axis for the grid's MACs and the measured step
measure = True  # measure one training step's time and peak memory per grid point
train_ablation = True  # train the base network and one step along each axis on the synthetic task
ablation_spatial_dims = 3
ablation_patch = 48
ablation_batch = 2
ablation_epochs = 10
ablation_iters = 25
ablation_augment = True
n_train = 24
output_dir = "runs/05_compound_scaling"
seed = 0
device = "auto"

# %%
import csv
import itertools

import numpy as np

from mednext_lite import MedNeXtConfig, compound_scale, get_preset, preset_config
from mednext_lite.notebooks import Lesson, collect_csv, plot_sweep
from mednext_lite.profile import count_macs, count_parameters, measure_step_memory, receptive_field

lesson = Lesson(output_dir, seed=seed, device=device)

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

ref_size = (128,) * 3 if spatial_dims == 3 else (512, 512)
table = []
for v, k in itertools.product(variants, kernels):
    cfg = preset_config(v, in_channels=1, num_classes=3, kernel_size=k, spatial_dims=spatial_dims)
    row = {"variant": v, "kernel": k, "params": count_parameters(cfg), "gmacs": count_macs(cfg, ref_size) / 1e9,
           "receptive_field": receptive_field(cfg)}
    row["ref_params"] = REFERENCE_PARAMS[(v, spatial_dims, k)]
    row["ref_gmacs"] = REFERENCE_GMACS[(v, spatial_dims, k)]
    if spatial_dims == 3:
        # the paper's own table (3D), kept with each preset: millions of parameters, "GFlops" at 128^3
        preset, column = get_preset(v), (3, 5).index(k)
        row["paper_params_m"], row["paper_gflops"] = preset.paper_params_m[column], preset.paper_gflops[column]
    table.append(row)
    print(f"MedNeXt-{v} k{k} {spatial_dims}D: {row['params']:>11,} params (reference {row['ref_params']:>11,})  "
          f"{row['gmacs']:7.2f} GMAC (reference {row['ref_gmacs']:7.2f})  receptive field {row['receptive_field']}")

for row in table:
    assert row["params"] == row["ref_params"], f"MedNeXt-{row['variant']} k{row['kernel']} parameter count differs"
    assert abs(row["gmacs"] - row["ref_gmacs"]) < 0.06, f"MedNeXt-{row['variant']} k{row['kernel']} MACs differ"
ds = preset_config(variants[0], 1, 3, kernels[0], spatial_dims, deep_supervision=True)
assert count_parameters(ds) - table[0]["params"] == DEEP_SUPERVISION_EXTRA
print(f"\nall {len(table)} rows equal the reference; deep supervision adds {DEEP_SUPERVISION_EXTRA:,} parameters")

# %% [markdown]
# **Against the paper's table.** Parameters agree within 0.1 M (the paper's one decimal is not always
# rounded to nearest: S k5 has 5.98 M, printed 5.9). The paper's "GFlops" are
# 1-2 % above our convolution MACs because it also counts element-wise layers (norms,
# activations, residual adds); conv MACs are the clean, reproducible number.

# %%
if spatial_dims == 3:
    for row in table:
        gap = row["paper_gflops"] - row["gmacs"]
        print(f"MedNeXt-{row['variant']} k{row['kernel']}: params {row['params'] / 1e6:.2f}M vs paper "
              f"{row['paper_params_m']}M; conv GMAC {row['gmacs']:.1f} vs paper {row['paper_gflops']} "
              f"(+{gap:.1f}, {100 * gap / row['gmacs']:.1f}%)")
        assert abs(row["params"] / 1e6 - row["paper_params_m"]) < 0.1
        assert 0 < gap < 0.03 * row["gmacs"], "the paper's count = conv MACs + a few % of element-wise work"
with open(lesson.out / "presets.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)

# %% [markdown]
# ## 2. A scaling grid: what each axis costs
# Start from a small base network (C = `grid_base_width`, one block per stage, R = 2) and scale depth
# (blocks), width (R) and kernel independently with `compound_scale`. We count parameters and MACs,
# compute the receptive field, and (with `measure=True`) time one training step and record its peak
# memory in a fresh process.

# %%
base = MedNeXtConfig(in_channels=1, num_classes=3, base_width=grid_base_width, expansion_ratios=2, block_counts=1,
                     spatial_dims=spatial_dims)
size = (input_size,) * spatial_dims
grid = []
for d, w, k in itertools.product(grid_depth, grid_width, grid_kernel):
    cfg = compound_scale(base, depth=d, width=w, kernel_size=k)
    row = {"depth": d, "width": w, "kernel": k, "spatial_dims": spatial_dims, "input_size": input_size,
           "params": count_parameters(cfg), "gmacs": count_macs(cfg, size) / 1e9,
           "receptive_field": receptive_field(cfg)}
    if measure:
        m = measure_step_memory(cfg, (2, 1, *size), device=lesson.device)
        row["step_seconds"], row["peak_mb"] = m["seconds"], m["peak_bytes"] / 2**20
    grid.append(row)
    print({key: (round(val, 3) if isinstance(val, float) else val) for key, val in row.items()})


def find(d, w, k):
    return next(r for r in grid if (r["depth"], r["width"], r["kernel"]) == (d, w, k))


d0, w0, k0 = grid_depth[0], grid_width[0], grid_kernel[0]
origin = find(d0, w0, k0)
if len(grid_depth) > 1:
    deeper = find(grid_depth[-1], w0, k0)
    assert deeper["params"] > origin["params"] and deeper["gmacs"] > origin["gmacs"]
    assert deeper["receptive_field"] > origin["receptive_field"], "more blocks = a wider field"
if len(grid_width) > 1:
    wider = find(d0, grid_width[-1], k0)
    assert wider["params"] > origin["params"]
    assert wider["receptive_field"] == origin["receptive_field"], "width does not change the field"
if len(grid_kernel) > 1:
    larger = find(d0, w0, grid_kernel[-1])
    assert larger["receptive_field"] > origin["receptive_field"]
    assert larger["params"] < 1.5 * origin["params"], "depthwise kernels are a small share of the parameters"

# %% [markdown]
# Each row of the grid is also written to `results.csv` in `output_dir`, so a papermill sweep over
# this notebook (different `spatial_dims`, `input_size`, grids) leaves one CSV per run; see the end.
#
# ## 3. What each axis buys: a small training ablation
# The base network and one step along each axis are trained with the same budget on the synthetic
# task, whose two structures have the same intensity and differ only in shape, so a larger field may
# help with the second one. Short CPU runs are noisy and decide nothing; on a GPU use the defaults or more.

# %%
ablation = {}
if train_ablation:
    from mednext_lite.data import make_synthetic_task, threshold_baseline
    from mednext_lite.train import TrainConfig, train

    task = make_synthetic_task(lesson.out / "data", n_train=n_train, n_test=0, flavour="mri", progress=False)
    arms = {"base": {}, "depth x2": {"block_counts": 2}, "width x2": {"expansion_ratios": 4}, "kernel 5": {"k": 5}}
    for arm, change in arms.items():
        overrides = {"base_width": grid_base_width, "block_counts": 1, "expansion_ratios": 2}
        overrides.update({key: val for key, val in change.items() if key != "k"})
        cfg = TrainConfig(task_dir=str(task), run_dir=str(lesson.run_dir(arm.replace(" ", "_"))), variant="S",
                          kernel_size=change.get("k", 3), spatial_dims=ablation_spatial_dims,
                          model_overrides=overrides, epochs=ablation_epochs, iters_per_epoch=ablation_iters,
                          batch_size=ablation_batch, patch_size=(ablation_patch,) * ablation_spatial_dims,
                          augment=ablation_augment, val_every=max(1, ablation_epochs // 2), max_val_cases=4,
                          seed=seed, device=str(lesson.device), progress=False)
        result = train(cfg)
        hist = result.history
        ablation[arm] = {"dice": result.best_mean_dice, "first_loss": hist[0]["train_loss"],
                         "last_loss": hist[-1]["train_loss"], "seconds": result.seconds,
                         "params": count_parameters(result.model)}
        print(f"{arm:>9}: {ablation[arm]['params']:>9,} params, loss {ablation[arm]['first_loss']:.3f} -> "
              f"{ablation[arm]['last_loss']:.3f}, best Dice {ablation[arm]['dice']:.3f}, {result.seconds:.0f} s")
    baseline = threshold_baseline(task)
    print(f"intensity-threshold baseline: mean foreground Dice {baseline['mean_foreground_dice']:.3f}")
    for arm, res in ablation.items():
        if ablation_epochs > 1:
            assert res["last_loss"] < res["first_loss"], f"{arm}: the loss must go down"

# %%
if ablation:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    names = list(ablation)
    ax1.bar(names, [ablation[n]["dice"] for n in names], color=[f"C{i}" for i in range(len(names))])
    ax1.axhline(baseline["mean_foreground_dice"], color="grey", ls="--", label="intensity threshold")
    ax1.set_ylabel("best validation Dice (mean foreground)")
    ax1.set_xlabel("scaling axis")
    ax1.set_title(f"what each axis buys ({ablation_epochs} x {ablation_iters} iterations each)")
    ax1.legend()
    ax2.bar(names, [ablation[n]["params"] / 1e3 for n in names], color=[f"C{i}" for i in range(len(names))])
    ax2.set_ylabel("parameters (thousands)")
    ax2.set_xlabel("scaling axis")
    ax2.set_title("what each axis costs")
    lesson.show(fig, "ablation")
    with open(lesson.out / "ablation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["arm", *ablation[names[0]]])
        writer.writeheader()
        writer.writerows({"arm": n, **ablation[n]} for n in names)

# %% [markdown]
# ## 4. Results for sweeps
# `results.csv` holds the grid and `ablation.csv` the training arms. Sweep this
# notebook with papermill into several output folders, then gather all of them with `collect_csv`:
#
# ```python
# import papermill as pm
# for dims in (2, 3):
#     pm.execute_notebook("05_compound_scaling.ipynb", f"runs/sweep/05_{dims}d.ipynb",
#                         parameters={"spatial_dims": dims, "output_dir": f"runs/sweep/{dims}d"})
# rows = collect_csv("runs/sweep/*/results.csv")
# ```

# %%
with open(lesson.out / "results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(grid[0]))
    writer.writeheader()
    writer.writerows(grid)
rows = collect_csv(str(lesson.out / "results.csv"))
assert len(rows) == len(grid) and rows[0]["params"] == grid[0]["params"]
fig = plot_sweep(rows, "gmacs", "params", group="kernel", title=f"grid at {input_size}^{spatial_dims}: cost per axis")
lesson.show(fig, "sweep")
lesson.record(presets=[{k: r[k] for k in ("variant", "kernel", "params", "gmacs")} for r in table],
              grid_points=len(grid), ablation=ablation)

# %% [markdown]
# ## Try this
# 1. Which axis buys the most receptive field per extra parameter? Add a column to `grid` and sort.
# 2. Run with `spatial_dims=2`: why do the 2D MACs grow so little from k3 to k5?
# 3. Turn on gradient checkpointing in `measure_step_memory(..., grad_checkpointing=True)`: memory vs time?
# 4. Sweep `input_size` over 32, 64, 96 with papermill and plot step time against voxels.
# 5. Train the ablation for 5x longer: which axis wins now, and does it beat the threshold baseline?
