"""UpKern copies what matches, interpolates kernels exactly like F.interpolate, refuses the rest."""

import pytest
import torch
import torch.nn.functional as F

from mednext_lite import MedNeXt, MedNeXtConfig
from mednext_lite.checkpoint import save_checkpoint
from mednext_lite.upkern import UpKernError, upkern, upkern_tensor
from mednext_lite.variants import preset_config


def cfg(k: int, spatial_dims: int = 3, **kw) -> MedNeXtConfig:
    base = {"in_channels": 1, "num_classes": 3, "base_width": 4, "block_counts": 1, "expansion_ratios": 2,
                "enc_kernel_size": k, "dec_kernel_size": k, "spatial_dims": spatial_dims, "deep_supervision": True}
    base.update(kw)
    return MedNeXtConfig(**base)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_same_kernel_is_an_exact_copy(spatial_dims):
    torch.manual_seed(0)
    src, dst = MedNeXt(cfg(3, spatial_dims)), MedNeXt(cfg(3, spatial_dims))
    report = upkern(dst, src)
    assert not report.resized and not report.refused and report.ok
    for (n, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("k", [5, 7])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_larger_kernels_equal_interpolation_of_the_source(spatial_dims, k):
    torch.manual_seed(0)
    src, dst = MedNeXt(cfg(3, spatial_dims)), MedNeXt(cfg(k, spatial_dims))
    report = upkern(dst, src)
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    s, d = src.state_dict(), dst.state_dict()
    resized = {n for n, _, _ in report.resized}
    # every depthwise conv (5 stages' blocks + 4 downs + 4 ups = 9 + 8 = 17 with one block per stage)
    assert len(resized) == 17 and all(n.endswith("conv1.weight") for n in resized)
    for name in resized:
        expected = F.interpolate(s[name], size=(k,) * spatial_dims, mode=mode, align_corners=False)
        assert torch.equal(d[name], expected), name
    for name in set(s) - resized:  # biases, norms, 1x1 convs and all five heads are copied
        assert torch.equal(d[name], s[name]), name
    assert any(n.startswith("ds_heads.3") for n in report.copied)
    assert "17 kernels resized" in str(report) and "<table>" in report._repr_html_()


def test_v2_preset_k3_initialises_its_k5_at_tiny_width():
    torch.manual_seed(0)
    src = MedNeXt(preset_config("V2-B", 1, 3, 3, base_width=2, deep_supervision=True))
    with torch.no_grad():  # GRN starts at zero: give it values, so that copying it is seen
        for name, p in src.named_parameters():
            if ".grn." in name:
                p.normal_()
    dst = MedNeXt(preset_config("V2-B", 1, 3, 5, base_width=2, deep_supervision=True))
    report = upkern(dst, src)
    s, d = src.state_dict(), dst.state_dict()
    resized = {n for n, _, _ in report.resized}
    # v1-L's 54 blocks, 4 down and 4 up blocks: 62 depthwise kernels, each 3^3 -> 5^3
    assert len(resized) == 62 and all(n.endswith("conv1.weight") for n in resized) and report.ok
    for name in resized:
        assert torch.equal(d[name], F.interpolate(s[name], size=(5, 5, 5), mode="trilinear", align_corners=False))
    grn = [n for n in report.copied if ".grn." in n]
    assert len(grn) == 2 * 62 and "downs.0.grn.gamma" in grn  # every block's GRN, down block 0's included
    assert all(torch.equal(d[n], s[n]) for n in grn)
    # the reference topology has no GRN in down block 0: not a kernel-size difference, refused by name
    with pytest.raises(UpKernError, match=r"downs\.0\.grn\.gamma: in the source but not in the target"):
        upkern(MedNeXt(preset_config("V2-B", 1, 3, 5, base_width=2, deep_supervision=True, topology="reference")), src)


def test_source_may_be_state_dict_or_checkpoint_path(tmp_path):
    torch.manual_seed(0)
    src = MedNeXt(cfg(3))
    path = save_checkpoint(tmp_path / "k3.pt", src)
    a, b = MedNeXt(cfg(5)), MedNeXt(cfg(5))
    upkern(a, src.state_dict())
    upkern(b, path)
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n


def test_mismatched_width_is_refused_with_the_tensor_named():
    with pytest.raises(UpKernError, match=r"stem\.weight: source shape \[4, 1, 1, 1, 1\] vs target \[8, 1, 1, 1, 1\]"):
        upkern(MedNeXt(cfg(5, base_width=8)), MedNeXt(cfg(3)))
    target = MedNeXt(cfg(5, num_classes=2))
    before = target.head.conv.weight.clone()
    report = upkern(target, MedNeXt(cfg(3)), strict=False)
    assert {n for n, _ in report.refused} >= {"head.conv.weight", "head.conv.bias"}
    assert torch.equal(target.head.conv.weight, before) and not report.ok


def test_missing_deep_supervision_heads_are_refused():
    with pytest.raises(UpKernError, match=r"ds_heads\.0\.conv\.weight: missing from the source"):
        upkern(MedNeXt(cfg(5)), MedNeXt(cfg(3, deep_supervision=False)))


def test_upkern_tensor_axes_check():
    w = torch.randn(4, 1, 3, 3)
    assert upkern_tensor(w, 5).shape == (4, 1, 5, 5)
    with pytest.raises(ValueError, match="has 3 axes"):
        upkern_tensor(w, (5, 5, 5))
