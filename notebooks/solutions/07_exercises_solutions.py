# %% [markdown]
# # Solutions · 07 Classroom exercises (for teachers)
#
# The reference answers of `notebooks/07_exercises.ipynb`, each with the reasoning a student should
# be able to give, then short answers to the **Try this** lists of lessons 00-06.
#
# This file is both the rendered notebook `07_exercises_solutions.ipynb` (built from it by
# `python notebooks/solutions/_build.py`) and the module the sheet loads: CI runs the sheet with
# `solutions="solutions/07_exercises_solutions.py"`, which fills every answer in from `SOLUTIONS` below,
# and `mednext_lite.exercises.verify_checkers` proves each checker accepts these answers and rejects a
# typical mistake and a shortcut (calling the package's own function) with the right hint.
# The student sheet never imports this file unless it is given that parameter.

# %% [parameters]
verify = True  # run every checker on these answers at the end (False: only read them)

# %%
import numpy as np
import torch
import torch.nn.functional as F

# %% [markdown]
# ## 1 · The down block's forward pass
# Same chain as the MedNeXt block of lesson 01, with two differences the layers themselves carry:
# `conv1` has stride 2 (half the size) and `conv3` produces 2C channels. So the input `x` (C channels,
# full size) cannot be added to the branch; the residual path is `res_conv(x)`, a stride-2 1x1 conv C -> 2C,
# and a block built with `conv_residual=False` has `res_conv = None`. `grn` is `nn.Identity` when GRN is off,
# so calling it always is correct.

# %%
def down_block_forward(block, x):
    h = block.conv1(x)  # depthwise k^d, stride 2: C channels, half the size
    h = block.norm(h)  # GroupNorm, one group per channel
    h = block.grn(block.act(block.conv2(h)))  # 1x1 expansion to R*C, GELU, GRN (identity when off)
    h = block.conv3(h)  # 1x1 to 2C
    return h if block.res_conv is None else h + block.res_conv(x)


# %% [markdown]
# ## 2 · The down block's parameters
# conv1: C k^d weights + C biases (depthwise); norm: 2C; conv2: C x RC + RC; conv3: RC x 2C + 2C;
# res_conv (the residual path): C x 2C + 2C. Example C=32, R=2, k=3, 3D: 896 + 64 + 2,112 + 4,160 + 2,112 = 9,344.

# %%
def down_block_parameters(C, R, k, spatial_dims):
    depthwise = C * k**spatial_dims + C
    norm = 2 * C
    expand = C * R * C + R * C
    compress = R * C * 2 * C + 2 * C
    residual = C * 2 * C + 2 * C  # res_conv
    return depthwise + norm + expand + compress + residual


# %% [markdown]
# ## 3 · Predict MedNeXt-B's parameters from MedNeXt-S's
# R only sets the width of the two 1x1 convs, so the count is affine in each stage's R. One unit of R
# adds, per stage s of width w = C 2^level:
# - each of its B_s blocks: w^2 (conv2 weights) + w (conv2 biases) + w^2 (conv3 weights) = 2w^2 + w;
# - the down block that uses R_s (the one AFTER stage s-1, width w' = w/2, output 2w'): w'^2 + w' + 2w'^2 = 3w'^2 + w';
# - the up block that uses R_s (into decoder stage s, input c = 2w, output c/2): c^2 + c + c^2/2 = 1.5c^2 + c.
#
# Neither k nor 2D/3D appear (1x1 convs), nor the deep-supervision heads: the S -> B difference is the
# same 4,975,392 for 3D k3 (5,550,947 -> 10,526,339), 3D k5, 2D k3 and 2D k5 (REFERENCE table).

# %%
def predict_parameters(params_from, ratios_from, ratios_to, blocks, C):
    cost = [0] * 9
    for s in range(9):
        w = C * 2 ** min(s, 8 - s)  # widths: C, 2C, 4C, 8C, 16C, 8C, 4C, 2C, C
        cost[s] += blocks[s] * (2 * w * w + w)
    for i in range(4):
        w = C * 2**i
        cost[i + 1] += 3 * w * w + w  # down block after level i uses R[i+1]
        c = 2 * w
        cost[8 - i] += c * c * 3 // 2 + c  # up block into level i uses R[8-i]
    return params_from + sum((b - a) * n for a, b, n in zip(ratios_from, ratios_to, cost))


