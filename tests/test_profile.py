"""MACs, receptive field and memory figures agree with REFERENCE.md and with measurement."""

import pytest
import torch

from mednext_lite import MedNeXt, MedNeXtConfig
from mednext_lite.profile import (
    count_macs,
    format_table,
    measure_step_memory,
    preset_table,
    receptive_field,
)
from mednext_lite.variants import preset_config

GMAC_3D = {("S", 3): 127.3, ("S", 5): 165.6, ("B", 3): 166.7, ("B", 5): 205.0,
           ("M", 3): 243.6, ("M", 5): 303.7, ("L", 3): 494.6, ("L", 5): 558.9}
GMAC_2D = {("S", 3): 35.42, ("S", 5): 36.64, ("B", 3): 57.61, ("B", 5): 58.82,
           ("M", 3): 88.10, ("M", 5): 90.07, ("L", 3): 243.11, ("L", 5): 245.52}


def test_gmacs_match_reference_within_half_a_percent():
    for spatial_dims, table in ((3, GMAC_3D), (2, GMAC_2D)):
        rows = preset_table(spatial_dims)
        assert len(rows) == 8
        for row in rows:
            expected = table[(row["variant"], row["kernel"])]
            assert row["gmacs"] == pytest.approx(expected, rel=5e-3), row
    text = format_table(preset_table(3))
    assert "| L | 5 | 62,992,931 | 63.0M | 558.92 | 564 |" in text


def test_v2_rows_of_the_profile_table():
    rows = preset_table(3, family="v2")
    assert [(r["variant"], r["kernel"], r["params"]) for r in rows] == [
        ("V2-B", 3, 61_969_507), ("V2-W", 3, 246_536_387)]
    l3 = next(r for r in preset_table(3) if (r["variant"], r["kernel"]) == ("L", 3))
    b, w = rows
    # V2-B is L k3 plus GRN, which is no convolution: the same conv MACs and receptive field
    assert b["gmacs"] == l3["gmacs"] and b["receptive_field"] == w["receptive_field"] == l3["receptive_field"] == 741
    # twice the width: 4x the 1x1 convs' MACs, 2x the depthwise ones
    assert w["gmacs"] == pytest.approx(1942.46, abs=0.01) and 3.9 < w["gmacs"] / b["gmacs"] < 4
    assert "| V2-B | 3 | 61,969,507 | - | 494.61 | - | 741 |" in format_table(rows)
    assert len(preset_table(2, family="all")) == 10
    with pytest.raises(ValueError, match="family='v3': use one of"):
        preset_table(3, family="v3")


def test_macs_by_hand_for_a_single_conv_path():
    c = MedNeXtConfig(in_channels=1, num_classes=2, base_width=4, block_counts=1, expansion_ratios=1)
    # not exactly 8x: the up blocks' 1x1 convs run on the (2n-1)^3 grid before the one-voxel pad
    assert 8 < count_macs(c, (64, 64, 64)) / count_macs(c, (32, 32, 32)) < 8.3
    assert count_macs(c, (32, 32, 32), batch_size=2) == 2 * count_macs(c, (32, 32, 32))
    # the stem alone: 32^3 voxels x 1 input channel x 4 output channels
    stem_only = c.replace(in_channels=3)
    assert count_macs(stem_only, (32, 32, 32)) - count_macs(c, (32, 32, 32)) == 2 * 4 * 32**3
    with pytest.raises(ValueError, match="3D model"):
        count_macs(c, (16, 16))


def _empirical_rf(config: MedNeXtConfig, width: int) -> int:
    """Widest input-gradient support along the last axis over 16 output positions (GroupNorm bypassed)."""
    torch.manual_seed(0)
    model = MedNeXt(config).double()
    for m in model.modules():  # GroupNorm's image-wide statistics would make every voxel "visible"
        if isinstance(getattr(m, "norm", None), torch.nn.GroupNorm):
            m.norm = torch.nn.Identity()
    x = torch.randn(1, 1, 16, width, dtype=torch.double, requires_grad=True)
    y = model(x)
    widest = 0
    for o in range(width // 2, width // 2 + 16):
        (g,) = torch.autograd.grad(y[0, 0, 8, o], x, retain_graph=True)
        idx = torch.nonzero(g[0, 0].abs().sum(0)).flatten()
        widest = max(widest, int(idx.max() - idx.min()) + 1)
    return widest


@pytest.mark.parametrize("k,blocks", [(3, 1), (5, 1)])
def test_receptive_field_equals_gradient_support_of_the_real_network(k, blocks):
    config = MedNeXtConfig(in_channels=1, num_classes=1, base_width=1, block_counts=blocks, expansion_ratios=1,
                           enc_kernel_size=k, dec_kernel_size=k, spatial_dims=2)
    rf = receptive_field(config)
    assert rf == _empirical_rf(config, width=16 * ((rf + 80) // 16))


def test_receptive_field_grows_with_kernel_and_depth():
    s3, s5 = receptive_field(preset_config("S", kernel_size=3)), receptive_field(preset_config("S", kernel_size=5))
    m3 = receptive_field(preset_config("M", kernel_size=3))
    assert (s3, s5, m3) == (235, 485, 421)
    assert receptive_field(preset_config("S", kernel_size=3, spatial_dims=2)) == s3


def test_grad_checkpointing_lowers_measured_peak_memory():
    # The M preset's topology at a CPU-friendly size: 4 output classes, base width 32, 32^3 input.
    config = preset_config("M", 1, 4, 3, 3)
    plain = measure_step_memory(config, (1, 1, 32, 32, 32), grad_checkpointing=False)
    ckpt = measure_step_memory(config, (1, 1, 32, 32, 32), grad_checkpointing=True)
    assert ckpt["peak_bytes"] < plain["peak_bytes"]
    assert plain["seconds"] > 0 and ckpt["seconds"] > 0
