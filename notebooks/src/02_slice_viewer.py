# %% [markdown]
# # 02 · The slice viewer: looking at volumes the way radiologists do
#
# **What you will learn**
# - how a 3D volume becomes axial, coronal and sagittal slices, on a real brain MRI (the MNI152
#   template that ships with nilearn), and why the voxel spacing sets the aspect ratio of what you see;
# - CT windows (soft tissue, bone, lung) in Hounsfield units, and percentile windows for MRI;
# - how to compare a ground truth and a prediction: side by side, or as contours on one image.
#
# In Jupyter or Colab the viewer has sliders and buttons. When no widget front end exists
# (papermill, CI, a static HTML export) the same views are drawn as static figures, by the same code.

# %% [parameters]
task_dir = None  # an MSD task folder (e.g. "data/Task09_Spleen"); None: the MNI152 brain task + a synthetic CT
brain_spacing = 2.0  # mm, voxel size of the brain task (1.5 is finer and slower)
case = 0  # which training case to show
interactive = None  # None: widgets when a front end exists, static figures otherwise
output_dir = "runs/02_slice_viewer"
seed = 0
device = "auto"

# %%
import numpy as np

from mednext_lite import viz
from mednext_lite.data import load_task, make_synthetic_task, read_image
from mednext_lite.data.brain import make_brain_task
from mednext_lite.notebooks import Lesson

lesson = Lesson(output_dir, seed=seed, device=device)

# %% [markdown]
# ## 1. Load one case
# A task folder in MSD layout gives us an image, a label map and an affine. The affine's column
# lengths are the voxel spacing in millimetres: the brain task's voxels are 2 x 2 x 2 mm, real CT is
# often 0.8 x 0.8 x 5 mm.
#
# The brain is real anatomy: the MNI ICBM152 2009 T1 template (an average of 152 adult brains,
# (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill
# University; shipped inside nilearn, so nothing is downloaded), deformed, re-contrasted and made noisy
# per case, with grey matter, white matter and "other brain" (mostly CSF) labelled from the template's
# tissue probability maps. A synthetic CT task comes along for the CT windows of section 4.

# %%
ct_dir = None
if task_dir is None:
    ct_dir = make_synthetic_task(lesson.out / "data", n_train=2, n_test=0, flavour="ct", progress=False)
    try:
        task_dir = make_brain_task(lesson.out / "data", n_train=2, n_test=0, spacing=brain_spacing, progress=False)
    except ImportError as err:  # nilearn missing: say so, and fall back to the synthetic MRI task
        print(f"{err}\nusing the synthetic MRI task instead of the brain")
        task_dir = make_synthetic_task(lesson.out / "data", n_train=2, n_test=0, flavour="mri", progress=False)
info = load_task(task_dir)
image, affine = read_image(info.training[case]["image"])
label, _ = read_image(info.training[case]["label"])
image = image[0] if image.ndim == 4 else image  # first modality of a multi-modal task
label = np.rint(label).astype(np.int64)
spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
print(f"{info.name}: image {image.shape} {image.dtype}, spacing {spacing} mm, labels {info.labels}, CT: {info.is_ct}")
print(f"intensity range [{image.min()}, {image.max()}]")
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

# %% [markdown]
# We have no trained network in this lesson, so we fake a **prediction** with two typical mistakes:
# everything is shifted by 2 voxels, and in one half of the volume the second structure (white matter
# for the brain) is labelled as the first (grey matter).
# Lesson 04 puts a real network's prediction into the same viewer.

