"""Each block does what the paper's figure says, and the norms match their definitions."""

import pytest
import torch
import torch.nn.functional as F

from mednext_lite.blocks import (
    GRN,
    ChannelsFirstLayerNorm,
    MedNeXtBlock,
    MedNeXtDownBlock,
    MedNeXtUpBlock,
    conv_op,
    pad_start,
)
from mednext_lite.fast.layout import channels_last_format
from mednext_lite.fast.residual import padded_sum_applies


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_block_forward_is_the_papers_formula(spatial_dims):
    torch.manual_seed(0)
    block = MedNeXtBlock(8, expansion_ratio=3, kernel_size=5, spatial_dims=spatial_dims)
    x = torch.randn(2, 8, *([12] * spatial_dims))
    conv = F.conv2d if spatial_dims == 2 else F.conv3d
    h = conv(x, block.conv1.weight, block.conv1.bias, padding=2, groups=8)
    h = F.group_norm(h, 8, block.norm.weight, block.norm.bias, eps=1e-5)
    h = F.gelu(conv(h, block.conv2.weight, block.conv2.bias))  # exact erf GELU
    h = conv(h, block.conv3.weight, block.conv3.bias)
    torch.testing.assert_close(block(x), x + h)
    assert block.conv2.out_channels == 24 and block.conv1.groups == 8
    assert all(m.bias is not None for m in block.modules() if isinstance(m, conv_op(spatial_dims)))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_down_and_up_blocks_shapes_and_residual_paths(spatial_dims):
    torch.manual_seed(0)
    x = torch.randn(1, 8, *([10] * spatial_dims))
    down = MedNeXtDownBlock(8, spatial_dims=spatial_dims, kernel_size=3)
    y = down(x)
    assert y.shape == (1, 16, *([5] * spatial_dims))
    conv = F.conv2d if spatial_dims == 2 else F.conv3d
    strided = conv(x, down.res_conv.weight, down.res_conv.bias, stride=2)  # the reference's residual path
    torch.testing.assert_close(y, down.branch(x) + strided)
    up = MedNeXtUpBlock(16, spatial_dims=spatial_dims, kernel_size=3)
    z = up(y)
    assert z.shape == (1, 8, *([10] * spatial_dims))
    # the transposed conv makes 2n-1 voxels; ONE voxel is padded at the low-index start of each axis
    raw = up.branch(y)
    assert raw.shape[2:] == (9,) * spatial_dims
    res = up.res_conv(y)
    expected = F.pad(raw + res, (1, 0) * spatial_dims)
    torch.testing.assert_close(z, expected)
    assert torch.equal(z[(0, 0) + (0,) * spatial_dims], torch.tensor(0.0))
    assert isinstance(up.conv1, conv_op(spatial_dims, transposed=True))


def test_up_down_without_residual_paths():
    assert MedNeXtDownBlock(4, conv_residual=False).res_conv is None
    x = torch.randn(1, 8, 4, 4, 4)
    up = MedNeXtUpBlock(8, conv_residual=False)
    torch.testing.assert_close(up(x), F.pad(up.branch(x), (1, 0) * 3))


def test_pad_start_adds_one_zero_voxel_at_the_low_index_start_of_each_axis():
    x = torch.arange(1.0, 13.0).view(1, 2, 2, 3)
    y = pad_start(x)
    assert y.shape == (1, 2, 3, 4)
    assert torch.equal(y[:, :, 1:, 1:], x)
    assert float(y[:, :, 0].abs().sum()) == 0.0 and float(y[:, :, :, 0].abs().sum()) == 0.0
    assert pad_start(torch.ones(1, 1, 3, 3, 3)).shape == (1, 1, 4, 4, 4)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_up_block_sums_in_one_buffer_only_when_nothing_watches_res_conv(spatial_dims):
    torch.manual_seed(0)
    up = MedNeXtUpBlock(8, spatial_dims=spatial_dims, kernel_size=3, expansion_ratio=2)
    with torch.no_grad():
        up.res_conv.bias.uniform_(-1, 1)
    x = torch.randn(1, 8, *([4] * spatial_dims)).contiguous(memory_format=channels_last_format(spatial_dims))
    assert padded_sum_applies(x, up.res_conv)
    assert not padded_sum_applies(x.contiguous(), up.res_conv)  # channels-first: the plain sum
    one_buffer = up(x)
    seen = []
    handle = up.res_conv.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    assert not padded_sum_applies(x, up.res_conv)
    plain = up(x)
    handle.remove()
    assert seen == [(1, 4, *([7] * spatial_dims))]  # the hook saw res_conv run: 2n - 1 voxels, then padded
    torch.testing.assert_close(one_buffer, plain)
    with torch.no_grad():
        torch.testing.assert_close(plain, pad_start(up.branch(x)) + pad_start(up.res_conv(x)))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_channels_first_layernorm_matches_layer_norm_over_channels(spatial_dims):
    torch.manual_seed(0)
    ln = ChannelsFirstLayerNorm(6)
    ln.weight.data.normal_()
    ln.bias.data.normal_()
    x = torch.randn(2, 6, *([5] * spatial_dims)) * 3 + 1
    perm = (0, *range(2, 2 + spatial_dims), 1)
    ref = F.layer_norm(x.permute(perm), (6,), ln.weight, ln.bias, eps=1e-5)
    inv = (0, spatial_dims + 1, *range(1, spatial_dims + 1))
    torch.testing.assert_close(ln(x), ref.permute(inv), rtol=1e-5, atol=1e-5)


def test_grn_definition():
    torch.manual_seed(0)
    grn = GRN(4, 3)
    x = torch.randn(2, 4, 3, 3, 3)
    torch.testing.assert_close(grn(x), x)  # identity at init
    grn.gamma.data.fill_(0.5)
    grn.beta.data.fill_(0.1)
    gx = x.pow(2).sum(dim=(2, 3, 4), keepdim=True).sqrt()
    nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
    torch.testing.assert_close(grn(x), 0.5 * (x * nx) + 0.1 + x)


def test_block_argument_errors():
    with pytest.raises(ValueError, match="kernel_size=4"):
        MedNeXtBlock(4, kernel_size=4)
    with pytest.raises(ValueError, match="spatial_dims=1"):
        MedNeXtBlock(4, spatial_dims=1)
    with pytest.raises(ValueError, match="residual=False"):
        MedNeXtBlock(4, 8)
    with pytest.raises(ValueError, match="norm='instance'"):
        MedNeXtBlock(4, norm="instance")
