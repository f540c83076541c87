"""Checkers for the classroom sheet ``notebooks/07_exercises.ipynb``: they answer with hints.

Each ``check_*`` function takes a student's answer (a function or numbers), compares it with the
package's own implementation on a few inputs, and returns a :class:`Feedback` that prints as a
short verdict. A wrong answer is never a bare ``AssertionError``: the checker recognises the common
mistakes (missing residual path, stride ignored, align_corners, IoU for Dice, ...) and names them.

An answer may not delegate to the package function it re-implements: while the student's function
runs, that function (and the module methods that would compute the same thing) is disabled, so
``return block(x)`` or ``return upkern_tensor(w, k)`` is answered with a "shortcut" hint instead of
passing. :data:`MISTAKES` holds one known-wrong answer per exercise and :data:`SHORTCUTS` one
delegating answer per function exercise; :func:`verify_checkers` proves that every checker accepts
the reference solution and rejects both with the matching hint (CI runs it with the solutions in
``notebooks/solutions/``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CHECKS",
    "DICE_TABLE",
    "MISTAKES",
    "SHORTCUTS",
    "Feedback",
    "check_dice",
    "check_dice_table",
    "check_down_block_forward",
    "check_down_block_parameters",
    "check_ds_loss",
    "check_ds_weights",
    "check_lung_window",
    "check_overlap_average",
    "check_predict_parameters",
    "check_stage_receptive_fields",
    "check_upkern_1d",
    "check_window_limits",
    "check_window_starts",
    "stage_receptive_fields_exact",
    "verify_checkers",
]


@dataclass
class Feedback:
    """A checker's verdict: ``passed`` and a message with the hint. Truthy when passed."""

    exercise: str
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        mark = "correct" if self.passed else "not yet"
        return f"[{self.exercise}] {mark}: {self.message}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        colour = "#2e7d32" if self.passed else "#c62828"
        mark = "&#10004; correct" if self.passed else "&#10008; not yet"
        return (f"<div style='border-left:4px solid {colour};padding:4px 8px'><b>{self.exercise}</b>: "
                f"<span style='color:{colour}'>{mark}</span>. {self.message}</div>")


def _ok(exercise: str, message: str) -> Feedback:
    return Feedback(exercise, True, message)


def _hint(exercise: str, message: str) -> Feedback:
    return Feedback(exercise, False, message)


# -- shortcuts: the package's own implementation is switched off while an answer runs -------------

class _Shortcut(BaseException):
    """Raised by a disabled package function. A BaseException, so a student's ``except Exception``
    cannot hide it."""


_HITS: list[str] = []


def _shortcut_hit() -> _Shortcut:
    label = sys._getframe(1).f_code.co_name  # the disabled function's code is named after it
    _HITS.append(label)
    return _Shortcut(label)


def _disabled_call(*args: Any, **kwargs: Any) -> Any:
    raise __import__("mednext_lite.exercises", fromlist=["_shortcut_hit"])._shortcut_hit()


def _raiser_code(label: str) -> types.CodeType:
    return _disabled_call.__code__.replace(co_name=label, co_qualname=label)


@contextlib.contextmanager
def _disabled(targets: Sequence[Any]) -> Iterator[list[str]]:
    """Switch off each target for the duration of the block and collect the names of those called.

    A target is a plain function (its code is swapped, so every reference to it, however imported,
    raises) or ``(class, "method")`` (the class attribute is patched, which every instance and
    subclass sees). Everything is restored on exit.
    """
    start = len(_HITS)
    swapped: list[tuple[types.FunctionType, types.CodeType]] = []
    with contextlib.ExitStack() as stack:
        for target in targets:
            if isinstance(target, tuple):
                owner, attr = target
                label = f"{owner.__name__}.{attr}"

                def raiser(*args: Any, _label: str = label, **kwargs: Any) -> Any:
                    _HITS.append(_label)
                    raise _Shortcut(_label)

                stack.enter_context(mock.patch.object(owner, attr, raiser))
                continue
            fn = target
            while fn.__code__.co_freevars and hasattr(fn, "__wrapped__"):
                fn = fn.__wrapped__  # a decorated function: disable the function it wraps
            label = f"{target.__module__}.{target.__name__}"
            swapped.append((fn, fn.__code__))
            fn.__code__ = _raiser_code(label)
        try:
            yield _HITS  # the caller reads the entries added after it entered
        finally:
            for fn, code in swapped:
                fn.__code__ = code
    del _HITS[start:]


def _call(exercise: str, fn: Callable, *args: Any, forbid: Sequence[Any] = (), instead: str = "",
          errors: Mapping[str, str] | None = None) -> tuple[Any, Feedback | None]:
    """Run the student's function with the ``forbid`` functions disabled; turn 'not written yet',
    shortcuts and crashes into hints. ``errors`` maps a fragment of an error message to a hint."""
    if not callable(fn):
        return None, _hint(exercise, f"expected a function, got {type(fn).__name__}; define it with def ...")
    start = len(_HITS)
    shortcut = None
    try:
        with _disabled(forbid) as hits:
            try:
                value = fn(*args)
            finally:
                called = hits[start:]
                shortcut = called[0] if called else None
    except _Shortcut as err:
        shortcut = shortcut or str(err)
        value = None
    except NotImplementedError:
        return None, _hint(exercise, "not written yet: replace `raise NotImplementedError` with your code")
    except Exception as err:  # noqa: BLE001 -- any student error becomes a hint, never a crash
        if shortcut is None:
            for fragment, hint in (errors or {}).items():
                if fragment in str(err):
                    return None, _hint(exercise, hint)
            return None, _hint(exercise, f"your function raised {type(err).__name__}: {err}")
    if shortcut is not None:
        return None, _hint(exercise, f"shortcut: your function calls `{shortcut}`, the package's own version of "
                                     f"what this exercise asks you to write, so it proves nothing. {instead}")
    return value, None


# -- 1. the down block's forward pass ---------------------------------------------------------------

def _block_layers_forbidden() -> list[Any]:
    from .blocks import MedNeXtBlock, MedNeXtDownBlock, MedNeXtUpBlock

    return [(MedNeXtBlock, "forward"), (MedNeXtBlock, "branch"), (MedNeXtDownBlock, "forward"),
            (MedNeXtUpBlock, "forward")]


def _down_cases() -> list[tuple[Any, torch.Tensor]]:
    """Down blocks the sheet has never seen: other widths and ratios than lesson 01, 2D with GRN on,
    and one without the residual path."""
    from .blocks import MedNeXtDownBlock

    torch.manual_seed(0)
    cases = []
    for c, r, k, d, grn, res, size in ((8, 3, 3, 3, False, True, 8), (6, 2, 5, 2, True, True, 16),
                                      (4, 4, 3, 2, False, False, 12)):
        block = MedNeXtDownBlock(c, expansion_ratio=r, kernel_size=k, spatial_dims=d, grn=grn, conv_residual=res).eval()
        with torch.no_grad():  # non-trivial norm and GRN parameters, so a skipped layer is visible
            block.norm.weight.uniform_(0.5, 1.5)
            block.norm.bias.uniform_(-0.5, 0.5)
            if grn:
                block.grn.gamma.uniform_(0.5, 1.5)
                block.grn.beta.uniform_(-0.5, 0.5)
        cases.append((block, torch.randn(2, c, *(size,) * d)))
    return cases