# %%
prediction = np.roll(label, 2, axis=0)
slab = np.zeros_like(prediction, dtype=bool)
slab[:, :, : image.shape[2] // 2] = True
prediction[(prediction == 2) & slab] = 1
print("voxels per label, truth:", np.bincount(label.ravel()), " prediction:", np.bincount(prediction.ravel()))

# %% [markdown]
# ## 2. The viewer
# Move the slider, change the plane, the window and the opacity. Without a front end you see the
# static figure: every plane at the slice with the most foreground.

# %%
viewer = viz.SliceViewer(image, label, prediction, spacing=spacing, is_ct=info.is_ct,
                         label_names=info.labels, title=info.name)
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
# ## 3. Aspect ratio comes from the spacing
# Many clinical scans have thick slices. Keep every third axial slice of our volume and you have one:
# 6 mm between slices for 2 mm in plane (on the brain). Drawn in voxels it looks squashed three times;
# the viewer draws in millimetres, so the head keeps its shape (only coarser).

# %%
from matplotlib.figure import Figure

thick, thick_label = image[:, :, ::3], label[:, :, ::3]
thick_spacing = (spacing[0], spacing[1], 3 * spacing[2])
fig = Figure(figsize=(9, 4), layout="constrained")
axes = fig.subplots(1, 2)
for ax, sp, name in ((axes[0], (1.0, 1.0, 1.0), "voxels (spacing ignored)"),
                     (axes[1], thick_spacing, "mm (true spacing)")):
    v = viz.SliceViewer(thick, thick_label, spacing=sp, is_ct=info.is_ct, plane="coronal")
    v.draw_on([ax])
    ax.set_title(f"coronal, drawn in {name}")
fig.suptitle(f"Every third slice: {thick_spacing[0]:g} x {thick_spacing[1]:g} x {thick_spacing[2]:g} mm voxels")
lesson.show(fig, "aspect_ratio")
ratio = viz.slice_aspect(thick_spacing, "coronal")
assert ratio == 3 * spacing[2] / spacing[0]
height_mm = v.axes[0].images[0].get_extent()[3]
assert abs(height_mm - thick.shape[2] * thick_spacing[2]) < 1e-9, "the mm view is as tall as the field of view"
print(f"one coronal pixel is {ratio:.2f} times taller than wide; the field of view stays {height_mm:.0f} mm tall")

# %% [markdown]
# ## 4. Windows
# A screen shows ~256 grey levels, CT spans about 4000 HU. A **window** (level L, width W) maps
# [L - W/2, L + W/2] to black..white and clips the rest. Soft tissue (L 40, W 400) separates organs;
# bone (L 400, W 1800) shows the skeleton; lung (L -600, W 1500) shows air-filled tissue.
# MRI has no absolute unit, so we use percentiles of the whole volume instead. The CT windows are
# shown on the synthetic CT task (or on your task when `task_dir` is set).

# %%
def window_panel(ax, img, window, is_ct, title, sp):
    v = viz.SliceViewer(img, spacing=sp, is_ct=is_ct, window=window, plane="axial", index=img.shape[2] // 2)
    v.draw_on([ax])
    lo, hi = v.limits
    ax.set_title(f"{title}\n[{lo:.0f}, {hi:.0f}]", fontsize=10)
    return lo, hi


win_info = load_task(ct_dir) if ct_dir is not None else info
win_image, win_affine = read_image(win_info.training[0]["image"])
win_image = win_image[0] if win_image.ndim == 4 else win_image
win_label = np.rint(read_image(win_info.training[0]["label"])[0]).astype(np.int64)
win_spacing = tuple(float(s) for s in np.linalg.norm(win_affine[:3, :3], axis=0))
windows = list(viz.CT_WINDOWS)[:3] if win_info.is_ct else list(viz.MRI_WINDOWS)
fig = Figure(figsize=(3.6 * len(windows), 3.8), layout="constrained")
limits = {w: window_panel(ax, win_image, w, win_info.is_ct, w, win_spacing)
          for ax, w in zip(fig.subplots(1, len(windows)), windows)}
fig.suptitle(f"{win_info.name}: one slice, {len(windows)} windows")
lesson.show(fig, "windows")

inside = win_image[win_label > 0].astype(float)
for w, (lo, hi) in limits.items():
    grey = np.clip((inside - lo) / (hi - lo), 0, 1)
    print(f"{w:>12}: window [{lo:7.0f}, {hi:7.0f}]  structure's grey levels span {grey.std() * 255:5.1f} (std of 0..255)")
if win_info.is_ct:
    assert limits["soft tissue"] == (-160.0, 240.0) and limits["lung"] == (-1350.0, 150.0)
    spread = {w: np.clip((inside - lo) / (hi - lo), 0, 1).std() for w, (lo, hi) in limits.items()}
    assert spread["soft tissue"] > spread["bone"], "soft-tissue window must show more contrast inside the organ"

# %% [markdown]
# For MRI, a few very bright voxels (fat, flow artefacts) waste the grey scale when the window is
# the full range; a percentile window ignores them. Here on the brain, with some bright outliers added.

# %%
if not info.is_ct:
    mri = image.astype(np.float32).copy()
    mri.flat[:: 997] *= 3.0  # a sprinkle of bright outliers, as MRI often has
    mri_windows = ["full range", "1-99 %"]
    fig = Figure(figsize=(8, 4), layout="constrained")
    mri_limits = {w: window_panel(ax, mri, w, False, w, spacing) for ax, w in zip(fig.subplots(1, 2), mri_windows)}
    fig.suptitle(f"{info.name}, MRI: full range vs percentile window")
    lesson.show(fig, "mri_windows")
    width = {w: hi - lo for w, (lo, hi) in mri_limits.items()}
    assert width["1-99 %"] < 0.6 * width["full range"], "outliers should stretch the full-range window"
    print({w: round(v, 1) for w, v in width.items()})

# %% [markdown]
# ## 5. Ground truth vs prediction
# Side by side is easy to read for large errors; contours on one image show boundary errors of a
# voxel or two.

# %%
for mode in ("side by side", "contours"):
    fig = viz.show_slices(image, label, prediction, spacing=spacing, is_ct=info.is_ct, label_names=info.labels,
                          mode=mode, title=f"{info.name}, {mode}")
    lesson.show(fig, f"compare_{mode.replace(' ', '_')}")
viewer.update(plane="axial", index=None, mode="contours")
assert len(viewer.axes) == 1 and len(viewer.axes[0].collections) >= 2, "contours: one line set per label and source"
viewer.update(mode="side by side", alpha=0.7)
assert len(viewer.axes) == 2 and viewer.axes[1].images[1].get_alpha() == 0.7
lesson.record(case=str(info.training[case]["image"].name), task=info.name, spacing=spacing, is_ct=info.is_ct,
              real_anatomy=brain)

# %% [markdown]
# ## Try this
# 1. Switch to the sagittal plane and find the slice where the shifted prediction hurts most.
# 2. Set the opacity to 0 and to 1: which is better for judging the boundary?
# 3. Pass `window=(-50, 150)` to `SliceViewer` on the CT (`win_image`, `is_ct=True`): a narrow custom window.
#    What happens to the air?
# 4. Change `spacing` to `(1, 1, 5)` and predict how the coronal view changes before you run it.
# 5. On the brain, find a sulcus (a fold of cortex filled with CSF, "other brain") narrower than a voxel:
#    why do its labels look broken there? Run again with `brain_spacing=1.5` and compare.
# 6. With a real task (`task_dir="data/Task09_Spleen"` after lesson 04 downloaded it), which CT window
#    shows the spleen best?