# %% [markdown]
# ## 4 · Receptive field per stage
# Keep the jump (input voxels between neighbouring voxels of the current layer). A k-conv adds
# (k-1) x jump; a down block is a k-conv at the OLD jump, after which the jump doubles; an up block
# halves the jump, then adds (k-1) x jump. For S (k3, B=2): enc0 5, enc1 15, enc2 35, enc3 75,
# bottleneck 155, then dec3..dec0 203, 227, 239, 245 by the rule. The encoder values are exact. In the
# decoder the rule is an upper bound: a stride-2 transposed conv of kernel k gives even outputs and odd
# outputs different numbers of taps (1 and 2 for k3), and the one-voxel start padding shifts the grid,
# so no single output voxel reaches the rule's width. The exact values (`ex.stage_receptive_fields_exact`)
# are 203, 219, 235, 235, and the last equals `profile.receptive_field` of MedNeXt-S k3: 235, not 245.
# The checker accepts the rule or the exact value in the decoder and prints both.

# %%
def stage_receptive_fields(k, blocks):
    rf, jump, fields = 1, 1, []
    for s in range(9):
        if s > 4:  # up block: the jump halves first
            jump //= 2
            rf += (k - 1) * jump
        rf += blocks[s] * (k - 1) * jump
        fields.append(rf)
        if s < 4:  # down block: a k-conv at the old spacing, then the spacing doubles
            rf += (k - 1) * jump
            jump *= 2
    return fields


# %% [markdown]
# ## 5 · UpKern one 1D kernel by hand
# With `align_corners=False` the n old weights are centred in n equal cells and the k new ones in k
# cells over the same span: new weight j sits at x = (j + 0.5) n/k - 0.5 on the old axis, clamped to
# [0, n-1] (PyTorch repeats the edge value), and mixes its two neighbours linearly. For 3 -> 5:
# x = -0.2, 0.4, 1.0, 1.6, 2.2 -> clamped 0, 0.4, 1, 1.6, 2: the ends and the centre are copied exactly.

# %%
def upkern_1d(kernel, k):
    n = kernel.numel()
    x = ((torch.arange(k, dtype=torch.float64) + 0.5) * n / k - 0.5).clamp(0, n - 1)
    lo = x.floor().long().clamp(max=n - 2) if n > 1 else torch.zeros(k, dtype=torch.long)
    frac = x - lo
    w = kernel.double()
    return (w[lo] * (1 - frac) + w[(lo + 1).clamp(max=n - 1)] * frac).to(kernel.dtype)


# %% [markdown]
# ## 6 · Sliding windows in 1D
# (a) Steps of int(window (1 - overlap)) from 0 until a window reaches the end; the last one is moved
# back to end exactly at the signal's end (so the edge is covered, never padded). (b) Every position
# gets sum(weight x output) / sum(weight) over the windows covering it. Dividing by the number of
# windows is the classic mistake: near the edges fewer windows cover a position. A Gaussian weight
# trusts each window's centre more than its borders, where the network saw less context.

# %%
def window_starts(length, window, overlap):
    if window >= length:
        return [0]
    step = max(1, int(window * (1 - overlap)))
    starts = list(range(0, length - window, step))
    return starts + [length - window]


def overlap_average(length, starts, outputs, weight):
    total, norm = np.zeros(length), np.zeros(length)
    for s, out in zip(starts, outputs):
        total[s:s + len(weight)] += weight * np.asarray(out)
        norm[s:s + len(weight)] += weight
    return total / norm


# %% [markdown]
# ## 7 · Deep supervision
# (a) 1/2^i for i = 0..n-1, the last (lowest resolution) set to 0, then divided by the sum; zeroing
# after normalising would leave a sum below 1. Five outputs: [8, 4, 2, 1, 0] / 15. (b) The label is a
# class map, so it is downsampled by nearest neighbour (an interpolated 0.5 is no class); each term is
# the DiceCE of one output, and the weights mix them.

# %%
def ds_weights(n):
    if n == 1:
        return [1.0]
    raw = [1 / 2**i for i in range(n)]
    raw[-1] = 0.0
    return [w / sum(raw) for w in raw]


def ds_loss(outputs, label, base_loss):
    total = 0.0
    for w, logits in zip(ds_weights(len(outputs)), outputs):
        target = F.interpolate(label.float(), size=logits.shape[2:], mode="nearest")
        total = total + w * base_loss(logits, target)
    return total


# %% [markdown]
# ## 8 · CT windows
# A window of level L and width W shows [L - W/2, L + W/2]. For lung: level -600, width 1500 gives
# [-1350, 150] HU: air black, lung parenchyma (-850..-500) in greys, soft tissue nearly white.

# %%
def window_limits(level, width):
    return level - width / 2, level + width / 2


lung_window = (-600, 1500)