def check_down_block_forward(fn: Callable[[Any, torch.Tensor], torch.Tensor]) -> Feedback:
    """Exercise 1: ``fn(block, x)`` computes a ``MedNeXtDownBlock``'s output from its layers
    ``conv1, norm, conv2, act, grn, conv3`` and its residual path ``res_conv`` (``None`` when absent),
    without calling the block's own ``forward`` or ``branch``."""
    name = "down block forward"
    errors = {
        "size of tensor": "x has C channels at full resolution, the branch 2C at half: the down block's residual "
                          "path is block.res_conv(x) (a stride-2 1x1 conv), not x itself",
        "'NoneType' object is not callable": "block.res_conv is None when the block is built without a residual path "
                                             "(conv_residual=False): return the branch alone then",
    }
    for block, x in _down_cases():
        with torch.no_grad():
            want = block(x)
            got, problem = _call(name, fn, block, x.clone(), forbid=_block_layers_forbidden(), errors=errors,
                                 instead="Apply block.conv1, block.norm, ... one after the other yourself.")
            if problem is not None:
                return problem
            where = f"({block.spatial_dims}D, C={x.shape[1]}, grn={not isinstance(block.grn, torch.nn.Identity)})"
            if not isinstance(got, torch.Tensor):
                return _hint(name, f"return a tensor, got {type(got).__name__}")
            if got.shape != want.shape:
                return _hint(name, f"{where}: output shape {tuple(got.shape)} should be {tuple(want.shape)}: half "
                                   "the size (conv1 has stride 2) and twice the channels (conv3 gives 2C)")
            if torch.allclose(got, want, atol=1e-5):
                continue
            c1 = block.conv1(x)
            res = block.res_conv(x) if block.res_conv is not None else 0
            near = {
                "the residual path is missing: add block.res_conv(x) to the branch": block.branch(x),
                "the norm is missing: apply block.norm right after the depthwise conv1": res + block.conv3(
                    block.grn(block.act(block.conv2(c1)))),
                "the activation is missing: apply block.act (GELU) after the expansion conv2": res + block.conv3(
                    block.grn(block.conv2(block.norm(c1)))),
                "use GELU (block.act), not ReLU: MedNeXt follows ConvNeXt": res + block.conv3(
                    block.grn(torch.relu(block.conv2(block.norm(c1))))),
                "GRN is missing: when the block has one, block.grn comes right after the activation": res + block.conv3(
                    block.act(block.conv2(block.norm(c1)))),
            }
            for hint, value in near.items():
                if isinstance(value, torch.Tensor) and value.shape == got.shape and torch.allclose(got, value, atol=1e-5):
                    return _hint(name, f"{where}: {hint}")
        return _hint(name, f"{where}: the output differs from the block's; print the shape after each layer and "
                           "compare with lesson 01, section 2")
    return _ok(name, "conv1 (stride 2) -> norm -> conv2 -> GELU -> GRN -> conv3 (2C), plus res_conv(x) when present; "
                     "3D and 2D, with and without GRN and residual path.")


# -- 2. the down block's parameters by hand -------------------------------------------------------

def _construction_forbidden() -> list[Any]:
    from .blocks import MedNeXtBlock
    from .model import MedNeXt
    from .profile import count_parameters

    return [count_parameters, (MedNeXtBlock, "__init__"), (MedNeXt, "__init__")]


def check_down_block_parameters(fn: Callable[[int, int, int, int], int]) -> Feedback:
    """Exercise 2: ``fn(C, R, k, spatial_dims)`` returns the parameter count of a MedNeXt DOWN block
    (C -> 2C, with its stride-2 1x1 shortcut), computed by hand."""
    from .blocks import MedNeXtDownBlock
    from .profile import count_parameters

    name = "down block parameters"
    for c, r, k, d in ((8, 2, 3, 3), (32, 4, 5, 3), (16, 3, 7, 2)):
        want = count_parameters(MedNeXtDownBlock(c, expansion_ratio=r, kernel_size=k, spatial_dims=d))
        got, problem = _call(name, fn, c, r, k, d, forbid=_construction_forbidden(),
                             instead="Add up the layers' weights and biases with the formula you derive.")
        if problem is not None:
            return problem
        if got == want:
            continue
        where = f"C={c}, R={r}, k={k}, {d}D: you answered {got}"
        plain_block = (c * k**d + c) + 2 * c + (c * r * c + r * c) + (r * c * c + c)
        res = 2 * c * c + 2 * c
        if got == want - res:
            return _hint(name, f"{where}; the residual path res_conv (1x1, stride 2, C -> 2C, with bias) is missing")
        if got == plain_block or got == plain_block + res:
            return _hint(name, f"{where}; that counts conv3 as RC -> C (the plain block of lesson 01): in the down "
                               "block conv3 produces 2C channels")
        weights_only = c * k**d + c * r * c + r * c * 2 * c + 2 * c * c
        if got in (weights_only, weights_only + 2 * c):
            return _hint(name, f"{where}, which misses the biases: every conv has one bias per output channel")
        if got == want - 2 * c:
            return _hint(name, f"{where}, which misses the norm's affine weight and bias (2C)")
        if got == want - c * k**d + c * c * k**d:
            return _hint(name, f"{where}; the first conv is DEPTHWISE (groups=C): C*k^d weights, not C*C*k^d")
        return _hint(name, f"{where}, expected {want}: count conv1 (depthwise, + bias), the norm (weight + bias), "
                           "conv2 (C -> RC, + bias), conv3 (RC -> 2C, + bias) and res_conv (C -> 2C, + bias)")
    return _ok(name, "C*k^d + C + 2C + (R*C*C + R*C) + (R*C*2C + 2C) + (C*2C + 2C): the ratio only enters through "
                     "the two 1x1 convs, never through k.")


# -- 3. predict MedNeXt-B's parameters from MedNeXt-S's -------------------------------------------

def _ratio_costs(base_width: int, blocks: Sequence[int]) -> list[int]:
    """Parameters added per unit of R at each of the 9 stages (the count is affine in every R)."""
    from .model import LEVELS, NUM_STAGES

    cost = [0] * NUM_STAGES
    for s in range(NUM_STAGES):
        w = base_width * 2 ** min(s, 2 * LEVELS - s)
        cost[s] += blocks[s] * (2 * w * w + w)  # conv2 R*w*w + R*w, conv3 R*w*w
    for i in range(LEVELS):
        w = base_width * 2**i
        cost[i + 1] += 3 * w * w + w  # down block after level i: ratio of stage i+1, conv3 Rw -> 2w
        c = 2 * w
        cost[2 * LEVELS - i] += c * c * 3 // 2 + c  # up block into level i: ratio of stage 8-i, conv3 Rc -> c/2
    return cost


def _predict(params_from: int, r_from: Sequence[int], r_to: Sequence[int], costs: Sequence[int]) -> int:
    return int(params_from) + sum((b - a) * c for a, b, c in zip(r_from, r_to, costs))


