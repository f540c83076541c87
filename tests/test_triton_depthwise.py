"""The Triton depthwise kernels agree with PyTorch's convolutions (values and gradients), on the CPU.

The kernels run through Triton's interpreter (``TRITON_INTERPRET=1``, set for this module only; the
kernels are compiled on first use, so it takes effect even after triton was imported). With
``MEDNEXT_TRITON_TEST_CUDA=1`` on a CUDA machine the same tests run the compiled kernels instead.
Every result is compared with ``F.conv{2,3}d`` / ``F.conv_transpose{2,3}d(groups=C)`` in float64,
gradients with PyTorch's own backward on the same inputs; the bf16/fp16 speed and large-shape checks
are in ``benchmarks/triton_check.py`` (GPU).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="the Triton kernels need triton (the dev extra installs it on Linux)")

from mednext_lite.fast import triton_depthwise as tdw

ON_CUDA = os.environ.get("MEDNEXT_TRITON_TEST_CUDA") == "1" and torch.cuda.is_available()
DEVICE = "cuda" if ON_CUDA else "cpu"


@pytest.fixture(scope="module", autouse=True)
def interpreter(one_thread):
    """Triton's interpreter for this module's tests, and nothing after them."""
    with pytest.MonkeyPatch.context() as mp:
        if not ON_CUDA:
            mp.setenv("TRITON_INTERPRET", "1")
        yield


def _layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if not channels_last:
        return t
    return t.to(memory_format=torch.channels_last_3d if t.dim() == 5 else torch.channels_last)


def _close(ours: torch.Tensor, ref: torch.Tensor, what: str, rel: float = 1e-5) -> None:
    """float32 agreement: the largest error within ``rel`` of the largest magnitude."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    err = (ours.double().cpu() - ref.double().cpu()).abs().max().item()
    scale = max(ref.abs().max().item(), 1.0)
    assert err <= rel * scale, f"{what}: max error {err:.3g} against a scale of {scale:.3g}"


def _inputs(dims, channels, sizes, k, channels_last, seed):
    g = torch.Generator().manual_seed(seed)
    batch = 1 if dims == 3 and k == 7 else 2  # the interpreter pays per tap and program
    x = torch.randn(batch, channels, *sizes, generator=g)
    w = torch.randn(channels, 1, *([k] * dims), generator=g)
    b = torch.randn(channels, generator=g)
    x = _layout(x, channels_last).to(DEVICE)
    return x, w.to(DEVICE), b.to(DEVICE)


def _check_against_pytorch(ours_fn, ref_fn, x, w, b, channels_last):
    """Forward and the three gradients of ``ours_fn`` against ``ref_fn`` in float64."""
    xs, ws, bs = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y = ours_fn(xs, ws, bs)
    xd, wd, bd = (t.detach().double().cpu().requires_grad_() for t in (x, w, b))
    ref = ref_fn(xd, wd, bd)
    _close(y, ref, "output")
    assert y.dtype == x.dtype
    fmt = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
    assert y.is_contiguous(memory_format=fmt) if channels_last else y.is_contiguous()
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ref.backward(grad)
    y.backward(_layout(grad.float(), channels_last).to(y.device))
    _close(xs.grad, xd.grad, "grad input")
    _close(ws.grad, wd.grad, "grad weight")
    _close(bs.grad, bd.grad, "grad bias")
    assert (xs.grad.dtype, ws.grad.dtype, bs.grad.dtype) == (x.dtype, w.dtype, b.dtype)


# (spatial dims, kernel, stride, channels-last, channels, sizes): every k, stride and layout in 3D
# and 2D, odd and even sizes in 7..13, channel counts 3..8
CONV_CASES = [
    (3, 3, 1, False, 4, (9, 8, 7)),
    (3, 3, 1, True, 5, (8, 10, 9)),
    (3, 3, 2, False, 3, (9, 10, 7)),
    (3, 3, 2, True, 8, (10, 9, 8)),
    (3, 5, 1, True, 4, (9, 8, 7)),
    (3, 5, 2, False, 4, (10, 9, 11)),
    (3, 7, 1, False, 3, (7, 8, 7)),
    (3, 7, 2, True, 3, (8, 7, 9)),
    (2, 3, 1, True, 6, (12, 13)),
    (2, 3, 2, False, 3, (7, 8)),
    (2, 5, 1, False, 5, (11, 10)),
    (2, 5, 2, True, 4, (13, 12)),
    (2, 7, 1, True, 3, (9, 8)),
    (2, 7, 2, False, 8, (12, 11)),
]


