# %% [markdown]
# # 02 · The data and the slice viewer: looking at volumes the way radiologists do
#
# **What you will learn**
# - the three tasks the later lessons train on, and what each is for: a **brain MRI** task built from
#   real anatomy (the MNI152 template that ships with nilearn), the synthetic **"comma"** task (two
#   labels that no intensity rule can tell apart), and a synthetic **CT** in Hounsfield units;
# - how a 3D volume becomes axial, coronal and sagittal slices, and why the voxel spacing sets the
#   aspect ratio of what you see;
# - CT windows in Hounsfield units (and what a phantom without bone or air can and cannot show), and
#   percentile windows for MRI;
# - how to compare a ground truth and a prediction: side by side, or as contours on one image (here the
#   "prediction" is a deliberately damaged copy of the label; lesson 04 shows a trained network's).
#
# In Jupyter or Colab the viewer has sliders and buttons. When no widget front end exists
# (papermill, CI, a static HTML export) the same views are drawn as static figures, by the same code.
# Sizes: `size="ci"` and `"class"` both run in well under 5 minutes on a 2-core CPU (class uses a finer
# brain and more synthetic cases); `"gpu"` is the 1 mm brain (nothing here needs a GPU).

# %% [parameters]
size = "class"  # "ci": what CI runs; "class": about a minute on a 2-core CPU; "gpu": finest brain
task_dir = None  # an MSD task folder (e.g. "data/Task09_Spleen"); None: the brain task + the synthetic tasks
brain_spacing = None  # mm, voxel size of the brain task (None: the size's value, 1.5 at class size)
brain_cases = None  # brain cases written (None: the size's value)
comma_cases = None  # synthetic comma cases pooled for the intensity statistics (None: the size's value)
case = 0  # which training case to show
interactive = None  # None: widgets when a front end exists, static figures otherwise
output_dir = "runs/02_slice_viewer"
seed = 0
device = "auto"

# %%
import numpy as np
from matplotlib.figure import Figure

from mednext_lite import viz
from mednext_lite.data import load_task, make_synthetic_task, read_image
from mednext_lite.data.baseline import threshold_baseline
from mednext_lite.data.brain import make_brain_task
from mednext_lite.lesson import Lesson, sized

p = sized(size, {
    "ci": dict(brain_spacing=2.0, brain_cases=1, comma_cases=2),
    "class": dict(brain_spacing=1.5, brain_cases=2, comma_cases=4),
    "gpu": dict(brain_spacing=1.0, brain_cases=2, comma_cases=8),
}, brain_spacing=brain_spacing, brain_cases=brain_cases, comma_cases=comma_cases)
lesson = Lesson(output_dir, seed=seed, device=device)
print(f"size {size!r}: {p}")
lesson.record(size=size, **p)


def load_case(task, index=0):
    """(image, label, spacing in mm) of one training case; the first modality of a multi-modal task."""
    image, affine = read_image(task.training[index]["image"])
    label, _ = read_image(task.training[index]["label"])
    image = image[0] if image.ndim == 4 else image
    return image, np.rint(label).astype(np.int64), tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))

# %% [markdown]
# ## 1. The brain task: real anatomy
# A task folder in MSD layout gives us an image, a label map and an affine. The affine's column
# lengths are the voxel spacing in millimetres: the brain task's voxels are `brain_spacing` mm cubes,
# real CT is often 0.8 x 0.8 x 5 mm.
#
# The brain is real anatomy: the MNI ICBM152 2009 T1 template (an average of 152 adult brains,
# (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill
# University; shipped inside nilearn, so nothing is downloaded), deformed, re-contrasted, given a bias
# field and made noisy per case, with grey matter, white matter and "other brain" (mostly CSF) labelled
# from the template's tissue probability maps. Lesson 04 trains on it at class size (`offline_task="brain"`).

# %%
if task_dir is None:
    try:
        task_dir = make_brain_task(lesson.out / "data", n_train=max(p["brain_cases"], case + 1), n_test=0,
                                   spacing=p["brain_spacing"], progress=False)
    except ImportError as err:  # nilearn missing: say so, and fall back to the synthetic MRI task
        print(f"{err}\nusing the synthetic MRI task instead of the brain")
        task_dir = make_synthetic_task(lesson.out / "data", n_train=case + 1, n_test=0, flavour="mri",
                                       progress=False)
