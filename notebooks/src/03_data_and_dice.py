# %% [markdown]
# # 03 · Data, patches and Dice: what the network sees and how it is scored
#
# **What you will learn**
# - **Dice**, the score of every later lesson: the overlap picture and its formula, why the background
#   class is left out of the mean, what an empty class scores in this package, per-class Dice vs the mean;
# - the **synthetic "comma" task** (head and tail of one intensity) and why the intensity-threshold
#   baseline stops near 0.40 mean foreground Dice there, while on the brain task intensity goes far;
# - **patch sampling** (`pos_ratio`: how many training patches are centred on foreground) and each
#   **augmentation** of the training pipeline, shown on one patch;
# - **sliding-window inference**: how a volume is tiled, how many windows an overlap costs, and why
#   windows are blended with a Gaussian weight rather than averaged;
# - what **deep supervision** compares: the label downsampled to the five output resolutions, with the
#   loss weights of each.
#
# Before this lesson: the slice viewer (lesson 02). After it, lesson 04 trains MedNeXt with exactly these
# pieces (and shows the five outputs of a trained network); lessons 05 and 06 report Dice as defined here.
#
# `size` picks the amount of data and sampling: `"ci"` (what the tests run, well under a minute),
# `"class"` (more cases and samples, plus the brain task) or `"gpu"` (larger volumes and patches). Nothing
# here trains a network, so every size runs on a CPU; any parameter set by hand wins over the size.

# %% [parameters]
size = "class"  # "ci": what CI runs; "class": a few minutes at most on a 2-core CPU; "gpu": larger volumes
n_cases = None  # synthetic training cases written (the baseline is fitted and scored on all of them)
case_shape = None  # voxels per side of each synthetic case
patch = None  # side of the (cubic) training patch in voxels
pos_ratio = 0.67  # fraction of patches centred on a foreground voxel (the package's default)
n_draws = None  # patches drawn to check pos_ratio
brain_cases = None  # cases of the MNI152 brain task for the baseline contrast (0: skip it)
sw_shape = None  # (height, width) of the 2D image tiled in section 4
sw_window = None  # side of the sliding window (divisible by 16)
overlap = 0.5  # sliding-window overlap (nnU-Net's and the package's default)
output_dir = "runs/03_data_and_dice"
seed = 0
device = "auto"

# %%
import inspect
import math
import time
from copy import deepcopy

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from monai.data.utils import compute_importance_map
from monai.inferers import sliding_window_inference
from monai.metrics import compute_dice
from monai.transforms import (RandCropByPosNegLabeld, RandFlipd, RandGaussianNoised, RandRotate90d,
                              RandScaleIntensityd, RandShiftIntensityd)

from mednext_lite import viz
from mednext_lite.data import (dice_per_class, get_transforms, load_task, make_dataset, make_synthetic_task,
                               read_image, threshold_baseline)
from mednext_lite.inference import sliding_window_logits
from mednext_lite.lesson import Lesson, sized
from mednext_lite.losses import DeepSupervisionLoss, deep_supervision_weights, make_loss
from mednext_lite.metrics import dice_scores
from mednext_lite.model import MedNeXt

p = sized(size, {
    "ci": dict(n_cases=4, case_shape=48, patch=16, n_draws=240, brain_cases=0, sw_shape=(160, 128), sw_window=64),
    "class": dict(n_cases=12, case_shape=48, patch=16, n_draws=1200, brain_cases=3, sw_shape=(160, 128),
                  sw_window=64),
    "gpu": dict(n_cases=40, case_shape=96, patch=32, n_draws=4000, brain_cases=8, sw_shape=(320, 256),
                sw_window=96),
}, n_cases=n_cases, case_shape=case_shape, patch=patch, n_draws=n_draws, brain_cases=brain_cases,
   sw_shape=sw_shape, sw_window=sw_window)
lesson = Lesson(output_dir, seed=seed, device=device)
lesson.record(size=size, **p)
print(f"size={size!r}:", p)
started = time.perf_counter()
LABEL_COLOURS = viz.label_colormap(3)  # the slice viewer's colours: head = entry 0, tail = entry 1


def overlay(ax, image, label, title, extent=None, vlim=None):
    """An image slice in grey with its label map filled in the viewer's colours (arrays indexed [x, y],
    drawn with x to the right and y up, as the slice viewer draws them)."""
    ax.imshow(image.T, cmap="gray", origin="lower", interpolation="nearest", extent=extent,
              vmin=None if vlim is None else vlim[0], vmax=None if vlim is None else vlim[1])
    ax.imshow(np.ma.masked_equal(label.T, 0), cmap=LABEL_COLOURS, vmin=0.5, vmax=3.5, alpha=0.45,
              origin="lower", interpolation="nearest", extent=extent)
    ax.set_title(title, fontsize=9)


# The synthetic task of section 2, written now because section 1 scores label maps of one of its cases.
task_dir = make_synthetic_task(lesson.out / "data", n_train=p["n_cases"], n_test=0, flavour="mri", seed=seed,
                               shape=(p["case_shape"],) * 3, progress=False)
info = load_task(task_dir)
label0 = np.rint(read_image(info.training[0]["label"])[0]).astype(np.int64)
print(f"{info.name}: {len(info.training)} cases of {label0.shape} voxels, labels {info.labels}")

# %% [markdown]
# ## 1. Dice
# ### 1.1 The overlap picture
# Dice compares a predicted mask B with the true mask A by their overlap:
#
# $$\mathrm{Dice}(A, B) = \frac{2\,|A \cap B|}{|A| + |B|}$$
#
# It is 1 for a perfect match, 0 for no overlap, and it does not count the (usually huge) number of
# voxels that both call background. Below, two discs on a 48 x 48 grid; every number in the formula is
# counted from the picture, then checked against the package's two Dice functions
# (`mednext_lite.data.dice_per_class` on NumPy maps, `mednext_lite.metrics.dice_scores` through MONAI).

# %%
yy, xx = np.meshgrid(np.arange(48), np.arange(48), indexing="ij")
truth2d = (((xx - 21) ** 2 + (yy - 24) ** 2) <= 10 ** 2).astype(np.int64)
pred2d = (((xx - 27) ** 2 + (yy - 21) ** 2) <= 9 ** 2).astype(np.int64)
a, b = int(truth2d.sum()), int(pred2d.sum())
both = int((truth2d & pred2d).sum())
dice_hand = 2 * both / (a + b)
dice_np = dice_per_class(pred2d, truth2d, [1])[1]
dice_monai = float(dice_scores(torch.as_tensor(pred2d)[None, None], torch.as_tensor(truth2d)[None, None], 2)[0, 0])
assert abs(dice_hand - dice_np) < 1e-12 and abs(dice_hand - dice_monai) < 1e-6
jaccard = both / (a + b - both)  # intersection over union, the other common overlap score
assert abs(dice_hand - 2 * jaccard / (1 + jaccard)) < 1e-12  # Dice = 2J / (1 + J): the two rank alike
print(f"|A| = {a} truth pixels, |B| = {b} predicted pixels, |A and B| = {both} in both")
print(f"Dice = 2 x {both} / ({a} + {b}) = {dice_hand:.4f}; dice_per_class {dice_np:.4f}, dice_scores (MONAI) "
      f"{dice_monai:.4f}; IoU = {both} / {a + b - both} = {jaccard:.4f} (always below Dice when 0 < Dice < 1)")

kinds = np.zeros_like(truth2d)  # 1 both (true positive), 2 truth only (missed), 3 prediction only (false alarm)
kinds[(truth2d == 1) & (pred2d == 1)] = 1
kinds[(truth2d == 1) & (pred2d == 0)] = 2
kinds[(truth2d == 0) & (pred2d == 1)] = 3
from matplotlib.colors import ListedColormap

kind_cmap = ListedColormap(["#3cb44b", "#f58231", "#4363d8"])
fig = Figure(figsize=(11, 3.9), layout="constrained")
axes = fig.subplots(1, 3)
for ax, mask, name, colour in ((axes[0], truth2d, f"truth A: |A| = {a} px", "#f58231"),
                               (axes[1], pred2d, f"prediction B: |B| = {b} px", "#4363d8")):
    ax.imshow(mask, cmap=ListedColormap(["white", colour]), origin="lower", interpolation="nearest")  # rows = y
    ax.set_title(name)