@pytest.mark.parametrize("dims,k,stride,channels_last,channels,sizes", CONV_CASES)
def test_conv_matches_pytorch(dims, k, stride, channels_last, channels, sizes):
    x, w, b = _inputs(dims, channels, sizes, k, channels_last, seed=k * 10 + stride)
    conv = F.conv3d if dims == 3 else F.conv2d
    _check_against_pytorch(
        lambda x_, w_, b_: tdw.depthwise_conv(x_, w_, b_, stride=stride),
        lambda x_, w_, b_: conv(x_, w_, b_, stride=stride, padding=k // 2, groups=channels),
        x, w, b, channels_last,
    )


# (spatial dims, kernel, stride, output padding, channels-last, channels, input sizes)
TRANSPOSE_CASES = [
    (3, 3, 2, 0, False, 4, (7, 6, 5)),    # MedNeXt's up block: 2n - 1 voxels
    (3, 5, 2, 1, True, 3, (5, 6, 4)),
    (3, 7, 2, 0, False, 3, (4, 5, 4)),
    (3, 3, 1, 0, True, 5, (8, 7, 9)),     # stride 1: the flipped-kernel correlation
    (2, 3, 2, 1, True, 5, (7, 6)),
    (2, 5, 2, 0, False, 4, (6, 7)),
    (2, 7, 1, 0, False, 3, (9, 10)),
]


@pytest.mark.parametrize("dims,k,stride,output_padding,channels_last,channels,sizes", TRANSPOSE_CASES)
def test_conv_transpose_matches_pytorch(dims, k, stride, output_padding, channels_last, channels, sizes):
    x, w, b = _inputs(dims, channels, sizes, k, channels_last, seed=k * 10 + stride + 1)
    conv_t = F.conv_transpose3d if dims == 3 else F.conv_transpose2d
    _check_against_pytorch(
        lambda x_, w_, b_: tdw.depthwise_conv_transpose(x_, w_, b_, stride=stride, output_padding=output_padding),
        lambda x_, w_, b_: conv_t(x_, w_, b_, stride=stride, padding=k // 2, output_padding=output_padding,
                                  groups=channels),
        x, w, b, channels_last,
    )


def test_gpu_tiling_many_programs(monkeypatch):
    """The tiles a GPU gets: several boxes per axis, several channel blocks, partial edges."""
    monkeypatch.setattr(tdw, "_WHOLE_TILES_WHEN_INTERPRETED", False)
    monkeypatch.setattr(tdw, "_TILE_ELEMENTS", 16)
    monkeypatch.setattr(tdw, "_WGRAD_TILE_ELEMENTS", 16)
    monkeypatch.setattr(tdw, "_MAX_BLOCK_C", 2)
    assert tdw._tile(3, (1, 5, 6), True, 16) == (2, 1, 1, 8)
    assert tdw._tile(3, (3, 5, 6), False, 16) == (1, 1, 2, 8)
    x, w, b = _inputs(2, 3, (9, 11), 3, True, seed=3)
    _check_against_pytorch(
        lambda x_, w_, b_: tdw.depthwise_conv(x_, w_, b_, stride=2),
        lambda x_, w_, b_: F.conv2d(x_, w_, b_, stride=2, padding=1, groups=3),
        x, w, b, True,
    )
    x, w, b = _inputs(3, 3, (2, 3, 3), 3, False, seed=4)
    _check_against_pytorch(
        lambda x_, w_, b_: tdw.depthwise_conv_transpose(x_, w_, b_, stride=2),
        lambda x_, w_, b_: F.conv_transpose3d(x_, w_, b_, stride=2, padding=1, groups=3),
        x, w, b, False,
    )
    # the weight gradient with its depth columns split unevenly: 5 boxes deep, 2 programs of 3 boxes
    monkeypatch.setattr(tdw, "_WGRAD_PROGRAMS_OFF_GPU", 12)
    g = torch.Generator().manual_seed(6)
    grad, x = (torch.randn(2, 3, 5, 3, 3, generator=g).to(DEVICE) for _ in range(2))
    ours = tdw.dw_conv_weight_grad(grad, x, [3, 1, 1], 1, [1, 0, 0])  # a 3 x 1 x 1 kernel: 3 taps
    ref = torch.ops.aten.convolution_backward(grad.double().cpu(), x.double().cpu(), torch.zeros(3, 1, 3, 1, 1,
                                              dtype=torch.float64), None, [1] * 3, [1, 0, 0], [1] * 3, False,
                                              [0] * 3, 3, [False, True, False])[1]
    _close(ours, ref, "split weight gradient")


def test_any_strides():
    """The kernels read every tensor through its strides: a strided view needs no copy."""
    g = torch.Generator().manual_seed(5)
    base = torch.randn(2, 8, 11, 20, generator=g).to(DEVICE)
    x = base[:, ::2, :, 1::2]  # every other channel and column: neither layout
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 1, 5, 5, generator=g).to(DEVICE)
    _close(tdw.depthwise_conv(x, w, stride=2), F.conv2d(x.double().cpu(), w.double().cpu(), stride=2, padding=2,
                                                        groups=4), "strided view")
    _close(tdw.depthwise_conv_transpose(x, w), F.conv_transpose2d(x.double().cpu(), w.double().cpu(), stride=2,
                                                                  padding=2, groups=4), "strided view, transposed")


