# %% [markdown]
# # 07 · Classroom exercises
#
# **What you will learn** (by doing it yourself)
# - to write the MedNeXt down block's forward pass from its layers, and count its parameters;
# - to predict how MedNeXt-B's parameter count follows from MedNeXt-S's, without building B;
# - to compute the theoretical receptive field at every stage of the U;
# - to UpKern a kernel by hand, without `F.interpolate`;
# - to place sliding windows on a signal and stitch their outputs back, edges included;
# - to write the deep-supervision loss (weights 1/2^i, lowest resolution 0);
# - to choose a CT window, compute Dice and read a Dice table without being fooled by the background.
#
# Replace each `raise NotImplementedError` (or `None`) with your answer and run the cell: the checker
# under it answers with a hint, never with a bare error. It also refuses shortcuts: while your function
# runs, the package function it re-implements is switched off, so calling it earns a "shortcut" hint.
# Lessons 00 (the network, deep-supervision weights), 01 (blocks), 02 (CT windows), 03 (Dice, sliding
# windows), 04 (deep supervision), 05 (scaling) and 06 (UpKern) teach what you need.

# %% [parameters]
size = "class"  # "ci" | "class" | "gpu": the sheet is the same at every size (nothing here trains)
solutions = None  # path of a solutions file: fills every answer in (teachers, CI)
output_dir = "runs/07_exercises"
seed = 0
device = "auto"

# %%
import runpy

import numpy as np
import torch
import torch.nn.functional as F

from mednext_lite import exercises as ex
from mednext_lite.lesson import SIZES, Lesson

assert size in SIZES, f"size={size!r}: use one of {SIZES}"
lesson = Lesson(output_dir, seed=seed, device=device)
SOLVED = runpy.run_path(solutions)["SOLUTIONS"] if solutions else {}
results = {}


def answer(name, yours):
    """Your answer, or the reference one when the sheet runs with a solutions file."""
    return SOLVED.get(name, yours)


# %% [markdown]
# ## Exercise 1 · The down block's forward pass
# Lesson 01 wrote the stride-1 MedNeXt block's forward; here is its sibling. `block` is a `MedNeXtDownBlock` with
# layers `block.conv1` (depthwise, **stride 2**), `block.norm`, `block.conv2` (1x1 expansion), `block.act`
# (GELU), `block.grn` (GRN, or `nn.Identity` when off) and `block.conv3` (1x1 to **2C** channels), and the
# residual path `block.res_conv` (a stride-2 1x1 conv C -> 2C, or `None` when the block has none).
# Return its output for `x` without calling `block(x)`, `block.forward` or `block.branch`. The checker
# tries 3D and 2D blocks, with GRN on, and one without a residual path.

# %%
def down_block_forward(block, x):
    # YOUR CODE HERE
    raise NotImplementedError


results["down_block_forward"] = ex.check_down_block_forward(answer("down_block_forward", down_block_forward))
results["down_block_forward"]

# %% [markdown]
# ## Exercise 2 · Count the down block's parameters by hand
# Return the number of parameters of a MedNeXt down block of input width `C`, ratio `R`, kernel `k` in
# `spatial_dims` dimensions. Every conv has a bias; the norm has a weight and a bias per channel.

# %%
def down_block_parameters(C, R, k, spatial_dims):
    # YOUR CODE HERE
    raise NotImplementedError


results["down_block_parameters"] = ex.check_down_block_parameters(
    answer("down_block_parameters", down_block_parameters))
results["down_block_parameters"]

# %% [markdown]
# ## Exercise 3 · Predict MedNeXt-B from MedNeXt-S
# S and B differ only in their expansion ratios R (9 per stage); both have C = 32 and 2 blocks per stage.
# Given the parameter count of one network, predict the count of the network with other ratios,
# **without building it**: `predict_parameters(params_from, ratios_from, ratios_to, blocks, C)`.
# Think about which layers R widens, and which R each down and up block uses (lesson 00, section 5).
# Then explain the printout below: why is the S -> B difference the same for k3 and k5, 2D and 3D?

# %%
def predict_parameters(params_from, ratios_from, ratios_to, blocks, C):
    # YOUR CODE HERE
    raise NotImplementedError


