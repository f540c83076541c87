# %% [markdown]
# # 01 · The MedNeXt block, piece by piece
#
# **What you will learn**
# - the layers of a MedNeXt block (depthwise conv, GroupNorm, 1x1 expansion, GELU, 1x1 compression)
#   and the tensor shape after each of them;
# - how the same block becomes the 2x down block and the 2x up block of the U (lesson 00 draws the whole
#   network built from them);
# - what the block costs: it has far fewer parameters and multiply-accumulates than a plain 3x3x3 conv
#   block of equal width, but its 4x-wide inner tensors cost activation memory and time, measured here;
# - why GroupNorm with one group per channel suits the tiny batches of 3D segmentation, and what GRN does;
# - how the receptive field grows with the kernel size, in theory and measured from input gradients.
#
# Sizes: `size="ci"` runs in seconds (what CI checks), `"class"` (the default) takes well under a minute
# on a 2-core laptop, `"gpu"` uses bigger tensors and more repeats for steadier timings.

# %% [parameters]
size = "class"  # "ci": what CI runs; "class": under a minute on a 2-core CPU; "gpu": one GPU
expansion_ratio = 4  # R: the inverted bottleneck is R*C wide
kernel_size = 3  # k of the depthwise convolution
spatial_dims = 3  # 3 for volumes, 2 for slices
channels = None  # C: the width of the block (None: the size's value, 32 at class size)
input_size = None  # spatial size of the toy input (None: the size's value)
erf_size = None  # input size (2D) of the effective-receptive-field maps
erf_width = None  # channels of the block stacks compared there
erf_blocks = None  # blocks stacked
erf_repeats = None  # random initialisations averaged per map
timing_repeats = None  # timed runs per measurement (the median is reported)
output_dir = "runs/01_mednext_block"
seed = 0
device = "auto"

# %%
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullFormatter, ScalarFormatter
from torch import nn

from mednext_lite import MedNeXt, MedNeXtBlock, MedNeXtConfig, MedNeXtDownBlock, MedNeXtUpBlock
from mednext_lite.blocks import GRN, conv_op
from mednext_lite.lesson import Lesson, sized
from mednext_lite.profile import count_parameters, receptive_field

p = sized(size, {
    "ci": dict(channels=16, input_size=16, erf_size=48, erf_width=8, erf_blocks=6, erf_repeats=2, timing_repeats=5),
    "class": dict(channels=32, input_size=32, erf_size=64, erf_width=16, erf_blocks=8, erf_repeats=3,
                  timing_repeats=7),
    "gpu": dict(channels=32, input_size=64, erf_size=128, erf_width=32, erf_blocks=16, erf_repeats=8,
                timing_repeats=25),
}, channels=channels, input_size=input_size, erf_size=erf_size, erf_width=erf_width, erf_blocks=erf_blocks,
   erf_repeats=erf_repeats, timing_repeats=timing_repeats)
channels, input_size, timing_repeats = p["channels"], p["input_size"], p["timing_repeats"]
erf_size, erf_width, erf_blocks, erf_repeats = p["erf_size"], p["erf_width"], p["erf_blocks"], p["erf_repeats"]
lesson = Lesson(output_dir, seed=seed, device=device)
dev = lesson.device
spatial = (input_size,) * spatial_dims
print(f"size {size!r}: {p}")
lesson.record(size=size, **p)

# %% [markdown]
# ## 1. One block, one layer at a time
# The block reads like the paper's figure: a **depthwise** k^d conv (each channel filtered on its own),
# a per-channel norm, a 1x1 conv that **expands** C to R*C channels, GELU, and a 1x1 conv that
# **compresses** back to C. The input is added at the end (residual).

# %%
block = MedNeXtBlock(channels, expansion_ratio=expansion_ratio, kernel_size=kernel_size,
                     spatial_dims=spatial_dims).to(dev).eval()
x = torch.randn(2, channels, *spatial, device=dev)
steps = [("input", x)]
h = block.conv1(x); steps.append(("depthwise conv", h))
h = block.norm(h); steps.append(("GroupNorm", h))
h = block.conv2(h); steps.append(("1x1 expand", h))
h = block.act(h); steps.append(("GELU", h))
h = block.conv3(h); steps.append(("1x1 compress", h))
y = x + h; steps.append(("+ input", y))
for name, t in steps:
    print(f"{name:>15}: {tuple(t.shape)}")