info = load_task(task_dir)
image, label, spacing = load_case(info, case)
print(f"{info.name}: image {image.shape} {image.dtype}, spacing {spacing} mm, labels {info.labels}, CT: {info.is_ct}")
print(f"intensity range [{image.min():.1f}, {image.max():.1f}]" + (" HU" if info.is_ct else " (arbitrary MRI units)"))
brain = info.name == "MNIBrainTissue"
if brain:
    # T1 weighting: fat-rich white matter is bright, grey matter darker, CSF darkest. The labels came from
    # the template's tissue maps, not from these intensities, so this checks that image and labels align.
    means = {info.labels[c]: float(image[label == c].mean()) for c in (1, 2, 3)}
    print("mean intensity per tissue:", {k: round(v, 1) for k, v in means.items()})
    assert means["white matter"] > means["grey matter"] > means["other brain"], "T1: WM > GM > CSF"
    fractions = {info.labels[c]: float((label == c).sum() / (label > 0).sum()) for c in (1, 2, 3)}
    print("share of the brain:", {k: f"{v:.0%}" for k, v in fractions.items()})
    assert 0.4 < fractions["grey matter"] < 0.7 and 0.2 < fractions["white matter"] < 0.5
    lesson.record(tissue_means=means, tissue_fractions=fractions)

# %% [markdown]
# ## 2. The viewer
# Move the slider, change the plane, the window and the opacity. Without a front end you see the
# static figure: every plane at the slice with the most foreground, ground truth only (section 6
# compares it with a prediction).