axes[2].imshow(np.ma.masked_equal(kinds, 0), cmap=kind_cmap, vmin=0.5, vmax=3.5, origin="lower",
               interpolation="nearest")
axes[2].set_facecolor("white")
axes[2].set_title(f"Dice = 2 x {both} / ({a} + {b}) = {dice_hand:.3f}")
axes[2].legend(handles=[Patch(color="#3cb44b", label=f"A and B: {both} px"),
                        Patch(color="#f58231", label=f"missed (A only): {a - both} px"),
                        Patch(color="#4363d8", label=f"false alarm (B only): {b - both} px")],
               loc="upper left", fontsize=8)
for ax in axes:
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
fig.suptitle("Dice counts the overlap of two masks; the shared background is not counted")
lesson.show(fig, "dice_overlap");
lesson.record(dice_overlap={"A": a, "B": b, "A_and_B": both, "dice": dice_hand, "iou": jaccard})

# %% [markdown]
# ### 1.2 Why background is left out of the mean
# Background is a class too, and its Dice is high for almost any prediction, because it is most of the
# volume. On one case of the synthetic task (section 2) head and tail together are only a few per cent of
# the voxels. Three predictions of that case: **nothing at all** (everything background), **no split**
# (the whole object called head, which is what an intensity rule does, section 2), and **one voxel off**
# (the true map shifted by one voxel along x). Averaging over all three classes gives the empty map a
# third of a point for free and makes the map without any tail look decent; the foreground-only mean, which
# the package reports everywhere, does neither.

# %%
predictions = {
    "nothing (all background)": np.zeros_like(label0),
    "no split (all object = head)": (label0 > 0).astype(np.int64),
    "one voxel off": np.roll(label0, 1, axis=0),
}
fg_share = float((label0 > 0).mean())
print(f"case 0: {fg_share:.1%} of its {label0.size} voxels are head or tail\n")
print(f"{'prediction':30s} {'accuracy':>8s} {'bg':>6s} {'head':>6s} {'tail':>6s} {'mean, bg incl.':>15s} "
      f"{'mean foreground':>16s}")
table = {}
for name, pred in predictions.items():
    d = dice_per_class(pred, label0, [0, 1, 2])
    table[name] = {"accuracy": float((pred == label0).mean()), "dice": d,
                   "mean_with_bg": float(np.mean([d[0], d[1], d[2]])), "mean_fg": float(np.mean([d[1], d[2]]))}
    t = table[name]
    print(f"{name:30s} {t['accuracy']:8.1%} {d[0]:6.3f} {d[1]:6.3f} {d[2]:6.3f} {t['mean_with_bg']:15.3f} "
          f"{t['mean_fg']:16.3f}")
empty, nosplit, off = (table[k] for k in predictions)
assert empty["accuracy"] > 0.9 and empty["dice"][0] > 0.95, "the empty map is right about almost every voxel"
assert empty["mean_fg"] == 0.0 and empty["mean_with_bg"] > 0.3, "with background, finding nothing still scores"
assert nosplit["dice"][2] == 0.0 and nosplit["mean_with_bg"] > 0.6, "a map with no tail at all looks decent"
assert off["mean_fg"] > nosplit["mean_fg"] > empty["mean_fg"]
gap_bg, gap_fg = off["mean_with_bg"] - empty["mean_with_bg"], off["mean_fg"] - empty["mean_fg"]
assert gap_bg < gap_fg, "background squeezes the distance between useless and good"
print(f"\nWith background in the mean, finding nothing scores {empty['mean_with_bg']:.2f} (at {empty['accuracy']:.0%} "
      f"voxel accuracy) instead of 0, and the map without any tail scores {nosplit['mean_with_bg']:.2f} instead of "
      f"{nosplit['mean_fg']:.2f}. The distance from useless to good shrinks from {gap_fg:.2f} to {gap_bg:.2f}.")

loss_dice = make_loss().base_loss.dice
assert loss_dice.include_background is False
assert dice_scores(torch.as_tensor(label0)[None, None], torch.as_tensor(label0)[None, None], 3).shape == (1, 2)
print("the package leaves background out everywhere: dice_scores returns one column per foreground class (2), "
      "the training loss has include_background=False, the baseline reports 'mean_foreground_dice'")

fig = Figure(figsize=(8, 3.8), layout="constrained")
ax = fig.subplots()
xpos = np.arange(len(table))
ax.bar(xpos - 0.2, [t["mean_with_bg"] for t in table.values()], 0.4, label="mean over bg, head, tail", color="#bbbbbb")
ax.bar(xpos + 0.2, [t["mean_fg"] for t in table.values()], 0.4, label="mean over head, tail (reported)",
       color="#4363d8")
for x, t in zip(xpos, table.values()):
    ax.text(x - 0.2, t["mean_with_bg"] + 0.02, f"{t['mean_with_bg']:.2f}", ha="center", fontsize=8)
    ax.text(x + 0.2, t["mean_fg"] + 0.02, f"{t['mean_fg']:.2f}", ha="center", fontsize=8)
ax.set_xticks(xpos, list(table), fontsize=8)
ax.set_ylim(0, 1.1)
ax.set_ylabel("mean Dice (0..1)")
ax.set_xlabel("prediction of synthetic case 0")
ax.set_title("Background Dice is high for any prediction: it hides an empty map")
ax.legend(fontsize=8, loc="upper left")
lesson.show(fig, "background_in_mean");
lesson.record(background_example={k: {"accuracy": v["accuracy"], "mean_with_bg": v["mean_with_bg"],
                                      "mean_fg": v["mean_fg"]} for k, v in table.items()})

# %% [markdown]
# ### 1.3 An empty class: the package's convention
# A case may lack a class altogether (a tumour-free scan, an organ outside the field of view). Then
# $|A| + |B|$ can be 0 and the formula is 0/0. **The package scores a class absent from both truth and
# prediction as 1** ("nothing to find, nothing found"): `dice_per_class` by its own test, `dice_scores` by
# calling MONAI's `compute_dice` with `ignore_empty=False`. A class absent from the truth but predicted
# anywhere scores 0, however few voxels it predicts. MONAI's own default (`ignore_empty=True`) gives
# NaN for every class missing from the truth, whatever was predicted, and a `nanmean` over cases then
# skips the case. The package's choice keeps every mean over cases defined, and it makes a false alarm on
# an empty case cost a full point instead of nothing.

# %%
no_tail = np.where(label0 == 2, 0, label0)  # the same case with its tail removed from the truth
alarm = no_tail.copy()
alarm[tuple(np.argwhere(no_tail == 0)[:3].T)] = 2  # three false tail voxels in a corner
for name, pred in (("perfect (no tail predicted)", no_tail), ("3 false tail voxels", alarm)):
    ours = dice_per_class(pred, no_tail, [1, 2])
    monai_ours = dice_scores(torch.as_tensor(pred)[None, None], torch.as_tensor(no_tail)[None, None], 3)[0]
    oh = lambda m: F.one_hot(torch.as_tensor(m), 3).movedim(-1, 0)[None].float()  # noqa: E731
    monai_default = compute_dice(oh(pred), oh(no_tail), include_background=False)[0]
    print(f"{name:28s} tail Dice: dice_per_class {ours[2]:.1f}, dice_scores {float(monai_ours[1]):.1f}, "
          f"MONAI default (ignore_empty=True) {float(monai_default[1])}")
    if pred is no_tail:
        assert ours[2] == 1.0 and float(monai_ours[1]) == 1.0 and math.isnan(float(monai_default[1]))
    else:
        assert ours[2] == 0.0 and float(monai_ours[1]) == 0.0 and math.isnan(float(monai_default[1]))
    assert ours[1] == 1.0  # the head is untouched by either prediction
print("package: absent from truth and prediction -> 1; absent from truth but predicted -> 0. MONAI's default: "
      "absent from truth -> NaN whatever is predicted, so a false alarm on an empty case is never counted")

