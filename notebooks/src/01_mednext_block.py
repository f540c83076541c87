# %% [markdown]
# # 01 · The MedNeXt block, piece by piece
#
# **What you will learn**
# - the four layers of a MedNeXt block (depthwise conv, GroupNorm, 1x1 expansion, 1x1 compression)
#   and the tensor shape after each of them;
# - how the same block becomes the 2x down block and the 2x up block of the U;
# - why it is cheap: parameters of a MedNeXt block against a plain 3x3x3 conv block of equal width;
# - why GroupNorm with one group per channel suits the tiny batches of 3D segmentation, and what GRN does;
# - how the receptive field grows with the kernel size, in theory and measured from input gradients.

# %% [parameters]
channels = 32  # C: the width of the block
expansion_ratio = 4  # R: the inverted bottleneck is R*C wide
kernel_size = 3  # k of the depthwise convolution
spatial_dims = 3  # 3 for volumes, 2 for slices
input_size = 32  # spatial size of the toy input
erf_size = 64  # input size (2D) of the effective-receptive-field maps
erf_width = 16  # channels of the block stacks compared there
erf_blocks = 8  # blocks stacked
erf_repeats = 3  # random initialisations averaged per map
output_dir = "runs/01_mednext_block"
seed = 0
device = "auto"

# %%
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Rectangle
from torch import nn

from mednext_lite import MedNeXt, MedNeXtBlock, MedNeXtConfig, MedNeXtDownBlock, MedNeXtUpBlock
from mednext_lite.blocks import GRN, conv_op
from mednext_lite.notebooks import Lesson
from mednext_lite.profile import count_parameters, receptive_field

lesson = Lesson(output_dir, seed=seed, device=device)
dev = lesson.device
spatial = (input_size,) * spatial_dims

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
# ## 3. Why it is cheap: count the parameters
# A plain conv block of width C (as in a classic U-Net) has a full k^d x C x C kernel. The MedNeXt block
# spends only k^d x C on space (depthwise) and 2 R C^2 on channels (1x1 convs). We compute both by
# hand and check against PyTorch's count.

# %%
k_vol = kernel_size ** spatial_dims
mednext_by_hand = (k_vol * channels + channels) + 2 * channels \
    + (channels * expansion_ratio * channels + expansion_ratio * channels) \
    + (expansion_ratio * channels * channels + channels)
plain = nn.Sequential(conv_op(spatial_dims)(channels, channels, kernel_size, padding=kernel_size // 2),
                      nn.InstanceNorm3d(channels, affine=True) if spatial_dims == 3
                      else nn.InstanceNorm2d(channels, affine=True))
plain_by_hand = k_vol * channels * channels + channels + 2 * channels
print(f"MedNeXt block (C={channels}, R={expansion_ratio}, k={kernel_size}): {count_parameters(block):,} parameters")
print(f"plain {kernel_size}^{spatial_dims} conv block (C={channels}):      {count_parameters(plain):,} parameters")
assert count_parameters(block) == mednext_by_hand
assert count_parameters(plain) == plain_by_hand
growth = {}
for k in (3, 5, 7):
    m = (k ** spatial_dims + 3) * channels + 2 * expansion_ratio * channels ** 2 + (expansion_ratio + 1) * channels
    p = k ** spatial_dims * channels ** 2 + 3 * channels
    growth[k] = (m, p)
    print(f"k={k}: MedNeXt {m:>9,}  plain {p:>10,}  ratio {p / m:5.1f}x")
mednext_growth, plain_growth = growth[5][0] / growth[3][0], growth[5][1] / growth[3][1]
print(f"k3 -> k5: MedNeXt block x{mednext_growth:.2f}, plain block x{plain_growth:.2f}")
assert mednext_growth < plain_growth, "a larger kernel must cost the MedNeXt block relatively less"
lesson.record(block_params=count_parameters(block), plain_params=count_parameters(plain))
if spatial_dims == 3 and kernel_size >= 3:
    assert count_parameters(block) < count_parameters(plain), "the MedNeXt block must be the cheaper one"

# %% [markdown]
# Growing the kernel from 3 to 5 multiplies a plain block by about (5/3)^d (125/27 = 4.6 in 3D), while
# the MedNeXt block grows far less (the cell above prints both factors and asserts the order): the
# depthwise conv is its only spatial part. This is why MedNeXt can afford large kernels.
#
# ## 4. A picture of the inverted bottleneck, drawn from the real module
# Box heights are proportional to the channel count each layer outputs; the labels are read from the
# module itself.

# %%
def describe(m):
    if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        kind = "depthwise " if m.groups == m.in_channels > 1 else ""
        return f"{kind}{type(m).__name__}\n{m.in_channels}->{m.out_channels}, k{m.kernel_size[0]}", m.out_channels
    if isinstance(m, nn.GroupNorm):
        return f"GroupNorm\n{m.num_groups} groups", m.num_channels
    return type(m).__name__, None


layers, width = [], channels
for name, m in block.named_children():
    label, out = describe(m)
    width = out or width
    layers.append((name, label, width))
fig = Figure(figsize=(11, 4), layout="constrained")
ax = fig.subplots()
top = max(w for *_, w in layers)
for i, (name, label, w) in enumerate(layers):
    height = 3.0 * w / top
    ax.add_patch(FancyBboxPatch((i * 1.6, -height / 2), 1.2, height, boxstyle="round,pad=0.03",
                                fc=f"C{i}", alpha=0.6))
    ax.text(i * 1.6 + 0.6, height / 2 + 0.15, f"{name}: {label}", ha="center", va="bottom", fontsize=8)
    ax.text(i * 1.6 + 0.6, 0, f"{w} ch", ha="center", va="center", fontsize=9)
ax.annotate("", xy=(len(layers) * 1.6 - 0.4, -1.9), xytext=(0, -1.9),
            arrowprops=dict(arrowstyle="->", color="grey"))
ax.text(len(layers) * 0.8, -2.1, "residual: input added to the output", ha="center", va="top", color="grey")
ax.set_xlim(-0.3, len(layers) * 1.6)
ax.set_ylim(-2.6, 2.6)
ax.set_xlabel("layer (in forward order)")
ax.set_ylabel("channels (box height)")
ax.set_xticks([])
ax.set_yticks([])
ax.set_title(f"MedNeXt block, C={channels}, R={expansion_ratio}: narrow -> {expansion_ratio}x wide -> narrow")
lesson.show(fig, "inverted_bottleneck")
assert max(w for *_, w in layers) == expansion_ratio * channels

# %% [markdown]
# ## 5. GroupNorm with one group per channel
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
# ## 6. GRN: global response normalisation
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
# ## 7. Receptive field: k3 vs k5
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
# 4. In the ERF map, use trained weights (lesson 04 saves a checkpoint): does the field grow or shrink?
# 5. Set `spatial_dims = 2` and rerun everything: which numbers change and which do not?