from mednext_lite.profile import count_parameters
from mednext_lite.variants import PRESETS, preset_config

s_params = count_parameters(preset_config("S", 1, 3, 3, 3))
print(f"MedNeXt-S (3D, k3, 1 input channel, 3 classes): {s_params:,} parameters")
for k, dims in ((3, 3), (5, 3), (3, 2), (5, 2)):
    diff = count_parameters(preset_config("B", 1, 3, k, dims)) - count_parameters(preset_config("S", 1, 3, k, dims))
    print(f"  B - S at k{k}, {dims}D: {diff:,}")
results["predict_parameters"] = ex.check_predict_parameters(answer("predict_parameters", predict_parameters))
results["predict_parameters"]

# %% [markdown]
# ## Exercise 4 · The receptive field at every stage
# Return the 9 theoretical receptive fields (input voxels per axis) at the end of the stages enc0, enc1,
# enc2, enc3, bottleneck, dec3, dec2, dec1, dec0 of a MedNeXt with kernel `k` everywhere and `blocks[s]`
# blocks in stage s. Keep the **jump**: the distance, in input voxels, between neighbouring voxels of the
# current layer. A stride-1 k-conv adds (k-1) x jump; a down block (between stages) is a k-conv at stride
# 2; an up block is a stride-2 transposed k-conv. The skips add paths with smaller fields, so they do not
# widen it. Encoder and bottleneck must be exact; the checker compares the last stage with
# `mednext_lite.profile.receptive_field` and tells you whether your decoder values are exact or an upper
# bound.

# %%
def stage_receptive_fields(k, blocks):
    # YOUR CODE HERE
    raise NotImplementedError


results["stage_receptive_fields"] = ex.check_stage_receptive_fields(
    answer("stage_receptive_fields", stage_receptive_fields))
results["stage_receptive_fields"]

# %% [markdown]
# ## Exercise 5 · UpKern one kernel by hand
# UpKern resizes every trained k3 kernel to k5 by linear interpolation with `align_corners=False`, one
# axis at a time (lesson 06). Do it for one axis **without** `F.interpolate` or `upkern_tensor`:
# `kernel` is a 1D tensor of n weights, return k weights. Hint: where on the old axis (0 .. n-1) does new
# weight j sit when both kernels cover the same span, with cells of equal width?

# %%
def upkern_1d(kernel, k):
    # YOUR CODE HERE
    raise NotImplementedError


results["upkern_1d"] = ex.check_upkern_1d(answer("upkern_1d", upkern_1d))
results["upkern_1d"]

# %% [markdown]
# ## Exercise 6 · Sliding windows in 1D
# A network trained on patches predicts a whole volume window by window (lesson 03), here along one axis.
# (a) `window_starts(length, window, overlap)`: the start of every window, in steps of
# `int(window * (1 - overlap))` (at least 1) from 0; the last window must end exactly at the signal's end.
# (b) `overlap_average(length, starts, outputs, weight)`: `outputs[i]` is window i's prediction (an array
# of `window` values) starting at `starts[i]`; return one value per position, the `weight`-weighted
# average of the outputs covering it (`weight` is an array of `window` values: ones for a plain average,
# a Gaussian to trust window centres more). The checker uses random windows in any order.

# %%
def window_starts(length, window, overlap):
    # YOUR CODE HERE
    raise NotImplementedError


def overlap_average(length, starts, outputs, weight):
    # YOUR CODE HERE
    raise NotImplementedError


results["window_starts"] = ex.check_window_starts(answer("window_starts", window_starts))
results["overlap_average"] = ex.check_overlap_average(answer("overlap_average", overlap_average))
results["window_starts"], results["overlap_average"]

# %% [markdown]
# ## Exercise 7 · The deep-supervision loss
# With deep supervision the network returns 5 outputs, `[full, 1/2, 1/4, 1/8, 1/16]` resolution.
# (a) `ds_weights(n)`: weights proportional to 1/2^i for output i, the lowest resolution (the last)
# weighted 0, summing to 1 (a single output gets 1.0).
# (b) `ds_loss(outputs, label, base_loss)`: `base_loss(logits, target)` is the DiceCE of the recipe and
# `label` an integer map `[N, 1, *spatial]` at full resolution; compare each output with the label
# brought to its size, and mix the terms with your weights. Checked against `mednext_lite.losses`.

