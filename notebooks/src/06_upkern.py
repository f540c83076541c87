# %% [markdown]
# # 06 · UpKern: growing a large kernel from a small one
#
# **What you will learn**
# - what UpKern does to each tensor of a network: copy, resize (interpolate) or refuse;
# - what trained 3x3x3 kernels and their 5x5x5 UpKern versions look like;
# - why a k5 network initialised by UpKern from a trained k3 network starts ahead of a k5 network
#   trained from scratch on the same budget, with curves to prove it.
#
# Large kernels are hard to train from scratch on small medical datasets: MedNeXt trains k3 first,
# then initialises k5 by trilinear interpolation of every k3 kernel.

# %% [parameters]
task_dir = None  # an MSD task folder; None: write the synthetic MRI task under output_dir
spatial_dims = 3  # 2 trains on slices (fast on a CPU), 3 on volumes
patch_size = 64  # training patch per axis (a multiple of 16)
base_width = 16  # C of the small networks compared here
block_counts = 1  # blocks per stage
batch_size = 2
k3_epochs = 20  # budget of the k3 run that UpKern starts from
k5_epochs = 10  # the SAME budget for k5 from scratch and k5 from UpKern
iters_per_epoch = 25
augment = True  # random rotations, scaling, intensity changes (the CI run turns them off for speed)
max_val_cases = 4  # validation cases scored after every epoch
n_train = 24  # synthetic cases (when task_dir is None)
output_dir = "runs/06_upkern"
seed = 0
device = "auto"

# %%
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from mednext_lite import MedNeXt
from mednext_lite.data import make_synthetic_task
from mednext_lite.interop import model_from_checkpoint
from mednext_lite.notebooks import Lesson
from mednext_lite.train import TrainConfig, train
from mednext_lite.upkern import upkern, upkern_tensor
from mednext_lite.viz import plot_curves

lesson = Lesson(output_dir, seed=seed, device=device)
if task_dir is None:
    task_dir = make_synthetic_task(lesson.out / "data", n_train=n_train, n_test=0, flavour="mri", progress=False)
print("task:", task_dir)

# %% [markdown]
# ## 1. Train the small-kernel network
# A short run with the paper's recipe (Dice + CE, deep supervision, AdamW, poly schedule), sized by
# the parameters above.

# %%
def config(k, epochs, run, **extra):
    return TrainConfig(
        task_dir=str(task_dir), run_dir=str(lesson.run_dir(run)), variant="S", kernel_size=k, spatial_dims=spatial_dims,
        model_overrides={"base_width": base_width, "block_counts": block_counts}, epochs=epochs,
        iters_per_epoch=iters_per_epoch, batch_size=batch_size, patch_size=(patch_size,) * spatial_dims,
        augment=augment, val_every=1, max_val_cases=max_val_cases, seed=seed, device=str(lesson.device),
        progress=False, **extra)


k3 = train(config(3, k3_epochs, "k3"))
print(f"k3: best validation Dice {k3.best_mean_dice:.3f} after {k3_epochs} epochs ({k3.seconds:.0f} s)")

# %% [markdown]
# ## 2. UpKern, tensor by tensor
# Every tensor of the k5 network whose shape equals the k3 one is **copied** (1x1 convs, norms, biases);
# every depthwise kernel is **resized** by (tri)linear interpolation with `align_corners=False`.

# %%
small = model_from_checkpoint(k3.last_checkpoint)
large = MedNeXt(small.config.replace(kernel_size=5))  # same network with 5-wide kernels, freshly initialised
report = upkern(large, small)
print(report.summary())
print(str(report).splitlines()[1])
small_sd, large_sd = small.state_dict(), large.state_dict()
mode = "trilinear" if spatial_dims == 3 else "bilinear"
for name, old_kernel, new_kernel in report.resized:
    expected = F.interpolate(small_sd[name], size=tuple(new_kernel), mode=mode, align_corners=False)
    assert torch.allclose(large_sd[name], expected), f"{name} is not the interpolated k3 kernel"
for name in report.copied:
    assert torch.equal(large_sd[name], small_sd[name]), f"{name} should be copied unchanged"
assert report.ok and len(report.resized) > 0 and not report.refused
depthwise = [n for n, m in small.named_modules() if getattr(m, "groups", 1) > 1 and m.kernel_size[0] == 3]
assert len(report.resized) == len(depthwise), "exactly the depthwise convs change size"
print(f"checked: {len(report.resized)} kernels equal their interpolation, {len(report.copied)} tensors copied")

# %% [markdown]
# ## 3. What the kernels look like
# Each column is one channel of the first encoder block's depthwise conv: the trained k3 kernel
# (central slice) above, its k5 UpKern version below. The large kernel is a smooth stretch of the small
# one: same pattern, more room.