# %% [markdown]
# ## 9 · Dice
# Dice = 2|A and B| / (|A| + |B|), defined as 1 for two empty masks. The table's numbers are
# illustrative (made up for the exercise): mean foreground Dice is (head + tail) / 2: k3 0.745,
# k5 0.785, threshold rule 0.415; the best run is MedNeXt-S k5 and its hardest class the tail.
# Averaging in the background (about 0.995 everywhere) would give 0.855 and shrink every difference.

# %%
def dice(pred, truth):
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else 2 * np.logical_and(pred, truth).sum() / total


dice_table = {"best": "MedNeXt-S k5", "hardest": "tail", "best_mean": 0.785}

SOLUTIONS = {
    "down_block_forward": down_block_forward, "down_block_parameters": down_block_parameters,
    "predict_parameters": predict_parameters, "stage_receptive_fields": stage_receptive_fields,
    "upkern_1d": upkern_1d, "window_starts": window_starts, "overlap_average": overlap_average,
    "ds_weights": ds_weights, "ds_loss": ds_loss, "window_limits": window_limits, "lung_window": lung_window,
    "dice": dice, "dice_table": dice_table,
}

# %% [markdown]
# ## Every checker: the solution passes, a typical mistake and a shortcut do not
# (Runs in this notebook only; the sheet does the same when it is given the solutions.)

# %%
if __name__ == "__main__" and verify:
    from mednext_lite import exercises as ex

    for name, (right, wrong, shortcut) in ex.verify_checkers(SOLUTIONS).items():
        print(f"{name:>22}: solution -> {'correct' if right else 'REJECTED'}; mistake -> {wrong.message[:90]}")
        if shortcut is not None:
            print(f"{'':>22}  shortcut -> {shortcut.message[:90]}")

