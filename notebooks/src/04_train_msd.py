# %% [markdown]
# # 04 · Train MedNeXt on a Medical Segmentation Decathlon task
#
# **What you will learn**
# - to fetch an MSD task (Hippocampus, 27 MB) or, offline, to write a task in the same layout (the
#   synthetic "comma" task or a brain-tissue task made from the real MNI152 template), and to inspect it;
# - to split the cases three ways: training, **selection** (picks the checkpoint) and **held-out test**
#   (scored once, never used for a choice), and why the last two must differ;
# - to train with the paper's recipe and read the curves (loss every epoch, validation Dice every few);
# - what deep supervision trains: the five outputs of the trained network, full to 1/16 resolution;
# - to score held-out cases per class, save predictions as NIfTI in the original geometry, and compare
#   with an intensity-threshold baseline on the same cases;
# - what a real GPU run uses and how long it should take.
#
# Before this lesson: the slice viewer (lesson 02); Dice, patches and sliding-window inference
# (lesson 03). After it, lesson 05 scales the network and lesson 06 grows its kernel with UpKern.
#
# `size` picks the whole experiment: `"ci"` (what the tests run: the synthetic task, 2D, a few
# seconds of training), `"class"` (about 5 minutes on a 2-core laptop: the brain task, 2D) or `"gpu"`
# (Hippocampus, 3D, the real MedNeXt-S; under about 1.6 h on one GPU by the estimate of section 6, not
# yet timed on one). Any parameter set by hand wins.

# %% [parameters]
size = "class"  # "ci": what CI runs; "class": about 5 minutes on a 2-core CPU; "gpu": a real run on one GPU
task = "Task04_Hippocampus"  # the MSD task to download when use_synthetic is False
data_dir = None  # None: $MEDNEXT_DATA or ./data
use_synthetic = None  # True: no download, use the offline task (ci and class sizes)
offline_task = None  # "synthetic" (two shapes of one intensity) or "brain" (MNI152 grey/white matter/other)
variant = "S"  # S, B, M or L: the expansion ratios (and, without model_overrides, widths and depths)
kernel_size = 3
spatial_dims = None  # 2 trains on axial slices, 3 on volumes
epochs = None
iters_per_epoch = None
batch_size = None
patch_size = None  # divisible by 16; Hippocampus volumes are about 35 x 50 x 35 voxels
model_overrides = None  # MedNeXtConfig fields over the preset (base_width, block_counts...); an empty dict: the preset
augment = None
val_every = None  # validate on the selection cases every this many epochs
max_val_cases = None  # selection cases: they pick the best checkpoint
n_predict = None  # held-out test cases: predicted, written as NIfTI and scored once
n_synthetic = None  # labelled cases of the offline task
num_workers = None  # data-loading processes
output_dir = "runs/04_train_msd"
seed = 0
device = "auto"

# %%
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import display
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from mednext_lite import viz
from mednext_lite.checkpoint import model_from_checkpoint
from mednext_lite.data import (
    DownloadError,
    get_transforms,
    load_split,
    load_task,
    make_split,
    make_synthetic_task,
    read_image,
    resolve_data_dir,
    threshold_baseline,
)
from mednext_lite.data.brain import make_brain_task
from mednext_lite.data.commands import summarize_task
from mednext_lite.evaluation import evaluate_folder
from mednext_lite.inference import predict_from_checkpoint, window_size
from mednext_lite.lesson import Lesson, sized
from mednext_lite.losses import deep_supervision_weights
from mednext_lite.metrics import dice_scores
from mednext_lite.train import build_model, train
from mednext_lite.train_config import TrainConfig