# %%
# A stand-in prediction for sections 2 and 6 (explained there): the label shifted by 2 voxels, and in one
# half of the volume the second structure (white matter for the brain) relabelled as the first.
prediction = np.roll(label, 2, axis=0)
slab = np.zeros_like(prediction, dtype=bool)
slab[:, :, : image.shape[2] // 2] = True
prediction[(prediction == 2) & slab] = 1
viewer = viz.SliceViewer(image, label, prediction, spacing=spacing, is_ct=info.is_ct, label_names=info.labels,
                         title=f"{info.name}, ground truth", mode="overlay")
shown = viewer.show(interactive)

# %% [markdown]
# **Check what is drawn.** The viewer's claims are testable: the grey image in the first panel *is*
# the slice of the array, transposed so that x runs left to right and y (or z) bottom to top, and its
# extent is the field of view in millimetres.

# %%
viewer.update(plane="coronal", index=image.shape[1] // 2)
drawn = viewer.axes[0].images[0]
expected = image[:, image.shape[1] // 2, :].T
assert np.array_equal(drawn.get_array(), expected), "the coronal panel must show image[:, j, :].T"
x_mm, z_mm = image.shape[0] * spacing[0], image.shape[2] * spacing[2]
assert tuple(drawn.get_extent()) == (0.0, x_mm, 0.0, z_mm)
print(f"coronal slice {viewer.index}: {expected.shape[1]} x {expected.shape[0]} voxels = {x_mm:.1f} x {z_mm:.1f} mm")

# %% [markdown]
# ## 3. The synthetic "comma" task: only shape and position separate its labels
# The default task of lessons 03, 05 and 06 (and of `make demo` and the tests) is synthetic: it needs no
# download and every case is reproducible from a seed. Each case is a "comma" inside a body of soft
# tissue: a rounded **head** (label 1) joined to a thinner, tapered, bent **tail** (label 2), like the
# anterior and posterior hippocampus. Head and tail are drawn from **one** intensity distribution, so
# no intensity rule can tell them apart: only shape (round and thick vs thin and tapered) and position
# (the tail leaves the head on one side) can. Noise, a smooth bias field, a random gain and a random
# pose (rotation up to 25 degrees, shift, scale 0.9 to 1.1) make it more than a lookup.
#
# We check that claim on `comma_cases` cases: the intensity histograms of head and tail, and the
# best intensity-to-label rule fitted on these very cases (`threshold_baseline`: intensity bins, each
# given the label most of its voxels carry). As the control, one crude cue of *shape and position*:
# each voxel's distance (mm) from the object's deepest voxel, the point farthest from its edge, which
# lies in the thick head.

# %%
from scipy import ndimage

comma_dir = make_synthetic_task(lesson.out / "data", n_train=p["comma_cases"], n_test=0, flavour="mri",
                                progress=False)
comma = load_task(comma_dir)
values, from_core = {1: [], 2: []}, {1: [], 2: []}
for i in range(len(comma.training)):
    img, lab, sp = load_case(comma, i)
    depth = ndimage.distance_transform_edt(lab > 0, sampling=sp)  # mm to the nearest voxel outside the object
    core = np.array(np.unravel_index(np.argmax(depth), lab.shape))
    grid = np.indices(lab.shape).transpose(1, 2, 3, 0)
    dist = np.linalg.norm((grid - core) * np.asarray(sp), axis=-1)  # mm from the deepest voxel
    for c in (1, 2):
        values[c].append(img[lab == c])
        from_core[c].append(dist[lab == c])
values = {c: np.concatenate(v) for c, v in values.items()}
from_core = {c: np.concatenate(v) for c, v in from_core.items()}


def overlap(a, b, bins=40):
    """Shared area of two normalised histograms: 1 = identical distributions, 0 = disjoint."""
    edges = np.histogram_bin_edges(np.concatenate([a, b]), bins)
    return float(np.minimum(np.histogram(a, edges)[0] / a.size, np.histogram(b, edges)[0] / b.size).sum())


shared = {"intensity": overlap(values[1], values[2]), "distance from the deepest voxel": overlap(from_core[1], from_core[2])}
rule = threshold_baseline(comma)
rule_says = {comma.labels[c]: rule["bin_labels"].count(c) for c in (0, 1, 2)}
for c in (1, 2):
    print(f"{comma.labels[c]:>5}: {values[c].size:6d} voxels, intensity {values[c].mean():6.1f} +- "
          f"{values[c].std():4.1f}, distance from the deepest voxel {from_core[c].mean():5.1f} mm")
print("histogram overlap head vs tail: " + ", ".join(f"{k} {v:.0%}" for k, v in shared.items()))
print(f"the best intensity rule's {len(rule['bin_labels'])} bins say: {rule_says} "
      f"(fitted and applied on the same {rule['n_cases']} cases)")
assert shared["intensity"] > 0.6, "head and tail intensities overlap (one distribution, shifted by smooth fields)"
assert rule_says["tail"] == 0, "no intensity bin is mostly tail: an intensity rule never predicts the tail"
assert shared["distance from the deepest voxel"] < min(0.3, shared["intensity"]), "shape and position separate them"
lesson.record(comma_overlap=shared, intensity_rule_bins=rule_says)

img0, lab0, sp0 = load_case(comma, 0)
fig = viz.show_slices(img0, lab0, spacing=sp0, label_names=comma.labels, alpha=0.5,
                      title=f"{comma.name}, case 0: head (1) and tail (2) of the comma")
lesson.show(fig, "comma_case")
fig = Figure(figsize=(10, 3.8), layout="constrained")
for ax, (name, data, unit) in zip(fig.subplots(1, 2), (("intensity", values, "arbitrary MRI units"),
                                                       ("distance from the deepest voxel", from_core, "mm"))):
    edges = np.histogram_bin_edges(np.concatenate([data[1], data[2]]), 40)
    for c in (1, 2):
        ax.hist(data[c], edges, density=True, alpha=0.55, color=viz.label_colormap(2)(c - 1), label=comma.labels[c])
    ax.set_xlabel(f"{name} ({unit})")
    ax.set_ylabel(f"density (fraction of the label's voxels per {unit.split()[-1] if unit == 'mm' else 'unit'})")
    ax.set_title(f"{name}: head/tail histograms overlap {shared[name]:.0%}", fontsize=10)
    ax.legend()
fig.suptitle(f"{comma.name}, {len(comma.training)} cases: intensity cannot split head from tail, "
             "shape and position can")
lesson.show(fig, "comma_intensity_vs_shape");

# %% [markdown]
# Intensity finds the object (it is brighter than the body) but not the split: the fitted rule gives
# no intensity bin to the tail at all, and the two histograms overlap (they are not identical: smooth
# texture and bias fields shift the head and the tail of one case differently). The distance from the
# object's deepest point, a cue that needs the object's shape, splits them almost cleanly. A network
# must learn cues of this kind from neighbourhoods of voxels. Lesson 03 scores the intensity rule with
# Dice: the number a network must beat.
#
# ## 4. Aspect ratio comes from the spacing
# Many clinical scans have thick slices. Keep every third axial slice of our volume and you have one:
# 3 x `brain_spacing` mm between slices. Drawn in voxels (spacing ignored) it looks squashed three
# times; the viewer draws in millimetres, so the head keeps its shape (only coarser).

# %%
thick, thick_label = image[:, :, ::3], label[:, :, ::3]
thick_spacing = (spacing[0], spacing[1], 3 * spacing[2])
fig = Figure(figsize=(9, 4), layout="constrained")
axes = fig.subplots(1, 2)
for ax, sp, unit in ((axes[0], (1.0, 1.0, 1.0), "voxels"), (axes[1], thick_spacing, "mm")):
    v = viz.SliceViewer(thick, thick_label, spacing=sp, is_ct=info.is_ct, label_names=info.labels, plane="coronal")
    v.draw_on([ax])
    ax.set_xlabel(f"x ({unit})")
    ax.set_ylabel(f"z ({unit})")
    ax.set_title("coronal, drawn in voxels (spacing ignored)" if unit == "voxels"
                 else "coronal, drawn in mm (true spacing)", fontsize=10)
fig.suptitle(f"{info.name}, every third slice: {thick_spacing[0]:g} x {thick_spacing[1]:g} x "
             f"{thick_spacing[2]:g} mm voxels")
lesson.show(fig, "aspect_ratio")
ratio = viz.slice_aspect(thick_spacing, "coronal")
assert ratio == 3 * spacing[2] / spacing[0]
height_mm = v.axes[0].images[0].get_extent()[3]
assert abs(height_mm - thick.shape[2] * thick_spacing[2]) < 1e-9, "the mm view is as tall as the field of view"
assert axes[0].get_xlabel() == "x (voxels)" and axes[1].get_ylabel() == "z (mm)"
print(f"one coronal pixel is {ratio:.2f} times taller than wide; the field of view stays {height_mm:.0f} mm tall")

# %% [markdown]
# ## 5. Windows
# A screen shows ~256 grey levels, CT spans about 4000 HU. A **window** (level L, width W) maps
# [L - W/2, L + W/2] to black..white and clips the rest. Soft tissue (L 40, W 400) separates organs;
# bone (L 400, W 1800) is made for the skeleton (cortical bone is several hundred to ~1900 HU); lung
# (L -600, W 1500) for air-filled lung tissue (about -900 to -500 HU).
#
# The CT windows are shown on the synthetic CT task (or on your task when `task_dir` is a CT). That
# phantom is honest about what it is: air outside an ellipsoid body of soft tissue (~40 HU) holding a
# denser comma (~140 HU), and **nothing else: no bone, no lung, no fat**. So we first count which HU
# ranges it contains, then show the soft-tissue window and, as a control, the wide bone window on the
# same slice: it spends its grey levels on HU values that are not there. What the bone and lung windows
# are for needs a real CT: lesson 04 can download `Task09_Spleen` (abdominal CT; then set `task_dir`).

# %%
TISSUE_HU = {"air": (-1100, -950), "lung": (-950, -500), "fat": (-150, -50), "soft tissue": (-50, 100),
             "dense soft tissue": (100, 300), "bone": (300, 3100)}  # typical ranges, rounded (illustrative)


def window_panel(ax, img, window, is_ct, sp, note=""):
    v = viz.SliceViewer(img, spacing=sp, is_ct=is_ct, window=window, plane="axial", index=img.shape[2] // 2)
    v.draw_on([ax])
    lo, hi = v.limits
    unit = "HU" if is_ct else "a.u."
    ax.set_title(f"{window} window: [{lo:.0f}, {hi:.0f}] {unit}{note}", fontsize=9)
    return lo, hi


ct_task = info if info.is_ct else load_task(make_synthetic_task(lesson.out / "data", n_train=1, n_test=0,
                                                                flavour="ct", progress=False))
ct_image, ct_label, ct_spacing = load_case(ct_task, 0)
hu = ct_image.astype(float).ravel()
contains = {t: float(((hu >= lo) & (hu < hi)).mean()) for t, (lo, hi) in TISSUE_HU.items()}
print(f"{ct_task.name}: HU range [{hu.min():.0f}, {hu.max():.0f}]; share of voxels per typical tissue range:")
print("  " + ", ".join(f"{t} {f:.1%}" for t, f in contains.items()))
has = {t: f > 0.001 for t, f in contains.items()}
shown_windows = ["soft tissue", "bone"] + (["lung"] if has["lung"] else [])
notes = {"soft tissue": "", "bone": "" if has["bone"] else "\n(no bone in this volume)",
         "lung": ""}

fig = Figure(figsize=(4.0 * len(shown_windows) + 7, 4.6), layout="constrained")
grid = fig.add_gridspec(2, len(shown_windows) + 1, height_ratios=[3, 1], width_ratios=[1.9] + [1] * len(shown_windows))
ax_hist = fig.add_subplot(grid[0, 0])
ax_bars = fig.add_subplot(grid[1, 0], sharex=ax_hist)
ax_win = [fig.add_subplot(grid[:, j + 1]) for j in range(len(shown_windows))]
hu_top = max(1400.0, hu.max() + 50)
ax_hist.hist(hu, bins=np.arange(-1100, hu_top + 25, 25), color="k", log=True, label="voxels of this volume")
for i, (t, (lo, hi)) in enumerate(TISSUE_HU.items()):
    ax_hist.axvspan(lo, hi, color=("tab:blue", "tab:cyan", "gold", "tab:pink", "tab:red", "tab:brown")[i], alpha=0.2,
                    label=f"{t} [{lo}, {hi}]: {contains[t]:.1%}")
ax_hist.set_ylabel("voxels per 25 HU (log)")
ax_hist.set_title("what the volume contains; shaded: typical tissue ranges (illustrative)", fontsize=9)
ax_hist.legend(fontsize=7, loc="upper right", title="HU range: share of voxels", title_fontsize=7)
ax_hist.tick_params(labelbottom=False)
limits = {}
for w, ax in zip(shown_windows, ax_win):
    limits[w] = window_panel(ax, ct_image, w, True, ct_spacing, notes[w])
for i, w in enumerate(("soft tissue", "bone", "lung")):
    lo, hi = viz.ct_window(*viz.CT_WINDOWS[w])
    ax_bars.barh(i, hi - lo, left=lo, height=0.6, color="navy" if w in shown_windows else "grey", alpha=0.7)
    text = f"{w} [{lo:.0f}, {hi:.0f}]" + ("" if w in shown_windows else ": not drawn, no lung tissue here")
    if lo > -700:  # room on the left of the bar
        ax_bars.text(lo - 15, i, text, ha="right", va="center", fontsize=7)
    else:
        ax_bars.text(-1090, i, text, va="center", fontsize=7, color="white")
ax_bars.set_yticks([])
ax_bars.set_ylim(-0.5, 2.5)
ax_bars.set_xlim(-1100, hu_top)
ax_bars.set_xlabel("Hounsfield units (HU)")
ax_bars.set_ylabel("windows")
fig.suptitle(f"{ct_task.name}: HU histogram and one axial slice per window")
lesson.show(fig, "windows")  # the README shows this figure (mednext_lite/demo.py)

inside = ct_image[ct_label > 0].astype(float)
spread = {}
for w, (lo, hi) in limits.items():
    grey = np.clip((inside - lo) / (hi - lo), 0, 1)
    spread[w] = float(grey.std() * 255)
    print(f"{w:>12} window [{lo:6.0f}, {hi:6.0f}] HU: the labelled structure's grey levels spread {spread[w]:5.1f} "
          "(std on the 0..255 screen scale)")
assert limits["soft tissue"] == (-160.0, 240.0)
assert spread["soft tissue"] > spread["bone"], "soft-tissue window must show more contrast inside the organ"
if ct_task.name == "SyntheticCT":
    assert not has["bone"] and not has["lung"] and not has["fat"], "the phantom holds only air and soft tissue"
lesson.record(ct_task=ct_task.name, ct_hu_shares=contains, ct_contrast=spread)

# %% [markdown]
# MRI has no absolute unit, so its windows are percentiles of the whole volume. A few very bright
# voxels (fat, flow artefacts) waste the grey scale when the window is the full range; a percentile
# window ignores them. Here on the brain, with some bright outliers added.

# %%
if not info.is_ct:
    mri = image.astype(np.float32).copy()
    mri.flat[:: 997] *= 3.0  # a sprinkle of bright outliers, as MRI often has
    mri_windows = ["full range", "1-99 %"]
    fig = Figure(figsize=(8, 4), layout="constrained")
    mri_limits = {w: window_panel(ax, mri, w, False, spacing) for ax, w in zip(fig.subplots(1, 2), mri_windows)}
    fig.suptitle(f"{info.name}, MRI with bright outliers: full range vs percentile window")
    lesson.show(fig, "mri_windows")
    width = {w: hi - lo for w, (lo, hi) in mri_limits.items()}
    assert width["1-99 %"] < 0.6 * width["full range"], "outliers should stretch the full-range window"
    print("window widths (a.u.):", {w: round(v, 1) for w, v in width.items()})

# %% [markdown]
# ## 6. Ground truth vs a prediction
# We have no trained network in this lesson, so the "prediction" shown is **a damaged copy of the label,
# not a network's output**, with two typical mistakes: everything shifted by 2 voxels along x, and in the
# lower half of the volume (along z) the second structure (white matter for the brain) labelled as the
# first (grey matter). Lesson 04 trains a network and puts its real prediction into this same viewer.
#
# Side by side is easy to read for large errors; contours on one image show boundary errors of a
# voxel or two.

# %%
changed = float((prediction != label).mean())
print("voxels per label, truth:", np.bincount(label.ravel()), " perturbed label:", np.bincount(prediction.ravel()))
print(f"{changed:.1%} of all voxels differ between the label and its perturbed copy")
assert 0 < changed < 0.5
for mode in ("side by side", "contours"):
    fig = viz.show_slices(image, label, prediction, spacing=spacing, is_ct=info.is_ct, label_names=info.labels,
                          mode=mode, title=f"{info.name}, {mode}\n'prediction' here = the label shifted 2 voxels, "
                                           "half relabelled (not a network)")
    for ax in fig.axes:
        ax.set_title(ax.get_title().replace("prediction", "perturbed label"), fontsize=10)
    lesson.show(fig, f"compare_{mode.replace(' ', '_')}")
viewer.update(plane="axial", index=None, mode="contours")
assert len(viewer.axes) == 1 and len(viewer.axes[0].collections) >= 2, "contours: one line set per label and source"
viewer.update(mode="side by side", alpha=0.7)
assert len(viewer.axes) == 2 and viewer.axes[1].images[1].get_alpha() == 0.7
lesson.record(case=str(info.training[case]["image"].name), task=info.name, spacing=spacing, is_ct=info.is_ct,
              real_anatomy=brain, perturbed_fraction=changed)

# %% [markdown]
# ## Try this
# 1. Switch to the sagittal plane and find the slice where the shifted "prediction" hurts most.
# 2. Set the opacity to 0 and to 1: which is better for judging the boundary?
# 3. Pass `window=(-50, 150)` to `SliceViewer` on the CT (`ct_image`, `is_ct=True`): a narrow custom window.
#    What happens to the air, and to the comma's contrast?
# 4. Change `spacing` to `(1, 1, 5)` and predict how the coronal view changes before you run it.
# 5. On the brain, find a sulcus (a fold of cortex filled with CSF, "other brain") narrower than a voxel:
#    why do its labels look broken there? Run again with `brain_spacing=1.0` and compare.
# 6. In section 3, which voxels would a rule "head if within 10 mm of the deepest voxel" get wrong?
#    Draw that rule's label next to the truth with `viz.show_slices`.
# 7. With a real CT (`task_dir="data/Task09_Spleen"` after lesson 04 downloaded it), which HU ranges does
#    the histogram now contain, and which window shows the spleen best?
