"""The network is the reference's, to the last parameter, in 2D and 3D."""

import pytest
import torch

from mednext_lite import MedNeXt, MedNeXtConfig, create_mednext
from mednext_lite.profile import count_parameters
from mednext_lite.variants import preset_config

# REFERENCE.md: in_channels=1, num_classes=3, no deep supervision; DS adds exactly 2,892.
EXACT = {
    ("S", 3, 3): 5_550_947, ("S", 3, 5): 5_980_579, ("S", 2, 3): 5_472_035, ("S", 2, 5): 5_542_179,
    ("B", 3, 3): 10_526_339, ("B", 3, 5): 10_955_971, ("B", 2, 3): 10_447_427, ("B", 2, 5): 10_517_571,
    ("M", 3, 3): 17_548_995, ("M", 3, 5): 18_260_867, ("M", 2, 3): 17_418_243, ("M", 2, 5): 17_534_467,
    ("L", 3, 3): 61_779_299, ("L", 3, 5): 62_992_931, ("L", 2, 3): 61_556_387, ("L", 2, 5): 61_754_531,
}
DS_EXTRA = 2_892


@pytest.mark.parametrize("deep_supervision", [False, True])
@pytest.mark.parametrize("variant,spatial_dims,k", sorted(EXACT))
def test_exact_parameter_counts(variant, spatial_dims, k, deep_supervision):
    config = preset_config(variant, 1, 3, k, spatial_dims, deep_supervision)
    with torch.device("meta"):
        model = MedNeXt(config)
    expected = EXACT[(variant, spatial_dims, k)] + (DS_EXTRA if deep_supervision else 0)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert count_parameters(config) == expected


def test_create_mednext_matches_preset_and_switches_checkpointing():
    assert create_mednext("s", 1, 3).config == preset_config("S", 1, 3)
    assert not create_mednext("S", 1, 3).grad_checkpointing
    with torch.device("meta"):
        assert create_mednext("M", 1, 3).grad_checkpointing
        assert create_mednext("L", 1, 3, spatial_dims=2).config.spatial_dims == 2
    with pytest.raises(ValueError, match="choose one of S, B, M, L"):
        create_mednext("XL", 1, 3)


# MedNeXt v2 (arXiv 2512.17774): in_channels=1, num_classes=3, no deep supervision, k3.
V2_EXACT = {"V2-B": 61_969_507, "V2-W": 246_536_387}


@pytest.mark.parametrize("variant", sorted(V2_EXACT))
def test_v2_presets_exact_parameter_counts(variant):
    config = preset_config(variant, 1, 3)
    assert (config.grn, config.topology, config.kernel_size) == (True, "v2", 3)
    assert config.expansion_ratios == config.block_counts == (3, 4, 8, 8, 8, 8, 8, 4, 3)  # v1-L's
    assert config.base_width == {"V2-B": 32, "V2-W": 64}[variant]
    assert count_parameters(config) == V2_EXACT[variant]
    # deep supervision adds four 1x1 heads reading 2C..16C channels
    c = config.base_width
    assert count_parameters(config.replace(deep_supervision=True)) - V2_EXACT[variant] == 3 * 30 * c + 4 * 3
    with torch.device("meta"):
        model = create_mednext(variant.lower(), 1, 3)
    assert model.config == config and model.grad_checkpointing


def test_topology_decides_only_the_down_blocks_ratio_and_grn():
    r = (1, 2, 3, 4, 5, 6, 7, 8, 9)
    built = {t: MedNeXt(tiny(expansion_ratios=r, grn=True, topology=t)) for t in ("reference", "monai", "v2")}
    expected = {  # (ratio, has GRN) of down blocks 0..3
        "reference": [(2, False), (3, True), (4, True), (5, True)],  # MIC-DKFZ mednextv1 leaves down_0 without GRN
        "monai": [(1, False), (2, False), (3, False), (4, False)],  # R[i], and no GRN in any down block
        "v2": [(2, True), (3, True), (4, True), (5, True)],
    }
    for topology, model in built.items():
        got = [(d.conv2.out_channels // d.conv2.in_channels, not isinstance(d.grn, torch.nn.Identity))
               for d in model.downs]
        assert got == expected[topology], topology
        assert model.config.down_ratio(0) == expected[topology][0][0]
        others = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("downs.")}
        assert others == {k: v.shape for k, v in built["reference"].state_dict().items() if not k.startswith("downs.")}
    # the reference's one missing GRN: gamma and beta of R[1] * C channels
    assert count_parameters(built["v2"].config) - count_parameters(built["reference"].config) == 2 * 2 * 4
    assert count_parameters(preset_config("V2-B", 1, 3, topology="reference")) == V2_EXACT["V2-B"] - 2 * 4 * 32
    # without GRN the reference and v2 topologies are one network
    assert count_parameters(tiny(topology="v2")) == count_parameters(tiny())
    with pytest.raises(ValueError, match=r"topology='nnunet' is not one of \('reference', 'monai', 'v2'\)"):
        tiny(topology="nnunet")