def test_empty_batch():
    x = torch.randn(0, 3, 7, 8, device=DEVICE, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, device=DEVICE, requires_grad=True)
    y = tdw.depthwise_conv_transpose(x, w, stride=2)
    assert y.shape == (0, 3, 13, 15)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w))


def test_float64_gradcheck():
    """fp64 tensors accumulate in fp64, so autograd's finite differences check the backward."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 7, 8, dtype=torch.float64, generator=g).to(DEVICE).requires_grad_()
    w = torch.randn(3, 1, 3, 3, dtype=torch.float64, generator=g).to(DEVICE).requires_grad_()
    b = torch.randn(3, dtype=torch.float64, generator=g).to(DEVICE).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: tdw.depthwise_conv(*a, stride=2), (x, w, b), fast_mode=True)
    assert torch.autograd.gradcheck(lambda *a: tdw.depthwise_conv_transpose(*a, stride=2), (x, w, b),
                                    fast_mode=True)
    y = tdw.depthwise_conv(x, w, b)
    ref = F.conv2d(x.cpu(), w.cpu(), b.cpu(), padding=1, groups=3)
    assert (y.cpu() - ref).abs().max().item() < 1e-12


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_rounded_once(dtype):
    """bf16/fp16 are loaded, summed in fp32 and rounded once: within one unit in the last place."""
    x, w, b = _inputs(3, 4, (7, 8, 9), 3, True, seed=11)
    x, w, b = x.to(dtype), w.to(dtype), b.to(dtype)
    ref = F.conv3d(x.double().cpu(), w.double().cpu(), b.double().cpu(), padding=1, groups=4)
    y = tdw.depthwise_conv(x, w, b)
    assert y.dtype == dtype
    ulp = torch.finfo(dtype).eps * ref.abs() + torch.finfo(dtype).tiny
    assert ((y.double().cpu() - ref).abs() <= ulp).all()
    # the bf16 activations of an autocast region with fp32 weights: the output keeps x's dtype
    y_mixed = tdw.depthwise_conv(x, w.float(), b.float())
    assert y_mixed.dtype == dtype and ((y_mixed.double().cpu() - ref).abs() <= 2 * ulp).all()


def test_custom_ops_trace_and_compile():
    """Schema, fake tensors and autograd registration pass opcheck; torch.compile keeps one graph."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 7, 8, generator=g).to(DEVICE)
    w = torch.randn(3, 1, 3, 3, generator=g).to(DEVICE)
    b = torch.randn(3, generator=g).to(DEVICE)
    ops = torch.ops.mednext_lite
    torch.library.opcheck(ops.dw_conv.default, (x, w, b, 2, [1, 1]))
    torch.library.opcheck(ops.dw_conv_transpose.default, (x, w, None, 2, [1, 1], [14, 15]))
    torch.library.opcheck(ops.dw_conv_weight_grad.default, (torch.randn(1, 3, 4, 4).to(DEVICE), x, [3, 3], 2, [1, 1]))

    def block(x_, w_, b_):
        return F.gelu(tdw.depthwise_conv(x_, w_, b_) * 2.0 + 1.0)

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    xs = x.clone().requires_grad_()
    y = compiled(xs, w, b)
    y.sum().backward()
    xr = x.clone().requires_grad_()
    ref = F.gelu(F.conv2d(xr, w, b, padding=1, groups=3) * 2.0 + 1.0)
    ref.sum().backward()
    _close(y, ref, "compiled output")
    _close(xs.grad, xr.grad, "compiled grad input")


