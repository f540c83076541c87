# %% [markdown]
# # 00 · MedNeXt at a glance: the whole network
#
# **What you will learn**
# - what MedNeXt is, in three sentences;
# - the whole network in one figure drawn from the module itself: stem, the nine stages with their
#   blocks B and expansion ratios R, the 2x down and up blocks, the skips that ADD, the output head and
#   the deep-supervision heads with their loss weights, and every feature-map shape for a 128³ input;
# - the S/B/M/L presets stage by stage (R and B), with their parameters and multiply-accumulates (MACs),
#   and why the paper's "GFlops" are a little above our MACs;
# - what deep supervision is and how its five losses are weighted;
# - the map of the lessons that follow.

# %% [parameters]
size = "class"  # "ci": what CI runs; "class": about 5 minutes on a 2-core CPU; "gpu": one GPU
input_size = None  # spatial size per axis of the drawn network and of the MAC count (128 in the paper)
check_dims = None  # 2 or 3: the real (not meta) network that checks the skips and the loss weights
check_size = None  # its input size per axis
output_dir = "runs/00_overview"
seed = 0
device = "auto"

# %%
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

from mednext_lite import create_mednext, get_preset, preset_config
from mednext_lite.diagram import draw_network, format_stage_table, network_parts, preset_stage_rows, shape_text
from mednext_lite.lesson import Lesson, sized
from mednext_lite.losses import deep_supervision_weights, make_loss
from mednext_lite.model import STAGE_NAMES
from mednext_lite.profile import count_macs, count_parameters

# Everything in this lesson is counted on the meta device (shapes only) except one small check network,
# so the sizes differ only in that network: a 2D slice in CI, a small 3D volume in class, 128³ on a GPU.
p = sized(size, {"ci": {"input_size": 128, "check_dims": 2, "check_size": 64},
                 "class": {"input_size": 128, "check_dims": 3, "check_size": 32},
                 "gpu": {"input_size": 128, "check_dims": 3, "check_size": 128}},
          input_size=input_size, check_dims=check_dims, check_size=check_size)
lesson = Lesson(output_dir, seed=seed, device=device)
lesson.record(size=size, **p)
print(p)

# %% [markdown]
# ## 1. MedNeXt in three sentences
# MedNeXt (Roy et al., MICCAI 2023) is a U-Net for 3D (or 2D) medical segmentation in which every
# convolution block, including the ones that halve and double the resolution, is a ConvNeXt-style block:
# a **depthwise** k³ convolution, GroupNorm, a 1x1 convolution that **expands** C channels to R·C, GELU,
# and a 1x1 convolution back to C, with a residual add (lesson 01 takes one block apart).
# It grows by **compound scaling** along three axes at once: depth (B blocks per stage), width (the
# expansion ratio R per stage) and receptive field (the kernel size k, 3 or 5), which gives the
# S, B, M and L presets (lesson 05).
# Large kernels are hard to train from scratch on small medical data sets, so a k5 network is
# initialised by **UpKern** from a trained k3 network, its kernels resized by trilinear interpolation (lesson 06).

# %% [markdown]
# ## 2. The whole network, drawn from the module
# `draw_network` builds the network on PyTorch's `meta` device (shapes only, no memory), runs an empty
# 1x128³ input through it, and labels every part with what it reads off the built module: B is the
# number of blocks in a stage, R how much wider a block's 1x1 expansion is than its input, the shapes
# are the outputs the forward pass produced, and the head weights come from the function the trainer's
# loss uses. Here MedNeXt-S (k3, one input channel, three classes) with deep supervision switched on,
# as the trainer of lesson 04 builds it.

# %%
config_s = preset_config("S", in_channels=1, num_classes=3, kernel_size=3, deep_supervision=True)
fig = draw_network(config_s, p["input_size"])
lesson.show(fig, "mednext_s_network")
parts = network_parts(config_s, p["input_size"])
stages = [q for q in parts if q["kind"] == "stage"]
n = p["input_size"]
for q in stages:
    print(f"{q['name']:>10}: B={q['blocks']} R={q['ratio']}  {shape_text(q['shape'])}")