p = sized(size, {
    "ci": dict(use_synthetic=True, offline_task="synthetic", spatial_dims=2, patch_size=[48, 48], epochs=5,
               iters_per_epoch=12, batch_size=8, model_overrides={"base_width": 16, "block_counts": 1},
               augment=False, val_every=1, max_val_cases=3, n_predict=2, n_synthetic=12, num_workers=0),
    # The brain task: real anatomy where intensity alone is a strong rule, so beating it means something.
    "class": dict(use_synthetic=True, offline_task="brain", spatial_dims=2, patch_size=[96, 112], epochs=12,
                  iters_per_epoch=25, batch_size=8, model_overrides={"base_width": 16, "block_counts": 1},
                  augment=False, val_every=3, max_val_cases=3, n_predict=5, n_synthetic=24, num_workers=0),
    # The paper's recipe on Hippocampus, its schedule cut to 1/10 (100 x 250 steps): about an hour (estimated).
    "gpu": dict(use_synthetic=False, offline_task="synthetic", spatial_dims=3, patch_size=[48, 64, 48], epochs=100,
                iters_per_epoch=250, batch_size=2, model_overrides={}, augment=True, val_every=10,
                max_val_cases=20, n_predict=32, n_synthetic=60, num_workers=4),
}, use_synthetic=use_synthetic, offline_task=offline_task, spatial_dims=spatial_dims, patch_size=patch_size,
   epochs=epochs, iters_per_epoch=iters_per_epoch, batch_size=batch_size, model_overrides=model_overrides,
   augment=augment, val_every=val_every, max_val_cases=max_val_cases, n_predict=n_predict,
   n_synthetic=n_synthetic, num_workers=num_workers)
print(f"size {size!r}:", p)
lesson = Lesson(output_dir, seed=seed, device=device)
lesson.record(size=size, settings=p)

# %% [markdown]
# ## 1. The data
# The download is checked against its MD5 and resumes when interrupted; a second run finds the task
# already extracted. Without internet (or with `use_synthetic=True`) the notebook writes an offline task
# instead, chosen by `offline_task` (both are introduced in lesson 02 and scored in lesson 03):
# - `"synthetic"`: two structures of the **same** intensity, told apart only by shape and position;
# - `"brain"`: grey matter, white matter and other brain (mostly CSF) on T1 MRI, from the MNI ICBM152
#   2009 template that ships with nilearn ((C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre,
#   Montreal Neurological Institute, McGill University), deformed, re-contrasted, bias-corrupted and
#   noisy per case. Intensity separates these tissues fairly well, except where the bias field moves one
#   into another's range: a network must use the neighbourhood to beat the rule.

# %%
if p["offline_task"] not in ("synthetic", "brain"):
    raise ValueError(f"offline_task={p['offline_task']!r}: use 'synthetic' or 'brain'")
root = resolve_data_dir(data_dir)
synthetic = bool(p["use_synthetic"])
if not synthetic:
    try:
        from mednext_lite.data import download_task

        task_dir = download_task(task, root)
    except (DownloadError, OSError) as err:
        print(f"could not download {task} ({type(err).__name__}: {err}); using the {p['offline_task']} task instead")
        synthetic = True
if synthetic:
    offline_root = root if data_dir else lesson.out / "data"
    if p["offline_task"] == "brain":
        task_dir = make_brain_task(offline_root, n_train=p["n_synthetic"], n_test=2, seed=seed, progress=False)
    else:
        task_dir = make_synthetic_task(offline_root, n_train=p["n_synthetic"], n_test=2, flavour="mri", seed=seed,
                                       progress=False)
    print(f"USING THE OFFLINE TASK {task_dir.name} (use_synthetic={p['use_synthetic']}, "
          f"offline_task={p['offline_task']!r}); its Dice says nothing about {task}")
info = load_task(task_dir)
print(summarize_task(info, max_cases=12))

# %%
image, affine = read_image(info.training[0]["image"])
label, _ = read_image(info.training[0]["label"])
spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
fig = viz.show_slices(image[0] if image.ndim == 4 else image, np.rint(label).astype(int), spacing=spacing,
                      is_ct=info.is_ct, label_names=info.labels, title=f"{info.name}, first training case")
lesson.show(fig, "training_case")
print(f"first training case: image {image.shape}, voxels {spacing} mm")

# %% [markdown]
# ## 2. Three disjoint sets of cases
# The trainer splits the labelled cases into a training fold and a validation fold (a seeded k-fold
# split, `make_split`). We cut the validation fold in two:
# - the first `max_val_cases` cases are the **selection** set: the trainer scores them during training
#   and keeps the checkpoint with the best mean Dice (`best.pt`). Picking the best of many checkpoints
#   on these cases flatters them, so their Dice is optimistic;
# - the next `n_predict` cases are the **held-out test** set: never trained on, never used to choose
#   anything, scored once at the end. That is the number to report.
#
# The number of folds is chosen so the validation fold holds both sets (5 folds when there are
# enough cases, as nnU-Net does; fewer on a small offline task).

