"""The speed paths change where numbers sit, never which numbers come out (nothing here is timed)."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mednext_lite import MedNeXt, MedNeXtBlock, MedNeXtConfig, MedNeXtUpBlock, fast
from mednext_lite.blocks import make_norm
from mednext_lite.fast.allocator import keep_freed_memory
from mednext_lite.fast.conv import (
    DepthwiseConv2d,
    DepthwiseConv3d,
    DepthwiseTransposedConv2d,
    DepthwiseTransposedConv3d,
    PointwiseConv2d,
    PointwiseConv3d,
    _DepthwiseGrad,
    _TransposedDepthwiseGrad,
    depthwise_weight_grad_2d,
    pointwise_conv,
)
from mednext_lite.fast.layout import (
    as_memory_format,
    channels_last_format,
    preferred_memory_format,
    resolve_memory_format,
    to_channels_last,
)
from mednext_lite.fast.norm import (
    PerChannelGroupNorm,
    _NormPointwise,
    _PerChannelNorm,
    fold_applies,
)


def tiny(spatial_dims: int, **kw) -> MedNeXtConfig:
    base = {"in_channels": 2, "num_classes": 3, "base_width": 4, "block_counts": 1, "expansion_ratios": 2,
                "spatial_dims": spatial_dims, "enc_kernel_size": 5, "dec_kernel_size": 3}
    base.update(kw)
    return MedNeXtConfig(**base)


def outputs_and_grads(model: MedNeXt, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    out = out if isinstance(out, list) else [out]
    sum((o * torch.linspace(-1, 1, o.numel()).view(o.shape)).sum() for o in out).backward()
    return [o.detach() for o in out], {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_channels_last_matches(ours: nn.Module, plain: nn.Module, x: torch.Tensor, grad_atol: float) -> torch.Tensor:
    """``ours`` on channels-last ``x`` gives ``plain``'s output on channels-first ``x`` (staying
    channels-last), and the same gradients for the input, weight and bias; returns the output."""
    fmt = channels_last_format(x.ndim - 2)
    x_cl = x.contiguous(memory_format=fmt).requires_grad_(True)
    x_ref = x.detach().contiguous().requires_grad_(True)
    y, y_ref = ours(x_cl), plain(x_ref)
    assert y.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(y, y_ref)
    noise = torch.randn_like(y_ref)
    grads = torch.autograd.grad((y * noise).sum(), (x_cl, ours.weight, ours.bias))
    grads_ref = torch.autograd.grad((y_ref * noise).sum(), (x_ref, plain.weight, plain.bias))
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=grad_atol * float(r.abs().max()))
    return y.detach()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_channels_last_gives_the_same_outputs_and_gradients(spatial_dims):
    torch.manual_seed(0)
    model = MedNeXt(tiny(spatial_dims, deep_supervision=True)).train()
    x = torch.randn(2, 2, *([32] * spatial_dims))
    ref_out, ref_grads = outputs_and_grads(model.set_memory_format("contiguous"), x)
    out, grads = outputs_and_grads(model.set_memory_format("channels_last"), x)
    assert len(out) == 5
    for a, b in zip(ref_out, out):
        assert b.is_contiguous()  # logits always leave in the default layout
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert ref_grads.keys() == grads.keys()
    # Tolerance relative to the largest gradient: the depthwise biases feed a per-channel norm, so
    # their true gradient is 0 and both layouts return rounding noise there.
    scale = max(g.abs().max() for g in ref_grads.values())
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=0, atol=1e-4 * scale, msg=name)
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_auto_layout_is_channels_last_on_cpu_and_features_stay_there():
    model = MedNeXt(tiny(3)).eval()
    assert model.memory_format == "auto"
    features = model.forward_features(torch.randn(1, 2, 32, 32, 32))
    assert all(f.is_contiguous(memory_format=torch.channels_last_3d) for f in features)
    features = model.set_memory_format("contiguous").forward_features(torch.randn(1, 2, 32, 32, 32))
    assert all(f.is_contiguous() for f in features)


def test_a_one_channel_input_reaches_the_stem_in_channels_last_strides():
    # same memory, so no copy; the stem then writes channels-last itself instead of being copied over
    x = torch.randn(2, 1, 4, 4)
    cl = as_memory_format(x, torch.channels_last)
    assert cl.data_ptr() == x.data_ptr() and cl.stride() == (16, 1, 4, 1) and torch.equal(cl, x)
    assert as_memory_format(x, torch.contiguous_format) is x
    assert as_memory_format(torch.randn(2, 3, 4, 4), torch.channels_last).is_contiguous(memory_format=torch.channels_last)
    model = MedNeXt(tiny(3, in_channels=1)).eval()
    stem_out = []
    model.stem.register_forward_hook(lambda m, i, o: stem_out.append(o))
    model(torch.randn(1, 1, 32, 32, 32))
    assert stem_out[0].is_contiguous(memory_format=torch.channels_last_3d)


def test_checkpointing_in_channels_last_gives_identical_gradients():
    torch.manual_seed(0)
    model = MedNeXt(tiny(3)).set_memory_format("channels_last")
    x = torch.randn(2, 2, 32, 32, 32)
    _, plain = outputs_and_grads(model, x)
    _, ckpt = outputs_and_grads(model.set_grad_checkpointing(True), x)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("spatial_dims,cls,base", [(2, PointwiseConv2d, nn.Conv2d), (3, PointwiseConv3d, nn.Conv3d)])
def test_pointwise_conv_is_a_conv_in_every_layout(spatial_dims, cls, base):
    torch.manual_seed(0)
    conv = pointwise_conv(spatial_dims, 6, 10)
    assert type(conv) is cls and isinstance(conv, base)
    assert conv.weight.shape == (10, 6) + (1,) * spatial_dims
    plain = base(6, 10, kernel_size=1)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 6, *([5] * spatial_dims))
    seen = []
    conv.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    fmt = channels_last_format(spatial_dims)
    y_cl = conv(x.contiguous(memory_format=fmt))
    assert y_cl.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(y_cl, plain(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(conv(x), plain(x), rtol=0, atol=0)  # channels-first: the conv itself
    assert len(seen) == 2  # forward hooks (MAC counters, teaching probes) still fire


@pytest.mark.parametrize("spatial_dims,k", [(2, 3), (2, 5), (2, 7), (3, 3)])
def test_depthwise_backward_passes_gradcheck(spatial_dims, k):
    torch.manual_seed(0)
    conv = (DepthwiseConv2d if spatial_dims == 2 else DepthwiseConv3d)(2, 2, k, padding=k // 2, groups=2).double()
    x = torch.randn(2, 2, *([4] * spatial_dims), dtype=torch.double)
    x = x.contiguous(memory_format=channels_last_format(spatial_dims)).requires_grad_(True)
    # finite differences against the hand-written backward, for the input, weight and bias
    assert torch.autograd.gradcheck(lambda inp, w, b: _DepthwiseGrad.apply(inp, w, b, k // 2),
                                    (x, conv.weight, conv.bias))


@pytest.mark.parametrize("spatial_dims,k", [(2, 5), (3, 3), (3, 5)])
def test_depthwise_conv_matches_pytorch_in_channels_last(spatial_dims, k):
    torch.manual_seed(0)
    conv = (DepthwiseConv2d if spatial_dims == 2 else DepthwiseConv3d)(8, 8, k, padding=k // 2, groups=8)
    plain = getattr(nn, f"Conv{spatial_dims}d")(8, 8, k, padding=k // 2, groups=8)
    plain.load_state_dict(conv.state_dict())
    assert_channels_last_matches(conv, plain, torch.randn(2, 8, *([12] * spatial_dims)), grad_atol=1e-4)


@pytest.mark.parametrize("k", [1, 3, 5, 7, 9])
@pytest.mark.parametrize("stride", [1, 2])
def test_2d_depthwise_weight_gradient_in_strips_equals_the_direct_one(k, stride):
    # k x 3 strips cover k x k exactly for k = 3, 9 and overhang by 1-2 columns for 5 and 7
    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, 13, dtype=torch.double).contiguous(memory_format=torch.channels_last)
    w = torch.randn(3, 1, k, k, dtype=torch.double, requires_grad=True)
    y = nn.functional.conv2d(x, w, stride=stride, padding=k // 2, groups=3)
    grad = torch.randn_like(y).contiguous(memory_format=torch.channels_last)
    direct = torch.autograd.grad((y * grad).sum(), w)[0]
    strips = depthwise_weight_grad_2d(grad, x, k, stride=stride)
    assert strips.shape == (3, 1, k, k)
    torch.testing.assert_close(strips, direct, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spatial_dims,k", [(2, 3), (2, 5), (2, 7), (3, 3), (3, 5)])
def test_transposed_depthwise_conv_is_pytorchs_in_channels_last(spatial_dims, k):
    torch.manual_seed(0)
    fmt = channels_last_format(spatial_dims)
    # finite differences, in float64, through the hand-written backward
    x64 = torch.randn(2, 2, *([3] * spatial_dims), dtype=torch.double).contiguous(memory_format=fmt)
    w64 = torch.randn(2, 1, *([k] * spatial_dims), dtype=torch.double)
    b64 = torch.randn(2, dtype=torch.double)
    assert torch.autograd.gradcheck(lambda a, w, b: _TransposedDepthwiseGrad.apply(a, w, b, k // 2),
                                    tuple(t.requires_grad_(True) for t in (x64, w64, b64)))
    cls = DepthwiseTransposedConv2d if spatial_dims == 2 else DepthwiseTransposedConv3d
    conv = cls(6, 6, k, stride=2, padding=k // 2, groups=6)
    plain = getattr(nn, f"ConvTranspose{spatial_dims}d")(6, 6, k, stride=2, padding=k // 2, groups=6)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 6, *([7] * spatial_dims))
    y = assert_channels_last_matches(conv, plain, x, grad_atol=1e-5)
    assert y.shape == (2, 6, *([13] * spatial_dims))
    assert torch.equal(conv(x), plain(x))  # channels-first: PyTorch's kernel itself


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_up_block_residual_as_a_product_is_the_transposed_1x1_conv(spatial_dims):
    torch.manual_seed(0)
    block = MedNeXtUpBlock(8, spatial_dims=spatial_dims, kernel_size=3, expansion_ratio=2)
    with torch.no_grad():
        block.res_conv.bias.uniform_(-1, 1)  # the bias lands on all but the first index of each axis
    x_ref = torch.randn(2, 8, *([5] * spatial_dims), requires_grad=True)
    x = x_ref.detach().contiguous(memory_format=channels_last_format(spatial_dims)).requires_grad_(True)
    y_ref, y = block(x_ref), block(x)
    assert y.shape == (2, 4, *([10] * spatial_dims))
    torch.testing.assert_close(y, y_ref)
    noise = torch.randn_like(y_ref)
    params = [block.res_conv.weight, block.res_conv.bias]
    grads = torch.autograd.grad((y * noise).sum(), [x, *params])
    grads_ref = torch.autograd.grad((y_ref * noise).sum(), [x_ref, *params])
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5 * float(r.abs().max()))


@pytest.mark.parametrize("spatial_dims,batch", [(2, 1), (2, 2), (3, 1), (3, 2)])
def test_norm_folded_into_the_expansion_is_groupnorm_then_conv(spatial_dims, batch):
    # one 2D image runs oneDNN's 1x1 conv, everything else batched matrix products: both are checked
    torch.manual_seed(0)
    fmt = channels_last_format(spatial_dims)
    conv = getattr(F, f"conv{spatial_dims}d")
    shape = (batch, 3, *([4] * spatial_dims))
    x64 = (torch.randn(shape, dtype=torch.double) * 3 + 50).contiguous(memory_format=fmt)  # offset mean
    params = [torch.rand(3, dtype=torch.double) + 0.5, torch.randn(3, dtype=torch.double),
              torch.randn(5, 3, *([1] * spatial_dims), dtype=torch.double), torch.randn(5, dtype=torch.double)]
    inputs = [x64, *params]
    for t in inputs:
        t.requires_grad_(True)

    def fused(x, gamma, beta, w, b):
        return _NormPointwise.apply(x, gamma, beta, 1e-5, w, b)

    def reference(x, gamma, beta, w, b):
        return conv(F.group_norm(x.contiguous(), 3, gamma, beta, 1e-5), w, b)

    y = fused(*inputs)
    assert y.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(y, reference(*inputs), rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(fused, inputs)


def test_blocks_fold_the_norm_only_when_nothing_watches_it():
    torch.manual_seed(0)
    block = MedNeXtBlock(4, spatial_dims=2, expansion_ratio=2)
    x = torch.randn(1, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    assert fold_applies(x, block.norm, block.conv2)
    assert not fold_applies(x.contiguous(), block.norm, block.conv2)  # channels-first: PyTorch's GroupNorm
    layer = MedNeXtBlock(4, spatial_dims=2, norm="layer")
    assert not fold_applies(x, layer.norm, layer.conv2)
    fused = block(x)
    seen = []
    handle = block.norm.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    assert not fold_applies(x, block.norm, block.conv2)
    torch.testing.assert_close(block(x), fused)  # the hook sees the norm run, the output is the same
    assert seen == [(1, 4, 8, 8)]
    handle.remove()
    assert fold_applies(x, block.norm, block.conv2)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_per_channel_norm_is_groupnorm_in_channels_last(spatial_dims):
    torch.manual_seed(0)
    norm = make_norm("group", 6)
    assert type(norm) is PerChannelGroupNorm and isinstance(norm, nn.GroupNorm)
    assert list(norm.state_dict()) == ["weight", "bias"] and norm.num_groups == 6
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-1, 1)
    plain = nn.GroupNorm(6, 6)
    plain.load_state_dict(norm.state_dict())
    fmt = channels_last_format(spatial_dims)
    # an offset mean, where a one-pass variance would lose digits
    x = (torch.randn(2, 6, *([9] * spatial_dims)) * 3 + 50).contiguous(memory_format=fmt).requires_grad_(True)
    x_ref = x.detach().contiguous().requires_grad_(True)
    y, y_ref = norm(x), plain(x_ref)
    assert y.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    noise = torch.randn_like(y_ref)
    grads = torch.autograd.grad((y * noise).sum(), (x, norm.weight, norm.bias))
    grads_ref = torch.autograd.grad((y_ref * noise).sum(), (x_ref, plain.weight, plain.bias))
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5 * float(r.abs().max()))
    # finite differences, in float64, through the hand-written backward
    x64 = torch.randn(2, 3, *([4] * spatial_dims), dtype=torch.double).contiguous(memory_format=fmt)
    w64, b64 = torch.rand(3, dtype=torch.double) + 0.5, torch.randn(3, dtype=torch.double)
    assert torch.autograd.gradcheck(lambda a, w, b: _PerChannelNorm.apply(a, w, b, 1e-5),
                                    (x64.requires_grad_(True), w64.requires_grad_(True), b64.requires_grad_(True)))


def test_blocks_use_the_fast_depthwise_conv_only_where_it_applies():
    assert type(MedNeXtBlock(4, spatial_dims=3).conv1) is DepthwiseConv3d
    assert type(MedNeXtBlock(4, spatial_dims=2).conv1) is DepthwiseConv2d
    model = MedNeXt(tiny(3))
    assert type(model.downs[0].conv1) is nn.Conv3d  # PyTorch's strided kernel is fast in both directions
    assert type(model.ups[0].conv1) is DepthwiseTransposedConv3d and isinstance(model.ups[0].conv1, nn.ConvTranspose3d)


def test_memory_format_choices_and_errors():
    assert preferred_memory_format("cpu", 3) == torch.channels_last_3d
    assert preferred_memory_format("cpu", 2) == torch.channels_last
    assert preferred_memory_format(torch.device("cuda"), 3) == torch.contiguous_format
    assert resolve_memory_format("contiguous", "cpu", 3) == torch.contiguous_format
    assert resolve_memory_format("channels_last", "cuda", 2) == torch.channels_last
    with pytest.raises(ValueError, match=r"memory_format='nhwc' is not one of \('auto', 'channels_last', 'contiguous'\)"):
        resolve_memory_format("nhwc", "cpu", 3)
    with pytest.raises(ValueError, match="spatial_dims=4 is not supported: use 2 or 3"):
        channels_last_format(4)
    with pytest.raises(ValueError, match="memory_format='fast' is not one of"):
        MedNeXt(tiny(2)).set_memory_format("fast")


def test_to_channels_last_keeps_values_and_switches_the_model():
    torch.manual_seed(0)
    model = MedNeXt(tiny(3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert to_channels_last(model) is model
    assert model.memory_format == "channels_last"
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in model.parameters() if p.ndim == 5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc/self/stat are Linux's")
def test_keep_freed_memory_stops_page_faults_on_reused_feature_maps():
    # Process-wide, so in a child. Three 40 MiB tensors alive at once and freed, five times over, like
    # a step's large 3D feature maps: glibc's default mmaps and unmaps each one (a page fault per
    # 4 KiB page, every time); once the switch is on, the heap keeps them and they fault no more.
    code = (
        "import torch\n"
        "from mednext_lite.fast.allocator import keep_freed_memory\n"
        "def faults():\n"
        "    return int(open('/proc/self/stat').read().rsplit(')', 1)[1].split()[7])\n"
        "def churn():\n"
        "    before = faults()\n"
        "    for _ in range(5):\n"
        "        maps = [torch.ones(40 * 2**20, dtype=torch.uint8) for _ in range(3)]\n"
        "        del maps\n"
        "    return faults() - before\n"
        "default = churn()\n"
        "assert keep_freed_memory() is True\n"
        "churn()\n"  # the heap grows once
        "kept = churn()\n"
        "assert default > 5 * 3 * 40 * 256 * 0.9 and kept * 100 < default, (default, kept)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_keep_freed_memory_rejects_a_threshold_mallopt_cannot_take():
    with pytest.raises(ValueError, match=r"threshold_bytes=4294967296 must be in 1\.\.2147483647"):
        keep_freed_memory(2**32)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_cpu_autocast_trains_through_the_fast_paths(spatial_dims):
    # the hand-written backwards must step aside under autocast (bf16 grads against fp32 weights)
    torch.manual_seed(0)
    model = MedNeXt(tiny(spatial_dims)).set_memory_format("channels_last")
    x = torch.randn(1, 2, *([32] * spatial_dims))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.fixture
def switch_restored():
    previous = fast.enabled()
    yield
    fast.enabled(previous)


def test_the_switch_reads_sets_and_returns_the_previous_setting(switch_restored):
    assert fast.enabled() is True  # on by default
    assert fast.enabled(False) is True and fast.enabled() is False
    assert fast.enabled(True) is False and fast.enabled() is True
    with pytest.raises(TypeError, match="flag=1 must be True, False or None"):
        fast.enabled(1)


def test_applies_truth_table(switch_restored):
    x = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    conv = nn.Conv2d(3, 3, 1)
    assert fast.applies(x) and fast.applies(x.double()) and fast.applies(x, conv)
    assert fast.applies(torch.randn(2, 3, 4, 4, 4).contiguous(memory_format=torch.channels_last_3d))
    assert not fast.applies(x.contiguous())  # channels-first
    assert not fast.applies(x.half()) and not fast.applies(x.bfloat16())
    assert not fast.applies(x.to("meta"))  # not a CPU tensor
    assert not fast.applies(torch.randn(2, 3, 4))  # 3-D
    one = torch.randn(2, 1, 4, 4)  # passes PyTorch's channels-last test with channels-first strides
    assert one.is_contiguous(memory_format=torch.channels_last) and not fast.applies(one)
    assert fast.applies(as_memory_format(one, torch.channels_last))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fast.applies(x)
    handle = conv.register_forward_hook(lambda m, i, o: None)
    assert not fast.applies(x, conv) and fast.applies(x)  # hooks matter only on modules a path skips
    handle.remove()
    handle = conv.register_full_backward_hook(lambda m, gi, go: None)
    assert not fast.applies(x, conv)
    handle.remove()
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    assert not fast.applies(x, conv) and fast.applies(x)
    handle.remove()
    assert fast.applies(x, conv)
    fast.enabled(False)
    assert not fast.applies(x) and not fast.applies(x, conv)


def custom_function_nodes(out: torch.Tensor) -> set[str]:
    """Names of the hand-written autograd Functions in ``out``'s backward graph."""
    seen, names, todo = set(), set(), [out.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            names.add(type(node).__name__)
        todo.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_switch_off_runs_plain_pytorch_with_the_same_outputs_and_gradients(spatial_dims, switch_restored):
    torch.manual_seed(0)
    model = MedNeXt(tiny(spatial_dims, deep_supervision=True)).train().set_memory_format("channels_last")
    x = torch.randn(2, 2, *([32] * spatial_dims))
    assert custom_function_nodes(model(x)[0]) == {
        "_DepthwiseGradBackward", "_NormPointwiseBackward", "_TransposedDepthwiseGradBackward", "_PaddedSumBackward"}
    out, grads = outputs_and_grads(model, x)
    fast.enabled(False)
    # (which layout PyTorch's own kernels return depends on the thread count: not asserted)
    assert custom_function_nodes(model(x)[0]) == set()
    plain_out, plain_grads = outputs_and_grads(model, x)
    for a, b in zip(plain_out, out):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    scale = max(g.abs().max() for g in plain_grads.values())
    for name in plain_grads:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=0, atol=1e-4 * scale, msg=name)
    # "auto" is the default layout with the switch off: the reference's channels-first kernels
    assert preferred_memory_format("cpu", spatial_dims) == torch.contiguous_format
    assert all(f.is_contiguous() for f in model.set_memory_format("auto").forward_features(x))