def tiny(**kw) -> MedNeXtConfig:
    base = {"in_channels": 2, "num_classes": 3, "base_width": 4, "block_counts": 1, "expansion_ratios": 2, "spatial_dims": 3}
    base.update(kw)
    return MedNeXtConfig(**base)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_shapes_and_deep_supervision_in_train_and_eval(spatial_dims):
    torch.manual_seed(0)
    model = MedNeXt(tiny(spatial_dims=spatial_dims, deep_supervision=True))
    x = torch.randn(2, 2, *([32] * spatial_dims))
    for mode in (model.train, model.eval):
        mode()
        out = model(x)
        assert isinstance(out, list) and len(out) == 5
        for i, o in enumerate(out):  # [full, 1/2, 1/4, 1/8, 1/16]
            assert o.shape == (2, 3, *([32 // 2**i] * spatial_dims))
    with model.full_resolution_only():
        assert model(x).shape == (2, 3, *([32] * spatial_dims))
    assert isinstance(model(x), list)  # the context restores deep supervision
    full = model(x)[0]
    model.set_deep_supervision(False)
    assert torch.equal(model(x), full)  # the full-resolution output is the same tensor either way
    with pytest.raises(ValueError, match="deep_supervision=True"):
        MedNeXt(tiny()).set_deep_supervision(True)


def test_anisotropic_input_and_batch_independence():
    model = MedNeXt(tiny()).eval()
    x = torch.randn(2, 2, 16, 32, 48)
    out = model(x)
    assert out.shape == (2, 3, 16, 32, 48)
    torch.testing.assert_close(model(x[1:]), out[1:], rtol=1e-5, atol=1e-5)


def test_input_errors_name_value_and_fix():
    model = MedNeXt(tiny())
    with pytest.raises(ValueError, match=r"spatial size 100 .* not divisible by 16: pad to 112 or crop to 96"):
        model(torch.randn(1, 2, 32, 100, 32))
    with pytest.raises(ValueError, match=r"spatial size 8 .*pad to 16"):
        model(torch.randn(1, 2, 32, 8, 32))
    with pytest.raises(ValueError, match=r"3 channels but the model expects in_channels=2"):
        model(torch.randn(1, 3, 32, 32, 32))
    with pytest.raises(ValueError, match=r"one voxel per channel at the 1/16 bottleneck"):
        model(torch.randn(1, 2, 16, 16, 16))
    assert model(torch.randn(2, 2, 16, 16, 16)).shape == (2, 3, 16, 16, 16)  # a batch of 2 is enough
    assert MedNeXt(tiny(norm="layer"))(torch.randn(1, 2, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
    with pytest.raises(ValueError, match=r"expected a 5D input"):
        model(torch.randn(2, 32, 32, 32))


def test_config_validation_and_roundtrip():
    with pytest.raises(ValueError, match="expected 9"):
        MedNeXtConfig(block_counts=(2, 2, 2))
    with pytest.raises(ValueError, match="odd"):
        MedNeXtConfig(enc_kernel_size=4)
    with pytest.raises(ValueError, match="norm='batch'"):
        MedNeXtConfig(norm="batch")
    with pytest.raises(TypeError, match="unknown MedNeXtConfig field"):
        MedNeXtConfig().replace(kernel=5)
    c = preset_config("L", 4, 7, 5, 2, True)
    assert MedNeXtConfig.from_dict(c.to_dict()) == c
    assert c.replace(kernel_size=3).enc_kernel_size == c.replace(kernel_size=3).dec_kernel_size == 3


def test_separate_encoder_decoder_kernels():
    model = MedNeXt(tiny(enc_kernel_size=3, dec_kernel_size=5))
    assert model.encoders[0][0].conv1.kernel_size == (3, 3, 3)
    assert model.downs[3].conv1.kernel_size == (3, 3, 3)
    assert model.bottleneck[0].conv1.kernel_size == (5, 5, 5)
    assert model.ups[0].conv1.kernel_size == (5, 5, 5)
    assert model.decoders[0][0].conv1.kernel_size == (5, 5, 5)


def test_down_block_uses_next_stage_ratio_and_up_block_its_decoder_stage():
    r = (1, 2, 3, 4, 5, 6, 7, 8, 9)
    model = MedNeXt(tiny(expansion_ratios=r))
    for i in range(4):
        down = model.downs[i].conv2
        assert down.out_channels // down.in_channels == r[i + 1]
        up = model.ups[i].conv2
        assert up.out_channels // up.in_channels == r[8 - i]
        assert model.decoders[i][0].conv2.out_channels // model.decoders[i][0].conv2.in_channels == r[8 - i]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_grad_checkpointing_gives_identical_gradients(spatial_dims):
    torch.manual_seed(0)
    model = MedNeXt(tiny(spatial_dims=spatial_dims, deep_supervision=True))
    x = torch.randn(1, 2, *([32] * spatial_dims))

    def grads(checkpointing: bool):
        model.zero_grad(set_to_none=True)
        model.set_grad_checkpointing(checkpointing)
        sum(o.square().mean() for o in model(x)).backward()
        return [p.grad.clone() for p in model.parameters()]

    plain, ckpt = grads(False), grads(True)
    assert all(g is not None for g in plain)
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("norm,grn", [("layer", False), ("group", True), ("layer", True)])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_layernorm_and_grn_variants_train(spatial_dims, norm, grn):
    torch.manual_seed(0)
    model = MedNeXt(tiny(spatial_dims=spatial_dims, norm=norm, grn=grn))
    x = torch.randn(2, 2, *([16] * spatial_dims))
    out = model(x)
    assert out.shape == (2, 3, *([16] * spatial_dims)) and torch.isfinite(out).all()
    out.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    if grn:  # GRN starts as the identity (gamma = beta = 0) but receives gradient
        assert model.encoders[0][0].grn.gamma.abs().sum() == 0
        assert model.encoders[0][0].grn.gamma.grad.abs().sum() > 0


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_channels_last_gives_same_outputs_and_gradients(spatial_dims):
    torch.manual_seed(0)
    model = MedNeXt(tiny(spatial_dims=spatial_dims, enc_kernel_size=5, dec_kernel_size=5))
    x = torch.randn(2, 2, *([16] * spatial_dims))
    ref = model(x)
    ref.square().mean().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    fmt = torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
    model.zero_grad(set_to_none=True)
    model = model.to(memory_format=fmt)
    out = model(x.to(memory_format=fmt))
    out.square().mean().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for a, p in zip(ref_grads, model.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-3, atol=1e-5)


def test_channels_last_training_step_does_not_crash_the_process():
    # PyTorch 2.13's CPU backward of a strided 1x1 conv on channels-last tensors segfaults for this
    # shape; the down block's residual path must avoid that kernel. Run in a child so a crash fails
    # this test instead of killing the test session.
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from mednext_lite import MedNeXt, MedNeXtConfig\n"
        "m = MedNeXt(MedNeXtConfig(in_channels=1, num_classes=3, base_width=8, block_counts=1, spatial_dims=2))\n"
        "m.set_memory_format('channels_last')\n"
        "for _ in range(3):\n"
        "    m(torch.randn(2, 1, 48, 48)).sum().backward()\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_floating_input_of_another_dtype_is_refused_naming_both_dtypes_and_the_fixes(dtype):
    model = MedNeXt(tiny(spatial_dims=2))
    x = torch.randn(2, 2, 16, 16)
    with pytest.raises(TypeError, match=rf"input dtype {dtype} differs from the model's parameter dtype "
                                        r"torch.float32: cast the input with x.to\(model.dtype\)") as err:
        model(x.to(dtype))
    assert f"model.to({dtype})" in str(err.value) and "torch.autocast('cpu')" in str(err.value)
    # the reverse: a float32 input to a model cast to the other dtype
    with pytest.raises(TypeError, match=rf"input dtype torch.float32 differs from the model's parameter dtype {dtype}"):
        MedNeXt(tiny(spatial_dims=2)).to(dtype)(x)
    assert model.dtype == torch.float32 and model.to(dtype).dtype == dtype
    assert model(x.to(dtype)).dtype == dtype  # the matching pair runs


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
def test_integer_and_bool_input_is_refused_with_the_cast_to_make(dtype):
    model = MedNeXt(tiny(spatial_dims=2))
    with pytest.raises(TypeError, match=rf"input dtype {dtype} is not a floating-point type.*x\.float\(\)"):
        model(torch.ones(2, 2, 16, 16, dtype=dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(TypeError, match="not a floating-point"):
        model(torch.ones(2, 2, 16, 16, dtype=dtype))
    with pytest.raises(TypeError, match="expected a torch.Tensor, got ndarray"):
        model(torch.ones(2, 2, 16, 16).numpy())


def test_autocast_still_takes_low_precision_input_but_never_float64():
    torch.manual_seed(0)
    model = MedNeXt(tiny(spatial_dims=2)).eval()
    x = torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                out = model(x.to(dtype))
                assert out.dtype == torch.bfloat16
                torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)
            with pytest.raises(TypeError, match=r"torch.float64 .*autocast does not cast float64"):
                model(x.double())


def test_meta_models_pass_the_check():
    # the check reads only metadata, so shape-only runs on the meta device go through it unchanged
    with torch.device("meta"):
        model = MedNeXt(tiny(spatial_dims=2))
        assert model.device.type == "meta"
        assert model(torch.empty(2, 2, 16, 16)).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"input is on cpu but the model's parameters are on meta: move the input"):
        model(torch.randn(2, 2, 16, 16))


MIXED_POLICY = ("expansion", None, "block", "expansion", "block", None, "expansion", "block", "expansion")


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("policy", ["expansion", MIXED_POLICY])
def test_checkpointing_policies_give_identical_gradients(one_thread, spatial_dims, policy):
    torch.manual_seed(0)
    model = MedNeXt(tiny(spatial_dims=spatial_dims, deep_supervision=True, grn=True))
    x = torch.randn(2, 2, *([16] * spatial_dims))

    def grads(p):
        model.zero_grad(set_to_none=True)
        model.set_grad_checkpointing(p)
        sum(o.square().mean() for o in model(x)).backward()
        return [q.grad.clone() for q in model.parameters()]

    plain, ckpt = grads(None), grads(policy)
    assert model.grad_checkpointing and all(g is not None for g in plain)
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_expansion_policy_recomputes_only_the_wide_part():
    """Under "expansion" the backward pass runs each 1x1 expansion again and never a depthwise conv;
    under "block" both run again; with no grad (inference) nothing is checkpointed."""
    torch.manual_seed(0)
    model = MedNeXt(tiny())
    x = torch.randn(2, 2, 16, 16, 16)
    block = model.encoders[1][0]
    calls = {"conv1": 0, "conv2": 0}
    block.conv1.register_forward_hook(lambda *a: calls.__setitem__("conv1", calls["conv1"] + 1))
    block.conv2.register_forward_hook(lambda *a: calls.__setitem__("conv2", calls["conv2"] + 1))
    for policy, expected in ((None, (1, 1)), ("expansion", (1, 2)), ("block", (2, 2))):
        calls.update(conv1=0, conv2=0)
        model.set_grad_checkpointing(policy)
        model(x).sum().backward()
        assert (calls["conv1"], calls["conv2"]) == expected, policy
    calls.update(conv1=0, conv2=0)
    with torch.no_grad():
        model.set_grad_checkpointing("expansion")(x)
    assert (calls["conv1"], calls["conv2"]) == (1, 1)


def test_checkpointing_policy_per_stage_reaches_the_right_blocks():
    model = MedNeXt(tiny(block_counts=2)).set_grad_checkpointing(MIXED_POLICY)
    assert model.checkpoint_policy == MIXED_POLICY
    # stage 1 holds the down block after enc0; stage 8 the up block feeding dec0
    assert model.stage_modules(1)[0] is model.downs[0] and model.stage_modules(8)[0] is model.ups[0]
    assert [m.checkpoint_expansion for m in model.stage_modules(0)] == [True, True]
    assert not any(m.checkpoint_expansion for s in (1, 2, 4, 5, 7) for m in model.stage_modules(s))
    assert all(m.checkpoint_expansion for s in (3, 6, 8) for m in model.stage_modules(s))
    assert sum(len(model.stage_modules(s)) for s in range(9)) == 9 * 2 + 8
    assert model.set_grad_checkpointing(True).checkpoint_policy == ("block",) * 9
    assert not model.set_grad_checkpointing(False).grad_checkpointing
    assert not any(getattr(m, "checkpoint_expansion", False) for m in model.modules())


@pytest.mark.parametrize("bad,error,match", [
    ("blocks", ValueError, r"'blocks'.*None \(off\), 'block' or 'expansion'"),
    (("block",) * 8, ValueError, r"8 entries, expected 9"),
    ((None,) * 8 + ("on",), ValueError, r"stage dec0 is 'on'"),
    (3, TypeError, r"grad checkpointing 3: use True, False"),
])
def test_bad_checkpointing_policies_are_named(bad, error, match):
    with pytest.raises(error, match=match):
        MedNeXt(tiny()).set_grad_checkpointing(bad)