# %%
def ds_weights(n):
    # YOUR CODE HERE
    raise NotImplementedError


def ds_loss(outputs, label, base_loss):
    # YOUR CODE HERE
    raise NotImplementedError


results["ds_weights"] = ex.check_ds_weights(answer("ds_weights", ds_weights))
results["ds_loss"] = ex.check_ds_loss(answer("ds_loss", ds_loss))
results["ds_weights"], results["ds_loss"]

# %% [markdown]
# ## Exercise 8 · Choose a CT window
# (a) A window is given as level L and width W (Hounsfield units). Return the display range
# `(vmin, vmax)`. (b) Choose `(level, width)` for lung: air is -1000 HU, lung about -850..-500 HU,
# soft tissue 20..80 HU.

# %%
def window_limits(level, width):
    # YOUR CODE HERE
    raise NotImplementedError


lung_window = (None, None)  # YOUR ANSWER: (level, width)

results["window_limits"] = ex.check_window_limits(answer("window_limits", window_limits))
results["lung_window"] = ex.check_lung_window(*answer("lung_window", lung_window))
results["window_limits"], results["lung_window"]

# %% [markdown]
# ## Exercise 9 · Dice
# (a) Return the Dice coefficient of two boolean masks (1.0 when both are empty).
# (b) Read the table below. Its numbers are **illustrative**: made up for this exercise, not measured by
# any run, but shaped like a real two-structure result. Which run is best on the mean **foreground** Dice,
# which foreground class is hardest for it, and what is that mean (3 decimals)?

# %%
def dice(pred, truth):
    # YOUR CODE HERE
    raise NotImplementedError


print("Illustrative Dice table (made-up numbers for this exercise, not a measured run):")
for run, scores in ex.DICE_TABLE.items():
    print(f"{run:>15}: " + "  ".join(f"{c} {v:.3f}" for c, v in scores.items()))
dice_table = {"best": None, "hardest": None, "best_mean": None}  # YOUR ANSWERS

results["dice"] = ex.check_dice(answer("dice", dice))
results["dice_table"] = ex.check_dice_table(answer("dice_table", dice_table))
results["dice"], results["dice_table"]

# %% [markdown]
# ## Your score

# %%
for fb in results.values():
    print(fb)
score = sum(bool(fb) for fb in results.values())
print(f"\n{score} / {len(results)} correct")
lesson.record(size=size, score=score, total=len(results), solutions=bool(solutions))
assert len(results) == len(ex.CHECKS) >= 5

# %% [markdown]
# With the solutions file (CI, teachers) every checker must accept the reference answer **and** reject
# a typical mistake and a shortcut (an answer that only calls the package's own function) with the right
# hint; this cell proves all three.

# %%
if solutions:
    assert score == len(results), [str(fb) for fb in results.values() if not fb]
    verified = ex.verify_checkers(SOLVED)
    for name, (right, wrong, shortcut) in verified.items():
        print(f"{name:>22}: right -> correct; typical mistake -> {wrong.message[:80]}")
        if shortcut is not None:
            print(f"{'':>22}  shortcut -> {shortcut.message[:80]}")
    lesson.record(shortcuts_refused=sum(s is not None for *_, s in verified.values()))

# %% [markdown]
# ## Try this
# 1. Write the UP block's forward (`MedNeXtUpBlock`): where does the one voxel of padding go, and why?
# 2. Predict MedNeXt-M from MedNeXt-B: M also changes the block counts. Extend `predict_parameters`.
# 3. UpKern a 3 -> 7 kernel with your `upkern_1d`: which weights of the 7-kernel equal weights of the
#    3-kernel exactly?
# 4. In `overlap_average`, what goes wrong if some position is covered by no window? Where can it happen?
# 5. Find a pair of masks with Dice 0.5 but IoU 1/3: is there a formula linking the two?
# 6. Which CT window would you choose for the liver, and why is bone's so wide?