# %% [markdown]
# ### 1.4 Dice per class vs the mean
# The number a lesson quotes is the **mean foreground Dice**: Dice per class and case, averaged over cases,
# then over the foreground classes (`evaluate_model` returns both the per-class means and `mean_dice`). A
# mean hides *which* class fails: below, three predictions of case 0 with about the same mean and
# nothing else in common. Always read the per-class numbers.

# %%
target = np.mean(list(dice_per_class(predictions["no split (all object = head)"], label0, [1, 2]).values()))
miss = (2 - 2 * target) / (2 - target)  # missing a fraction m of a class leaves Dice 2(1 - m) / (2 - m)
part = label0.copy()
for cls in (1, 2):
    idx = np.argwhere(label0 == cls)
    part[tuple(idx[: int(round(miss * len(idx)))].T)] = 0  # the first slabs of each class missed
no_head = np.where(label0 == 1, 0, label0)  # head missed entirely, tail perfect
rows = {}
for name, pred in (("no split (all object = head)", predictions["no split (all object = head)"]),
                   (f"{miss:.0%} of each class missed", part), ("head missed, tail perfect", no_head)):
    d = dice_per_class(pred, label0, [1, 2])
    rows[name] = [d[1], d[2], float(np.mean([d[1], d[2]]))]
    print(f"{name:30s} head {d[1]:.3f}  tail {d[2]:.3f}  mean {rows[name][2]:.3f}")
means = [r[2] for r in rows.values()]
assert max(means) - min(means) < 0.1, "about the same mean"
assert max(r[0] for r in rows.values()) - min(r[0] for r in rows.values()) > 0.8, "very different heads"
assert max(r[1] for r in rows.values()) - min(r[1] for r in rows.values()) > 0.9, "very different tails"
print(f"means within {max(means) - min(means):.2f} of each other; head Dice spans 0 to "
      f"{max(r[0] for r in rows.values()):.2f}, tail Dice 0 to {max(r[1] for r in rows.values()):.2f}")

# %% [markdown]
# ## 2. The tasks
# ### 2.1 The synthetic "comma", scored
# Lesson 02 showed the task: each case of `make_synthetic_task` holds one "comma" inside a body of soft
# tissue, a rounded **head** (label 1) joined to a thinner, tapered, bent **tail** (label 2), both drawn
# from **one intensity distribution**, with noise, a smooth bias field, a random gain and a random pose
# per case; their intensity histograms overlap, while a cue of shape (distance from the object's deepest
# voxel) separates them. Here the question is the score: how far does intensity alone get, in Dice?
# First the intensities as the network's pipeline normalises them (z-score over the body).

# %%
# The intensities as the pipeline normalises them (z-score over the body, mode "val": no patches).
val_tf = get_transforms(info, mode="val", patch_size=p["patch"])
pooled = {"body (background)": [], "head": [], "tail": []}
for case in info.training:
    item = val_tf(case)
    img, lbl = item["image"][0].numpy(), item["label"][0].numpy()
    pooled["body (background)"].append(img[(lbl == 0) & (img != 0)])
    pooled["head"].append(img[lbl == 1])
    pooled["tail"].append(img[lbl == 2])
pooled = {k: np.concatenate(v) for k, v in pooled.items()}
bins = np.linspace(-3, 6, 91)
hist = {k: np.histogram(v, bins, density=True)[0] for k, v in pooled.items()}
width = bins[1] - bins[0]
shared = float(np.minimum(hist["head"], hist["tail"]).sum() * width)  # overlap of the two histograms
print({k: f"mean {v.mean():.2f}, std {v.std():.2f} ({len(v)} voxels)" for k, v in pooled.items()})
print(f"head and tail histograms share {shared:.0%} of their area (100% = identical distributions)")
assert shared > 0.6, "head and tail must look alike in intensity"

# %% [markdown]
# ### 2.2 The intensity-threshold baseline
# `threshold_baseline` fits the best rule "intensity bin -> label" on the cases (each of up to 64 quantile
# bins of intensity, duplicate edges dropped, gets its majority label: the intensity-only classifier with the fewest voxel errors) and scores it on
# the same cases, which flatters it. It finds the object (binary foreground Dice near 0.9) but, since a
# head voxel and a tail voxel of the same intensity are indistinguishable to it and head voxels are more
# numerous, every object bin goes to **head**: tail Dice 0, mean foreground about 0.40. The shaded bands
# in the figure are where the fitted rule says "head".

# %%
base = threshold_baseline(info)
print("baseline Dice per class:", {info.labels[c]: round(d, 3) for c, d in base["dice"].items()})
print(f"mean foreground Dice {base['mean_foreground_dice']:.3f}; binary foreground (object vs not) "
      f"{base['foreground_dice']:.3f}; fitted and scored on {base['n_cases']} cases")
assert 2 not in base["bin_labels"], "no intensity bin is labelled tail"
assert base["dice"][2] == 0.0 and base["foreground_dice"] > 0.8 and base["mean_foreground_dice"] < 0.5

fig = Figure(figsize=(8, 4), layout="constrained")
ax = fig.subplots()
edges, rule = np.asarray(base["bin_edges"]), np.asarray(base["bin_labels"])
for j in range(len(edges) - 1):
    if rule[j] == 1:
        ax.axvspan(max(edges[j], bins[0]), min(edges[j + 1], bins[-1]), color=LABEL_COLOURS(0), alpha=0.12, lw=0)
for name, colour in (("body (background)", "0.4"), ("head", LABEL_COLOURS(0)), ("tail", LABEL_COLOURS(1))):
    ax.stairs(hist[name], bins, color=colour, lw=2, label=f"{name}: {len(pooled[name])} voxels")
ax.set_xlabel("normalised intensity (z-score over the body)")
ax.set_ylabel("density (fraction of the class per unit)")
ax.set_title(f"Head and tail share one intensity distribution ({shared:.0%} overlap): "
             f"the rule (shaded = 'head') never says tail", fontsize=10)
ax.legend(handles=ax.get_legend_handles_labels()[0] + [Patch(color=LABEL_COLOURS(0), alpha=0.12,
                                                             label="bins the rule labels head")], fontsize=8)
lesson.show(fig, "intensity_histograms");

# %% [markdown]
# **Is 0.40 the bar, or could a cleverer intensity rule do better?** A sharp question: the majority rule
# never says tail, but a rule could call a fraction q of the object's voxels tail *at random* (intensity
# cannot say which). Give it a perfect foreground and pick the best q: the curve below is the expected
# mean foreground Dice of such rules, computed from the head and tail voxel counts of every case, and
# checked at its best q by a real random split. If head and tail intensities are identically distributed,
# any intensity-only rule sends the same share q of head voxels and of tail voxels to "tail", so even with
# a perfect foreground it scores on this curve: its peak, not 0.40, is the bar a network must clear by
# learning shape.

# %%
counts = [(int((np.rint(read_image(c["label"])[0]) == 1).sum()), int((np.rint(read_image(c["label"])[0]) == 2).sum()))
          for c in info.training]
qs = np.linspace(0, 1, 201)


def random_split_dice(q, h, t):
    """Expected head and tail Dice when all h + t object voxels are found and a fraction q is called tail."""
    d_head = 2 * (1 - q) * h / (h + (1 - q) * (h + t))
    d_tail = 2 * q * t / (t + q * (h + t)) if q > 0 else 0.0
    return d_head, d_tail


curve = np.array([[np.mean([random_split_dice(q, h, t)[k] for h, t in counts]) for k in (0, 1)] for q in qs])
mean_curve = curve.mean(1)
q_best = float(qs[mean_curve.argmax()])
ceiling = float(mean_curve.max())
rng = np.random.default_rng(seed)
simulated = []
for case in info.training:
    truth = np.rint(read_image(case["label"])[0]).astype(np.int64)
    guess = np.where(truth > 0, np.where(rng.random(truth.shape) < q_best, 2, 1), 0)
    d = dice_per_class(guess, truth, [1, 2])
    simulated.append(np.mean([d[1], d[2]]))