# The shapes follow from the design, independently of the drawing code: level l has C·2^l channels
# at 1/2^l of the input size, and the decoder mirrors the encoder.
for s, q in enumerate(stages):
    level = min(s, 8 - s)
    assert q["shape"] == (32 * 2**level, *(n // 2**level,) * 3), q
    assert (q["blocks"], q["ratio"]) == (config_s.block_counts[s], config_s.expansion_ratios[s]) == (2, 2)
params_s_ds = count_parameters(config_s)
assert params_s_ds == 5_550_947 + 2_892  # the reference count plus the four deep-supervision heads
print(f"\nMedNeXt-S with deep supervision: {params_s_ds:,} parameters "
      f"(5,550,947 without the four extra heads, which add {params_s_ds - 5_550_947:,})")
lesson.record(s_shapes={q["name"]: list(q["shape"]) for q in stages}, s_params_ds=params_s_ds)

# %% [markdown]
# **Reading the figure.** Down the left (blue), four encoder stages: B MedNeXt blocks at a constant
# width, then a down block that halves every axis and doubles the channels. At the bottom the bottleneck
# (512 channels at 8³ for a 128³ input). Up the right (orange), an up block doubles every axis and halves
# the channels, the encoder output of the same level is **added** at the ⊕, and B more blocks follow.
# A down or up block uses the ratio R of the stage it feeds: for preset S that is invisible (R = 2
# everywhere), in B it is not (down block 0 has R = 3, the ratio of enc1; see the table in section 5).
# The input's sides must be divisible by 16 = 2⁴, since the U halves them four times.

# %% [markdown]
# ## 3. The skips ADD
# The original U-Net and nnU-Net **concatenate** the encoder features onto the upsampled ones, so the
# first decoder block sees twice the channels. MedNeXt adds them: the up block returns exactly the
# encoder's shape and the sum enters the decoder stage, so decoder blocks are as wide as encoder blocks.
# We check it on a real network (random weights), catching with hooks what the up block returns, what the
# encoder stage returned, and what the first decoder block receives.

# %%
check = create_mednext("S", in_channels=1, num_classes=3, spatial_dims=p["check_dims"],
                       deep_supervision=True).to(lesson.device).eval()
seen = {}


def keep(name):
    def hook(module, args, out):
        seen[name] = (args[0], out)
    return hook


hooks = []
for level in range(4):
    hooks += [check.ups[level].register_forward_hook(keep(f"up{level}")),
              check.encoders[level][-1].register_forward_hook(keep(f"enc{level}")),
              check.decoders[level][0].register_forward_hook(keep(f"dec{level}"))]
x = torch.randn(2, 1, *(p["check_size"],) * p["check_dims"], device=lesson.device)
with torch.no_grad():
    outputs = check(x)
for h in hooks:
    h.remove()
for level in range(4):
    up_out, skip, dec_in = seen[f"up{level}"][1], seen[f"enc{level}"][1], seen[f"dec{level}"][0]
    assert up_out.shape == skip.shape == dec_in.shape
    assert torch.equal(dec_in, up_out + skip), "the decoder's input is the up block's output + the skip"
    print(f"level {level}: up block {shape_text(tuple(up_out.shape[1:]))} + encoder "
          f"{shape_text(tuple(skip.shape[1:]))} -> decoder input {shape_text(tuple(dec_in.shape[1:]))} "
          f"(concatenation would give {up_out.shape[1] + skip.shape[1]} channels)")

# %% [markdown]
# ## 4. Deep supervision: five outputs, five weighted losses
# With deep supervision the network returns five logit maps, `[full, 1/2, 1/4, 1/8, 1/16]` of the input
# size: the output head on decoder level 0, and one extra 1x1 head on each of decoder levels 1, 2, 3 and
# the bottleneck. Training compares each with the label map shrunk to its size (nearest neighbour, so
# labels stay whole numbers) and mixes the five losses with weights proportional to 1/2^i, the lowest
# resolution set to 0, normalised to sum 1: raw 1, 1/2, 1/4, 1/8, 0 sum to 15/8, so the weights are
# 8/15, 4/15, 2/15, 1/15 and 0. The usual motivation: the coarse heads give the deep stages a short path
# to the loss early in training. At inference only the full-resolution output is used (lesson 03 shows
# the shrunk targets, lesson 04 the five outputs of a trained network). Each loss term is Dice (taught in
# lesson 03) plus cross-entropy (the usual per-voxel classification loss).

# %%
print("outputs:", [shape_text(tuple(o.shape[1:])) for o in outputs])
weights = deep_supervision_weights(len(outputs))
assert len(outputs) == 5 and weights == [8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0] and abs(sum(weights) - 1) < 1e-12
label = torch.randint(0, 3, (2, 1, *x.shape[2:]), device=lesson.device)
loss_fn = make_loss()  # exactly what the trainer builds (mednext_lite/train.py)
total = loss_fn(outputs, label)
by_hand = 0.0
for i, (w, out) in enumerate(zip(weights, outputs)):
    small = F.interpolate(label.float(), size=out.shape[2:], mode="nearest")
    term = loss_fn.base_loss(out.float(), small)
    by_hand = by_hand + w * term
    print(f"output {i} ({shape_text(tuple(out.shape[1:]))}): Dice+CE {term.item():.4f} x weight {w:.4f}")
assert torch.allclose(total, by_hand, atol=1e-6)
print(f"weighted sum by hand {by_hand.item():.4f} == the trainer's loss {total.item():.4f} "
      "(random weights and labels: the values themselves mean nothing, the weighting is the point)")
lesson.record(ds_weights=weights)

# %% [markdown]
# ## 5. S, B, M and L, stage by stage
# The four presets share C = 32 (widths 32 to 512) and differ only in R and B per stage. The table is
# printed from the presets in `mednext_lite.variants`, parameters counted by `mednext_lite.profile`
# (one input channel, three classes, no deep supervision, as in the paper's table).

# %%
rows = preset_stage_rows(kernel_size=3, spatial_dims=3)
display(Markdown(format_stage_table(rows)))  # the same text, rendered as a table
REFERENCE = {"S": 5_550_947, "B": 10_526_339, "M": 17_548_995, "L": 61_779_299}  # the reference implementation's
assert {r["variant"]: r["params"] for r in rows} == REFERENCE
for r in rows:
    preset = get_preset(r["variant"])
    assert r["R"] == preset.expansion_ratios and r["B"] == preset.block_counts
lesson.record(stage_table=[{k: list(v) if isinstance(v, tuple) else v for k, v in r.items()} for r in rows])

# %% [markdown]
# **Parameters and compute.** Below, both kernel sizes, with the multiply-accumulates (MACs) of every
# convolution for one input of `input_size`³, counted on the meta device. One MAC is one multiply and
# one add; the paper's "GFlops" column is, despite its name, this MAC count plus the element-wise layers
# (norms, GELU, residual adds), so it sits about 1-2 % above our conv MACs (a strict FLOP count would be about
# twice the MACs). Parameters agree with the paper's one decimal within 0.1 M (its rounding is not
# always to nearest: S k5 has 5.98 M, printed 5.9 M).

# %%
macs_rows = []
for r in rows:
    preset = get_preset(r["variant"])
    for column, k in enumerate((3, 5)):
        config = preset_config(r["variant"], 1, 3, k)
        row = {"variant": r["variant"], "kernel": k, "params": count_parameters(config),
               "gmacs": count_macs(config, (p["input_size"],) * 3) / 1e9,
               "paper_params_m": preset.paper_params_m[column], "paper_gflops": preset.paper_gflops[column]}
        macs_rows.append(row)
        line = f"MedNeXt-{row['variant']} k{k}: {row['params']:>11,} params  {row['gmacs']:6.1f} conv GMAC"
        if p["input_size"] == 128:  # the paper's figures are for a 128³ input only
            ratio = row["paper_gflops"] / row["gmacs"]
            line += (f"  | paper {row['paper_params_m']}M params, {row['paper_gflops']} 'GFlops' "
                     f"= {ratio:.3f} x our MACs")
            assert abs(row["params"] / 1e6 - row["paper_params_m"]) < 0.1  # S k5: 5.98M, printed 5.9M
            assert 1.0 < ratio < 1.03, "the paper's count = conv MACs + a few % of element-wise work"
        print(line)
if p["input_size"] == 128:
    REFERENCE_GMACS = {("S", 3): 127.3, ("S", 5): 165.6, ("B", 3): 166.7, ("B", 5): 205.0,
                       ("M", 3): 243.6, ("M", 5): 303.7, ("L", 3): 494.6, ("L", 5): 558.9}
    for row in macs_rows:
        assert abs(row["gmacs"] - REFERENCE_GMACS[(row["variant"], row["kernel"])]) < 0.06
lesson.record(presets=macs_rows)

# %% [markdown]
# Two things to notice. Going from S to B only raises R in the inner stages, yet almost doubles the
# parameters; going from M to L raises R and B in the deep, wide stages and more than triples them.
# And k5 costs few extra parameters (depthwise kernels are small) but a lot of MACs, since those kernels
# slide over every voxel: lesson 05 measures what each axis costs in time and memory too.

# %%
params = {(r["variant"], r["kernel"]): r["params"] for r in macs_rows}
print(f"B / S = {params['B', 3] / params['S', 3]:.2f} x the parameters, L / M = {params['L', 3] / params['M', 3]:.2f} x")
assert 1.8 < params["B", 3] / params["S", 3] < 2 and params["L", 3] / params["M", 3] > 3
s3, s5 = macs_rows[0], macs_rows[1]
print(f"S: k3 -> k5 adds {100 * (s5['params'] / s3['params'] - 1):.1f} % parameters "
      f"and {100 * (s5['gmacs'] / s3['gmacs'] - 1):.1f} % MACs")
assert s5["params"] / s3["params"] < 1.1 and s5["gmacs"] / s3["gmacs"] > 1.25

# %% [markdown]
# ## 6. The map of the lessons
# - **01 · The MedNeXt block**: one block layer by layer, the down and up blocks, why depthwise is cheap, receptive fields.
# - **02 · The slice viewer**: looking at volumes (axes, spacing, intensity windows) on a real brain and a synthetic CT.
# - **03 · Data, patches and Dice**: the tasks, patch sampling and augmentation, sliding windows, and the Dice score.
# - **04 · Train MedNeXt on an MSD task**: the trainer, its loss with deep supervision, curves and checkpoints.
# - **05 · Compound scaling**: what depth, width and kernel size each cost and buy.
# - **06 · UpKern**: growing a k5 network from a trained k3 one, and what it buys against a fair control.
# - **07 · Classroom exercises**: build the pieces yourself, checked by the package.

# %% [markdown]
# ## Try this
# 1. Before running anything: what shape does the bottleneck of MedNeXt-S have for a 96³ input, and
#    what happens with 100³? Then check with `network_parts(preset_config("S"), 96)` and with 100.
# 2. Which stage of MedNeXt-L holds the most parameters? Predict it from the table (a block's 1x1 convs
#    hold about 2·R·C² weights at width C), then count it:
#    `m = create_mednext("L")` inside `with torch.device("meta"):`, and
#    `count_parameters(m.encoders[i])`, `count_parameters(m.bottleneck)`, ... Is the stage with the most
#    parameters also the one with the most MACs? Why not?
# 3. MedNeXt-B has the same blocks as S and changes only R. Draw it with `draw_network(preset_config("B"))`
#    and find every place where its down and up blocks use a different R from the stage they sit after.
# 4. The 1/16 head gets loss weight 0. Why build it and compute its loss at all (read the docstring of
#    `mednext_lite.losses`)? What would the weights be for a network with three outputs? Compute them by
#    hand first, then with `deep_supervision_weights(3)`.