@functools.lru_cache(maxsize=1)
def _predict_cases() -> list[dict[str, Any]]:
    from .model import MedNeXtConfig
    from .profile import count_parameters
    from .variants import PRESETS

    s, b, l_ = PRESETS["S"], PRESETS["B"], PRESETS["L"]
    rng = np.random.default_rng(0)
    random_r = tuple(int(v) for v in rng.integers(1, 6, 9))
    specs = [  # (ratios from, ratios to, blocks, C, kernel, dims, deep supervision)
        (s.expansion_ratios, b.expansion_ratios, s.block_counts, 32, 3, 3, False),
        (s.expansion_ratios, b.expansion_ratios, s.block_counts, 32, 5, 2, True),
        (b.expansion_ratios, l_.expansion_ratios, l_.block_counts, 32, 3, 3, False),
        (random_r, s.expansion_ratios, (1, 2, 3, 1, 2, 3, 1, 2, 3), 16, 5, 3, False),
    ]
    cases = []
    for r_from, r_to, blocks, width, k, d, ds in specs:
        common = {"in_channels": 1, "num_classes": 3, "base_width": width, "block_counts": blocks,
                  "enc_kernel_size": k, "dec_kernel_size": k, "spatial_dims": d, "deep_supervision": ds}

        def count(r: Sequence[int], common: dict = common) -> int:
            return count_parameters(MedNeXtConfig(expansion_ratios=r, **common))
        cases.append({"r_from": tuple(r_from), "r_to": tuple(r_to), "blocks": tuple(blocks), "C": width,
                      "from": count(r_from), "to": count(r_to), "where": f"C={width}, k{k}, {d}D"})
    return cases


def check_predict_parameters(fn: Callable[..., int]) -> Feedback:
    """Exercise 3: ``fn(params_from, ratios_from, ratios_to, blocks, C)`` predicts the parameter count
    of a MedNeXt whose expansion ratios change from ``ratios_from`` to ``ratios_to`` (9 per stage),
    everything else equal, from the count ``params_from`` of the first network."""
    name = "predict parameters"
    from .variants import create_mednext, preset_config

    forbid = _construction_forbidden() + [preset_config, create_mednext]
    for case in _predict_cases():
        got, problem = _call(name, fn, case["from"], case["r_from"], case["r_to"], case["blocks"], case["C"],
                             forbid=forbid, instead="Work out how many parameters one unit of R adds at each stage.")
        if problem is not None:
            return problem
        try:
            got = int(got)
        except (TypeError, ValueError):
            return _hint(name, f"return a whole number of parameters, got {got!r}")
        want = case["to"]
        if got == want:
            continue
        r_from, r_to, blocks, width = case["r_from"], case["r_to"], case["blocks"], case["C"]
        where = f"{case['where']}, ratios {list(r_from)} -> {list(r_to)}, blocks {list(blocks)}: you predicted " \
                f"{got:,}, the network has {want:,}"
        blocks_only = [blocks[s] * (2 * (width * 2 ** min(s, 8 - s)) ** 2 + width * 2 ** min(s, 8 - s))
                       for s in range(9)]
        down_own_ratio = list(_ratio_costs(width, blocks))
        for i in range(4):  # the down block after level i with ratio R[i] (MONAI's variant) instead of R[i+1]
            w = width * 2**i
            down_own_ratio[i + 1] -= 3 * w * w + w
            down_own_ratio[i] += 3 * w * w + w
        no_bias = [blocks[s] * 2 * (width * 2 ** min(s, 8 - s)) ** 2 for s in range(9)]
        for i in range(4):
            w = width * 2**i
            no_bias[i + 1] += 3 * w * w
            no_bias[8 - i] += 6 * w * w
        if got == _predict(case["from"], r_from, r_to, blocks_only):
            return _hint(name, f"{where}; you counted the MedNeXt blocks only: the down and up blocks have the same "
                               "1x1 expansion, so their R counts too")
        if got == _predict(case["from"], r_from, r_to, down_own_ratio):
            return _hint(name, f"{where}; the down block after stage i uses the ratio of the NEXT stage, R[i+1] "
                               "(MONAI's MedNeXt gets this wrong, hence its different B/M/L counts)")
        if got == _predict(case["from"], r_from, r_to, no_bias):
            return _hint(name, f"{where}; the expansion conv2 has R*w biases, so each unit of R adds w of them")
        if got == want - case["from"] or got == case["to"] - case["from"]:
            return _hint(name, f"{where}; return the whole count (params_from plus the change), not the change only")
        return _hint(name, f"{where}. Per unit of R, a block of width w adds 2w^2 + w (conv2 w*Rw + Rw, conv3 Rw*w); "
                           "a down block C->2C and an up block C->C/2 add their own share; widths double per level")
    return _ok(name, "the count is affine in each R: predicted S -> B, B -> L and two other networks exactly; k, "
                     "2D/3D and deep supervision never enter (R only widens 1x1 convs).")


# -- 4. receptive field per stage ------------------------------------------------------------------

def _stage_rf_rule(k: int, blocks: Sequence[int]) -> list[int]:
    """The closed rule: a k-conv adds (k-1) x jump; a down block adds it, then doubles the jump; an
    up block halves the jump first."""
    rf, jump, out = 1, 1, []
    for s in range(9):
        if s > 4:
            jump //= 2
            rf += (k - 1) * jump  # up block
        rf += blocks[s] * (k - 1) * jump
        out.append(rf)
        if s < 4:
            rf += (k - 1) * jump  # down block
            jump *= 2
    return out


@functools.lru_cache(maxsize=16)
def _rf_references(k: int, blocks: tuple[int, ...]) -> tuple[list[int], list[int], int]:
    """(closed rule, exact replay, ``profile.receptive_field``) for one network, computed once."""
    from .model import MedNeXtConfig
    from .profile import receptive_field

    config = MedNeXtConfig(block_counts=blocks, enc_kernel_size=k, dec_kernel_size=k)
    return _stage_rf_rule(k, blocks), stage_receptive_fields_exact(k, blocks), receptive_field(config)