def test_bad_arguments_are_named():
    x = torch.randn(1, 4, 8, 8, 8, device=DEVICE)
    w = torch.randn(4, 1, 3, 3, 3, device=DEVICE)
    with pytest.raises(ValueError, match=r"not depthwise for 4 channels.*\(4, 1, \*kernel_size\)"):
        tdw.depthwise_conv(x, torch.randn(4, 2, 3, 3, 3, device=DEVICE))
    with pytest.raises(ValueError, match="N x C x D x H x W"):
        tdw.depthwise_conv(x[0, 0], w)
    with pytest.raises(TypeError, match="torch.int64 is not supported"):
        tdw.depthwise_conv(x.long(), w)
    with pytest.raises(ValueError, match="stride=0 must be a positive int"):
        tdw.depthwise_conv(x, w, stride=0)
    with pytest.raises(ValueError, match=r"output_padding=2 must be in \[0, stride=2\)"):
        tdw.depthwise_conv_transpose(x, w, output_padding=2)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        tdw.depthwise_conv(x[:, :, :2, :2, :2], torch.randn(4, 1, 7, 7, 7, device=DEVICE), padding=0)
    with pytest.raises(ValueError, match=r"bias of shape \(3,\) does not match 4 channels"):
        tdw.depthwise_conv(x, w, torch.randn(3, device=DEVICE))


def test_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not tdw.available("cpu")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        tdw.depthwise_conv(torch.randn(1, 2, 5, 5), torch.randn(2, 1, 3, 3))


def test_imports_without_triton():
    """Without triton the module imports, says it cannot run, and names the install command."""
    code = (
        "import sys; sys.modules['triton'] = None; sys.modules['triton.language'] = None\n"
        "import torch\n"
        "from mednext_lite.fast import triton_depthwise as t\n"
        "assert not t.available() and not t.available('cuda')\n"
        "try:\n"
        "    t.depthwise_conv(torch.randn(1, 2, 5, 5), torch.randn(2, 1, 3, 3))\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert "pip install triton" in out.stdout


def test_gpu_check_script_runs_at_toy_size(capsys):
    """benchmarks/triton_check.py (run on a CUDA machine) keeps working: one case at a toy size."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "triton_check.py"
    spec = importlib.util.spec_from_file_location("triton_check", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    status = script.main(["--size", "6", "--channels", "3", "--batch", "1", "--kernels", "3", "--dtypes", "bf16",
                          "--layouts", "channels_last", "--ops", "convT_s2", "--repeats", "1"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert out.count("PASS k3 convT_s2 bf16 channels_last") == 3
    assert "3 PASS, 0 FAIL, 0 cases skipped" in out


K3 = {"KD": 3, "KH": 3, "KW": 3, "SD": 2, "SH": 2, "SW": 2, "PD": 1, "PH": 1, "PW": 1}
COMPILE_CASES = [
    ("_dw_conv_kernel", {"x_ptr": "*bf16", "w_ptr": "*fp32", "b_ptr": "*fp32", "y_ptr": "*bf16"},
     dict(K3, HAS_BIAS=True, BLOCK_C=32, TD=1, TH=4, TW=8)),
    ("_dw_conv_transpose_kernel", {"x_ptr": "*fp16", "w_ptr": "*fp16", "b_ptr": "*fp16", "y_ptr": "*fp16"},
     dict(K3, KD=4, KH=4, KW=4, KD_REAL=3, KH_REAL=3, KW_REAL=3, HAS_BIAS=False, BLOCK_C=1, TD=1, TH=16, TW=64)),
    ("_dw_weight_grad_kernel", {"a_ptr": "*fp32", "b_ptr": "*fp32", "part_ptr": "*fp32"},
     dict(K3, BLOCK_C=32, TD=1, TH=4, TW=8)),
]


@pytest.mark.parametrize("name,pointers,constants", COMPILE_CASES, ids=[c[0] for c in COMPILE_CASES])
def test_kernels_compile_for_the_gpu(monkeypatch, name, pointers, constants):
    """The interpreter runs Python, not Triton's compiler: compile each kernel to PTX for sm_90
    (no GPU needed) so that code only the compiler rejects fails here and not first on a CUDA machine."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    fn = triton.jit(getattr(tdw, name))
    constants = dict(constants, ACC=tl.float32)
    signature = {a: "constexpr" if a in constants else pointers.get(a, "i32") for a in fn.arg_names}
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constants),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "enable_fp_fusion": True})
    ptx = compiled.asm["ptx"]
    writes = "red.global.gpu.relaxed.add" if name == "_dw_weight_grad_kernel" else "st.global"
    assert ".target sm_90" in ptx and "ld.global" in ptx and writes in ptx