# %% [markdown]
# # Answers to the "Try this" lists of lessons 00-07
# Short answers a teacher can check a student's against. Where the answer is a measurement of your own
# run, the answer says what to look at and what to expect, not a number.
#
# ## Lesson 00 · MedNeXt at a glance
# 1. 96/16 = 6: the bottleneck of S is [1, 512, 6, 6, 6] (16C = 512 channels). 100 is not divisible by
#    16 and the input check refuses it: "spatial size 100 ... is not divisible by 16: pad to 112 or crop to 96".
# 2. The bottleneck (33.7M of L's 61.8M parameters: 8 blocks at 512 channels with R = 8; enc3/dec3 8.5M
#    each). It is NOT the stage with the most MACs: at 128^3 it runs on 8^3 voxels and costs 17.2 GMAC,
#    while enc2/dec2 (128 channels at 32^3) cost 69.6 GMAC each. Parameters scale with width^2, MACs with
#    width^2 x voxels, and the voxels shrink 8x per level while width^2 grows only 4x.
# 3. B's R = 2,3,4,4,4,4,4,3,2. The down block after stage i uses R[i+1] and the up block into decoder
#    stage s uses R[s]: down0 uses 3 (after enc0 with 2), down1 uses 4 (after enc1 with 3); the up block into
#    dec1 uses 3 (after dec2 with 4) and the one into dec0 uses 2 (after dec1 with 3). down2, down3 and the
#    two deeper up blocks use the same R as the stage before them.
# 4. Every head must take part in the loss graph, or DistributedDataParallel stops on parameters without
#    gradients; weight 0 keeps it in the graph without effect. Three outputs: 1, 1/2, 0 -> [2/3, 1/3, 0].
#
# ## Lesson 01 · The MedNeXt block
# 1. Per block of width C with ratio R: the MedNeXt block gains (7^d - 3^d) C (depthwise only), the plain
#    conv block (7^d - 3^d) C^2. At C = 32, 3D: +10,112 against +323,584 (C times more).
# 2. Yes: the channels-first LayerNorm normalises each voxel of each sample over its channels; no statistic
#    crosses the batch, so the partner sample cannot change the output.
# 3. The two 1x1 convs, 2 R C^2 weights, dominate already at R = 2 (C = 32, k3, 3D: 4,096 against 864
#    depthwise weights) and grow linearly with R. Saved-for-backward ratio (3 + 2R)/3: 2.33 at R = 2,
#    3.67 at R = 4, 6.33 at R = 8: the expanded activations, not the weights, are what R costs in memory.
# 4. At 8^3 both blocks take about the same (per-call overhead; the ratio is noise); as the input grows the
#    time becomes proportional to the work and the ratio settles. Where it settles is machine-dependent:
#    read it off your run, and compare it with the MAC ratio the lesson prints.
# 5. The theoretical field cannot change (same wiring); the measured effective field can. Measure it: the
#    lesson's 1 %-of-peak area on trained weights against the random-init area, over the same repeats.
# 6. The depthwise kernel has k^2 instead of k^3 weights (9 vs 27 per channel at k3), so the block shrinks a
#    little and the plain block 3x; the 1x1 convs, GroupNorm's batch-independence, GRN's identity start and
#    the receptive field per axis do not change.
#
# ## Lesson 02 · Looking at volumes
# 1. Where the shift moves the boundary across the thin part of the object: there a one-voxel shift
#    removes most of the overlap (see lesson 03, question 1).
# 2. Opacity 0 hides the label; opacity 1 hides the image under it. For boundaries use contours, or a
#    middle opacity (about 0.3-0.5) that shows both.
# 3. Everything below -50 HU, air included, is black and everything above 150 HU white; inside the
#    window the grey levels are spread over 200 HU instead of 400, so soft-tissue contrast (the comma
#    against its surroundings) doubles.
# 4. The third axis has 5 mm voxels: the views that contain it (coronal and sagittal) are drawn 5x longer
#    along it and look blocky; the axial view is unchanged. The viewer reads the aspect from the spacing.
# 5. Partial volume: a voxel (2 mm) wider than the sulcus mixes CSF with cortex, and its label takes one
#    class, so the thin CSF line is interrupted. At 1 mm more of it is resolved.
# 6. Voxels of the head farther than 10 mm from the deepest voxel (the rim of a large head) are missed,
#    and the start of the tail within 10 mm is called head: distance encodes size, not class.
# 7. About -1000 (air), -100..-50 (fat), 0..100 (soft tissue, the spleen about 40-60) and bone above
#    300. An abdomen window (level about 40-60, width about 350-400) shows the spleen best.
#
# ## Lesson 03 · Data and Dice
# 1. Two discs of radius r shifted by d overlap in 2r^2 acos(d/2r) - (d/2) sqrt(4r^2 - d^2), so Dice is
#    about 1 - 2d/(pi r): r = 3, d = 1 gives about 0.79 (loses 0.21), r = 12 about 0.95 (loses 0.05), before
#    pixel rounding. The same boundary error costs a small tumour about four times the Dice of a big liver.
# 2. Background Dice tends to 1 while k missed classes score 0, so the mean including background tends to
#    1/(k + 1): 1/3 for 2 foreground classes, 1/4 for 3, whatever the network does.
# 3. With the package's convention a stray voxel in a case without a tail scores 0 instead of 1: A loses
#    3/10 = 0.3 on the tail mean. With ignore_empty=True those cases are left out and A loses nothing, so A
#    can look better than B. To pick a checkpoint, count false positives on empty cases (the package's
#    convention): a model that invents structures is a real error.
# 4. Yes, it can: the tail is thin, so every tail voxel is near an edge. But then the rule uses shape
#    (context), not intensity only: it has learned the geometry a network learns from its receptive field.
# 5. With pos_ratio = 1 every patch is centred on foreground: only the parts of the background near the
#    object are seen, so the network may predict foreground in far-away air it never saw. With pos_ratio =
#    0.1 on a 0.1 % foreground task, about 10 % of patches still centre on foreground, 100x more than
#    uniform sampling would.
# 6. One: a 48-patch in a 48-case has a single valid position, the sampler's centre is moved inward to
#    it, and the fraction "centred on foreground" no longer follows pos_ratio; it only says whether
#    that single centre is foreground.
# 7. Left-right mirroring (and a 90° turn in a plane that contains the left-right axis) swaps the two
#    kidneys and teaches a false label. A 90° turn is only a clean rotation when the plane's two sides are
#    equal; otherwise it changes the patch shape (and, with anisotropic spacing, the physical geometry).
# 8. Windows per axis: ceil((L - w)/step) + 1. Overlap 0.5 (step 64): 7 x 7 x 4 = 196 windows; 0.75
#    (step 32): 13 x 13 x 7 = 1,183, about 6x the network work.
# 9. A pixel in the border band is covered only by windows that have it at their own edge, where the
#    Gaussian weight is at its floor: the blend there averages a few low-context edge predictions. A larger
#    sigma_scale weights window edges more (a better border band) but trusts the centres less (the seams
#    between windows show more).
# 10. Linear interpolation then rounding invents label values between classes (between 0 and 2 it makes a 1
#    that is not there) and moves boundaries; nearest keeps real classes. If the tail vanishes at 1/16, a
#    non-zero weight there teaches the network to predict "no tail" at that scale, which is why it is 0.
#
# ## Lesson 04 · Training
# 1. Compare the held-out Dice of both runs and their seconds per epoch: 2D steps are much cheaper per
#    patch, 3D sees context across slices. The winner at a short budget is a measurement of your run, and
#    one seed is not enough to call a small gap.
# 2. Train k3, then k5 with `upkern_from=` its checkpoint; compare with k5 from scratch on the same
#    held-out cases and the same total epochs (lesson 06 shows why the control matters).
# 3. Use the viewer's overlay and step through the slices; the worst slice is usually at the ends of a
#    structure or at thin parts.
# 4. The cases that chose the checkpoint score higher than held-out ones: selecting on them is optimistic.
#    The gap is the selection bias; it grows when there are few validation cases and many checkpoints.
# 5. At short budgets augmentation mainly narrows the gap between training loss and validation Dice;
#    whether the held-out Dice moves beyond the seed-to-seed spread is what to check.
# 6. The head and the tail have the same intensity, so a threshold can find the object but cannot tell
#    which part is which: it gets one class and misses the other completely.
# 7. Soft tissue around 40-60 HU: an abdomen window (level about 40-60, width about 350-400).
#
# ## Lesson 05 · Compound scaling
# 1. Kernel size: k3 -> k5 adds only depthwise weights ((5^d - 3^d) C per block) but nearly doubles the
#    field; depth adds whole blocks for (k-1) x jump each; width adds parameters and no field at all.
# 2. In 2D the depthwise conv has k^2 weights (9 -> 25), a small share of a block dominated by the 1x1
#    convs, so its MACs hardly grow (reference: S 35.42 -> 36.64 GMAC at 512^2, +3 %); in 3D k^3 goes
#    27 -> 125 (S 127.3 -> 165.6 GMAC at 128^3, +30 %).
# 3. Peak memory drops (activations are recomputed during the backward pass instead of stored) and the
#    step takes longer (about one extra forward pass); the gradients are identical.
# 4. Step time grows about linearly with voxels once compute dominates; at the smallest sizes a fixed
#    overhead flattens the curve.
# 5. A measurement of your run: compare each arm's gap with its seed spread and with the threshold rule,
#    which cannot separate head and tail (lesson 04, question 6).
#
# ## Lesson 06 · UpKern
# 1. and 2. Compare the gap between (c) and (b) with the seed-to-seed spread the lesson prints; a gap inside
#    the spread is not evidence either way, and a third seed tells how stable the spread itself is.
# 3. No: the same tensors are involved (every depthwise weight differs only in kernel size and is resized,
#    everything else is copied), so the counts stay. The k7 net's Dice before its first step is measured
#    by the lesson; a 3 -> 7 stretch changes the kernels more than 3 -> 5.
# 4. For 3 -> 5 both choices copy the corners and the centre: align_corners=False puts the new weights at
#    -0.2 (clamped to 0), 0.4, 1, 1.6, 2.2 (clamped to 2), True at 0, 0.5, 1, 1.5, 2. They differ only in
#    the in-between weights (0.6/0.4 against 0.5/0.5 mixes), so expect little difference in retained Dice;
#    measure it.
# 5. The same call interpolates trilinearly over three axes; the copied/resized counts are the same.
#
# ## Lesson 07 · This sheet
# 1. The transposed stride-2 conv gives 2n-1 voxels; one voxel is padded at the START of every spatial axis
#    (and the same for the 1x1 transposed residual path), so output 2i+1 lines up with input i as in the
#    reference implementation.
# 2. M = B's ratios with blocks 3,4,4,4,4,4,4,4,3: add, per extra block at stage s of width w, its full
#    count w k^d + w + 2w + (R w^2 + R w) + (R w^2 + w).
# 3. Positions (j + 0.5) 3/7 - 0.5 = -0.29 (clamped to 0), 0.14, 0.57, 1, 1.43, 1.86, 2.29 (clamped to 2):
#    weights 0, 3 and 6 equal the old 0, 1 and 2 exactly.
# 4. Its total weight is 0, so the average is 0/0 (NaN). It happens when the windows do not reach the end
#    of the signal; window_starts prevents it by moving the last window back.
# 5. IoU = Dice / (2 - Dice) and Dice = 2 IoU / (1 + IoU): Dice 0.5 gives IoU 1/3 (e.g. A = {1, 2},
#    B = {2, 3}: overlap 1, Dice 2/4, IoU 1/3).
# 6. Liver: level about 60, width about 150-200 (liver is about 50-70 HU; a narrow window separates
#    lesions a few tens of HU away). Bone spans about 300 to over 1500 HU: a wide window (about 1800-2000)
#    keeps cortical and trabecular bone apart instead of clipping both to white.