print(f"best random split: q = {q_best:.2f} of the object called tail -> expected mean foreground Dice {ceiling:.3f}; "
      f"a real random split at that q scores {np.mean(simulated):.3f}")
print(f"with q = 0 (the majority rule, perfect foreground) it is {mean_curve[0]:.3f}; the fitted baseline scored "
      f"{base['mean_foreground_dice']:.3f} (its foreground is imperfect)")
assert abs(np.mean(simulated) - ceiling) < 0.02, "the expected-Dice formula must match a real random split"
assert base["mean_foreground_dice"] <= mean_curve[0] + 0.01 and ceiling < 0.6
lesson.record(baseline={"dice": {info.labels[c]: d for c, d in base["dice"].items()},
                        "mean_foreground_dice": base["mean_foreground_dice"],
                        "foreground_dice": base["foreground_dice"], "n_cases": base["n_cases"]},
              intensity_ceiling={"q": q_best, "mean_foreground_dice": ceiling, "simulated": float(np.mean(simulated))},
              head_tail_histogram_overlap=shared)

fig = Figure(figsize=(7, 4), layout="constrained")
ax = fig.subplots()
ax.plot(qs, curve[:, 0], color=LABEL_COLOURS(0), label="head Dice")
ax.plot(qs, curve[:, 1], color=LABEL_COLOURS(1), label="tail Dice")
ax.plot(qs, mean_curve, color="k", lw=2, label="mean foreground Dice")
ax.plot([q_best], [ceiling], "k*", ms=12, label=f"best intensity-only rule: {ceiling:.2f} at q = {q_best:.2f}")
ax.plot([0], [base["mean_foreground_dice"]], "o", color="#911eb4", ms=8,
        label=f"fitted threshold baseline: {base['mean_foreground_dice']:.2f}")
ax.set_xlabel("q: fraction of object voxels labelled tail at random")
ax.set_ylabel("expected Dice over the cases (0..1)")
ax.set_ylim(0, 1)
ax.set_title("What no intensity rule can beat on the comma task (perfect foreground assumed)", fontsize=10)
ax.legend(fontsize=8)
lesson.show(fig, "intensity_ceiling");

# %% [markdown]
# ### 2.3 The control: a task where intensity goes far
# Is the synthetic task simply hard for the baseline? The brain-tissue task (lesson 02's MNI152 brain,
# grey matter / white matter / other brain on T1 MRI) is real anatomy where tissues differ in intensity.
# There the same rule scores far higher, so a network has a much higher bar to clear, and beating it means
# using the neighbourhood where a bias field pushes one tissue into another's range. (Skipped at
# `size="ci"`; set `brain_cases` to run it.)

# %%
if p["brain_cases"]:
    try:
        from mednext_lite.data.brain import make_brain_task

        brain_dir = make_brain_task(lesson.out / "data", n_train=p["brain_cases"], n_test=0, seed=seed, progress=False)
        brain_info = load_task(brain_dir)
        brain_base = threshold_baseline(brain_info)
        print(f"{brain_info.name}, {brain_base['n_cases']} cases: baseline Dice per class",
              {brain_info.labels[c]: round(d, 3) for c, d in brain_base["dice"].items()},
              f"mean foreground {brain_base['mean_foreground_dice']:.3f}")
        assert brain_base["mean_foreground_dice"] > base["mean_foreground_dice"] + 0.2
        lesson.record(brain_baseline_mean_foreground_dice=brain_base["mean_foreground_dice"])
        print(f"intensity alone: {brain_base['mean_foreground_dice']:.2f} on the brain vs "
              f"{base['mean_foreground_dice']:.2f} on the comma")
    except ImportError as err:  # nilearn is in the notebooks extra; say what is missing
        print(f"brain task skipped: {err}")
else:
    print("brain task skipped at this size (brain_cases=0)")

# %% [markdown]
# ## 3. Patches and augmentation
# ### 3.1 Sampling patches
# A network trains on **patches** cut from the preprocessed case, not on whole volumes (a 3D CT does not
# fit, and many small patches make a varied batch). `get_transforms(info, mode="train")` ends with MONAI's
# `RandCropByPosNegLabeld`: each patch's centre is a random **foreground** voxel with probability
# `pos_ratio` and a random **background** voxel otherwise; foreground is rare (a few per cent here, the
# tail a smaller share still), so a uniformly placed centre would seldom fall on a tail (the voxel shares
# are printed below). `make_dataset` caches the deterministic
# prefix of the pipeline (load, orient, crop to the body, normalise, pad) and reruns only the random
# steps each time an item is read, as in training. Here the patch is small beside the case (its share of
# the volume is printed), so a patch centred on background often holds no object at all; on a CT of
# 512 x 512 x 300 voxels a 128^3 patch is about 1/37 of it. Augmentation is off in this subsection so that the patch centre stays at the
# patch centre (a flip would move it by one voxel); section 3.2 adds it.

# %%
P = p["patch"]
n_per_draw = 4
train_tf = get_transforms(info, mode="train", patch_size=P, num_samples=n_per_draw, pos_ratio=pos_ratio, augment=False)
train_tf.set_random_state(seed=seed)  # MONAI's random transforms carry their own generators
crop_step = next(t for t in train_tf.transforms if isinstance(t, RandCropByPosNegLabeld))
ds = make_dataset(info.training[:1], train_tf, cache="memory")
pre = val_tf(info.training[0])  # the same deterministic prefix: the volume the patches are cut from
vol_shape = tuple(pre["label"].shape[1:])
patches, centres = [], []
for _ in range(math.ceil(p["n_draws"] / n_per_draw)):
    patches += ds[0]
    centres += [tuple(c) for c in crop_step.cropper.centers]  # where this call's patches were cut
c = P // 2  # the crop puts its centre voxel at index P // 2 of the patch
on_fg = np.array([float(s["label"][0, c, c, c]) > 0 for s in patches])
has_fg = np.array([bool((s["label"] > 0).any()) for s in patches])
assert all(tuple(s["image"].shape) == (1, P, P, P) for s in patches)
sigma = math.sqrt(pos_ratio * (1 - pos_ratio) / len(patches))
on_tail = np.array([float(s["label"][0, c, c, c]) == 2 for s in patches])
lab = pre["label"][0].numpy()
share = {"foreground": float((lab > 0).mean()), "tail": float((lab == 2).mean())}
print(f"volume after preprocessing {vol_shape}; {len(patches)} patches of {P}^3, each "
      f"{P ** 3 / math.prod(vol_shape):.1%} of the volume")
print(f"voxel shares (what a uniformly placed centre would hit): foreground {share['foreground']:.1%}, "
      f"tail {share['tail']:.1%}; patches centred on a tail here: {on_tail.mean():.1%}")
print(f"centred on foreground: {on_fg.mean():.3f} (setting pos_ratio = {pos_ratio}, binomial sd {sigma:.3f}); "
      f"patches holding any foreground: {has_fg.mean():.3f}, of those centred on background: "
      f"{has_fg[~on_fg].mean():.3f}")
assert P ** 3 < 0.25 * math.prod(vol_shape), "the patch must be clearly smaller than the volume"
assert share["tail"] < share["foreground"] < 0.1 and on_tail.mean() > 2 * share["tail"]
assert has_fg[~on_fg].mean() < 0.9, "a background-centred patch must often hold no object"

# %% [markdown]
# The measured fraction can sit a little **above** `pos_ratio`, and not by chance. A patch must lie inside
# the volume, so a centre drawn closer than P/2 to the border is **moved inward** (MONAI's
# `correct_crop_centers`), and a background centre drawn near the border can land on the object. The
# control: pad the volume by P/2 background voxels on every side, so that no centre ever needs moving,
# and draw again with the same step. Now the fraction measures the setting alone, and must match it
# within binomial noise.

# %%
i_crop = train_tf.transforms.index(crop_step)
half = P // 2
padded = {k: F.pad(pre[k].as_tensor() if hasattr(pre[k], "as_tensor") else pre[k], (half,) * 6) for k in ("image", "label")}
control = []
for _ in range(math.ceil(p["n_draws"] / n_per_draw)):
    control += train_tf(deepcopy(padded), start=i_crop)