# -- the kernel choice (set_kernels): PyTorch's by default, Triton's when asked --------------------

def test_set_kernels_validates_and_reaches_every_depthwise_module():
    model = MedNeXt(tiny(3))
    assert model.kernels == "pytorch"
    with pytest.raises(ValueError, match=r"kernels='cuda' is not one of \('pytorch', 'triton', 'auto'\)"):
        model.set_kernels("cuda")
    assert model.set_kernels("auto") is model and model.kernels == "auto"
    depthwise = [m for m in model.modules() if isinstance(m, (DepthwiseConv3d, DepthwiseTransposedConv3d))]
    assert len(depthwise) == 9 + 4 and all(m.kernels == "auto" for m in depthwise)
    assert all(not hasattr(d.conv1, "kernels") for d in model.downs)  # PyTorch's strided conv, untouched


def test_triton_choice_without_triton_names_the_install():
    code = (
        "import sys; sys.modules['triton'] = None; sys.modules['triton.language'] = None\n"
        "from mednext_lite import MedNeXt\n"
        "m = MedNeXt(base_width=4, block_counts=1)\n"
        "m.set_kernels('auto')\n"
        "try:\n"
        "    m.set_kernels('triton')\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "needs triton: pip install triton" in out.stdout and "kernels='pytorch'" in out.stdout


@pytest.fixture
def triton_interpreter(monkeypatch, one_thread):
    """Triton's interpreter for one test: the kernels are jitted per interpreter setting on first use."""
    pytest.importorskip("triton", reason="the Triton kernels need triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _grads_close(ours: dict, ref: dict, rel: float = 1e-4) -> None:
    """Each gradient within ``rel`` of the largest gradient of its module: a conv bias followed by a
    per-channel norm has a gradient of exactly zero in exact arithmetic, so its float value is
    rounding noise on the scale of the weight's gradient, not of its own."""
    for name, r in ref.items():
        module = name.rpartition(".")[0]
        scale = max(max(g.abs().max().item() for n, g in ref.items() if n.rpartition(".")[0] == module), 1e-3)
        err = (ours[name] - r).abs().max().item()
        assert err <= rel * scale, f"{name}: max error {err:.3g} against a scale of {scale:.3g}"


def _forbid_triton(monkeypatch):
    from mednext_lite.fast import triton_depthwise as tdw

    def refuse(*a, **k):
        raise AssertionError("a Triton kernel ran")
    monkeypatch.setattr(tdw, "depthwise_conv", refuse)
    monkeypatch.setattr(tdw, "depthwise_conv_transpose", refuse)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_triton_block_matches_the_pytorch_path(triton_interpreter, spatial_dims):
    torch.manual_seed(0)
    for block in (MedNeXtBlock(6, kernel_size=5, spatial_dims=spatial_dims, grn=True),
                  MedNeXtUpBlock(6, kernel_size=3, spatial_dims=spatial_dims)):
        x = torch.randn(2, 6, *([7] * spatial_dims))
        results = []
        for kernels in ("pytorch", "triton"):
            for m in block.modules():
                if hasattr(m, "kernels"):
                    m.kernels = kernels
            xs = x.clone().requires_grad_()
            block.zero_grad(set_to_none=True)
            y = block(xs)
            (y * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum().backward()
            results.append((y.detach(), xs.grad, {n: p.grad for n, p in block.named_parameters()}))
        (y0, gx0, g0), (y1, gx1, g1) = results
        torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gx1, gx0, rtol=1e-5, atol=1e-5)
        _grads_close(g1, g0)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_triton_network_forward_and_backward_match_the_pytorch_path(triton_interpreter, spatial_dims, monkeypatch):
    torch.manual_seed(0)
    model = MedNeXt(tiny(spatial_dims, deep_supervision=True))
    x = torch.randn(2, 2, *([16] * spatial_dims))
    out_ref, grads_ref = outputs_and_grads(model, x)
    launches = []
    from mednext_lite.fast import triton_depthwise as tdw
    real = tdw.depthwise_conv
    monkeypatch.setattr(tdw, "depthwise_conv", lambda *a, **k: launches.append(1) or real(*a, **k))
    out, grads = outputs_and_grads(model.set_kernels("triton"), x)
    assert len(launches) == 9  # every stride-1 block conv took the Triton kernel
    for a, b in zip(out, out_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    _grads_close(grads, grads_ref)


def test_triton_under_autocast_runs_in_the_autocast_dtype(triton_interpreter):
    """Inside autocast the dispatch casts to the autocast dtype, as F.conv3d does there."""
    torch.manual_seed(0)
    conv = MedNeXtBlock(4, kernel_size=3, spatial_dims=3).conv1
    x = torch.randn(1, 4, 6, 7, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = conv(x)
        conv.kernels = "triton"
        ours = conv(x)
    assert ref.dtype == ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref.float(), rtol=2e-2, atol=2e-2)


def test_auto_and_the_switch_keep_pytorch_kernels_on_the_cpu(triton_interpreter, monkeypatch):
    """"auto" picks Triton only on a GPU listed in AUTO_TRITON (none yet); fast.enabled(False) turns
    an explicit "triton" off too. Either way the output is the PyTorch path's, to the bit."""
    from mednext_lite.fast.conv import AUTO_TRITON

    assert AUTO_TRITON == {}
    torch.manual_seed(0)
    model = MedNeXt(tiny(3)).eval()
    x = torch.randn(2, 2, 16, 16, 16)
    with torch.no_grad():
        ref = model(x)
        _forbid_triton(monkeypatch)
        assert torch.equal(model.set_kernels("auto")(x), ref)
        model.set_kernels("triton")
        previous = fast.enabled(False)
        try:
            plain = model(x)
        finally:
            fast.enabled(previous)
        with pytest.raises(AssertionError, match="a Triton kernel ran"):
            model(x)  # switch on again: "triton" runs Triton's kernels
    torch.testing.assert_close(plain, ref, rtol=1e-5, atol=1e-5)