with torch.no_grad():
    assert torch.allclose(y, block(x), atol=1e-5), "step by step must equal block(x)"
assert steps[3][1].shape[1] == expansion_ratio * channels and y.shape == x.shape

# %% [markdown]
# ## 2. Down and up blocks
# The **down block** is the same block with a stride-2 depthwise conv and a last 1x1 that doubles the
# channels; its shortcut is a stride-2 1x1 conv. The **up block** uses a transposed stride-2 depthwise
# conv (2n-1 voxels, then one voxel of padding at the start) and halves the channels.

# %%
down = MedNeXtDownBlock(channels, expansion_ratio=expansion_ratio, kernel_size=kernel_size,
                        spatial_dims=spatial_dims).to(dev)
up = MedNeXtUpBlock(2 * channels, expansion_ratio=expansion_ratio, kernel_size=kernel_size,
                    spatial_dims=spatial_dims).to(dev)
with torch.no_grad():
    d = down(x)
    u = up(d)
    raw = up.conv1(d)
print("down:", tuple(x.shape), "->", tuple(d.shape))
print("up:  ", tuple(d.shape), "->", tuple(u.shape), f"(transposed conv alone gives {tuple(raw.shape[2:])})")
assert d.shape == (2, 2 * channels, *(s // 2 for s in spatial))
assert u.shape == x.shape
assert raw.shape[2:] == tuple(s - 1 for s in spatial), "a transposed stride-2 conv gives 2n-1 voxels"

# %% [markdown]
# ## 3. Cheap in parameters: count them
# A plain conv block of width C (as in a classic U-Net: conv, InstanceNorm, LeakyReLU) has a full
# k^d x C x C kernel. The MedNeXt block spends only k^d x C on space (depthwise) and 2 R C^2 on channels
# (1x1 convs). We compute both by hand and check against PyTorch's count.

# %%
k_vol = kernel_size ** spatial_dims
mednext_by_hand = (k_vol * channels + channels) + 2 * channels \
    + (channels * expansion_ratio * channels + expansion_ratio * channels) \
    + (expansion_ratio * channels * channels + channels)
plain = nn.Sequential(conv_op(spatial_dims)(channels, channels, kernel_size, padding=kernel_size // 2),
                      nn.InstanceNorm3d(channels, affine=True) if spatial_dims == 3
                      else nn.InstanceNorm2d(channels, affine=True),
                      nn.LeakyReLU(0.01)).to(dev)
plain_by_hand = k_vol * channels * channels + channels + 2 * channels
print(f"MedNeXt block (C={channels}, R={expansion_ratio}, k={kernel_size}): {count_parameters(block):,} parameters")
print(f"plain {kernel_size}^{spatial_dims} conv block (C={channels}):      {count_parameters(plain):,} parameters")
assert count_parameters(block) == mednext_by_hand
assert count_parameters(plain) == plain_by_hand
growth = {}
for k in (3, 5, 7):
    m = (k ** spatial_dims + 3) * channels + 2 * expansion_ratio * channels ** 2 + (expansion_ratio + 1) * channels
    pl = k ** spatial_dims * channels ** 2 + 3 * channels
    growth[k] = (m, pl)
    print(f"k={k}: MedNeXt {m:>9,}  plain {pl:>10,}  ratio {pl / m:5.1f}x")
mednext_growth, plain_growth = growth[5][0] / growth[3][0], growth[5][1] / growth[3][1]
print(f"k3 -> k5: MedNeXt block x{mednext_growth:.2f}, plain block x{plain_growth:.2f}")
assert mednext_growth < plain_growth, "a larger kernel must cost the MedNeXt block relatively less"
lesson.record(block_params=count_parameters(block), plain_params=count_parameters(plain))
if spatial_dims == 3 and kernel_size >= 3:
    assert count_parameters(block) < count_parameters(plain), "the MedNeXt block has fewer parameters"

# %% [markdown]
# Growing the kernel from 3 to 5 multiplies a plain block by about (5/3)^d (125/27 = 4.6 in 3D), while
# the MedNeXt block grows far less (the cell above prints both factors and asserts the order): the
# depthwise conv is its only spatial part. This is why MedNeXt can afford large kernels.
#
# ## 4. ...but not cheap in memory or time
# Parameters are only one cost. Every layer also writes an **activation** tensor, and for training
# autograd keeps the inputs of most layers until the backward pass. The MedNeXt block's expansion and
# GELU write R*C-wide tensors (4x the input at R=4) over the full spatial grid; the plain block's
# tensors are all C wide. We measure, on the same input (batch 2, C channels, `input_size`^d voxels):
# - **MACs** (multiply-accumulates of the convolutions), counted with forward hooks;
# - **saved for backward**: the bytes autograd keeps for the backward pass, caught with
#   `torch.autograd.graph.saved_tensors_hooks` (exact, independent of the machine);
# - **time**: the median of `timing_repeats` runs of forward, and of forward + backward, on this device.

# %%
import time


def timed(fn, repeats=timing_repeats):
    """Median seconds of fn() over `repeats` runs after one warm-up (CUDA is synchronised)."""
    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    fn(); sync()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter(); fn(); sync(); runs.append(time.perf_counter() - start)
    return float(np.median(runs))


def conv_macs(module, inp):
    """Multiply-accumulates of every convolution inside `module` for one forward pass on `inp`."""
    total = 0

    def hook(m, args, out):
        nonlocal total
        total += out.numel() * int(np.prod(m.kernel_size)) * m.in_channels // m.groups
    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    with torch.no_grad():
        module(inp)
    for h in handles:
        h.remove()
    return total


def saved_bytes(module, inp):
    """Bytes of the tensors autograd saves for the backward pass of module(inp)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(inp.detach().requires_grad_())
    return total


def train_step(module, inp):
    inp = inp.detach().requires_grad_()
    module(inp).sum().backward()


cost = {}
for name, m in (("MedNeXt block", block.train()), ("plain block", plain.train())):
    with torch.no_grad():
        fwd = timed(lambda: m(x))
    cost[name] = dict(params=count_parameters(m), macs=conv_macs(m, x), saved_mb=saved_bytes(m, x) / 2 ** 20,
                      forward_ms=1e3 * fwd, step_ms=1e3 * timed(lambda: train_step(m, x)))
    m.zero_grad(set_to_none=True)
input_mb = x.numel() * x.element_size() / 2 ** 20
print(f"input: {tuple(x.shape)}, {input_mb:.2f} MB (float32)\n")
print(f"{'':>14} {'params':>9} {'MACs':>12} {'saved MB':>9} {'forward ms':>11} {'fwd+bwd ms':>11}")
for name, c in cost.items():
    print(f"{name:>14} {c['params']:>9,} {c['macs']:>12,} {c['saved_mb']:>9.2f} {c['forward_ms']:>11.2f} "
          f"{c['step_ms']:>11.2f}")
ratio = {key: cost["MedNeXt block"][key] / cost["plain block"][key] for key in cost["plain block"]}
print("MedNeXt / plain:", {key: round(v, 2) for key, v in ratio.items()})
lesson.record(block_cost=cost, mednext_over_plain=ratio)

# Exact: the MedNeXt block saves its input (for conv1), conv1's output (norm), norm's output (conv2), and
# two R*C-wide tensors (GELU's input, conv3's input): (3 + 2R) C per voxel. The plain block saves its
# input (conv), the conv's output (norm) and the norm's output (LeakyReLU): 3 C per voxel.
expected_saved = (3 + 2 * expansion_ratio) / 3
assert abs(ratio["saved_mb"] / expected_saved - 1) < 0.05, (ratio["saved_mb"], expected_saved)
assert ratio["saved_mb"] > 1 > ratio["macs"], "fewer MACs, more memory kept for backward"
# Per multiply-accumulate the MedNeXt block is slower (true on every CPU run of this lesson so far).
assert ratio["step_ms"] > ratio["macs"], "time does not shrink with MACs: the wide tensors must be moved"

# %% [markdown]
# **What the numbers say.** The MedNeXt block has fewer parameters and MACs than the plain block, yet
# it keeps (3 + 2R) / 3 times as many bytes for the backward pass (3.7x at R=4; exact, asserted above),
# and its forward + backward step is *not* faster in proportion to its MACs (asserted: time ratio >
# MAC ratio). On the 2-core CPU this lesson was written on (one thread, a busy machine), at class size,
# the MedNeXt block's step took 2.5 to 3x the plain block's with 1/3 of its MACs (measured there,
# illustrative: the printed table above is this run's). At CI size the tensors are tiny and the
# timings are partly overhead; the memory ratio is exact at every size. On a GPU the time balance may
# differ (not measured for this text): run `size="gpu"` there and read the table. In a whole network,
# activation memory rather than parameter count limits the batch and patch size (lesson 05 measures
# a network's peak memory).
#
# **Layer by layer.** Where does the block's time go? Each layer is timed on its own input, so the
# expansion (`conv2`) and the depthwise conv (`conv1`) both read the same C-wide tensor shape.

# %%
layer_inputs = {}
with torch.no_grad():
    h = x
    for name in ("conv1", "norm", "conv2", "act", "conv3"):
        layer_inputs[name] = h
        h = getattr(block, name)(h)
    per_layer = {}
    for name, inp in layer_inputs.items():
        m = getattr(block, name)
        out = m(inp)
        per_layer[name] = dict(params=count_parameters(m), macs=conv_macs(m, inp) if name.startswith("conv") else 0,
                               out_mb=out.numel() * out.element_size() / 2 ** 20,
                               forward_ms=1e3 * timed(lambda m=m, inp=inp: m(inp)))
for name, c in per_layer.items():
    print(f"{name:>6}: output {c['out_mb']:7.2f} MB, params {c['params']:>7,}, MACs {c['macs']:>12,}, "
          f"forward {c['forward_ms']:7.3f} ms")
dw, ex = per_layer["conv1"], per_layer["conv2"]
print(f"expansion vs depthwise on the same input shape: {ex['macs'] / dw['macs']:.1f}x the MACs, "
      f"{ex['out_mb'] / dw['out_mb']:.0f}x the output bytes, {ex['forward_ms'] / dw['forward_ms']:.1f}x the time")
assert ex["out_mb"] == expansion_ratio * dw["out_mb"]
share = {key: {n: per_layer[n][key] / sum(c[key] for c in per_layer.values()) for n in per_layer}
         for key in ("params", "macs", "forward_ms")}
for n in ("conv1", "act"):
    print(f"{n}: {share['params'][n]:4.0%} of the parameters, {share['macs'][n]:4.0%} of the conv MACs, "
          f"{share['forward_ms'][n]:4.0%} of the forward time")
verdict = "more" if share["forward_ms"]["conv1"] > share["macs"]["conv1"] else "less"
print(f"in this run the depthwise conv takes {verdict} of the time than its share of the MACs")
lesson.record(per_layer=per_layer, time_share=share["forward_ms"], mac_share=share["macs"])

fig = Figure(figsize=(12, 4.4), layout="constrained")
ax_l, ax_r = fig.subplots(1, 2, width_ratios=[3, 2])
measures = {"parameters": "params", "conv MACs": "macs", "output bytes": "out_mb", "forward time": "forward_ms"}
names = list(per_layer)
for j, (label, key) in enumerate(measures.items()):
    total = sum(c[key] for c in per_layer.values())
    ax_l.bar(np.arange(len(names)) + (j - 1.5) * 0.2, [100 * per_layer[n][key] / total for n in names], 0.2,
             label=label)
kinds = {"conv1": "depthwise", "norm": "GroupNorm", "conv2": "1x1 expand", "act": "GELU", "conv3": "1x1 compress"}
ax_l.set_xticks(range(len(names)), [f"{n}\n{kinds[n]}" for n in names])
ax_l.set_ylabel("share of the block's total (%)")
ax_l.set_xlabel("layer (in forward order)")
ax_l.set_title("Where one block's cost goes, per layer")
ax_l.legend(fontsize=8)
keys = {"params": "params", "macs": "conv\nMACs", "saved_mb": "saved for\nbackward", "forward_ms": "forward\ntime",
        "step_ms": "fwd+bwd\ntime"}
ax_r.bar(range(len(keys)), [ratio[k] for k in keys], color=["C0", "C1", "C2", "C3", "C4"])
ax_r.axhline(1.0, color="grey", ls="--", lw=1)
ax_r.set_xticks(range(len(keys)), list(keys.values()))
ax_r.set_yscale("log")
ax_r.set_yticks([t for t in (0.1, 0.25, 0.5, 1, 2, 4, 8, 16) if min(ratio.values()) / 2 < t < 2 * max(ratio.values())])
ax_r.yaxis.set_major_formatter(ScalarFormatter())
ax_r.yaxis.set_minor_formatter(NullFormatter())
ax_r.set_ylabel("MedNeXt block / plain block (log scale)")
ax_r.set_title("MedNeXt vs plain block: below 1 = MedNeXt cheaper")
for i, k in enumerate(keys):
    ax_r.text(i, ratio[k], f"{ratio[k]:.2f}", ha="center", va="bottom", fontsize=8)
fig.suptitle(f"Costs of a block, C={channels}, R={expansion_ratio}, k={kernel_size}, input {tuple(x.shape)}, "
             f"{dev.type.upper()} (times measured in this run)")
lesson.show(fig, "block_costs");

# %% [markdown]
# Read the left panel per layer (the printed shares are this run's): `act` (GELU) has no parameters and
# no MACs at all, but it reads and writes an R*C-wide tensor, so it takes a real share of the time;
# `conv1` (depthwise) holds few parameters and MACs, and on the CPUs this lesson was tried on its time
# share was larger than its MAC share (a depthwise conv does little arithmetic per byte it reads; the
# cell prints which way it went here). Parameters alone would say the block is almost all 1x1 convs;
# memory and time say the wide middle and the memory-bound layers matter.
#
# ## 5. A picture of the inverted bottleneck, drawn from the real module
# Bar heights are the channel count each layer outputs; the labels are read from the module itself.
# A layer that is switched off (`grn=False`, the default, leaves an `nn.Identity` in its slot) does
# nothing, so it is not drawn; the right panel builds the block with `grn=True` to show where GRN sits.

# %%
def describe(m):
    """(label, output channels) of one child module, or None for a switched-off slot."""
    if isinstance(m, nn.Identity):
        return None
    if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        k = "x".join(str(v) for v in m.kernel_size)
        kind = f"depthwise {k}" if m.groups == m.in_channels > 1 else f"{k} conv"
        return f"{kind}\n{m.in_channels}->{m.out_channels} ch", m.out_channels
    if isinstance(m, nn.GroupNorm):
        return f"GroupNorm\n{m.num_groups} groups", m.num_channels
    if isinstance(m, GRN):
        return "GRN", None
    return type(m).__name__, None


def draw_block(ax, module, title):
    layers, width = [], module.conv1.in_channels
    for name, m in module.named_children():
        described = describe(m)
        if described is None:
            continue
        label, out = described
        width = out or width
        layers.append((name, label, width))
    pos = np.arange(len(layers))
    ax.bar(pos, [w for *_, w in layers], 0.7, color=[f"C{i}" for i in range(len(layers))], alpha=0.7)
    for i, (_, _, w) in enumerate(layers):
        ax.text(i, w / 2, f"{w} ch", ha="center", va="center", fontsize=9)
    top = max(w for *_, w in layers)
    ax.annotate("", xy=(len(layers) - 0.6, 1.12 * top), xytext=(-0.4, 1.12 * top),
                arrowprops=dict(arrowstyle="->", color="grey"))
    ax.text((len(layers) - 1) / 2, 1.15 * top, "residual: the input is added after the last layer",
            ha="center", va="bottom", color="grey", fontsize=8)
    ax.set_ylim(0, 1.3 * top)
    ax.set_xticks(pos, [f"{name}\n{label}" for name, label, _ in layers], fontsize=8)
    ax.set_xlabel("layer (in forward order)")
    ax.set_ylabel("output channels")
    ax.set_title(title, fontsize=10)
    return layers


fig = Figure(figsize=(13, 4.4), layout="constrained")
ax_a, ax_b = fig.subplots(1, 2)
drawn = draw_block(ax_a, block, "grn=False (the default): the empty GRN slot is not drawn")
with_grn = MedNeXtBlock(channels, expansion_ratio=expansion_ratio, kernel_size=kernel_size, spatial_dims=spatial_dims,
                        grn=True)
drawn_grn = draw_block(ax_b, with_grn, "grn=True: GRN after GELU, on the wide tensor")
fig.suptitle(f"MedNeXt block, C={channels}, R={expansion_ratio}: narrow -> {expansion_ratio}x wide -> narrow")
lesson.show(fig, "inverted_bottleneck");
assert [n for n, *_ in drawn] == ["conv1", "norm", "conv2", "act", "conv3"], "no Identity drawn as a layer"
assert [n for n, *_ in drawn_grn] == ["conv1", "norm", "conv2", "act", "grn", "conv3"]
assert max(w for *_, w in drawn) == expansion_ratio * channels

# %% [markdown]
# ## 6. GroupNorm with one group per channel
# 3D patches are big, so batches are tiny (2 in the paper). BatchNorm would estimate its statistics
# from those 2 samples, so each sample's output depends on its batch partner. GroupNorm with C groups
# normalises each channel of each sample by itself: **a sample's output does not depend on the batch**.

# %%
a = torch.randn(1, channels, *spatial, device=dev)
partner1, partner2 = torch.randn_like(a), 5 * torch.randn_like(a) + 3
gn = block.norm
bn = (nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d)(channels).to(dev).train()
with torch.no_grad():
    gn_diff = (gn(torch.cat([a, partner1]))[0] - gn(torch.cat([a, partner2]))[0]).abs().max().item()
    bn_diff = (bn(torch.cat([a, partner1]))[0] - bn(torch.cat([a, partner2]))[0]).abs().max().item()
print(f"change of sample a's output when its batch partner changes: GroupNorm {gn_diff:.2e}, BatchNorm {bn_diff:.2f}")
assert gn_diff < 1e-5 and bn_diff > 0.1

# %% [markdown]
# ## 7. GRN: global response normalisation
# GRN (from ConvNeXt V2, optional in MedNeXt) measures each channel's global L2 norm, divides by the
# mean over channels, and rescales the features: channels with strong responses are boosted relative to
# weak ones. Its gamma and beta start at zero, so **a new GRN is the identity** and training decides how
# much competition to use.

# %%
grn = GRN(channels, spatial_dims).to(dev)
feat = torch.randn(1, channels, *spatial, device=dev) * torch.linspace(0.2, 2.0, channels, device=dev).view(
    1, -1, *([1] * spatial_dims))
with torch.no_grad():
    assert torch.equal(grn(feat), feat), "gamma = beta = 0: GRN starts as the identity"
    grn.gamma.fill_(1.0)
    out = grn(feat)
gx = torch.linalg.vector_norm(feat, dim=tuple(range(2, feat.ndim))).flatten()
gain = (torch.linalg.vector_norm(out, dim=tuple(range(2, out.ndim))).flatten() / gx)
nx = gx / gx.mean()
print(f"relative response nx: weakest channel {nx[0].item():.2f}, strongest {nx[-1].item():.2f}")
print(f"output/input norm with gamma=1: weakest {gain[0].item():.2f}x, strongest {gain[-1].item():.2f}x")
assert torch.allclose(gain, 1 + nx, atol=1e-3), "with gamma=1, beta=0 each channel is scaled by 1 + nx"
assert abs(nx.mean().item() - 1) < 1e-4

# %% [markdown]
# ## 8. Receptive field: k3 vs k5
# **Theory.** One stride-1 conv of kernel k widens the field by k-1 voxels at the current stride;
# every down block doubles the stride. `receptive_field` walks the network's deepest path.

# %%
def small_config(k, width=32):
    """A small MedNeXt (one block per stage) with kernel k everywhere."""
    return MedNeXtConfig(in_channels=1, num_classes=2, base_width=width, expansion_ratios=2, block_counts=1,
                         enc_kernel_size=k, dec_kernel_size=k, spatial_dims=spatial_dims)


for n in (1, 2, 4, 8):
    print(f"{n} stacked stride-1 blocks: k3 sees {1 + n * 2:>2} voxels, k5 sees {1 + n * 4:>2}")
rf = {k: receptive_field(small_config(k)) for k in (3, 5)}
print(f"MedNeXt with 1 block per stage: theoretical receptive field k3 = {rf[3]}, k5 = {rf[5]} voxels per axis")
assert rf[5] > rf[3]
growth = (rf[5] - 1) / (rf[3] - 1)
print(f"k5 grows the field {growth:.2f}x as fast as k3 (each layer adds (k-1) x its stride; the up blocks' "
      "one-voxel padding adds a little)")
assert 1.9 < growth < 2.3, "k5 adds 4 voxels per layer where k3 adds 2: about twice the growth"

# %% [markdown]
# **Effective receptive field.** The theoretical field is an upper bound; what a network actually uses
# is measured by back-propagating from the **centre output pixel** to the input: |d out / d input| shows
# which input pixels matter. We stack `erf_blocks` MedNeXt blocks (no down-sampling) and average a few
# random initialisations. It runs in 2D because that is far cheaper on a CPU; per axis the 3D picture
# is the same. GroupNorm's per-image statistics leave a faint gradient everywhere, so we measure the
# field as the **area where the gradient exceeds 1 % of its peak**.

# %%
def erf_map(k):
    total = torch.zeros(erf_size, erf_size)
    for r in range(erf_repeats):
        torch.manual_seed(seed + r)
        net = nn.Sequential(nn.Conv2d(1, erf_width, 1), *[
            MedNeXtBlock(erf_width, expansion_ratio=2, kernel_size=k, spatial_dims=2) for _ in range(erf_blocks)
        ]).to(dev).eval()
        inp = torch.randn(1, 1, erf_size, erf_size, device=dev, requires_grad=True)
        net(inp)[:, :, erf_size // 2, erf_size // 2].sum().backward()
        total += inp.grad.abs()[0, 0].cpu()
    return (total / total.max()).numpy()


erfs = {k: erf_map(k) for k in (3, 5)}
area = {k: int((e > 0.01).sum()) for k, e in erfs.items()}
theory = {k: 1 + erf_blocks * (k - 1) for k in erfs}
fig = Figure(figsize=(10, 4.4), layout="constrained")
for ax, k in zip(fig.subplots(1, 2), erfs):
    im = ax.imshow(np.log10(erfs[k] + 1e-6), cmap="magma", origin="lower", vmin=-4, vmax=0)
    c, half = erf_size // 2, theory[k] // 2
    ax.add_patch(Rectangle((c - half - 0.5, c - half - 0.5), theory[k], theory[k], fill=False, ec="cyan", ls="--"))
    ax.contour(erfs[k], levels=[0.01], colors="white", linewidths=1)
    ax.set_title(f"k{k}, {erf_blocks} blocks: {area[k]} pixels above 1% of the peak\n"
                 f"(cyan: theoretical field {theory[k]}x{theory[k]})", fontsize=10)
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    fig.colorbar(im, ax=ax, label="log10 |d out / d in| / peak")
fig.suptitle("Effective receptive field of the centre output pixel")
lesson.show(fig, "effective_receptive_field")
print("effective receptive field (pixels above 1% of the peak):", area)
assert area[5] > area[3], "larger kernels must spread the gradient over more input pixels"
lesson.record(theoretical_rf=rf, erf_area=area)

# %% [markdown]
# ## Try this
# 1. Set `kernel_size = 7`: how many parameters does the block gain, and a plain conv block?
# 2. Replace GroupNorm by `norm="layer"` in `MedNeXtBlock`: is the output still batch-independent?
# 3. Change `expansion_ratio` to 2 and 8 and watch the parameter count: which term dominates?
#    Before you run it, predict the "saved for backward" ratio of section 4 from (3 + 2R) / 3.
# 4. In section 4, set `input_size` to 8 and to 48 (with `size="class"`): at which size does the
#    timing stop being overhead, and does the MedNeXt/plain time ratio settle?
# 5. In the ERF map, use trained weights (lesson 04 trains a network and saves its checkpoint): does the
#    field grow or shrink?
# 6. Set `spatial_dims = 2` and rerun everything: which numbers change and which do not?
