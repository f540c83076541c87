"""Triton kernels for depthwise 2D/3D convolution and its transpose, forward and both gradients.

PyTorch runs contiguous depthwise 3D convolutions on simple CUDA kernels (one thread per output,
no tiling, and a weight gradient that passes over the activations once per weight element). These
kernels compute a tile of outputs per program from block loads of the input tile and its halo,
accumulate in fp32 (fp64 for fp64 tensors), and form the weight gradient in one pass over the
activations (each program sums a column of tiles into a row of partial sums of its own, then a
small reduction on the host; no program shares an address with another, so results are
deterministic). They read every tensor through its strides, so one kernel serves contiguous,
channels-last and strided views; 2D runs as 3D with depth 1.

The three kernels are registered as ``torch.library`` custom ops (``mednext_lite::dw_conv``,
``dw_conv_transpose``, ``dw_conv_weight_grad``) with fake implementations and autograd, so
``torch.compile`` traces through them and still fuses the elementwise work around them. The
transposed convolution's forward is the strided convolution's input gradient and vice versa.
On a machine without CUDA the kernels run through Triton's interpreter when ``TRITON_INTERPRET=1``
is set before the first call (slow; for tests). Speed figures: ``docs/performance.md``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch

if not hasattr(torch.library, "custom_op"):  # torch.library.custom_op arrived in torch 2.4
    raise ImportError(f"mednext_lite.fast.triton_depthwise needs torch>=2.4, found {torch.__version__}: "
                      "pip install -U torch")

try:  # the package works without triton: only these kernels need it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = None
    tl = None

__all__ = ["available", "depthwise_conv", "depthwise_conv_transpose"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# outputs per program (channels x positions): forward / transposed and weight gradient
_TILE_ELEMENTS = 1024
_WGRAD_TILE_ELEMENTS = 4096
_MAX_BLOCK_C = 32
_WGRAD_PROGRAMS_OFF_GPU = 4  # weight-gradient programs to aim for when not on CUDA (the interpreter)
# Triton's interpreter pays per operation, not per element: one program per sample (and phase)
# covering every channel and the whole volume keeps it fast; tests switch this off to run the
# GPU tiling through the interpreter too
_WHOLE_TILES_WHEN_INTERPRETED = True


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available(device: str | torch.device | None = None) -> bool:
    """Whether the kernels can run on ``device`` (default: CUDA if present, else the CPU).

    True when triton imports and ``device`` is a CUDA device, or when ``TRITON_INTERPRET=1`` is set
    (then any device: Triton's interpreter runs the kernels on the host).
    """
    if triton is None:
        return False
    if _interpret():
        return True
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def _require(t: torch.Tensor) -> None:
    if triton is None:
        raise RuntimeError(
            "the Triton depthwise kernels need triton: pip install triton (Linux; or use F.conv3d)"
        )
    if not available(t.device):
        raise RuntimeError(
            f"the Triton depthwise kernels run on CUDA tensors, got a tensor on {t.device}: move it "
            "to a CUDA device, or set TRITON_INTERPRET=1 before the first call to use Triton's "
            "(slow) interpreter"
        )


# ----------------------------------------------------------------------------------------------
# kernels, jit-compiled on first use so that TRITON_INTERPRET is read then, not at import. They call
# builtins only (tl.full and tl.reduce with triton's own sum combiner, not tl.zeros / tl.sum, which
# are jit functions): the interpreter then runs them even if triton was imported without it.
# ----------------------------------------------------------------------------------------------


def _dw_conv_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    C, D, H, W, OD, OH, OW,
    sxn, sxc, sxd, sxh, sxw,
    syn, syc, syd, syh, syw,
    tiles_h, tiles_w, cblocks,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, TD: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
):
    # y[n, c, o] = b[c] + sum_k w[c, k] x[n, c, o * S - P + k]; one program: BLOCK_C channels x
    # a TD x TH x TW box of outputs, flattened to a [BLOCK_C, TD*TH*TW] register tile.
    pid = tl.program_id(0)
    pid_nc = tl.program_id(1)
    n = pid_nc // cblocks
    cb = pid_nc % cblocks
    tw = pid % tiles_w
    th = (pid // tiles_w) % tiles_h
    td = pid // (tiles_w * tiles_h)
    c = (cb * BLOCK_C + tl.arange(0, BLOCK_C))[:, None]
    cmask = c < C
    p = tl.arange(0, TD * TH * TW)[None, :]
    od = td * TD + p // (TH * TW)
    oh = th * TH + (p // TW) % TH
    ow = tw * TW + p % TW
    # per-axis offsets and masks are formed once per level of the tap loop, not once per tap
    x_base = x_ptr + n.to(tl.int64) * sxn + c.to(tl.int64) * sxc
    w_base = w_ptr + c * (KD * KH * KW)
    i_d0 = od * SD - PD
    i_h0 = oh * SH - PH
    i_w0 = ow * SW - PW
    acc = tl.full([BLOCK_C, TD * TH * TW], 0.0, ACC)
    for kd in range(KD):
        i_d = i_d0 + kd
        m_d = cmask & (i_d >= 0) & (i_d < D)
        p_d = x_base + i_d * sxd
        for kh in range(KH):
            i_h = i_h0 + kh
            m_h = m_d & (i_h >= 0) & (i_h < H)
            p_h = p_d + i_h * sxh
            for kw in tl.static_range(KW):
                i_w = i_w0 + kw
                xv = tl.load(p_h + i_w * sxw, mask=m_h & (i_w >= 0) & (i_w < W), other=0.0)
                wv = tl.load(w_base + ((kd * KH + kh) * KW + kw), mask=cmask, other=0.0)
                acc += xv.to(ACC) * wv.to(ACC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=cmask, other=0.0).to(ACC)
    out_mask = cmask & (od < OD) & (oh < OH) & (ow < OW)
    y_off = n.to(tl.int64) * syn + c.to(tl.int64) * syc + od * syd + oh * syh + ow * syw
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=out_mask)


def _dw_conv_transpose_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    C, D, H, W, OD, OH, OW,
    sxn, sxc, sxd, sxh, sxw,
    syn, syc, syd, syh, syw,
    tiles_d, tiles_h, tiles_w, cblocks,
    KD_REAL: tl.constexpr, KH_REAL: tl.constexpr, KW_REAL: tl.constexpr,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, TD: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
):
    # y[n, c, i] = b[c] + sum over (j, k) with j * S - P + k = i of w[c, k] x[n, c, j]. The outputs
    # are split by phase q = i mod S: for one phase only the taps k = (q + P) mod S (step S) meet
    # the lattice, so a program of one phase visits about K/S taps per axis instead of K.
    pid = tl.program_id(0)
    pid_nc = tl.program_id(1)
    n = pid_nc // cblocks
    cb = pid_nc % cblocks
    tw = pid % tiles_w
    r = pid // tiles_w
    th = r % tiles_h
    r = r // tiles_h
    td = r % tiles_d
    phase = r // tiles_d
    qw = phase % SW
    qh = (phase // SW) % SH
    qd = phase // (SW * SH)
    c = (cb * BLOCK_C + tl.arange(0, BLOCK_C))[:, None]
    cmask = c < C
    p = tl.arange(0, TD * TH * TW)[None, :]
    ld = td * TD + p // (TH * TW)
    lh = th * TH + (p // TW) % TH
    lw = tw * TW + p % TW
    x_base = x_ptr + n.to(tl.int64) * sxn + c.to(tl.int64) * sxc
    # the weight is zero-padded on the host to a multiple of S taps per axis (KD x KH x KW here),
    # so the taps past the kernel read zeros; they are masked off the input all the same
    w_base = w_ptr + c * (KD * KH * KW)
    acc = tl.full([BLOCK_C, TD * TH * TW], 0.0, ACC)
    for md in range(KD // SD):
        kd = (qd + PD) % SD + md * SD
        j_d = ld + (qd + PD - kd) // SD  # exact division: S divides qd + P - kd
        # past the kernel: an empty range (a scalar bound, not a scalar mask, which the
        # interpreter would turn into integers)
        m_d = cmask & (j_d >= 0) & (j_d < tl.where(kd < KD_REAL, D, 0))
        p_d = x_base + j_d * sxd
        for mh in range(KH // SH):
            kh = (qh + PH) % SH + mh * SH
            j_h = lh + (qh + PH - kh) // SH
            m_h = m_d & (j_h >= 0) & (j_h < tl.where(kh < KH_REAL, H, 0))
            p_h = p_d + j_h * sxh
            w_h = w_base + (kd * KH + kh) * KW
            for mw in tl.static_range(KW // SW):
                kw = (qw + PW) % SW + mw * SW
                j_w = lw + (qw + PW - kw) // SW
                m = m_h & (j_w >= 0) & (j_w < tl.where(kw < KW_REAL, W, 0))
                xv = tl.load(p_h + j_w * sxw, mask=m, other=0.0)
                wv = tl.load(w_h + kw, mask=cmask, other=0.0)
                acc += xv.to(ACC) * wv.to(ACC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=cmask, other=0.0).to(ACC)
    od = qd + SD * ld
    oh = qh + SH * lh
    ow = qw + SW * lw
    out_mask = cmask & (od < OD) & (oh < OH) & (ow < OW)
    y_off = n.to(tl.int64) * syn + c.to(tl.int64) * syc + od * syd + oh * syh + ow * syw
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=out_mask)


def _dw_weight_grad_kernel(
    a_ptr, b_ptr, part_ptr,
    C, D, H, W, OD, OH, OW,
    san, sac, sad, sah, saw,
    sbn, sbc, sbd, sbh, sbw,
    tiles_h, tiles_w, cblocks, d_iters, rows,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, TD: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
):
    # part[n * rows + program, c, k] = sum of a[n, c, o] b[n, c, o * S - P + k] over the outputs o
    # of the program's column of d_iters boxes along depth. Per box the tile of a is loaded once,
    # the shifted tiles of b once per tap (from cache), and the per-channel sum of each tap is added
    # to the program's own row (atomics no other program touches, issued in program order, so the
    # result is deterministic); the host then sums the few rows.
    pid = tl.program_id(0)
    pid_nc = tl.program_id(1)
    n = pid_nc // cblocks
    cb = pid_nc % cblocks
    tw = pid % tiles_w
    th = (pid // tiles_w) % tiles_h
    ds = pid // (tiles_w * tiles_h)
    c1 = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c = c1[:, None]
    cmask = c < C
    c1_mask = c1 < C
    p = tl.arange(0, TD * TH * TW)[None, :]
    oh = th * TH + (p // TW) % TH
    ow = tw * TW + p % TW
    hw_mask = cmask & (oh < OH) & (ow < OW)
    a_base = a_ptr + n.to(tl.int64) * san + c.to(tl.int64) * sac + oh * sah + ow * saw
    b_base = b_ptr + n.to(tl.int64) * sbn + c.to(tl.int64) * sbc
    part_base = part_ptr + ((n * rows + pid).to(tl.int64) * C + c1) * (KD * KH * KW)
    i_h0 = oh * SH - PH
    i_w0 = ow * SW - PW
    for it in range(d_iters):
        od = (ds * d_iters + it) * TD + p // (TH * TW)
        a_mask = hw_mask & (od < OD)
        av = tl.load(a_base + od * sad, mask=a_mask, other=0.0).to(ACC)
        i_d0 = od * SD - PD
        for kd in range(KD):
            i_d = i_d0 + kd
            m_d = a_mask & (i_d >= 0) & (i_d < D)
            p_d = b_base + i_d * sbd
            for kh in range(KH):
                i_h = i_h0 + kh
                m_h = m_d & (i_h >= 0) & (i_h < H)
                p_h = p_d + i_h * sbh
                for kw in tl.static_range(KW):
                    i_w = i_w0 + kw
                    bv = tl.load(p_h + i_w * sbw, mask=m_h & (i_w >= 0) & (i_w < W), other=0.0)
                    s = tl.reduce(av * bv.to(ACC), 1, tl.standard._sum_combine)
                    tl.atomic_add(part_base + ((kd * KH + kh) * KW + kw), s, mask=c1_mask, sem="relaxed")


_KERNELS: dict[tuple[str, bool], object] = {}
# every launch asks for fused multiply-adds (acc += x * w rounds once per tap) rather than relying
# on Triton's default, which its 3.10 is to change


def _kernel(fn):
    key = (fn.__name__, _interpret())
    if key not in _KERNELS:
        _KERNELS[key] = triton.jit(fn)
    return _KERNELS[key]


# ----------------------------------------------------------------------------------------------
# launchers: tensors are viewed as 5-D (2D gets a depth axis of size 1, kernel 1, stride 1, pad 0)
# ----------------------------------------------------------------------------------------------


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _is_channels_last(x: torch.Tensor) -> bool:
    fmt = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
    return x.is_contiguous(memory_format=fmt) and not x.is_contiguous()


def _empty_like_layout(x: torch.Tensor, shape: Sequence[int], dtype: torch.dtype | None = None) -> torch.Tensor:
    """An output in ``x``'s layout (channels-last stays channels-last, anything else contiguous)."""
    fmt = torch.contiguous_format
    if _is_channels_last(x):
        fmt = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
    return torch.empty(tuple(shape), dtype=dtype or x.dtype, device=x.device, memory_format=fmt)


def _tile(channels: int, sizes: Sequence[int], channels_last: bool, budget: int) -> tuple[int, int, int, int]:
    """(BLOCK_C, TD, TH, TW): channels-last tiles run along channels (its contiguous axis),
    channels-first ones along width; the box never exceeds the (power-of-two padded) extent."""
    d, h, w = sizes
    if _WHOLE_TILES_WHEN_INTERPRETED and _interpret():
        return _pow2(channels), _pow2(d), _pow2(h), _pow2(w)
    bc = min(_pow2(channels), _MAX_BLOCK_C) if channels_last else 1
    left = max(1, budget // bc)
    tw = min(_pow2(w), 8 if channels_last else 64, left)
    left //= tw
    th = min(_pow2(h), left)
    left //= th
    td = min(_pow2(d), left)
    return bc, td, th, tw


def _as5d(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == 5 else t.unsqueeze(2)


def _geometry(x: torch.Tensor, kernel: Sequence[int], stride: int, padding: Sequence[int]):
    if x.dim() == 5:
        return tuple(kernel), (stride,) * 3, tuple(padding)
    return (1, *kernel), (1, stride, stride), (0, *padding)


def _acc(*tensors: torch.Tensor):
    return tl.float64 if any(t.dtype == torch.float64 for t in tensors) else tl.float32


def _launch_conv(x, weight, bias, y, stride: int, padding: Sequence[int]) -> None:
    if y.numel() == 0:
        return
    k, s, pad = _geometry(x, weight.shape[2:], stride, padding)
    x5, y5 = _as5d(x), _as5d(y)
    w = weight.contiguous()
    _, C, D, H, W = x5.shape
    N, _, OD, OH, OW = y5.shape
    bc, td, th, tw = _tile(C, (OD, OH, OW), _is_channels_last(x), _TILE_ELEMENTS)
    tiles_h, tiles_w, cblocks = triton.cdiv(OH, th), triton.cdiv(OW, tw), triton.cdiv(C, bc)
    grid = (triton.cdiv(OD, td) * tiles_h * tiles_w, N * cblocks)
    _kernel(_dw_conv_kernel)[grid](
        x5, w, bias if bias is not None else w, y5,
        C, D, H, W, OD, OH, OW, *x5.stride(), *y5.stride(), tiles_h, tiles_w, cblocks,
        *k, *s, *pad, HAS_BIAS=bias is not None, ACC=_acc(x, weight),
        BLOCK_C=bc, TD=td, TH=th, TW=tw, num_warps=4, enable_fp_fusion=True,
    )


def _launch_conv_transpose(x, weight, bias, y, stride: int, padding: Sequence[int]) -> None:
    if y.numel() == 0:
        return
    k, s, pad = _geometry(x, weight.shape[2:], stride, padding)
    if s == (1, 1, 1):
        # stride 1: a correlation with the flipped kernel, padded by k - 1 - p
        flipped = weight.flip(tuple(range(2, weight.dim())))
        _launch_conv(x, flipped, bias, y, 1, [kk - 1 - pp for kk, pp in zip(weight.shape[2:], padding)])
        return
    x5, y5 = _as5d(x), _as5d(y)
    w = _as5d(weight)
    padded = [si * triton.cdiv(kk, si) for kk, si in zip(k, s)]
    w = torch.nn.functional.pad(w, [t for kk, pk in zip(reversed(k), reversed(padded)) for t in (0, pk - kk)])
    w = w.contiguous()
    _, C, D, H, W = x5.shape
    N, _, OD, OH, OW = y5.shape
    lattice = [triton.cdiv(o, si) for o, si in zip((OD, OH, OW), s)]
    bc, td, th, tw = _tile(C, lattice, _is_channels_last(x), _TILE_ELEMENTS)
    tiles = [triton.cdiv(n_, t_) for n_, t_ in zip(lattice, (td, th, tw))]
    cblocks = triton.cdiv(C, bc)
    grid = (s[0] * s[1] * s[2] * tiles[0] * tiles[1] * tiles[2], N * cblocks)
    _kernel(_dw_conv_transpose_kernel)[grid](
        x5, w, bias if bias is not None else w, y5,
        C, D, H, W, OD, OH, OW, *x5.stride(), *y5.stride(), *tiles, cblocks,
        *k, *padded, *s, *pad, HAS_BIAS=bias is not None, ACC=_acc(x, weight),
        BLOCK_C=bc, TD=td, TH=th, TW=tw, num_warps=4, enable_fp_fusion=True,
    )


def _wgrad_programs(device: torch.device) -> int:
    """How many programs the weight gradient aims for: enough to fill the GPU, no more (each one
    adds a row of partial sums)."""
    if device.type == "cuda":
        return 8 * torch.cuda.get_device_properties(device).multi_processor_count
    return _WGRAD_PROGRAMS_OFF_GPU


def _launch_weight_grad(a, b, kernel: Sequence[int], stride: int, padding: Sequence[int]) -> torch.Tensor:
    k, s, pad = _geometry(a, kernel, stride, padding)
    a5, b5 = _as5d(a), _as5d(b)
    N, C, OD, OH, OW = a5.shape
    _, _, D, H, W = b5.shape
    acc_dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    if a.numel() == 0 or b.numel() == 0:
        return torch.zeros((C, 1, *kernel), dtype=acc_dtype, device=a.device)
    bc, td, th, tw = _tile(C, (OD, OH, OW), _is_channels_last(a), _WGRAD_TILE_ELEMENTS)
    tiles_d, tiles_h, tiles_w, cblocks = (triton.cdiv(OD, td), triton.cdiv(OH, th), triton.cdiv(OW, tw),
                                          triton.cdiv(C, bc))
    # split each depth column into as few pieces as fill the device
    d_splits = max(1, min(tiles_d, triton.cdiv(_wgrad_programs(a.device), N * cblocks * tiles_h * tiles_w)))
    d_iters = triton.cdiv(tiles_d, d_splits)
    rows = triton.cdiv(tiles_d, d_iters) * tiles_h * tiles_w
    part = torch.zeros((N * rows, C, k[0] * k[1] * k[2]), dtype=acc_dtype, device=a.device)
    _kernel(_dw_weight_grad_kernel)[(rows, N * cblocks)](
        a5, b5, part,
        C, D, H, W, OD, OH, OW, *a5.stride(), *b5.stride(), tiles_h, tiles_w, cblocks, d_iters, rows,
        *k, *s, *pad, ACC=_acc(a, b),
        BLOCK_C=bc, TD=td, TH=th, TW=tw, num_warps=8, enable_fp_fusion=True,
    )
    return part.sum(0).view(C, 1, *kernel)


# ----------------------------------------------------------------------------------------------
# custom ops: the shapes follow F.conv{2,3}d / F.conv_transpose{2,3}d with groups = channels
# ----------------------------------------------------------------------------------------------


def _conv_out_size(x: torch.Tensor, kernel, stride: int, padding) -> list[int]:
    return [(n + 2 * p - k) // stride + 1 for n, k, p in zip(x.shape[2:], kernel, padding)]


@torch.library.custom_op("mednext_lite::dw_conv", mutates_args=())
def dw_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
            padding: list[int]) -> torch.Tensor:
    """Depthwise convolution (``F.conv{2,3}d(x, weight, bias, stride, padding, groups=C)``)."""
    _require(x)
    y = _empty_like_layout(x, [*x.shape[:2], *_conv_out_size(x, weight.shape[2:], stride, padding)])
    _launch_conv(x, weight, bias, y, stride, padding)
    return y


@dw_conv.register_fake
def _(x, weight, bias, stride, padding):
    return _empty_like_layout(x, [*x.shape[:2], *_conv_out_size(x, weight.shape[2:], stride, padding)])


@torch.library.custom_op("mednext_lite::dw_conv_transpose", mutates_args=())
def dw_conv_transpose(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                      padding: list[int], out_size: list[int]) -> torch.Tensor:
    """Depthwise transposed convolution to the spatial size ``out_size`` (which fixes the output padding)."""
    _require(x)
    y = _empty_like_layout(x, [*x.shape[:2], *out_size])
    _launch_conv_transpose(x, weight, bias, y, stride, padding)
    return y


@dw_conv_transpose.register_fake
def _(x, weight, bias, stride, padding, out_size):
    return _empty_like_layout(x, [*x.shape[:2], *out_size])


@torch.library.custom_op("mednext_lite::dw_conv_weight_grad", mutates_args=())
def dw_conv_weight_grad(a: torch.Tensor, b: torch.Tensor, kernel: list[int], stride: int,
                        padding: list[int]) -> torch.Tensor:
    """``g[c, 0, k] = sum_{n, o} a[n, c, o] b[n, c, o * stride - padding + k]`` in fp32 (fp64 for fp64).

    With ``a`` the output gradient and ``b`` the input this is a convolution's weight gradient;
    with ``a`` the input and ``b`` the output gradient, a transposed convolution's.
    """
    _require(a)
    return _launch_weight_grad(a, b, kernel, stride, padding)


@dw_conv_weight_grad.register_fake
def _(a, b, kernel, stride, padding):
    dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    return a.new_empty((a.shape[1], 1, *kernel), dtype=dtype)


def _bias_grad(grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    dims = [0, *range(2, grad.dim())]
    return grad.sum(dims, dtype=torch.promote_types(grad.dtype, torch.float32)).to(dtype)


def _setup(ctx, inputs, output):
    x, weight, bias, stride, padding = inputs[:5]
    ctx.save_for_backward(x, weight)
    ctx.stride, ctx.padding, ctx.bias = stride, padding, bias is not None
    if bias is not None:
        ctx.bias_dtype = bias.dtype


def _conv_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    gx = gw = gb = None
    if ctx.needs_input_grad[0]:
        gx = dw_conv_transpose(grad, weight, None, ctx.stride, ctx.padding, list(x.shape[2:]))
    if ctx.needs_input_grad[1]:
        gw = dw_conv_weight_grad(grad, x, list(weight.shape[2:]), ctx.stride, ctx.padding).to(weight.dtype)
    if ctx.bias and ctx.needs_input_grad[2]:
        gb = _bias_grad(grad, ctx.bias_dtype)
    return gx, gw, gb, None, None


def _conv_transpose_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    gx = gw = gb = None
    if ctx.needs_input_grad[0]:
        gx = dw_conv(grad, weight, None, ctx.stride, ctx.padding)
    if ctx.needs_input_grad[1]:
        gw = dw_conv_weight_grad(x, grad, list(weight.shape[2:]), ctx.stride, ctx.padding).to(weight.dtype)
    if ctx.bias and ctx.needs_input_grad[2]:
        gb = _bias_grad(grad, ctx.bias_dtype)
    return gx, gw, gb, None, None, None


dw_conv.register_autograd(_conv_backward, setup_context=_setup)
dw_conv_transpose.register_autograd(_conv_transpose_backward, setup_context=_setup)


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
           padding: int | Sequence[int] | None, name: str) -> list[int]:
    if x.dim() not in (4, 5):
        raise ValueError(f"{name}: x has shape {tuple(x.shape)}: pass N x C x H x W (2D) or N x C x D x H x W (3D)")
    c = x.shape[1]
    if weight.dim() != x.dim() or tuple(weight.shape[:2]) != (c, 1):
        raise ValueError(
            f"{name}: weight of shape {tuple(weight.shape)} is not depthwise for {c} channels in "
            f"{x.dim() - 2}D: pass ({c}, 1, *kernel_size)"
        )
    if bias is not None and tuple(bias.shape) != (c,):
        raise ValueError(f"{name}: bias of shape {tuple(bias.shape)} does not match {c} channels: pass ({c},)")
    for t in (x, weight) + ((bias,) if bias is not None else ()):
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name}: dtype {t.dtype} is not supported: use float16, bfloat16, float32 or float64")
        if t.device != x.device:
            raise ValueError(f"{name}: tensors on {x.device} and {t.device}: move them to one device")
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise ValueError(f"{name}: stride={stride!r} must be a positive int (the same on every axis)")
    kernel = list(weight.shape[2:])
    if padding is None:
        padding = [k // 2 for k in kernel]
    elif isinstance(padding, int):
        padding = [padding] * len(kernel)
    padding = [int(p) for p in padding]
    if len(padding) != len(kernel) or any(p < 0 for p in padding):
        raise ValueError(f"{name}: padding={padding!r} must be one or {len(kernel)} non-negative ints")
    per_sample = math.prod(x.shape[1:])
    if per_sample >= 2**31:  # the kernels index within one sample in int32
        raise ValueError(f"{name}: {per_sample} elements per sample exceed 2^31: split the volume into tiles")
    return padding


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   stride: int = 1, padding: int | Sequence[int] | None = None) -> torch.Tensor:
    """``F.conv{2,3}d(x, weight, bias, stride, padding, groups=C)`` on the Triton kernels.

    ``x`` is N x C x (D x) H x W in any layout (channels-last in gives channels-last out), ``weight``
    is C x 1 x kernel, ``padding`` defaults to ``kernel // 2``. Differentiable in x, weight, bias.
    """
    padding = _check(x, weight, bias, stride, padding, "depthwise_conv")
    _require(x)
    sizes = _conv_out_size(x, weight.shape[2:], stride, padding)
    if min(sizes) < 1:
        raise ValueError(
            f"depthwise_conv: input {tuple(x.shape[2:])} is smaller than the kernel "
            f"{tuple(weight.shape[2:])} with padding {padding}: pad the input or lower the kernel size"
        )
    return dw_conv(x, weight, bias, stride, padding)


def depthwise_conv_transpose(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                             stride: int = 2, padding: int | Sequence[int] | None = None,
                             output_padding: int = 0) -> torch.Tensor:
    """``F.conv_transpose{2,3}d(x, weight, bias, stride, padding, output_padding, groups=C)`` on the
    Triton kernels: MedNeXt's up-block convolution (k, stride 2, padding k // 2 gives 2n - 1 voxels).

    ``padding`` defaults to ``kernel // 2``; ``output_padding`` must be smaller than ``stride``.
    """
    padding = _check(x, weight, bias, stride, padding, "depthwise_conv_transpose")
    _require(x)
    if not 0 <= output_padding < stride:
        raise ValueError(f"depthwise_conv_transpose: output_padding={output_padding} must be in [0, stride={stride})")
    sizes = [(n - 1) * stride - 2 * p + k + output_padding for n, k, p in zip(x.shape[2:], weight.shape[2:], padding)]
    if min(sizes) < 1:
        raise ValueError(f"depthwise_conv_transpose: padding {padding} leaves an empty output {sizes}: lower the padding")
    return dw_conv_transpose(x, weight, bias, stride, padding, sizes)