ctrl_fg = np.array([float(s["label"][0, c, c, c]) > 0 for s in control])
lo_valid, hi_valid = np.array([P // 2] * 3), np.array(vol_shape) - P / 2  # where an unmoved centre may lie
moved = sum(bool(np.any(np.array(ct) == lo_valid) or np.any(np.array(ct) >= np.floor(hi_valid))) for ct in centres)
print(f"padded control: centred on foreground {ctrl_fg.mean():.3f} vs pos_ratio {pos_ratio} "
      f"(|difference| {abs(ctrl_fg.mean() - pos_ratio):.3f}, allowed 4 sd = {4 * sigma:.3f})")
print(f"unpadded volume: {moved} of {len(centres)} centres sit on the edge of the valid region "
      f"(moved inward there, or drawn there); measured fraction {on_fg.mean():.3f}")
assert abs(ctrl_fg.mean() - pos_ratio) < 4 * sigma, "with no centre moved, the fraction must match pos_ratio"
assert on_fg.mean() > pos_ratio - 4 * sigma
lesson.record(pos_ratio=pos_ratio, n_patches=len(patches), fraction_centred_on_fg=float(on_fg.mean()),
              fraction_centred_on_fg_padded_control=float(ctrl_fg.mean()), fraction_with_any_fg=float(has_fg.mean()),
              fraction_bg_centred_with_any_fg=float(has_fg[~on_fg].mean()), fraction_centred_on_tail=float(on_tail.mean()),
              voxel_share_fg=share["foreground"], voxel_share_tail=share["tail"],
              centres_on_valid_edge=moved)

# %%
n_show = 12
fig = Figure(figsize=(12, 7.4), layout="constrained")
grid = fig.subplots(3, 5)
proj = pre["label"][0].numpy().max(axis=2)  # the object seen from above (max over z)
ax = grid[0, 0]
ax.imshow(np.ma.masked_equal(proj.T, 0), cmap=LABEL_COLOURS, vmin=0.5, vmax=3.5, origin="lower",
          interpolation="nearest", alpha=0.6)
ax.add_patch(Rectangle((lo_valid[0] - 0.5, lo_valid[1] - 0.5), hi_valid[0] - lo_valid[0], hi_valid[1] - lo_valid[1],
                       fill=False, ls="--", color="k", lw=1))
cx, cy = np.array([ct[0] for ct in centres]), np.array([ct[1] for ct in centres])
ax.scatter(cx[on_fg], cy[on_fg], s=6, c="#3cb44b", label="centre on foreground")
ax.scatter(cx[~on_fg], cy[~on_fg], s=6, c="#4363d8", label="centre on background")
ax.set_xlim(-0.5, vol_shape[0] - 0.5)
ax.set_ylim(-0.5, vol_shape[1] - 0.5)
ax.set_title(f"{len(centres)} patch centres (x, y);\n--- : where centres may lie", fontsize=8)
ax.set_xlabel("x (voxels)")
ax.set_ylabel("y (voxels)")
ax.legend(fontsize=6, loc="lower left")
for k, ax in enumerate(grid.flat[1:1 + n_show]):
    s = patches[k]
    overlay(ax, s["image"][0, :, :, c].numpy(), s["label"][0, :, :, c].numpy().astype(int),
            f"patch {k}: centre on {'FOREGROUND' if on_fg[k] else 'background'}", vlim=(-3, 5))
    ax.plot([c], [c], "+", color="yellow", ms=10, mew=2)
    ax.set_xlabel("x in patch (voxels)")
    ax.set_ylabel("y (voxels)")
for ax in grid.flat[1 + n_show:]:
    ax.axis("off")
fig.suptitle(f"Training patches ({P}^3, middle axial slice, + = patch centre): {int(on_fg[:n_show].sum())} of "
             f"{n_show} shown and {on_fg.mean():.0%} of {len(patches)} drawn are centred on foreground "
             f"(pos_ratio = {pos_ratio}); red = head, green = tail", fontsize=10)
lesson.show(fig, "patch_grid");

# %% [markdown]
# ### 3.2 Augmentation, one step at a time
# With `augment=True` the training pipeline follows the crop with random **flips** on each axis (p = 0.5
# each), a **90-degree turn** in a plane whose two patch sides are equal (p = 0.5), and **intensity**
# changes: scale by 1 + f with |f| <= 0.1 (p = 0.5), shift by |o| <= 0.1 (p = 0.5), Gaussian noise with
# a standard deviation drawn up to 0.05 (p = 0.15); the image is z-scored, so 0.1 is a tenth of the body's
# spread. Below, each of the package's own steps is applied alone to the same patch, forced to fire. Two
# rules are checked: spatial steps move image **and** label together (the label still fits the image);
# intensity steps change the image **only**.

# %%
aug_tf = get_transforms(info, mode="train", patch_size=P, num_samples=1, pos_ratio=pos_ratio, augment=True)
aug_steps = aug_tf.transforms[aug_tf.transforms.index(next(t for t in aug_tf.transforms
                                                           if isinstance(t, RandCropByPosNegLabeld))) + 1:]
base_patch = next(s for s, fg in zip(patches, on_fg) if fg and (s["label"] == 2).any() and (s["label"] == 1).any())
firing = []
for k, step in enumerate(aug_steps):
    one = deepcopy(step)
    one.prob = 1.0  # fire every time, so the effect can be seen
    one.set_random_state(seed=seed + k)
    firing.append((step, one(deepcopy(base_patch))))
img_in, lbl_in = base_patch["image"], base_patch["label"]
names = []
for step, out in firing:
    if isinstance(step, RandFlipd):
        axis = step.flipper.spatial_axis
        axis = axis[0] if isinstance(axis, (list, tuple)) else axis
        assert torch.equal(out["image"], torch.flip(img_in, [axis + 1])) and torch.equal(out["label"], torch.flip(lbl_in, [axis + 1]))
        names.append(f"flip along {'xyz'[axis]} (p={step.prob})" + (f"\n(shows the original's slice {P - 1 - c})"
                                                                       if axis == 2 else ""))
    elif isinstance(step, RandRotate90d):
        k = step._rand_k if hasattr(step, "_rand_k") else None
        turns = [q for q in range(1, 4) if torch.equal(out["label"], torch.rot90(lbl_in, q, [a + 1 for a in step.spatial_axes]))]
        assert turns and torch.equal(out["image"], torch.rot90(img_in, turns[0], [a + 1 for a in step.spatial_axes]))
        names.append(f"turn {90 * turns[0]} deg in plane {''.join('xyz'[a] for a in step.spatial_axes)} (p={step.prob})")
    else:
        assert torch.equal(out["label"], lbl_in), "intensity steps must leave the label alone"
        if isinstance(step, RandScaleIntensityd):
            f = float((out["image"] / img_in)[img_in.abs() > 0.5].mean()) - 1
            assert abs(f) <= 0.1 + 1e-5 and torch.allclose(out["image"], img_in * (1 + f), atol=1e-4)
            names.append(f"intensity x {1 + f:.3f} (p={step.prob})")
        elif isinstance(step, RandShiftIntensityd):
            o = float((out["image"] - img_in).mean())
            assert abs(o) <= 0.1 + 1e-5 and torch.allclose(out["image"], img_in + o, atol=1e-4)
            names.append(f"intensity {o:+.3f} (p={step.prob})")
        elif isinstance(step, RandGaussianNoised):
            sd = float((out["image"] - img_in).std())
            assert 0 < sd <= 0.05 * 1.1
            names.append(f"noise, sd {sd:.3f} (p={step.prob})")
        else:
            raise AssertionError(f"an augmentation this lesson does not know: {step}")
fig = Figure(figsize=(12, 9.6), layout="constrained")
grid = fig.subplots(3, 4)
overlay(grid[0, 0], img_in[0, :, :, c].numpy(), lbl_in[0, :, :, c].numpy().astype(int), "the patch (no augmentation)",
        vlim=(-3, 5))
for ax, (step, out), name in zip(list(grid[0, 1:]) + list(grid[1]), firing, names):
    overlay(ax, out["image"][0, :, :, c].numpy(), out["label"][0, :, :, c].numpy().astype(int), name, vlim=(-3, 5))
# Intensity steps are small by design (a tenth of the body's spread): their change is drawn apart.
intensity = [(step, out, name) for (step, out), name in zip(firing, names) if torch.equal(out["label"], lbl_in)]
dmax = max(float((out["image"] - img_in).abs().max()) for _, out, _ in intensity)
for ax, (step, out, name) in zip(grid[2, 1:], intensity):
    shown = ax.imshow((out["image"] - img_in)[0, :, :, c].numpy().T, cmap="RdBu_r", vmin=-dmax, vmax=dmax,
                      origin="lower", interpolation="nearest")
    ax.set_title(f"change made by: {name.split(' (')[0]}", fontsize=9)
fig.colorbar(shown, ax=grid[2, 3], label="image after - before (z-score units)")
grid[2, 0].axis("off")
grid[2, 0].text(0.0, 0.5, "Bottom row: what each intensity step\nadded to the image (after - before).\n"
                "The label is unchanged by them;\nspatial steps move image and label\ntogether.",
                fontsize=9, va="center", transform=grid[2, 0].transAxes)
for ax in list(grid[0]) + list(grid[1]) + list(grid[2, 1:]):
    ax.set_xlabel("x in patch (voxels)")
    ax.set_ylabel("y (voxels)")
fig.suptitle(f"Each training augmentation alone on one {P}^3 patch (middle axial slice, same grey scale -3..5); "
             "label overlaid after the step", fontsize=10)
lesson.show(fig, "augmentations");
p_none = math.prod(1 - s.prob for s in aug_steps)
print(f"{len(aug_steps)} random steps; the chance that a patch passes all of them untouched: {p_none:.4f} "
      "(the product of 1 - p, computed from the settings)")

# %% [markdown]
# ## 4. Sliding-window inference
# ### 4.1 Tiling
# At prediction time the whole case must be labelled, but the network was trained on patches (and a large
# CT would not fit at once). `sliding_window_logits` (through MONAI's `sliding_window_inference`) tiles the
# image with windows of the patch size; neighbours overlap by a fraction `overlap` of the window. Along an
# axis of N voxels with window P the step is s = int(P (1 - overlap)) and the number of windows is
# $n = \lceil (N - P) / s \rceil + 1$ (1 if N <= P), the last one pushed back to end at the border; the
# windows of an image are the product over its axes. Shown in 2D on one toy image (the same rule holds in
# 3D), and checked by counting the windows the "network" is actually given.

# %%
H, W = p["sw_shape"]
Pw = p["sw_window"]
g = torch.Generator().manual_seed(seed)
ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
toy = torch.zeros(H, W)
for _ in range(max(6, H * W // 1700)):  # smooth blobs: a stand-in for a probability map
    cy0, cx0 = float(torch.rand(1, generator=g)) * H, float(torch.rand(1, generator=g)) * W
    s0 = 5 + 10 * float(torch.rand(1, generator=g))
    toy += torch.exp(-((ys - cy0) ** 2 + (xs - cx0) ** 2) / (2 * s0 ** 2))
toy = toy[None, None]


def windows_per_axis(n, window, ov):
    """Windows along one axis of n voxels, as the sliding window places them."""
    step = max(1, int(window * (1 - ov)))
    return 1 if n <= window else math.ceil((n - window) / step) + 1


def window_starts(n, window, ov):
    step = max(1, int(window * (1 - ov)))
    return [min(i * step, n - window) for i in range(windows_per_axis(n, window, ov))]


class Counting(torch.nn.Module):
    """A stand-in network that records every window it is given."""

    def __init__(self, fn):
        super().__init__()
        self.fn, self.seen = fn, 0

    def forward(self, x):
        self.seen += x.shape[0]
        return self.fn(x)


window_table = {}
for ov in (0.0, 0.25, 0.5, 0.75):
    counter = Counting(lambda x: x)
    sliding_window_inference(toy, (Pw, Pw), 4, counter, overlap=ov, mode="gaussian")
    expected = windows_per_axis(H, Pw, ov) * windows_per_axis(W, Pw, ov)
    assert counter.seen == expected, (ov, counter.seen, expected)
    window_table[ov] = expected
    print(f"overlap {ov:4.2f}: step {max(1, int(Pw * (1 - ov))):3d} px, {windows_per_axis(H, Pw, ov)} x "
          f"{windows_per_axis(W, Pw, ov)} = {expected:3d} windows counted (formula agrees), "
          f"{expected / window_table[0.0]:.1f}x the network work of no overlap")
lesson.record(windows_by_overlap={str(k): v for k, v in window_table.items()})

starts_y, starts_x = window_starts(H, Pw, overlap), window_starts(W, Pw, overlap)
coverage = torch.zeros(H, W)
for y0 in starts_y:
    for x0 in starts_x:
        coverage[y0:y0 + Pw, x0:x0 + Pw] += 1
assert coverage.sum() == len(starts_y) * len(starts_x) * Pw * Pw and coverage.min() >= 1
fig = Figure(figsize=(10, 4.6), layout="constrained")
axes = fig.subplots(1, 2)
axes[0].imshow(toy[0, 0], cmap="gray", origin="lower", extent=(0, W, 0, H))
colours = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4"]
for i, y0 in enumerate(starts_y):
    for j, x0 in enumerate(starts_x):
        inset = 1.0 + 1.5 * ((i + j) % 3)  # small insets keep overlapping edges apart
        axes[0].add_patch(Rectangle((x0 + inset, y0 + inset), Pw - 2 * inset, Pw - 2 * inset, fill=False,
                                    color=colours[(i * len(starts_x) + j) % len(colours)], lw=1.5))
axes[0].set_title(f"{len(starts_y)} x {len(starts_x)} = {len(starts_y) * len(starts_x)} windows of {Pw} x {Pw} px, "
                  f"overlap {overlap}", fontsize=10)
shown = axes[1].imshow(coverage, origin="lower", extent=(0, W, 0, H), cmap="viridis")
fig.colorbar(shown, ax=axes[1], label="windows covering the pixel")
axes[1].set_title("how many windows see each pixel", fontsize=10)
for ax in axes:
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
fig.suptitle(f"Sliding-window tiling of a {H} x {W} image")
lesson.show(fig, "window_tiling");

# %% [markdown]
# ### 4.2 The Gaussian importance map
# Where windows overlap, their predictions are blended: a weighted average with a weight map w over each
# window. `blend="constant"` gives every pixel of a window the same weight; `blend="gaussian"`, the
# package's default, uses MONAI's `compute_importance_map(mode="gaussian")`, a product over axes of
# $\exp(-x^2 / 2\sigma^2)$ with x measured from the window centre and $\sigma = 0.125\,P$
# (`sigma_scale`, which the package leaves at MONAI's default: checked below), floored at 0.001. Why trust
# window centres more? A convolutional network's output near a window's edge was computed from zero
# padding beyond the edge: the least reliable pixels of a window.

# %%
sigma_scale = inspect.signature(sliding_window_inference).parameters["sigma_scale"].default
assert sigma_scale == 0.125 and "sigma_scale" not in inspect.getsource(sliding_window_logits)
wmap = compute_importance_map((Pw, Pw), mode="gaussian", sigma_scale=sigma_scale)
sig = sigma_scale * Pw
xc = torch.arange(Pw, dtype=torch.float32) - (Pw - 1) / 2
by_hand = torch.exp(-xc ** 2 / (2 * sig ** 2))
assert torch.allclose(wmap, torch.clamp(by_hand[:, None] * by_hand[None, :], min=1e-3), atol=1e-6)
print(f"window {Pw} px: sigma = {sigma_scale} x {Pw} = {sig:g} px; weight next to the centre {float(wmap.max()):.3f} "
      f"(an even window has no centre pixel), "
      f"{float(wmap[Pw // 2, 0]):.4f} at the middle of an edge (the floor: exp(-{xc[0] ** 2 / (2 * sig ** 2):.1f}) "
      f"would be {float(by_hand[0]):.1e})")

fig = Figure(figsize=(10, 4), layout="constrained")
axes = fig.subplots(1, 2)
shown = axes[0].imshow(wmap, origin="lower", cmap="magma", extent=(0, Pw, 0, Pw))
fig.colorbar(shown, ax=axes[0], label="weight")
axes[0].set_xlabel("x in window (pixels)")
axes[0].set_ylabel("y in window (pixels)")
axes[0].set_title(f"gaussian map, sigma = {sigma_scale} x {Pw} = {sig:g} px", fontsize=10)
axes[1].plot(np.arange(Pw), wmap[Pw // 2].numpy(), "o-", ms=3, label="gaussian (middle row of the map)")
axes[1].plot(np.arange(Pw), np.ones(Pw), "--", color="0.4", label="constant")
axes[1].axvspan((Pw - 1) / 2 - sig, (Pw - 1) / 2 + sig, color="#f58231", alpha=0.15, label="centre +- sigma")
axes[1].set_xlabel("x in window (pixels)")
axes[1].set_ylabel("blending weight")
axes[1].set_title("one row through the centre", fontsize=10)
axes[1].legend(fontsize=8)
fig.suptitle("The importance map each window's prediction is weighted by")
lesson.show(fig, "gaussian_map");
lesson.record(sigma_scale=sigma_scale, sigma_px=sig)

# %% [markdown]
# ### 4.3 Blending: constant vs Gaussian
# A toy "network" that shows the edge problem plainly: a 9 x 9 box blur with zero padding, run on each
# window. The **reference** is the same blur run on the whole image at once (an infinitely large window:
# what tiling should reproduce). Near each window's inner edges the blur sees zeros, so its output is too
# dark there. Averaging windows with constant weight prints those edges into the result as **seams**; the
# Gaussian weight gives the edge pixels of one window almost no say next to the centre of its neighbour.
# The blend is also recomputed by hand from the window list and the map above, to show that this is all
# the sliding window does.

# %%
box = 9
blur = lambda x: F.conv2d(x, torch.ones(1, 1, box, box) / box ** 2, padding=box // 2)  # noqa: E731
reference = blur(toy)
blended = {mode: sliding_window_inference(toy, (Pw, Pw), 4, blur, overlap=overlap, mode=mode)
           for mode in ("constant", "gaussian")}
acc, wsum = torch.zeros(H, W), torch.zeros(H, W)
for y0 in starts_y:
    for x0 in starts_x:
        acc[y0:y0 + Pw, x0:x0 + Pw] += wmap * blur(toy[..., y0:y0 + Pw, x0:x0 + Pw])[0, 0]
        wsum[y0:y0 + Pw, x0:x0 + Pw] += wmap
assert torch.allclose(acc / wsum, blended["gaussian"][0, 0], atol=1e-5), "the blend is sum(w * p) / sum(w)"
inner = torch.zeros(H, W, dtype=torch.bool)
inner[Pw // 2:H - Pw // 2, Pw // 2:W - Pw // 2] = True  # away from the image border (see Try this)
errors = {mode: (out - reference).abs()[0, 0] for mode, out in blended.items()}
err_inner = {mode: float(e[inner].mean()) for mode, e in errors.items()}
err_all = {mode: float(e.mean()) for mode, e in errors.items()}
for mode in errors:
    print(f"{mode:8s}: mean |error| {err_all[mode]:.5f} over the image, {err_inner[mode]:.5f} inside "
          f"(half a window from the border); max {float(errors[mode].max()):.3f}; signal range 0..{float(reference.max()):.2f}")
assert err_inner["gaussian"] < 0.2 * err_inner["constant"], "gaussian blending must remove most of the seams"
lesson.record(blend_error_inner=err_inner, blend_error_all=err_all)

# A row halfway between two horizontal window edges, so that only the vertical edges (seams in x) cross it.
row = int(starts_y[1] + (Pw - int(Pw * (1 - overlap))) // 2) if len(starts_y) > 1 else H // 2
fig = Figure(figsize=(12, 7.6), layout="constrained")
top, bottom = fig.subfigures(2, 1)
row_top, row_bottom = top.subplots(1, 3), bottom.subplots(1, 3)
vmax = float(reference.max())
for ax, (name, arr) in zip(row_top, (("reference: whole image at once", reference[0, 0]),
                                     ("constant blending", blended["constant"][0, 0]),
                                     ("gaussian blending", blended["gaussian"][0, 0]))):
    shown = ax.imshow(arr, cmap="gray", origin="lower", vmin=0, vmax=vmax, extent=(0, W, 0, H))
    ax.axhline(row + 0.5, color="#f58231", lw=0.8, ls=":")
    ax.set_title(name, fontsize=10)
top.colorbar(shown, ax=list(row_top), label="toy prediction", shrink=0.9)
emax = float(errors["constant"].max())
for ax, mode in zip(row_bottom[:2], ("constant", "gaussian")):
    shown = ax.imshow(errors[mode], cmap="inferno", origin="lower", vmin=0, vmax=emax, extent=(0, W, 0, H))
    ax.set_title(f"|{mode} - reference|\nmean inside {err_inner[mode]:.4f}", fontsize=10)
bottom.colorbar(shown, ax=list(row_bottom[:2]), label="absolute error", shrink=0.9)
for ax in list(row_top) + list(row_bottom[:2]):
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
ax = row_bottom[2]
ax.plot(reference[0, 0, row].numpy(), color="k", lw=2, label="reference")
ax.plot(blended["constant"][0, 0, row].numpy(), color="#e6194b", label="constant")
ax.plot(blended["gaussian"][0, 0, row].numpy(), color="#4363d8", ls="--", label="gaussian")
for x0 in starts_x:
    for edge in (x0, x0 + Pw):
        if 0 < edge < W:
            ax.axvline(edge, color="0.6", lw=0.8, ls=":")
ax.set_xlabel("x (pixels); dotted: window edges")
ax.set_ylabel("toy prediction")
ax.set_title(f"row y = {row} (orange line above),\nbetween window edges in y", fontsize=10)
ax.legend(fontsize=8)
fig.suptitle(f"Constant blending prints the window edges as seams; gaussian blending hides them "
             f"({Pw} px windows, overlap {overlap}, {box}x{box} zero-padded blur as the 'network')", fontsize=11)
lesson.show(fig, "blending");

# %% [markdown]
# The package's own call, on a real (untrained, tiny) 2D MedNeXt: `sliding_window_logits(blend="gaussian")`
# gives exactly MONAI's Gaussian sliding window with sigma_scale 0.125, and *not* the one with 0.25
# (the control that shows this check can fail).

# %%
tiny2d = MedNeXt(spatial_dims=2, in_channels=1, num_classes=3, base_width=4, block_counts=1).eval()
with torch.no_grad():
    ours = sliding_window_logits(tiny2d, toy, Pw, overlap=overlap, blend="gaussian", device="cpu")
    monai_same = sliding_window_inference(toy, (Pw, Pw), 2, tiny2d, overlap=overlap, mode="gaussian", sigma_scale=0.125)
    monai_wider = sliding_window_inference(toy, (Pw, Pw), 2, tiny2d, overlap=overlap, mode="gaussian", sigma_scale=0.25)
same, wider = float((ours - monai_same).abs().max()), float((ours - monai_wider).abs().max())
print(f"max |package - MONAI sigma 0.125| = {same:.1e}; max |package - MONAI sigma 0.25| = {wider:.1e}")
assert same < 1e-5 < wider

# %% [markdown]
# ## 5. Deep supervision: what each output is compared with
# MedNeXt with deep supervision returns five logit maps, at full, 1/2, 1/4, 1/8 and 1/16 resolution
# (lesson 00 draws the heads; lesson 04 shows the five outputs of a trained network). The loss
# (`mednext_lite.losses.DeepSupervisionLoss`) compares output i with the label **downsampled by nearest
# neighbour** to that output's size (`F.interpolate(mode="nearest")`, so a label stays an integer class,
# never a blend of two), and mixes the five Dice + CE terms with weights proportional to $1/2^i$, the
# lowest resolution weighted 0, normalised to sum 1. Below, the targets are not rebuilt by hand: they are
# recorded from inside the package's loss while it scores a tiny untrained MedNeXt's outputs on one
# training patch cut by the sampler of section 3 from the same case, but of at least 32^3 voxels: a 16^3
# patch alone would leave one voxel at the 1/16 level, which GroupNorm cannot normalise in a batch of 1
# (the package refuses it).

# %%
class Recording(torch.nn.Module):
    """Wraps the loss of one output and keeps the target it was given."""

    def __init__(self, loss):
        super().__init__()
        self.loss, self.targets, self.values = loss, [], []

    def forward(self, logits, target):
        self.targets.append(target.detach().clone())
        self.values.append(self.loss(logits, target))
        return self.values[-1]


tiny3d = MedNeXt(spatial_dims=3, in_channels=1, num_classes=3, base_width=4, block_counts=1, deep_supervision=True)
P_ds = max(P, 32)
ds_tf = get_transforms(info, mode="train", patch_size=P_ds, num_samples=1, pos_ratio=1.0, augment=False)
ds_tf.set_random_state(seed=seed)
ds_patch = next(s for s in (ds_tf(deepcopy(pre), start=i_crop)[0] for _ in range(50))
                if (s["label"] == 1).any() and (s["label"] == 2).any())
x_patch, y_patch = ds_patch["image"][None], ds_patch["label"][None]
with torch.no_grad():
    outputs = tiny3d(x_patch)
recorder = Recording(make_loss().base_loss)
total = DeepSupervisionLoss(recorder)(outputs, y_patch)
weights = deep_supervision_weights(len(outputs))
raw = [1 / 2 ** i for i in range(len(outputs) - 1)] + [0.0]
assert np.allclose(weights, [r / sum(raw) for r in raw]) and weights[-1] == 0.0 and abs(sum(weights) - 1) < 1e-12
assert torch.allclose(total, sum(w * v for w, v in zip(weights, recorder.values)))
assert torch.allclose(total, make_loss()(outputs, y_patch)), "the recording wrapper changes nothing"
levels = []
for i, (out, target) in enumerate(zip(outputs, recorder.targets)):
    f = 2 ** i
    assert tuple(target.shape[2:]) == tuple(out.shape[2:]) == (P_ds // f,) * 3
    assert set(torch.unique(target).tolist()) <= {0.0, 1.0, 2.0}, "nearest keeps labels integer"
    assert torch.equal(target, y_patch[..., ::f, ::f, ::f]), "nearest by 2^i keeps every 2^i-th voxel"
    levels.append({"shape": tuple(out.shape[2:]), "weight": weights[i], "loss": float(recorder.values[i]),
                   "head": int((target == 1).sum()), "tail": int((target == 2).sum())})
    print(f"output {i}: {'x'.join(map(str, out.shape[2:])):>8s}, weight {weights[i]:.4f} (= {raw[i]:g} / {sum(raw):g}), "
          f"target voxels head {levels[-1]['head']:5d}, tail {levels[-1]['tail']:5d}, term {levels[-1]['loss']:.3f}")
print(f"total loss {float(total):.4f} = sum of weight x term (the last term is computed, then weighted 0)")
lesson.record(deep_supervision={"weights": weights, "levels": levels, "total_loss": float(total)})

fig = Figure(figsize=(14, 3.6), layout="constrained")
axes = fig.subplots(1, len(outputs))
for i, (ax, target) in enumerate(zip(axes, recorder.targets)):
    f = 2 ** i
    t2 = target[0, 0, :, :, (P_ds // 2) // f].numpy().astype(int)
    ax.imshow(np.zeros_like(t2).T, cmap="gray", vmin=0, vmax=1, origin="lower", extent=(0, P_ds, 0, P_ds))
    ax.imshow(np.ma.masked_equal(t2.T, 0), cmap=LABEL_COLOURS, vmin=0.5, vmax=3.5, origin="lower",
              interpolation="nearest", extent=(0, P_ds, 0, P_ds))
    ax.set_title(f"output {i}: {P_ds // f}^3, weight {weights[i]:.3f}\nhead {levels[i]['head']}, tail {levels[i]['tail']} voxels",
                 fontsize=9)
    ax.set_xlabel("x in patch (full-resolution voxels)")
    if i == 0:
        ax.set_ylabel("y (voxels)")
fig.suptitle("Deep-supervision targets of one patch as the loss sees them (middle axial slice; black = background, "
             "red = head, green = tail):\nnearest-neighbour downsampling, weights 1/2^i normalised, the coarsest "
             "weighted 0",
             fontsize=10)
lesson.show(fig, "deep_supervision_targets");
seconds = time.perf_counter() - started
lesson.record(seconds=seconds)
print(f"lesson computed in {seconds:.0f} s")

# %% [markdown]
# ## What the numbers say, and what they cannot
# - The Dice examples are exact arithmetic on fixed maps: they hold at every size.
# - The baseline and the intensity ceiling are measured on `n_cases` synthetic cases; at `size="ci"` that is
#   4 cases, so their third decimal moves with the seed, not their conclusion (tail Dice 0, ceiling near 0.5).
# - The `pos_ratio` check is statistical: the padded control must match the setting within 4 binomial
#   standard deviations of the number of patches drawn (more at `size="class"`, so a tighter check).
# - Nothing here is trained: the MedNeXt networks are untrained and only show shapes and the package's
#   calls. Lesson 04 trains one and scores it with the Dice defined here.
#
# ## Try this
# 1. **Small structures are fragile.** Before running anything, predict: a disc of radius 3 px and one of
#    radius 12 px, each predicted one pixel off to the right. Which loses more Dice, and roughly how much?
#    Then change the discs in section 1.1 and check. What does this mean for Dice on a tumour vs a liver?
# 2. **Background in the mean.** Lesson 04's tasks have 3 or 4 classes. With k foreground classes that are
#    all missed, what does the mean *including* background tend to as the foreground shrinks? Derive it,
#    then test with the table of section 1.2.
# 3. **Model selection with empty cases.** A validation set has 10 cases, 3 of them without a tail. Model A
#    predicts 2 stray tail voxels in each of those 3; model B predicts none but is a little worse elsewhere.
#    With the package's convention, how much does A lose on the tail mean? With MONAI's `ignore_empty=True`?
#    Which convention would you choose to pick a checkpoint, and why?
# 4. **Beat the ceiling?** The curve in section 2.2 assumes head and tail intensities are identical. In the
#    histogram they are close but not identical. Could a rule using intensity *and* the voxel's distance to
#    the object's edge beat the ceiling? Is that still "intensity only"? What has it learned?
# 5. **pos_ratio.** Set `pos_ratio = 1.0` and rerun section 3. What fraction of patches now holds *any*
#    background far from the object, and what would a network trained this way do on the air in the
#    corners of a volume? Then try `pos_ratio = 0.1` on a task whose foreground is 0.1 % of the voxels.
# 6. **Centres moved inward.** Make `patch` 48 with `case_shape` 48. How many different patches can the
#    sampler still cut, and what does the measured fraction centred on foreground become? Why?
# 7. **Which augmentations are safe?** A task labels the *left* and the *right* kidney as different classes.
#    Which of the augmentations of section 3.2 would teach the network something false? Why does the package
#    turn patches only in a plane whose two sides are equal?
# 8. **Overlap costs.** From the formula, predict the number of 128^3 windows for a 512 x 512 x 300 CT at
#    overlap 0.5 and at 0.75, and the ratio of network work. Check with `windows_per_axis`.
# 9. **The border strip.** In the error maps of section 4.3 the Gaussian blend is not perfect in a band along
#    the image border. Use the map's floor (0.001) to explain why: which windows cover a pixel there, and how
#    large are their weights? What would a larger `sigma_scale` change, for better and for worse?
# 10. **Deep supervision.** Why would downsampling the label with *linear* interpolation (then rounding) be a
#    worse target than nearest? At 1/16 the target of a thin tail can vanish altogether: what would a
#    non-zero weight on that output then teach the network?
