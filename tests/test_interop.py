"""The reference's and MONAI's layouts convert exactly: the same weights give the same outputs."""

import pytest
import torch
from monai.networks.nets.mednext import MedNeXt as MonaiMedNeXt
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
from mednext_lite.variants import PRESETS, preset_config


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


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("variant", ["B", "M", "L"])
def test_monai_larger_presets_convert_to_the_monai_topology(variant, spatial_dims):
    with torch.device("meta"):
        theirs = monai_mednext(variant, spatial_dims=spatial_dims, in_channels=1, out_channels=3, kernel_size=5)
        _, config = convert_monai_state_dict(theirs.state_dict())
        ours = MedNeXt(config)
    # MONAI's B/M/L are the preset's stages with MONAI's down blocks, parameter for parameter
    assert config == preset_config(variant, 1, 3, 5, spatial_dims, topology="monai")
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    assert [ours.downs[i].conv2.out_channels // ours.downs[i].conv2.in_channels for i in range(4)] == list(
        PRESETS[variant].expansion_ratios[:4])  # down block i: R[i], where the reference uses R[i + 1]


def monai_net(ratios, spatial_dims, grn, residual=True, ds=True) -> MonaiMedNeXt:
    """MONAI's MedNeXt with a preset's nine ratios at width 4, its weights (GRN included) moved off their
    initial values so that every tensor matters."""
    torch.manual_seed(0)
    net = MonaiMedNeXt(spatial_dims=spatial_dims, init_filters=4, in_channels=1, out_channels=3,
                       encoder_expansion_ratio=ratios[:4], bottleneck_expansion_ratio=ratios[4],
                       decoder_expansion_ratio=ratios[5:], kernel_size=3, deep_supervision=ds,
                       use_residual_connection=residual, blocks_down=(1, 2, 1, 1), blocks_bottleneck=1,
                       blocks_up=(1, 1, 2, 1), global_resp_norm=grn).train()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("grn", [False, True])
@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("variant", ["B", "L"])  # M has B's ratios; block counts change no wiring
def test_monai_bml_weights_give_monais_outputs(variant, spatial_dims, grn):
    theirs = monai_net(PRESETS[variant].expansion_ratios, spatial_dims, grn)
    sd, config = convert_monai_state_dict(theirs.state_dict())
    assert (config.topology, config.grn, config.expansion_ratios) == ("monai", grn, PRESETS[variant].expansion_ratios)
    ours = MedNeXt(config).train()
    ours.load_state_dict(sd)
    # MONAI's down blocks never have a GRN, even when every other block does
    assert all(isinstance(d.grn, torch.nn.Identity) for d in ours.downs)
    assert all(not isinstance(u.grn, torch.nn.Identity) for u in ours.ups) == grn
    x = torch.randn(2, 1, *([32] * spatial_dims))
    with torch.no_grad():
        a = theirs(x)
        exact = ours.set_memory_format("contiguous")(x)
        fast = ours.set_memory_format("auto")(x)
    assert len(a) == len(exact) == len(fast) == 5
    for t, e, f in zip(a, exact, fast):
        assert (t - e).abs().max() < 1e-5
        assert (t - f).abs().max() < 5e-5
    # the same weights in the reference topology do not even fit: MONAI's is another network
    with pytest.raises(CheckpointError, match="do not fit the MedNeXt topology"):
        convert_monai_state_dict(theirs.state_dict(), config.replace(topology="reference"))


def test_monai_residual_flag_switches_both_residuals():
    theirs = monai_net(PRESETS["B"].expansion_ratios, 2, grn=False, residual=False, ds=False)
    sd, config = convert_monai_state_dict(theirs.state_dict())
    assert (config.residual, config.residual_up_down) == (False, False)  # one MONAI flag: both off
    ours = MedNeXt(config)
    ours.load_state_dict(sd)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert (theirs(x) - ours.set_memory_format("contiguous")(x)).abs().max() < 1e-5


def test_monai_windowed_layer_norm_is_refused_naming_the_reason():
    with torch.device("meta"):
        sd = MonaiMedNeXt(spatial_dims=3, init_filters=4, kernel_size=3, norm_type="layer").state_dict()
    with pytest.raises(CheckpointError, match=r"has shape \[4, 3, 3, 3\]: MONAI's norm_type='layer' normalises"):
        convert_monai_state_dict(sd)


def test_reference_grn_layout_has_no_grn_in_the_first_down_block():
    # MIC-DKFZ mednextv1 passes grn to every block but down_0; its GRN checkpoints have that key set
    ref = to_reference_state_dict(MedNeXt(small(grn=True)).state_dict())
    assert "down_0.grn_gamma" not in ref and {f"down_{i}.grn_gamma" for i in (1, 2, 3)} <= set(ref)
    assert {"enc_block_0.0.grn_gamma", "up_0.grn_gamma", "dec_block_0.0.grn_beta"} <= set(ref)
    _, config = convert_reference_state_dict(ref)
    assert (config.grn, config.topology) == (True, "reference")


@pytest.mark.parametrize("topology", ["monai", "v2"])
def test_down_blocks_the_reference_cannot_build_are_not_exported_to_its_layout(topology):
    sd = MedNeXt(small(grn=True, topology=topology)).state_dict()
    with pytest.raises(CheckpointError, match=rf"these weights have '{topology}' down blocks"):
        to_reference_state_dict(sd)


def test_a_mednext_lite_state_dict_tells_its_topology():
    for topology in ("reference", "monai", "v2"):
        model = MedNeXt(small(grn=True, topology=topology))
        assert load_foreign(model.state_dict(), layout="ours").config == model.config
    # without GRN, reference and v2 build the same network: the first name is read back
    assert load_foreign(MedNeXt(small(topology="v2")).state_dict(), layout="ours").config.topology == "reference"