# %%
n_cases = len(info.training)
n_folds = max(2, min(5, n_cases // (p["max_val_cases"] + p["n_predict"])))
train_cases, val_fold = make_split(info.training, n_folds=n_folds, fold=0, seed=seed)
select_cases = val_fold[:p["max_val_cases"]]
test_cases = val_fold[p["max_val_cases"]:p["max_val_cases"] + p["n_predict"]]
if not test_cases:
    raise ValueError(f"the validation fold has {len(val_fold)} cases, all used for selection (max_val_cases="
                     f"{p['max_val_cases']}): lower max_val_cases or give the task more cases (n_synthetic)")


def names_of(cases):
    return {c["image"].name for c in cases}


assert not names_of(train_cases) & names_of(val_fold) and not names_of(select_cases) & names_of(test_cases)
print(f"{n_cases} labelled cases, {n_folds} folds: {len(train_cases)} training, {len(select_cases)} selection, "
      f"{len(test_cases)} held-out test ({len(val_fold) - len(select_cases) - len(test_cases)} left unused)")
print("held-out test cases:", sorted(names_of(test_cases)))

# %% [markdown]
# ## 3. Train, with live curves
# `train` runs the paper's recipe: Dice + CE with deep supervision, AdamW (lr 1e-3, eps 1e-4), poly
# decay, gradient clipping at 12. It checkpoints every epoch, so an interrupted run continues with
# `resume=True`; it refuses a run folder that already holds a run unless asked to resume or overwrite,
# which is why `lesson.run_dir("run")` hands it an empty one (re-running this cell starts afresh).
# The curve is redrawn after every epoch: the loss every epoch, the validation Dice (on the selection
# cases, sliding window as in lesson 03) every `val_every` epochs.
#
# The intensity-threshold rule is drawn for scale, fitted and scored on the selection cases themselves:
# the intensity rule with the fewest voxel errors on these cases, flattered by being fitted on them (the
# fair comparison is in section 5; lesson 03 shows a random split of the object can beat it in Dice).

# %%
cfg = TrainConfig(task_dir=str(task_dir), run_dir=str(lesson.run_dir("run")), variant=variant,
                  kernel_size=kernel_size, spatial_dims=p["spatial_dims"], model_overrides=dict(p["model_overrides"]),
                  epochs=p["epochs"], iters_per_epoch=p["iters_per_epoch"], batch_size=p["batch_size"],
                  patch_size=tuple(p["patch_size"])[:p["spatial_dims"]], augment=p["augment"],
                  val_every=p["val_every"], max_val_cases=p["max_val_cases"], n_folds=n_folds, seed=seed,
                  num_workers=p["num_workers"], device=str(lesson.device), progress=False)
n_params = sum(t.numel() for t in build_model(cfg, info.in_channels, info.num_classes).parameters())
real = sum(t.numel() for t in build_model(cfg.replace(model_overrides={}), info.in_channels,
                                          info.num_classes).parameters())
if cfg.model_overrides:  # not the published preset: say what it is
    mc = cfg.model_config(info.in_channels, info.num_classes)
    blocks = sorted(set(mc.block_counts))
    per_stage = (f"{blocks[0]} block{'s' if blocks[0] > 1 else ''}" if len(blocks) == 1
                 else f"{min(blocks)}-{max(blocks)} blocks")
    model_name = (f"a small MedNeXt ({variant} ratios, width {mc.base_width}, {per_stage} per stage, "
                  f"{n_params / 1e6:.2f} M parameters; the real {variant} has {real / 1e6:.2f} M "
                  f"in {cfg.spatial_dims}D)")
    short_name = f"small MedNeXt ({variant} ratios, C={mc.base_width}) k{kernel_size}"
else:
    model_name = f"MedNeXt-{variant} k{kernel_size} ({n_params / 1e6:.2f} M parameters)"
    short_name = f"MedNeXt-{variant} k{kernel_size}"
print(f"network: {cfg.spatial_dims}D {model_name}")
print(json.dumps({k: v for k, v in cfg.to_dict().items() if k not in ("task_dir", "run_dir")}))
base_select = threshold_baseline(info, cases=select_cases)
history = []
handle = display(viz.figure_png(viz.plot_curves({"epoch": [0], "train_loss": [np.nan]})), display_id=True)
LABELS = {"loss": "Dice + CE loss (deep supervision)", "metric": "mean foreground Dice"}


def curve_figure(rows):
    curves = {"epoch": [r["epoch"] for r in rows], "training loss (epoch mean)": [r["train_loss"] for r in rows],
              "selection cases (validation)": [r.get("val_dice_mean", np.nan) for r in rows]}
    return viz.plot_curves(curves, title=f"{short_name} on {info.name}", ylabel=LABELS,
                           baselines={"threshold rule on the same cases": base_select["mean_foreground_dice"]})


def on_epoch_end(row):
    history.append(row)
    handle.update(viz.figure_png(curve_figure(history)))


cpu_start = time.process_time()
result = train(cfg, on_epoch_end=on_epoch_end)
train_cpu_s = time.process_time() - cpu_start
handle.update(viz.figure_png(curve_figure(history)))  # the live figure, final; the saved copy follows
lesson.show(curve_figure(history), "training_curves")
n_validations = sum("val_dice_mean" in r for r in history)
print(f"{len(history)} epochs in {result.seconds:.0f} s wall, {train_cpu_s:.0f} s CPU (with one thread the two agree "
      "on a quiet machine; wall above CPU means other work shared the cores)")
print(f"validated {n_validations} times; best selection Dice "
      f"{result.best_mean_dice:.3f} at epoch {result.best_epoch} -> {result.best_checkpoint.name}")
stored_train, stored_val = load_split(result.run_dir / "split.json")
assert names_of(stored_val[:p["max_val_cases"]]) == names_of(select_cases), "the trainer selected on our cases"
assert not names_of(stored_train) & names_of(test_cases), "the held-out cases were never trained on"
assert n_validations == len(range(cfg.val_every, cfg.epochs + 1, cfg.val_every)) + (cfg.epochs % cfg.val_every > 0)
if len(history) > 1:
    assert history[-1]["train_loss"] < history[0]["train_loss"], "the training loss must go down"

# %% [markdown]
# ## 4. Deep supervision: what the five outputs learned
# With deep supervision the network has a 1x1 head at every decoder level and at the bottleneck, and
# returns five logit maps: full, 1/2, 1/4, 1/8 and 1/16 resolution. Each is scored against the label
# map shrunk to its size (nearest neighbour), and the five losses are mixed with weights proportional
# to 1/2^i, the coarsest set to 0, normalised to sum 1. Below, the selected network (`best.pt`) on one
# held-out slice: the top row is each head's prediction, the bottom row the target it is trained on.

# %%
model = model_from_checkpoint(result.best_checkpoint).to(lesson.device).eval()
assert model.deep_supervision, "the trainer builds the network with deep supervision"
case = test_cases[0]
tf = get_transforms(info, mode="val", patch_size=window_size(cfg.patch_size, cfg.spatial_dims, 3),
                    spacing=cfg.spacing)
sample = tf({"image": case["image"], "label": case["label"]})
img = torch.tensor(np.asarray(sample["image"]), dtype=torch.float32)  # [C, x, y, z], normalised as in training
lbl = torch.tensor(np.asarray(sample["label"]), dtype=torch.float32)  # [1, x, y, z]
voxel_mm = [float(s) for s in np.linalg.norm(np.asarray(sample["image"].affine)[:3, :3], axis=0)]
z = int((lbl[0] > 0).sum(dim=(0, 1)).argmax())  # the axial slice with the most foreground
x, y = (img[..., z], lbl[..., z]) if cfg.spatial_dims == 2 else (img, lbl)
pads = [v for s in reversed(x.shape[1:]) for v in (0, (-s) % 16)]  # each axis halves 4 times: pad to x16
x, y = F.pad(x, pads), F.pad(y, pads)
with torch.no_grad():
    outputs = model(x[None].to(lesson.device))
weights = deep_supervision_weights(len(outputs))
assert len(outputs) == 5 and all(o.shape[2:] == tuple(s // 2**i for s in x.shape[1:]) for i, o in enumerate(outputs))
scale_names = ["full", "1/2", "1/4", "1/8", "1/16"]
cmap = viz.label_colormap(info.num_classes - 1)  # label c gets entry c - 1, the slice viewer's colours
fig = Figure(figsize=(3.0 * len(outputs), 6.4), layout="constrained")
axes = fig.subplots(2, len(outputs), squeeze=False)
width_mm, height_mm = x.shape[1] * voxel_mm[0], x.shape[2] * voxel_mm[1]
extent = (0, width_mm, 0, height_mm)
shown = x[0] if cfg.spatial_dims == 2 else x[0, :, :, z]
per_head = []
for i, out in enumerate(outputs):
    pred = out.argmax(1, keepdim=True).cpu()
    target = F.interpolate(y[None], size=out.shape[2:], mode="nearest")  # what the loss compares it with
    per_head.append(float(dice_scores(pred, target, info.num_classes).mean()))
    for row, lab, kind in ((0, pred, "prediction"), (1, target, "target")):
        lab2d = lab[0, 0] if cfg.spatial_dims == 2 else lab[0, 0, :, :, min(z // 2**i, lab.shape[-1] - 1)]
        ax = axes[row, i]
        ax.imshow(shown.T, cmap="gray", origin="lower", extent=extent, interpolation="nearest")
        ax.imshow(np.ma.masked_equal(lab2d.numpy().astype(int).T, 0), cmap=cmap, vmin=0.5, vmax=info.num_classes - 0.5,
                  alpha=0.55, origin="lower", extent=extent, interpolation="nearest")
        ax.set_xlabel("x (mm)")
        ax.set_ylabel("y (mm)")
        size_txt = "x".join(map(str, out.shape[2:]))
        ax.set_title(f"{scale_names[i]} ({size_txt}) {kind}\nloss weight {weights[i]:.3f}"
                     + (f", Dice {per_head[i]:.2f}" if row == 0 else ""), fontsize=9)
fig.legend(handles=[Patch(color=cmap(c - 1), label=f"{c}: {info.labels[c]}") for c in sorted(info.labels) if c],
           loc="outside lower center", ncols=info.num_classes - 1, fontsize=9)
fig.suptitle(f"Deep supervision: the five outputs of the selected network on {case['image'].name} "
             f"(axial slice {z} of the cropped, normalised volume the network reads)")
lesson.show(fig, "deep_supervision")
for name, w, d in zip(scale_names, weights, per_head):
    print(f"{name:>5}: loss weight {w:.3f}, mean foreground Dice against its own target {d:.3f}")
assert abs(sum(weights) - 1) < 1e-9 and weights[-1] == 0.0
assert all(a == 2 * b for a, b in zip(weights[:3], weights[1:4])), "each finer head weighs twice the next"
lesson.record(deep_supervision={n: {"weight": w, "dice": d} for n, w, d in zip(scale_names, weights, per_head)})

# %% [markdown]
# The coarse heads see the same anatomy through fewer, larger voxels: they are pushed to get the layout
# right early in training (gradients reach the deep layers directly), while the full-resolution head,
# which carries the largest weight and is the only one used at inference, refines the boundaries. The
# 1/16 head has weight 0: it is computed (so every head takes part in the graph) but gets no gradient,
# so its map is what the untrained head makes of the bottleneck, not a learned prediction. The targets
# are shrunk by nearest neighbour, one voxel standing for each block, so at 1/8 and 1/16 a thin
# structure can vanish from its own target: one more reason the coarse heads weigh little.

# %% [markdown]
# ## 5. Predict the held-out cases, save as NIfTI, score per class
# The selected checkpoint segments the held-out test cases with a sliding window (lesson 03); each
# prediction is mapped back to its image's original geometry and written as `.nii.gz`, then compared
# with the reference labels file by file. `predict_from_checkpoint` refuses to replace files that
# already exist unless `overwrite=True`: the lesson's output folder persists between runs, so a second
# run would otherwise stop here (on your own data, keep the refusal and pick a new folder).
#
# The baseline gets the **same** held-out cases. It is fitted on those very cases and scored on them,
# which flatters it. It is the intensity rule with the fewest voxel errors, not the best possible Dice of
# an intensity rule (lesson 03: on the comma task a random head/tail split scores about 0.50).

# %%
pred_dir = lesson.out / "predictions"
written = predict_from_checkpoint(result.best_checkpoint, [c["image"] for c in test_cases], pred_dir,
                                  task_dir=task_dir, overwrite=True, progress=False)
names = [info.labels[c] for c in sorted(info.labels) if c != 0]
scores = evaluate_folder(pred_dir, [c["label"] for c in test_cases], info.num_classes, class_names=names,
                         out_json=lesson.out / "held_out_dice.json")
base_test = threshold_baseline(info, cases=test_cases)
base_dice = {info.labels[c]: d for c, d in base_test["dice"].items() if c != 0}
print(f"{len(written)} predictions written to {pred_dir}")
W = 36  # width of the first column


def table_row(first, values):
    return f"{first:<{W}}" + "".join(f"{v:>14.3f}" if isinstance(v, float) else f"{v:>14}" for v in values)


print(table_row("Dice per held-out case", names))
for row in scores["cases"]:
    print(table_row(row["case"], [float(row["dice_" + n]) for n in names]))
print()
print(table_row(f"Dice, mean of {len(test_cases)} held-out cases", names + ["mean"]))
print(table_row("network (selected on other cases)", [float(scores["dice"][n]) for n in names]
                + [float(scores["mean_dice"])]))
print(table_row("threshold rule (fitted on these)", [float(base_dice[n]) for n in names]
                + [float(base_test["mean_foreground_dice"])]))
print(f"\nfor comparison, the selection Dice of the same checkpoint: {result.best_mean_dice:.3f} "
      f"(on the {len(select_cases)} cases that chose it)")
for path in written:
    source = next(c for c in test_cases if c["image"].name == path.name)
    assert np.allclose(read_image(path)[1], read_image(source["image"])[1]), "predictions keep the image's geometry"
assert scores["mean_dice"] > base_test["mean_foreground_dice"], "the network must beat the intensity rule"
lesson.record(task=info.name, synthetic=synthetic, offline_task=p["offline_task"] if synthetic else None,
              network=model_name, parameters=n_params, n_train=len(train_cases), n_selection=len(select_cases),
              n_test=len(test_cases), selection_dice=result.best_mean_dice, best_epoch=result.best_epoch,
              test_dice=scores["dice"], test_mean_dice=scores["mean_dice"], baseline_test_dice=base_dice,
              baseline_test_mean_dice=base_test["mean_foreground_dice"], train_seconds=result.seconds,
              train_cpu_seconds=train_cpu_s,
              predictions=[str(p) for p in written])

# %% [markdown]
# Why the network wins: it sees each voxel's neighbourhood. On the synthetic task the two structures
# have equal intensity and only shape and position tell them apart, so the rule cannot separate them at
# all; on the brain a smooth bias field makes grey matter in a bright region look like white matter in a
# dark one, which the rule cannot undo and the network can. What one run of this size cannot show: how
# much of the margin would survive another seed or another split (a handful of held-out cases, one
# seed), nor anything about the task we did not train on. Look at a prediction (contours: solid truth,
# dashed prediction):

# %%
image, case_affine = read_image(case["image"])
truth, _ = read_image(case["label"])
pred, _ = read_image(pred_dir / case["image"].name)
case_spacing = tuple(float(s) for s in np.linalg.norm(case_affine[:3, :3], axis=0))
viewer = viz.SliceViewer(image[0] if image.ndim == 4 else image, np.rint(truth).astype(int),
                         np.rint(pred).astype(int), spacing=case_spacing, is_ct=info.is_ct,
                         label_names=info.labels, mode="contours", title=f"{case['image'].name} (held out): truth vs prediction")
fig = viewer.static_figure()
lesson.show(fig, "prediction")
shown_row = next(r for r in scores["cases"] if r["case"] == case["image"].name)
print(f"{case['image'].name}: " + ", ".join(f"{n} Dice {shown_row['dice_' + n]:.3f}" for n in names))

# %% [markdown]
# ## 6. A real run on a GPU
# The paper trains 1000 epochs x 250 iterations (250,000 steps) of batch 2 at 128^3 (or the task's
# median shape, rounded to a multiple of 16) with deep supervision, in mixed precision. For
# Hippocampus a 48 x 64 x 48 patch covers a whole volume. `size="gpu"` runs that recipe with the real
# MedNeXt-S on Hippocampus, its schedule cut to 100 x 250 steps to fit about an hour on one GPU: a
# size chosen from the estimate below, not from a timed run.
#
# How long? The step time was measured on one H100 for MedNeXt-S at 128^3, batch 1
# (benchmarks/results/gpu_h100_2026-11-27.md: 120.5 ms at k3, 336.7 ms at k5, fp32; bf16 the same).
# It was **not** measured at 48 x 64 x 48, so the estimate below scales it by the voxels in a batch
# (convolution work is proportional to them). That is a lower bound: a small patch keeps a large GPU
# less busy, and data loading and validation are not counted. For an upper bound the same file has a
# whole training run at 64^3, batch 2: 120 steps in 27 s including start-up and validation.

# %%
H100_STEP_S = {3: 0.1205, 5: 0.3367}  # MedNeXt-S, one 1x1x128^3 sample, fp32 (bf16 alike)
UPPER_S_PER_STEP = 27 / 120  # whole run at 64^3 x 2 including start-up and validation: at most this per step
hippo_patch = (48, 64, 48)
full = TrainConfig(task_dir=str(root / task), variant=variant, kernel_size=kernel_size, spatial_dims=3,
                   patch_size=hippo_patch)
settings = {k: v for k, v in full.to_dict().items() if k in (
    "variant", "kernel_size", "epochs", "iters_per_epoch", "batch_size", "patch_size", "lr", "eps", "weight_decay",
    "poly_exponent", "grad_clip", "amp", "deep_supervision")}
print("the paper's recipe for Hippocampus:", json.dumps(settings))
assert full.epochs * full.iters_per_epoch == 250_000 and full.lr == 1e-3 and full.eps == 1e-4
if variant == "S" and kernel_size in H100_STEP_S:
    ratio = full.batch_size * math.prod(hippo_patch) / 128**3
    step_s = H100_STEP_S[kernel_size] * ratio
    print(f"one step of batch {full.batch_size} x {'x'.join(map(str, hippo_patch))} holds {ratio:.3f} x the voxels "
          f"of one 128^3 sample: about {1000 * step_s:.0f} ms of H100 compute (scaled, not measured)")
    gpu_steps = 100 * 250
    for label, steps in (("the paper's 250,000 steps", 250_000), (f"size='gpu', {gpu_steps:,} steps", gpu_steps)):
        low, high = steps * step_s / 3600, steps * UPPER_S_PER_STEP / 3600
        print(f"{label}: at least {low:.1f} h (compute, scaled), at most about {high:.1f} h (the measured "
              "whole-run rate at a similar patch); data loading decides where in between")
    big = 250_000 * full.batch_size * H100_STEP_S[kernel_size] / 3600
    print(f"for scale, at 128^3 (a large task) the 250,000 steps are about {big:.0f} h of H100 compute for "
          f"MedNeXt-S k{kernel_size} (batch 2 = twice the measured step)")
print("The nnU-Net Revisited study reports about 68 h (MedNeXt-L k3) and 233 h (L k5) on one A100 for the full "
      "schedule on large datasets.")
lesson.record(kernel_cpu_seconds=time.process_time())  # the whole lesson so far, for the timing table
print(f"command line (paper's schedule): mednext-lite train --task {task} --variant {variant} --kernel {kernel_size} "
      f"--patch {' '.join(map(str, hippo_patch))} --epochs {full.epochs} --iters {full.iters_per_epoch}")

# %% [markdown]
# ## Try this
# 1. Train 2D (`spatial_dims=2`) and 3D with the same budget: which wins on Hippocampus, and which is faster?
# 2. Train `kernel_size=5` with `upkern_from=` a k3 checkpoint (lesson 06) and compare on the held-out cases.
# 3. Open a prediction in the slice viewer (lesson 02) and find the slice with the worst error.
# 4. Set `max_val_cases` to cover the whole validation fold and score those same cases: how much higher is
#    the Dice of the cases that chose the checkpoint than that of held-out cases?
# 5. Switch `augment` on: does the held-out Dice change at this budget, or only the gap between the
#    training loss and the validation Dice?
# 6. Run `size="ci"` (the synthetic task): why does the threshold rule fail on one of the two structures?
# 7. Try `task="Task09_Spleen"` with `use_synthetic=False` (1.5 GB, CT): which window shows the spleen best?