def stage_receptive_fields_exact(k: int, blocks: Sequence[int]) -> list[int]:
    """Exact theoretical receptive field (input voxels per axis) at the end of each of the 9 stages.

    The network's spatial wiring (depthwise convs, stride-2 down blocks, transposed up blocks with
    their one-voxel start padding, the residual and skip paths) is replayed along one axis with
    all-ones kernels on a batch of unit impulses, so one pass gives the whole input->output support
    of every stage; the widest support over a window of central output positions is returned. At
    the last stage this equals :func:`mednext_lite.profile.receptive_field`.
    """
    bound = _stage_rf_rule(k, blocks)[-1]
    n = 16 * math.ceil((2 * bound + 64) / 16)
    x = torch.eye(n, dtype=torch.float64)[:, None, :]  # impulse at input position i in batch row i
    ones = torch.ones(1, 1, k, dtype=torch.float64)

    def widest(y: torch.Tensor) -> int:
        m = y.shape[-1]
        seen = y[:, 0, m // 2 - 16:m // 2 + 16] > 0  # [input position, output position]
        first = seen.int().argmax(dim=0)
        last = n - 1 - seen.flip(0).int().argmax(dim=0)
        return int((last - first).max()) + 1

    out, skips = [], []
    for s in range(4):
        for _ in range(blocks[s]):
            x = x + F.conv1d(x, ones, padding=k // 2)
        out.append(widest(x))
        skips.append(x)
        x = F.conv1d(x, ones, stride=2, padding=k // 2) + x[..., ::2]
    for _ in range(blocks[4]):
        x = x + F.conv1d(x, ones, padding=k // 2)
    out.append(widest(x))
    for level in reversed(range(4)):
        up = F.pad(F.conv_transpose1d(x, ones, stride=2, padding=k // 2), (1, 0))
        x = up + F.pad(F.conv_transpose1d(x, torch.ones(1, 1, 1, dtype=x.dtype), stride=2), (1, 0)) + skips[level]
        for _ in range(blocks[8 - level]):
            x = x + F.conv1d(x, ones, padding=k // 2)
        out.append(widest(x))
    return out


RF_CASES: list[tuple[int, tuple[int, ...]]] = [(3, (2,) * 9), (5, (2,) * 9), (3, (1, 2, 3, 1, 2, 3, 1, 2, 3)),
                                               (7, (1,) * 9)]


def check_stage_receptive_fields(fn: Callable[[int, Sequence[int]], Sequence[int]]) -> Feedback:
    """Exercise 4: ``fn(k, blocks)`` returns the theoretical receptive field (input voxels per axis)
    at the end of each of the 9 stages enc0..dec0 of a MedNeXt with kernel k and ``blocks`` per stage.
    Encoder and bottleneck must be exact; a decoder stage may be the closed rule's value (an upper
    bound) or the exact one."""
    from .model import STAGE_NAMES
    from .profile import _support_path, receptive_field

    name = "receptive field per stage"
    notes = []
    for k, blocks in RF_CASES:
        rule, exact, profiled = _rf_references(k, tuple(blocks))
        got, problem = _call(name, fn, k, list(blocks), forbid=[receptive_field, _support_path],
                             instead="Walk the stages yourself, keeping track of the jump between voxels.")
        if problem is not None:
            return problem
        try:
            got = [int(v) for v in got]
        except (TypeError, ValueError):
            return _hint(name, f"return 9 whole numbers (one per stage), got {got!r}")
        if len(got) != 9:
            return _hint(name, f"return 9 values, one per stage {', '.join(STAGE_NAMES)}; got {len(got)}")
        where = f"k={k}, blocks {list(blocks)}"
        for s in range(9):
            if got[s] == exact[s] or (s > 4 and got[s] == rule[s]):
                continue
            stage = STAGE_NAMES[s]
            if s <= 4:
                wrong_order, jump = 1, 1
                for t in range(s + 1):
                    if t > 0:
                        jump *= 2
                        wrong_order += (k - 1) * jump
                    wrong_order += blocks[t] * (k - 1) * jump
                if got[s] == 1 + sum(blocks[t] * (k - 1) * 2**t for t in range(s + 1)):
                    return _hint(name, f"{where}, {stage}: you gave {got[s]}, expected {exact[s]}; each down block "
                                       "is a k-conv too: it adds (k-1) x jump BEFORE it doubles the jump")
                if got[s] == wrong_order:
                    return _hint(name, f"{where}, {stage}: you gave {got[s]}, expected {exact[s]}; the down block's "
                                       "own conv still sees its neighbours at the OLD spacing: add (k-1) x jump, "
                                       "then double the jump")
                if got[s] == 1 + sum(blocks[t] for t in range(s + 1)) * (k - 1):
                    return _hint(name, f"{where}, {stage}: you gave {got[s]}; after each down block neighbouring "
                                       "voxels are twice as far apart, so a later conv adds (k-1) x jump voxels")
                return _hint(name, f"{where}, {stage}: you gave {got[s]}, expected {exact[s]}; start at 1, add "
                                   "(k-1) x jump per conv (blocks and the down block) and double the jump per down block")
            return _hint(name, f"{where}, {stage}: you gave {got[s]}; the rule gives {rule[s]} (an up block first "
                               f"HALVES the jump, then adds (k-1) x jump), the exact replay {exact[s]}")
        if exact[-1] != profiled:  # the replay above and the package's must agree
            raise AssertionError(f"replay {exact[-1]} != profile.receptive_field {profiled} for {where}")
        if got[-1] == rule[-1] != exact[-1]:
            notes.append(f"{where}: rule {rule[-1]}, exact {exact[-1]}")
    msg = "encoder and bottleneck exact; the output stage matches profile.receptive_field"
    if notes:
        msg = ("encoder and bottleneck exact. Your decoder values are the closed rule's, an UPPER bound: "
               f"profile.receptive_field replays the transposed convs tap by tap ({'; '.join(notes)}): a stride-2 "
               "transposed conv gives even and odd outputs different taps, so no single output reaches the rule's width")
    return _ok(name, msg + ".")


# -- 5. UpKern one 1D kernel, by hand ---------------------------------------------------------------

def _linear_resize(w: torch.Tensor, k: int, align_corners: bool, clamp: bool = True) -> torch.Tensor:
    n = w.numel()
    j = torch.arange(k, dtype=torch.float64)
    src = j * (n - 1) / (k - 1) if align_corners else (j + 0.5) * n / k - 0.5
    if clamp:
        src = src.clamp(0, n - 1)
    i0 = src.floor().clamp(0, n - 2).long() if n > 1 else torch.zeros(k, dtype=torch.long)
    frac = src - i0
    w = w.double()
    hi = w[(i0 + 1).clamp(max=n - 1)]
    return (w[i0] * (1 - frac) + hi * frac).float()


def check_upkern_1d(fn: Callable[[torch.Tensor, int], Any]) -> Feedback:
    """Exercise 5: ``fn(kernel, k)`` resizes a 1D kernel (a tensor of n weights) to k weights by linear
    interpolation with ``align_corners=False``, as UpKern does per axis, without ``F.interpolate``
    or ``upkern_tensor``."""
    from .upkern import upkern_tensor

    name = "upkern 1d"
    torch.manual_seed(0)
    for n, k in ((3, 5), (3, 7), (5, 7), (3, 3), (5, 9)):
        w = torch.randn(n)
        want = upkern_tensor(w[None, None], k)[0, 0]
        got, problem = _call(name, fn, w.clone(), k, forbid=[upkern_tensor, F.interpolate],
                             instead="Compute where each new weight sits on the old kernel's axis and mix "
                                     "its two neighbours.")
        if problem is not None:
            return problem
        try:
            got = torch.as_tensor(np.asarray(got, dtype=np.float64)).float().flatten()
        except (TypeError, ValueError):
            return _hint(name, f"return the k new weights (a tensor or array), got {type(got).__name__}")
        if got.numel() != k:
            return _hint(name, f"{n} -> {k}: return {k} weights, got {got.numel()}")
        if torch.allclose(got, want, atol=1e-5):
            continue
        where = f"{n} -> {k}"
        if torch.allclose(got, _linear_resize(w, k, align_corners=True), atol=1e-5):
            return _hint(name, f"{where}: those are align_corners=True positions (j*(n-1)/(k-1)): the first and last "
                               "weights are copied. UpKern uses align_corners=False: new weight j sits at "
                               "(j + 0.5) * n / k - 0.5 on the old axis")
        if torch.allclose(got, _linear_resize(w, k, align_corners=False, clamp=False), atol=1e-5):
            return _hint(name, f"{where}: the outermost positions fall below 0 and above n-1; clamp them to the "
                               "kernel's ends (the edge weight is repeated, not extrapolated)")
        pad = (k - n) // 2
        if torch.allclose(got, F.pad(w, (pad, pad)), atol=1e-5):
            return _hint(name, f"{where}: that is zero-padding the small kernel; UpKern INTERPOLATES it, so the "
                               "large kernel is a smooth stretch of the small one")
        nearest = w[torch.floor(torch.arange(k) * n / k).long()]
        if torch.allclose(got, nearest, atol=1e-5):
            return _hint(name, f"{where}: nearest-neighbour repeats values; mix the two neighbours linearly")
        return _hint(name, f"{where}: expected {[round(v, 4) for v in want.tolist()]}, got "
                           f"{[round(v, 4) for v in got.tolist()]}")
    return _ok(name, "position (j + 0.5) n/k - 0.5, clamped to the ends, linear mix of the two neighbours: "
                     "exactly upkern_tensor, for 3 -> 5, 7 and 5 -> 7, 9.")


# -- 6. sliding windows in 1D ------------------------------------------------------------------------

def _starts(length: int, window: int, overlap: float) -> list[int]:
    """Window starts as MONAI's sliding window (and so our predict) places them."""
    if window >= length:
        return [0]
    step = max(1, int(window * (1 - overlap)))
    starts, s = [], 0
    while True:
        starts.append(min(s, length - window))
        if s + window >= length:
            return starts
        s += step


def _sliding_forbidden() -> list[Any]:
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval, sliding_window_inference

    from .inference import sliding_window_logits

    return [sliding_window_inference, sliding_window_logits, dense_patch_slices, _get_scan_interval]


def check_window_starts(fn: Callable[[int, int, float], Sequence[int]]) -> Feedback:
    """Exercise 6a: ``fn(length, window, overlap)`` returns the start of every window along one axis:
    steps of ``int(window * (1 - overlap))`` from 0, the last window moved back to end at the signal's end."""
    name = "window starts"
    for length, window, overlap in ((100, 32, 0.5), (64, 32, 0.5), (90, 20, 0.25), (20, 32, 0.5), (50, 16, 0.9),
                                    (33, 32, 0.0)):
        want = _starts(length, window, overlap)
        got, problem = _call(name, fn, length, window, overlap, forbid=_sliding_forbidden(),
                             instead="Step along the axis yourself.")
        if problem is not None:
            return problem
        try:
            got = [int(v) for v in got]
        except (TypeError, ValueError):
            return _hint(name, f"return a list of whole-number starts, got {got!r}")
        if got == want:
            continue
        where = f"length {length}, window {window}, overlap {overlap}: you gave {got}, expected {want}"
        if window >= length:
            return _hint(name, f"{where}; a window as long as the signal (or longer) is one window at 0")
        if len(set(got)) < len(got):
            return _hint(name, f"{where}; a start appears twice: stop once a window reaches the end, the extra "
                               "window is a duplicate")
        if got and got[-1] + window < length:
            return _hint(name, f"{where}; the last {length - got[-1] - window} voxels are never covered: move the "
                               "last window back so it ends exactly at the signal's end")
        if got and got[-1] + window > length:
            return _hint(name, f"{where}; a window runs past the end: the last start is length - window")
        return _hint(name, f"{where}; the step is int(window * (1 - overlap)) (at least 1)")
    return _ok(name, "0, step, 2*step, ... and the last window flush with the end, as MONAI places them.")


def _blend(length: int, starts: Sequence[int], outputs: Sequence[np.ndarray], weight: np.ndarray) -> np.ndarray:
    total, norm = np.zeros(length), np.zeros(length)
    for s, out in zip(starts, outputs):
        total[s:s + len(weight)] += weight * out
        norm[s:s + len(weight)] += weight
    return total / norm


def gaussian_weight(window: int, sigma_scale: float = 0.125) -> np.ndarray:
    """A 1D Gaussian weight over a window (sigma = window * sigma_scale, as MONAI's default)."""
    x = np.arange(window) - (window - 1) / 2
    return np.exp(-0.5 * (x / (window * sigma_scale)) ** 2)


def check_overlap_average(fn: Callable[..., np.ndarray]) -> Feedback:
    """Exercise 6b: ``fn(length, starts, outputs, weight)`` stitches window outputs into one signal:
    every position gets the ``weight``-weighted average of the window outputs covering it."""
    name = "overlap average"
    rng = np.random.default_rng(0)
    for trial in range(4):
        length, window = int(rng.integers(40, 90)), int(rng.integers(8, 24))
        starts, s = [], 0
        while s < length - window:  # random steps of at most a window, so every position is covered
            starts.append(s)
            s += int(rng.integers(1, window + 1))
        starts = _starts(length, window, 0.5) if trial == 0 else [*starts, length - window]
        if trial == 3:
            rng.shuffle(starts)  # any order, and a repeated start is just one more vote
            starts = [*starts, starts[0]]
        outputs = [rng.normal(size=window) for _ in starts]
        weight = np.ones(window) if trial < 2 else gaussian_weight(window)
        want = _blend(length, starts, outputs, weight)
        got, problem = _call(name, fn, length, list(starts), [o.copy() for o in outputs], weight.copy(),
                             forbid=_sliding_forbidden(), instead="Accumulate the weighted outputs and the weights.")
        if problem is not None:
            return problem
        try:
            got = np.asarray(got, dtype=float).reshape(-1)
        except (TypeError, ValueError):
            return _hint(name, f"return one value per position (length {length}), got {type(got).__name__}")
        if got.shape != (length,):
            return _hint(name, f"return {length} values, one per position, got shape {got.shape}")
        where = f"length {length}, window {window}, {len(starts)} windows" + (", Gaussian weight" if trial >= 2 else "")
        if np.allclose(got, want, atol=1e-6):
            continue
        plain = _blend(length, starts, outputs, np.ones(window))
        summed = sum(np.pad(o, (s, length - s - window)) for s, o in zip(starts, outputs))
        wsum = sum(np.pad(weight * o, (s, length - s - window)) for s, o in zip(starts, outputs))
        cover = sum(np.pad(np.ones(window), (s, length - s - window)) for s in starts)
        if np.allclose(got, summed) or np.allclose(got, wsum):
            return _hint(name, f"{where}: you summed the overlapping outputs; divide by the total weight at each "
                               "position (with weight 1: the number of windows covering it)")
        if np.allclose(got, summed / len(starts)) or np.allclose(got, wsum / len(starts)):
            return _hint(name, f"{where}: dividing by the number of windows is wrong where fewer windows cover a "
                               "position (near the edges): divide by the weight summed per position")
        if trial >= 2 and np.allclose(got, plain):
            return _hint(name, f"{where}: the weight is ignored; multiply each output by the weight and divide by "
                               "the weights summed per position")
        if trial >= 2 and np.allclose(got, wsum / cover):
            return _hint(name, f"{where}: divide by the summed WEIGHTS, not by the number of windows")
        bad = np.flatnonzero(~np.isclose(got, want, atol=1e-6))
        return _hint(name, f"{where}: positions {bad[:5].tolist()}... differ (e.g. at {bad[0]}: {got[bad[0]]:.4f} "
                           f"vs {want[bad[0]]:.4f}); check window s covers s .. s + window - 1 and the last window")
    return _ok(name, "sum of weight x output over the windows, divided by the weights summed per position; "
                     "random windows in any order, edges included, plain and Gaussian.")


# -- 7. deep supervision ------------------------------------------------------------------------------

def check_ds_weights(fn: Callable[[int], Sequence[float]]) -> Feedback:
    """Exercise 7a: ``fn(n)`` returns the deep-supervision weights of n outputs: 1/2^i, the lowest
    resolution (the last) set to 0, normalised to sum 1 (one output: [1.0])."""
    from .losses import deep_supervision_weights

    name = "deep-supervision weights"
    for n in (5, 4, 2, 1, 6):
        want = deep_supervision_weights(n)
        got, problem = _call(name, fn, n, forbid=[deep_supervision_weights],
                             instead="Write 1/2^i, zero the last, normalise.")
        if problem is not None:
            return problem
        try:
            got = [float(v) for v in got]
        except (TypeError, ValueError):
            return _hint(name, f"return a list of {n} numbers, got {got!r}")
        if len(got) == n and np.allclose(got, want, atol=1e-9):
            continue
        raw = [1 / 2**i for i in range(n)]
        where = f"n={n}: you gave {[round(v, 4) for v in got]}, expected {[round(v, 4) for v in want]}"
        if len(got) != n:
            return _hint(name, f"n={n}: return one weight per output, got {len(got)}")
        if n == 1:
            return _hint(name, f"{where}; a single output (no deep supervision) gets the whole weight, 1.0")
        if np.allclose(got, raw[:-1] + [0.0]):
            return _hint(name, f"{where}; normalise so the weights sum to 1")
        if np.allclose(got, np.array(raw) / sum(raw)):
            return _hint(name, f"{where}; the lowest-resolution output (the last) is weighted 0")
        if np.allclose(got, [w / sum(raw) for w in raw[:-1]] + [0.0]):
            return _hint(name, f"{where}; zero the last weight BEFORE normalising, so the rest sum to 1")
        if np.allclose(got[::-1], want):
            return _hint(name, f"{where}; output 0 is the FULL resolution, weighted most")
        return _hint(name, f"{where}")
    return _ok(name, "1/2^i with the last set to 0, then divided by their sum: [0.533, 0.267, 0.133, 0.067, 0] "
                     "for five outputs.")


def _ds_cases() -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    cases = []
    for spatial, n, classes in (((32, 32), 5, 3), ((16, 16, 16), 5, 2), ((8, 8), 1, 3), ((16, 16), 3, 4)):
        sizes = [tuple(max(1, s // 2**i) for s in spatial) for i in range(n)]
        outs = [torch.randn(2, classes, *sz, generator=g) for sz in sizes]
        label = torch.randint(0, classes, (2, 1, *spatial), generator=g)
        cases.append((outs, label))
    return cases


def check_ds_loss(fn: Callable[[Sequence[torch.Tensor], torch.Tensor, Callable], torch.Tensor]) -> Feedback:
    """Exercise 7b: ``fn(outputs, label, base_loss)`` is the deep-supervision loss: ``base_loss`` (the
    DiceCE of the MedNeXt recipe) on each output against the label downsampled by nearest neighbour
    to that output's size, mixed with the weights of 7a. Checked against ``mednext_lite.losses``."""
    from .losses import DeepSupervisionLoss, deep_supervision_weights, make_loss

    name = "deep-supervision loss"
    reference = make_loss()
    base = reference.base_loss
    for outs, label in _ds_cases():
        with torch.no_grad():
            want = float(reference(outs, label))
            got, problem = _call(
                name, fn, [o.clone() for o in outs], label.clone(), base,
                forbid=[(DeepSupervisionLoss, "forward"), deep_supervision_weights, make_loss],
                instead="Loop over the outputs, resize the label, weight each base_loss term.",
                errors={"shape": "each output has its own size: downsample the label to output i's size "
                                 "(F.interpolate(label.float(), size=..., mode='nearest')) before base_loss"})
            if problem is not None:
                return problem
            try:
                got = float(got)
            except (TypeError, ValueError, RuntimeError):
                return _hint(name, f"return one number (a scalar tensor), got {type(got).__name__}")
            if math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-6):
                continue
            terms = []
            for o in outs:
                target = F.interpolate(label.float(), size=o.shape[2:], mode="nearest")
                terms.append(float(base(o, target)))
            weights = deep_supervision_weights(len(outs))
            where = f"{len(outs)} outputs of {tuple(outs[0].shape[2:])}...: you gave {got:.5f}, expected {want:.5f}"
            if math.isclose(got, sum(terms) / len(terms), rel_tol=1e-5):
                return _hint(name, f"{where}; that is the plain mean of the terms: weight term i by the 7a weights")
            if math.isclose(got, sum(terms), rel_tol=1e-5):
                return _hint(name, f"{where}; that is the unweighted sum: weight term i by the 7a weights")
            if math.isclose(got, terms[0], rel_tol=1e-5):
                return _hint(name, f"{where}; only the full-resolution output counts there: add the other outputs")
            if math.isclose(got, sum(w * t for w, t in zip(weights[::-1], terms)), rel_tol=1e-5):
                return _hint(name, f"{where}; the weights are reversed: outputs[0] is the full resolution")
            smooth = 0.0
            for w, o in zip(weights, outs):
                soft = F.interpolate(label.float(), size=o.shape[2:], mode="bilinear" if o.ndim == 4 else "trilinear",
                                     align_corners=False) if o.shape[2:] != label.shape[2:] else label.float()
                smooth += w * float(base(o, soft.round()))
            if math.isclose(got, smooth, rel_tol=1e-5):
                return _hint(name, f"{where}; labels are classes: downsample them by NEAREST neighbour, never by "
                                   "(bi/tri)linear interpolation")
            return _hint(name, f"{where}; the per-output terms are {[round(t, 4) for t in terms]}, the weights "
                               f"{[round(w, 4) for w in weights]}")
    return _ok(name, "sum of w_i x DiceCE(output_i, nearest-downsampled label), equal to mednext_lite.losses; "
                     "2D, 3D, one output and three.")


# -- 8. CT windows -----------------------------------------------------------------------------------

def check_window_limits(fn: Callable[[float, float], tuple[float, float]]) -> Feedback:
    """Exercise 8a: ``fn(level, width)`` returns the display range ``(vmin, vmax)`` of a CT window."""
    from .viz import CT_WINDOWS, ct_window

    name = "window limits"
    for level, width in [*CT_WINDOWS.values(), (35.0, 7.0)]:  # the viewer's presets and one of ours
        want_lo, want_hi = ct_window(level, width)
        got, problem = _call(name, fn, level, width, forbid=[ct_window],
                             instead="It is one line of arithmetic: the level is the centre, the width the span.")
        if problem is not None:
            return problem
        try:
            lo, hi = (float(v) for v in got)
        except (TypeError, ValueError):
            return _hint(name, f"return a pair (vmin, vmax), got {got!r}")
        if math.isclose(lo, want_lo) and math.isclose(hi, want_hi):
            continue
        if math.isclose(lo, level - width) and math.isclose(hi, level + width):
            return _hint(name, f"level {level}, width {width}: the window is `width` wide IN TOTAL, "
                               "so it spans level +/- width/2")
        if math.isclose(lo, width - level / 2) or math.isclose(lo, width - level):
            return _hint(name, "level and width are swapped: the level is the centre, the width the span")
        return _hint(name, f"level {level}, width {width}: expected ({want_lo}, {want_hi}), got ({lo}, {hi})")
    return _ok(name, "vmin = level - width/2, vmax = level + width/2.")


def check_lung_window(level: float, width: float) -> Feedback:
    """Exercise 8b: choose (level, width) in HU that shows lung tissue (air -1000 HU, lung about
    -850..-500 HU, soft tissue 20..80 HU) with some soft tissue still distinguishable."""
    from .viz import ct_window

    name = "lung window"
    if level is None or width is None:
        return _hint(name, "fill in lung_window = (level, width)")
    if width <= 0:
        return _hint(name, "the width must be positive")
    lo, hi = ct_window(level, width)
    if hi < -100:
        return _hint(name, f"your window [{lo:.0f}, {hi:.0f}] HU turns all soft tissue white; raise the level "
                           "or widen it so it reaches above 0 HU")
    if lo > -850:
        return _hint(name, f"your window [{lo:.0f}, {hi:.0f}] HU starts above lung tissue (about -850 HU), so "
                           "lung is black; lower the level towards -600")
    if width > 2500:
        return _hint(name, f"width {width:.0f} HU squeezes lung and soft tissue into a few grey levels; "
                           "try about 1500")
    if not -800 <= level <= -400:
        return _hint(name, f"level {level:.0f} HU is far from lung density; the usual lung level is about -600")
    return _ok(name, f"[{lo:.0f}, {hi:.0f}] HU: air black, lung in greys, soft tissue bright "
                     "(the standard preset is level -600, width 1500).")


# -- 9. Dice -------------------------------------------------------------------------------------------

def check_dice(fn: Callable[[np.ndarray, np.ndarray], float]) -> Feedback:
    """Exercise 9a: ``fn(pred, truth)`` returns the Dice of two binary masks, 1.0 when both are
    empty (nothing to find, nothing found)."""
    from monai.metrics import compute_dice

    from .metrics import dice_scores

    name = "dice"
    rng = np.random.default_rng(0)
    cases = [(rng.random((8, 8, 8)) > 0.5, rng.random((8, 8, 8)) > 0.6) for _ in range(3)]
    cases.append((np.zeros((4, 4), bool), np.zeros((4, 4), bool)))
    cases.append((np.zeros((5, 7), bool), np.eye(5, 7, dtype=bool)))
    for pred, truth in cases:
        got, problem = _call(name, fn, pred.copy(), truth.copy(), forbid=[dice_scores, compute_dice],
                             instead="Count the overlap and the two sizes yourself.")
        if problem is not None:
            if not pred.any() and not truth.any() and "ZeroDivision" in problem.message:
                return _hint(name, "both masks empty: define Dice = 1.0 (perfect agreement) instead of 0/0")
            return problem
        inter, total = np.logical_and(pred, truth).sum(), pred.sum() + truth.sum()
        want = 1.0 if total == 0 else 2 * inter / total
        try:
            got = float(got)
        except (TypeError, ValueError):
            return _hint(name, f"return a number, got {got!r}")
        if math.isclose(got, want, abs_tol=1e-6):
            continue
        if total == 0 or math.isnan(got):
            return _hint(name, f"both masks empty: you returned {got}; define Dice = 1.0 (perfect agreement)")
        union = np.logical_or(pred, truth).sum()
        if math.isclose(got, inter / union, abs_tol=1e-6):
            return _hint(name, "that is IoU (Jaccard), |A and B| / |A or B|; Dice is 2|A and B| / (|A| + |B|)")
        if math.isclose(got, inter / total, abs_tol=1e-6):
            return _hint(name, "you forgot the factor 2: Dice = 2|A and B| / (|A| + |B|)")
        return _hint(name, f"expected {want:.4f}, got {got:.4f}: Dice = 2|A and B| / (|A| + |B|)")
    return _ok(name, "Dice = 2|A and B| / (|A| + |B|), and 1 for two empty masks.")


#: Exercise 9b reads this table. ILLUSTRATIVE numbers, made up for the exercise (not measured by any
#: run), shaped like a two-structure task where background dominates the volume.
DICE_TABLE: dict[str, dict[str, float]] = {
    "MedNeXt-S k3": {"background": 0.995, "head": 0.88, "tail": 0.61},
    "MedNeXt-S k5": {"background": 0.996, "head": 0.87, "tail": 0.70},
    "threshold rule": {"background": 0.999, "head": 0.83, "tail": 0.00},
}


def check_dice_table(answers: Mapping[str, Any]) -> Feedback:
    """Exercise 9b: from :data:`DICE_TABLE` answer ``best`` (run with the highest mean FOREGROUND
    Dice), ``hardest`` (the foreground class with the lowest Dice of the best run) and
    ``best_mean`` (that mean, 3 decimals)."""
    name = "dice table"
    if not isinstance(answers, Mapping):
        return _hint(name, "answer with a dict: {'best': ..., 'hardest': ..., 'best_mean': ...}")
    fg_mean = {run: (d["head"] + d["tail"]) / 2 for run, d in DICE_TABLE.items()}
    all_mean = {run: sum(d.values()) / 3 for run, d in DICE_TABLE.items()}
    best = max(fg_mean, key=fg_mean.get)
    missing = [k for k in ("best", "hardest", "best_mean") if k not in answers or answers[k] is None]
    if missing:
        return _hint(name, f"fill in {missing}")
    if answers["best"] != best:
        return _hint(name, f"{answers['best']!r} is not the best on mean foreground Dice; compute "
                           "(head + tail) / 2 per run")
    if answers["hardest"] != "tail":
        return _hint(name, "the hardest class is the one with the LOWEST Dice in the best run")
    try:
        mean = float(answers["best_mean"])
    except (TypeError, ValueError):
        return _hint(name, f"best_mean must be a number, got {answers['best_mean']!r}")
    if math.isclose(mean, all_mean[best], abs_tol=5e-4):
        return _hint(name, "you averaged the background too; background Dice is near 1 for every run (it is "
                           "most of the volume), which hides the differences: leave it out of the mean")
    if not math.isclose(mean, fg_mean[best], abs_tol=5e-4):
        return _hint(name, f"best_mean {mean} is not (head + tail) / 2 of {best}")
    return _ok(name, f"{best}: mean foreground Dice {fg_mean[best]:.3f}; the thin tail is the hard part, and "
                     "the threshold rule cannot find it at all (same intensity as the head). "
                     "(Illustrative numbers, not a measured run.)")


# -- all checkers, their known mistakes and shortcuts, and the self-check ------------------------------

CHECKS: dict[str, Callable[..., Feedback]] = {
    "down_block_forward": check_down_block_forward,
    "down_block_parameters": check_down_block_parameters,
    "predict_parameters": check_predict_parameters,
    "stage_receptive_fields": check_stage_receptive_fields,
    "upkern_1d": check_upkern_1d,
    "window_starts": check_window_starts,
    "overlap_average": check_overlap_average,
    "ds_weights": check_ds_weights,
    "ds_loss": check_ds_loss,
    "window_limits": check_window_limits,
    "lung_window": lambda answer: check_lung_window(*answer),
    "dice": check_dice,
    "dice_table": check_dice_table,
}


def _mistake_stage_rf(k: int, blocks: Sequence[int]) -> list[int]:
    rf, jump, out = 1, 1, []
    for s in range(9):  # forgets that the down block's conv adds to the field
        if s > 4:
            jump //= 2
        rf += blocks[s] * (k - 1) * jump
        out.append(rf)
        if s < 4:
            jump *= 2
    return out


def _mistake_overlap(length: int, starts: Sequence[int], outputs: Sequence[Any], weight: Any) -> np.ndarray:
    total = np.zeros(length)
    for s, out in zip(starts, outputs):
        total[s:s + len(out)] += np.asarray(weight) * out
    return total / len(starts)


def _mistake_ds_loss(outputs: Sequence[torch.Tensor], label: torch.Tensor, base_loss: Callable) -> torch.Tensor:
    terms = [base_loss(o, F.interpolate(label.float(), size=o.shape[2:], mode="nearest")) for o in outputs]
    return sum(terms) / len(terms)


#: One typical wrong answer per exercise, with a phrase its hint must contain.
MISTAKES: dict[str, tuple[Any, str]] = {
    "down_block_forward": (lambda block, x: block.conv3(block.grn(block.act(block.conv2(block.norm(block.conv1(x)))))),
                           "residual path is missing"),
    "down_block_parameters": (lambda c, r, k, d: (c * k**d + c) + 2 * c + (c * r * c + r * c) + (r * c * c + c),
                              "conv3 produces 2C"),
    "predict_parameters": (lambda p, a, b, blocks, c: _predict(p, a, b, [
        blocks[s] * (2 * (c * 2 ** min(s, 8 - s)) ** 2 + c * 2 ** min(s, 8 - s)) for s in range(9)]), "blocks only"),
    "stage_receptive_fields": (_mistake_stage_rf, "down block"),
    "upkern_1d": (lambda w, k: _linear_resize(w, k, align_corners=True), "align_corners"),
    "window_starts": (lambda length, window, overlap: list(range(0, max(1, length - window + 1),
                                                                 max(1, int(window * (1 - overlap))))),
                      "never covered"),
    "overlap_average": (_mistake_overlap, "edges"),
    "ds_weights": (lambda n: [1 / 2**i for i in range(n)][:-1] + [0.0] if n > 1 else [1.0], "normalise"),
    "ds_loss": (_mistake_ds_loss, "plain mean"),
    "window_limits": (lambda level, width: (level - width, level + width), "width/2"),
    "lung_window": ((40.0, 400.0), "lung"),
    "dice": (lambda p, t: np.logical_and(p, t).sum() / max(1, np.logical_or(p, t).sum()), "IoU"),
    "dice_table": ({"best": "MedNeXt-S k5", "hardest": "tail", "best_mean": 0.855}, "background"),
}


def _shortcut_predict(p: int, a: Sequence[int], b: Sequence[int], blocks: Sequence[int], c: int) -> int:
    from .model import MedNeXtConfig
    from .profile import count_parameters

    to, frm = (count_parameters(MedNeXtConfig(base_width=c, expansion_ratios=r, block_counts=blocks)) for r in (b, a))
    return p + to - frm


def _shortcut_rf(k: int, blocks: Sequence[int]) -> list[int]:
    from .model import MedNeXtConfig
    from .profile import receptive_field

    return _stage_rf_rule(k, blocks)[:-1] + [receptive_field(MedNeXtConfig(block_counts=blocks, enc_kernel_size=k,
                                                                           dec_kernel_size=k))]


def _shortcut_overlap(length: int, starts: Sequence[int], outputs: Sequence[Any], weight: Any) -> np.ndarray:
    from .inference import sliding_window_logits

    return sliding_window_logits(None, torch.zeros(1, 1, length), len(weight))  # delegating; never gets here


def _shortcut_ds_loss(outputs: Sequence[torch.Tensor], label: torch.Tensor, base_loss: Any) -> torch.Tensor:
    from .losses import DeepSupervisionLoss

    return DeepSupervisionLoss(base_loss)(outputs, label)


def _shortcut_dice(p: np.ndarray, t: np.ndarray) -> float:
    from .metrics import dice_scores

    return float(dice_scores(torch.as_tensor(p[None, None]).long(), torch.as_tensor(t[None, None]).long(), 2)[0, 0])


def _shortcut_starts(length: int, window: int, overlap: float) -> list[int]:
    from monai.data.utils import dense_patch_slices

    return [s[0].start for s in dense_patch_slices((length,), (window,), (max(1, int(window * (1 - overlap))),))]


#: One answer per function exercise that only calls the package's own implementation: each checker
#: must answer it with a "shortcut" hint.
SHORTCUTS: dict[str, Any] = {
    "down_block_forward": lambda block, x: block(x),
    "down_block_parameters": lambda c, r, k, d: __import__("mednext_lite.profile", fromlist=["x"]).count_parameters(
        __import__("mednext_lite.blocks", fromlist=["x"]).MedNeXtDownBlock(c, expansion_ratio=r, kernel_size=k,
                                                                          spatial_dims=d)),
    "predict_parameters": _shortcut_predict,
    "stage_receptive_fields": _shortcut_rf,
    "upkern_1d": lambda w, k: __import__("mednext_lite.upkern", fromlist=["x"]).upkern_tensor(w[None, None], k)[0, 0],
    "window_starts": _shortcut_starts,
    "overlap_average": _shortcut_overlap,
    "ds_weights": lambda n: __import__("mednext_lite.losses", fromlist=["x"]).deep_supervision_weights(n),
    "ds_loss": _shortcut_ds_loss,
    "window_limits": lambda level, width: __import__("mednext_lite.viz", fromlist=["x"]).ct_window(level, width),
    "dice": _shortcut_dice,
}


def verify_checkers(solutions: Mapping[str, Any]) -> dict[str, tuple[Feedback, Feedback, Feedback | None]]:
    """Run every checker on the right answer (``solutions[name]``), on its known mistake and on its
    shortcut; raise ``AssertionError`` naming the exercise when a checker accepts a mistake or a
    shortcut, rejects the solution, or gives a hint without the expected words. Returns
    name -> (right, mistake, shortcut) feedback (shortcut ``None`` for the exercises answered with data)."""
    results = {}
    for name, check in CHECKS.items():
        if name not in solutions:
            raise KeyError(f"no solution for exercise {name!r}; the solutions define {sorted(solutions)}")
        right = check(solutions[name])
        wrong_answer, phrase = MISTAKES[name]
        wrong = check(wrong_answer)
        if not right:
            raise AssertionError(f"checker {name!r} rejected the reference solution: {right}")
        if wrong or phrase not in wrong.message:
            raise AssertionError(f"checker {name!r} on its known mistake said {wrong}; expected a hint about {phrase!r}")
        shortcut = None
        if name in SHORTCUTS:
            shortcut = check(SHORTCUTS[name])
            if shortcut or "shortcut" not in shortcut.message:
                raise AssertionError(f"checker {name!r} on a delegating answer said {shortcut}; expected a shortcut hint")
        results[name] = (right, wrong, shortcut)
    return results