# %%
name = "encoders.0.0.conv1.weight"
w3, w5 = small_sd[name][:6, 0], large_sd[name][:6, 0]
if spatial_dims == 3:
    w3, w5 = w3[:, 1], w5[:, 2]  # central slice along the first spatial axis
fig = Figure(figsize=(12, 4.4), layout="constrained")
axes = fig.subplots(2, w3.shape[0])
for c in range(w3.shape[0]):
    lim = float(max(w3[c].abs().max(), w5[c].abs().max()))
    for row, (w, k) in enumerate(((w3, 3), (w5, 5))):
        ax = axes[row, c]
        im = ax.imshow(w[c].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(f"channel {c}, k{k}", fontsize=9)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
fig.colorbar(im, ax=axes, shrink=0.8, label="weight")
fig.suptitle(f"Trained k3 depthwise kernels (top) and their UpKern k5 versions (bottom): {name}")
lesson.show(fig, "kernels")
# The k5 kernel's centre and its corners sit at the same relative positions as in k3: interpolation
# with align_corners=False keeps the centre value's neighbourhood.
one = upkern_tensor(small_sd[name][:1], 5)
small = small_sd[name][:1]
assert one.shape[2:] == (5,) * spatial_dims
centre, first, last = (2,) * spatial_dims, (0,) * spatial_dims, (4,) * spatial_dims
assert torch.allclose(one[(0, 0) + centre], small[(0, 0) + (1,) * spatial_dims])
assert torch.allclose(one[(0, 0) + first], small[(0, 0) + (0,) * spatial_dims])
assert torch.allclose(one[(0, 0) + last], small[(0, 0) + (2,) * spatial_dims])

# %% [markdown]
# ## 4. Same budget: k5 from scratch vs k5 from UpKern
# Both k5 runs get the same epochs, iterations, seed and data order; the only difference is the start.

# %%
scratch = train(config(5, k5_epochs, "k5_scratch"))
upkerned = train(config(5, k5_epochs, "k5_upkern", upkern_from=str(k3.last_checkpoint)))
for label, r in (("k3 (UpKern source)", k3), ("k5 scratch", scratch), ("k5 UpKern", upkerned)):
    print(f"{label:>18}: best validation Dice {r.best_mean_dice:.3f}, {r.seconds:.0f} s")


def series(result, key):
    return [row.get(key, np.nan) for row in result.history]


curves = {"epoch": series(scratch, "epoch"),
          "k5 scratch train_loss": series(scratch, "train_loss"), "k5 UpKern train_loss": series(upkerned, "train_loss"),
          "k5 scratch val Dice": series(scratch, "val_dice_mean"), "k5 UpKern val Dice": series(upkerned, "val_dice_mean")}
fig = plot_curves(curves, title="k5: scratch vs UpKern (same budget)",
                  baselines={f"k3 after {k3_epochs} epochs": k3.best_mean_dice}, ylabel={"metric": "mean foreground Dice"})
lesson.show(fig, "upkern_curves")

# %% [markdown]
# **The claim, checked.** UpKern starts from what k3 learned, so from the first epoch on it is ahead:
# its loss is lower and its Dice higher than the scratch run's, averaged over the budget.

# %%
auc = {label: float(np.nanmean(series(r, "val_dice_mean"))) for label, r in (("scratch", scratch), ("upkern", upkerned))}
first_loss = {"scratch": scratch.history[0]["train_loss"], "upkern": upkerned.history[0]["train_loss"]}
print("first-epoch training loss:", {k: round(v, 3) for k, v in first_loss.items()})
print("validation Dice averaged over the budget:", {k: round(v, 3) for k, v in auc.items()})
assert first_loss["upkern"] < first_loss["scratch"], "UpKern must start with a lower loss"
assert auc["upkern"] > auc["scratch"], "UpKern must be ahead on the same budget"
lesson.record(k3_dice=k3.best_mean_dice, k5_scratch_dice=scratch.best_mean_dice,
              k5_upkern_dice=upkerned.best_mean_dice, mean_val_dice=auc, first_epoch_loss=first_loss,
              resized=len(report.resized), copied=len(report.copied))

# %% [markdown]
# ## Try this
# 1. Give k5-from-scratch twice the budget: does it catch up with UpKern?
# 2. UpKern from k3 to k7 (`kernel_size=7`): do the copied/resized counts change?
# 3. Try `upkern` between networks of different widths: read what the report refuses and why.
# 4. Interpolate with `align_corners=True` by hand and compare the k5 kernel's corners with the k3 one's.
# 5. Run with `spatial_dims=2`: the same code UpKerns 2D kernels (bilinear) — the reference code cannot.
