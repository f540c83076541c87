# %% [markdown]
# # 07 · Classroom exercises
#
# **What you will learn** (by doing it yourself)
# - to write a MedNeXt block's forward pass from its layers;
# - to count its parameters and compute a receptive field by hand;
# - to UpKern one weight tensor;
# - to choose a CT window;
# - to compute Dice and read a Dice table without being fooled by the background.
#
# Replace each `raise NotImplementedError` (or `None`) with your answer and run the cell: the checker
# under it answers with a hint, never with a bare error. Lessons 01, 02 and 06 contain everything you
# need. Teachers: the solutions live in `notebooks/solutions/`; run the sheet with
# `solutions="solutions/07_exercises_solutions.py"` to see them all pass.

# %% [parameters]
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
from mednext_lite.notebooks import Lesson

lesson = Lesson(output_dir, seed=seed, device=device)
SOLVED = runpy.run_path(solutions)["SOLUTIONS"] if solutions else {}
results = {}


def answer(name, yours):
    """Your answer, or the reference one when the sheet runs with a solutions file."""
    return SOLVED.get(name, yours)


# %% [markdown]
# ## Exercise 1 · The block's forward pass
# `block` is a `MedNeXtBlock` with layers `block.conv1` (depthwise), `block.norm`, `block.conv2`
# (1x1 expansion), `block.act` (GELU) and `block.conv3` (1x1 compression). Return its output for `x`.

# %%
def block_forward(block, x):
    # YOUR CODE HERE
    raise NotImplementedError


results["block_forward"] = ex.check_block_forward(answer("block_forward", block_forward))
results["block_forward"]

# %% [markdown]
# ## Exercise 2 · Count the parameters by hand
# Return the number of parameters of a MedNeXt block of width `C`, expansion ratio `R`, kernel `k`
# in `spatial_dims` dimensions. Every conv has a bias; the norm has a weight and a bias per channel.

# %%
def block_parameters(C, R, k, spatial_dims):
    # YOUR CODE HERE
    raise NotImplementedError


results["block_parameters"] = ex.check_block_parameters(answer("block_parameters", block_parameters))
results["block_parameters"]

# %% [markdown]
# ## Exercise 3 · A receptive field by hand
# `layers` is a list of `(kernel, stride)` pairs applied in order. Return how many input voxels (per
# axis) one output voxel sees. Example: two 3-kernels at stride 1 see 5 voxels.

# %%
def receptive_field(layers):
    # YOUR CODE HERE
    raise NotImplementedError


results["receptive_field"] = ex.check_receptive_field(answer("receptive_field", receptive_field))
results["receptive_field"]

# %% [markdown]
# ## Exercise 4 · UpKern one tensor
# `weight` is a conv weight `[out, in, 3, 3, 3]` (or 2D `[out, in, 3, 3]`). Return it resized to kernel
# `k` the way UpKern does it (lesson 06). Hint: `F.interpolate`.

# %%
def upkern(weight, k):
    # YOUR CODE HERE
    raise NotImplementedError


results["upkern"] = ex.check_upkern(answer("upkern", upkern))
results["upkern"]

# %% [markdown]
# ## Exercise 5 · Choose a CT window
# (a) A window is given as level L and width W (Hounsfield units). Return the display range
# `(vmin, vmax)`. (b) Choose `(level, width)` for lung: air is -1000 HU, lung about -850..-500 HU,
# soft tissue 20..80 HU.

# %%
def window_limits(level, width):
    # YOUR CODE HERE
    raise NotImplementedError


lung_window = (None, None)  # YOUR ANSWER: (level, width)

results["window_limits"] = ex.check_window_limits(answer("window_limits", window_limits))
level, width = answer("lung_window", lung_window)
results["lung_window"] = (ex.check_lung_window(level, width) if None not in (level, width)
                          else ex.Feedback("lung window", False, "fill in lung_window = (level, width)"))
results["window_limits"], results["lung_window"]

# %% [markdown]
# ## Exercise 6 · Dice
# (a) Return the Dice coefficient of two boolean masks (1.0 when both are empty).
# (b) Read the table below: which run is best on the mean **foreground** Dice, which foreground class
# is hardest for it, and what is that mean (3 decimals)?

# %%
def dice(pred, truth):
    # YOUR CODE HERE
    raise NotImplementedError


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
lesson.record(score=score, total=len(results), solutions=bool(solutions))
assert len(results) == len(ex.CHECKS) >= 5

# %% [markdown]
# With the solutions file (CI, teachers) every checker must accept the reference answer **and** reject
# a typical mistake with the right hint; this cell proves both.

# %%
if solutions:
    assert score == len(results), [str(fb) for fb in results.values() if not fb]
    for name, (right, wrong) in ex.verify_checkers(SOLVED).items():
        print(f"{name:>16}: right -> correct; typical mistake -> {wrong.message}")

# %% [markdown]
# ## Try this
# 1. Extend `receptive_field` to dilated convolutions: a dilation d makes a kernel k act like d(k-1)+1.
# 2. How many parameters does a MedNeXt-S **network** have? Check with `mednext_lite.profile.count_parameters`.
# 3. UpKern a 3 -> 7 kernel: which weights of the 7-kernel equal weights of the 3-kernel exactly?
# 4. Find a pair of masks with Dice 0.5 but IoU 1/3: is there a formula linking the two?
# 5. Which CT window would you choose for the liver, and why is bone's so wide?
