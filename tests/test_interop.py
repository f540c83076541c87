"""The reference's and MONAI's layouts convert exactly: the same weights give the same outputs."""

import pytest
import torch
from monai.networks.nets.mednext import create_mednext as monai_mednext
from test_checkpoint import small

from mednext_lite import MedNeXt, create_mednext
from mednext_lite.checkpoint import CheckpointError
from mednext_lite.interop import (
    convert_monai_state_dict,
    convert_reference_state_dict,
    load_foreign,
    to_reference_state_dict,
)


def test_reference_layout_round_trip_and_head_transpose():
    torch.manual_seed(0)
    model = MedNeXt(small(grn=True))
    ref = to_reference_state_dict(model.state_dict())
    # the reference layout: named stages, transposed 1x1 heads [in, out, 1, 1, 1], a dummy tensor
    assert ref["out_0.conv_out.weight"].shape == (4, 3, 1, 1, 1)
    assert ref["out_4.conv_out.weight"].shape == (64, 3, 1, 1, 1)
    assert {"stem.weight", "enc_block_1.1.conv1.weight", "down_3.res_conv.weight", "bottleneck.0.grn_gamma",
            "up_0.conv1.weight", "dec_block_1.1.conv3.bias", "dummy_tensor"} <= set(ref)
    sd, config = convert_reference_state_dict({"state_dict": ref, "optimizer_state_dict": {}, "epoch": 3})
    assert config == model.config
    rebuilt = MedNeXt(config)
    rebuilt.load_state_dict(sd)
    x = torch.randn(1, 2, 32, 32, 32)
    for a, b in zip(model(x), rebuilt(x)):
        assert torch.equal(a, b)
    assert isinstance(load_foreign(ref), MedNeXt)


def test_reference_conversion_rejects_foreign_keys():
    with pytest.raises(CheckpointError, match="do not belong to the reference"):
        convert_reference_state_dict({"encoder.layer1.weight": torch.zeros(1)})


@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_monai_small_preset_converts_to_identical_outputs(spatial_dims, kernel_size):
    torch.manual_seed(0)
    theirs = monai_mednext("S", spatial_dims=spatial_dims, in_channels=1, out_channels=3,
                           kernel_size=kernel_size, deep_supervision=True).train()
    sd, config = convert_monai_state_dict(theirs.state_dict())
    assert config == create_mednext("S", 1, 3, kernel_size, spatial_dims, deep_supervision=True).config
    ours = MedNeXt(config).train()
    ours.load_state_dict(sd)
    x = torch.randn(1, 1, *([32] * spatial_dims))
    with torch.no_grad():
        a = theirs(x)  # both return [full, 1/2, 1/4, 1/8, 1/16] in training mode
        exact = ours.set_memory_format("contiguous")(x)  # the same kernels MONAI runs: identical maths
        fast = ours.set_memory_format("auto")(x)  # our default layout on CPU: channels-last
        truth = theirs.double()(x.double())  # the same maths in float64
    assert len(a) == len(exact) == len(fast) == 5
    for t, e, f, t64 in zip(a, exact, fast, truth):
        assert (t - e).abs().max() < 1e-5
        # the fast path sums in another order, so it rounds differently (measured up to 1.8e-5), but it
        # is as close to float64 as MONAI itself; PyTorch's channels-last GroupNorm alone left ~1e-4
        assert (t - f).abs().max() < 5e-5
        assert (f.double() - t64).abs().max() < 2 * (t.double() - t64).abs().max() + 1e-6


@pytest.mark.parametrize("variant", ["B", "M", "L"])
def test_monai_larger_presets_are_refused_with_an_explanation(variant):
    with torch.device("meta"):
        sd = monai_mednext(variant, spatial_dims=3, in_channels=1, out_channels=3).state_dict()
    with pytest.raises(CheckpointError, match=r"down block 0 expands by \d but the stage it feeds uses \d"):
        convert_monai_state_dict(sd)
