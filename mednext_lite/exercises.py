"""Checkers for the classroom sheet ``notebooks/07_exercises.ipynb``: they answer with hints.

Each ``check_*`` function takes a student's answer (a function or numbers), compares it with the
package's own implementation on a few inputs, and returns a :class:`Feedback` that prints as a
short verdict. A wrong answer is never a bare ``AssertionError``: the checker recognises the common
mistakes (forgotten residual, stride ignored, align_corners, IoU for Dice, ...) and names them.
:data:`MISTAKES` holds one known-wrong answer per exercise, and :func:`verify_checkers` proves that
every checker accepts the reference solution and rejects its mistake with the matching hint; CI
runs it with the solutions in ``notebooks/solutions/``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CHECKS",
    "DICE_TABLE",
    "MISTAKES",
    "Feedback",
    "check_block_forward",
    "check_block_parameters",
    "check_dice",
    "check_dice_table",
    "check_lung_window",
    "check_receptive_field",
    "check_upkern",
    "check_window_limits",
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


def _call(exercise: str, fn: Callable, *args: Any) -> tuple[Any, Feedback | None]:
    """Run the student's function; turn 'not written yet' and crashes into hints."""
    if not callable(fn):
        return None, _hint(exercise, f"expected a function, got {type(fn).__name__}; define it with def ...")
    try:
        return fn(*args), None
    except NotImplementedError:
        return None, _hint(exercise, "not written yet: replace `raise NotImplementedError` with your code")
    except Exception as err:  # noqa: BLE001 -- any student error becomes a hint, never a crash
        return None, _hint(exercise, f"your function raised {type(err).__name__}: {err}")


# -- 1. the block's forward pass ------------------------------------------------------------------

def _test_block(seed: int = 0) -> tuple[Any, torch.Tensor]:
    from .blocks import MedNeXtBlock

    torch.manual_seed(seed)
    block = MedNeXtBlock(8, expansion_ratio=3, kernel_size=3, spatial_dims=3).eval()
    with torch.no_grad():  # non-trivial norm affine, so a skipped norm is visible
        block.norm.weight.uniform_(0.5, 1.5)
        block.norm.bias.uniform_(-0.5, 0.5)
    return block, torch.randn(2, 8, 6, 6, 6)


def check_block_forward(fn: Callable[[Any, torch.Tensor], torch.Tensor]) -> Feedback:
    """Exercise 1: ``fn(block, x)`` must compute a MedNeXt block's output from its layers
    ``conv1, norm, conv2, act, conv3`` (GRN off) and the residual."""
    name = "block forward"
    block, x = _test_block()
    with torch.no_grad():
        got, problem = _call(name, fn, block, x)
        if problem is not None:
            return problem
        if not isinstance(got, torch.Tensor):
            return _hint(name, f"return a tensor, got {type(got).__name__}")
        if got.shape != x.shape:
            return _hint(name, f"output shape {tuple(got.shape)} should equal the input's {tuple(x.shape)}: "
                               "the last 1x1 conv (conv3) compresses back to C channels")
        want = block(x)
        if torch.allclose(got, want, atol=1e-5):
            return _ok(name, "depthwise conv -> norm -> expand -> GELU -> compress, plus the input.")
        c1 = block.conv1(x)
        near = {
            "you forgot the residual: return x + (the branch)": block.branch(x),
            "the norm is missing: apply block.norm right after the depthwise conv1": x + block.conv3(
                block.act(block.conv2(c1))),
            "the activation is missing: apply block.act (GELU) after the expansion conv2": x + block.conv3(
                block.conv2(block.norm(c1))),
            "use GELU (block.act), not ReLU: MedNeXt follows ConvNeXt": x + block.conv3(
                torch.relu(block.conv2(block.norm(c1)))),
            "the order is depthwise conv THEN norm: norm(conv1(x)), not conv1(norm(x))": x + block.conv3(
                block.act(block.conv2(block.conv1(block.norm(x))))),
        }
        for hint, value in near.items():
            if torch.allclose(got, value, atol=1e-5):
                return _hint(name, hint)
    return _hint(name, "the output differs from block(x); print the shape after each layer and compare with "
                       "lesson 01, section 1")


# -- 2. parameters of a block by hand ------------------------------------------------------------

def check_block_parameters(fn: Callable[[int, int, int, int], int]) -> Feedback:
    """Exercise 2: ``fn(C, R, k, spatial_dims)`` returns the parameter count of a MedNeXt block."""
    name = "block parameters"
    from .blocks import MedNeXtBlock
    from .profile import count_parameters

    for c, r, k, d in ((8, 2, 3, 3), (32, 4, 5, 3), (16, 3, 7, 2)):
        got, problem = _call(name, fn, c, r, k, d)
        if problem is not None:
            return problem
        want = count_parameters(MedNeXtBlock(c, expansion_ratio=r, kernel_size=k, spatial_dims=d))
        if got == want:
            continue
        weights_only = c * k**d + c * r * c + r * c * c
        if got == weights_only or got == weights_only + 2 * c:
            return _hint(name, f"C={c}, R={r}, k={k}, {d}D: {got} misses the biases: every conv has one "
                               "bias per output channel")
        if got == want - 2 * c:
            return _hint(name, f"C={c}, R={r}, k={k}, {d}D: {got} misses the norm's affine weight and bias (2C)")
        if got == want - c * k**d + c * c * k**d:
            return _hint(name, "the first conv is DEPTHWISE (groups=C): C*k^d weights, not C*C*k^d")
        return _hint(name, f"C={c}, R={r}, k={k}, {d}D: you answered {got}; count conv1 (depthwise, + bias), "
                           "the norm (weight + bias), conv2 (C -> RC, + bias), conv3 (RC -> C, + bias)")
    return _ok(name, "depthwise k^d*C + C, norm 2C, expansion R*C*C + R*C, compression R*C*C + C.")


# -- 3. receptive field by hand ------------------------------------------------------------------

def _rf(layers: list[tuple[int, int]]) -> int:
    rf, jump = 1, 1
    for k, s in layers:
        rf += (k - 1) * jump
        jump *= s
    return rf


RF_CASES: list[list[tuple[int, int]]] = [
    [(3, 1)] * 4,
    [(5, 1)] * 3,
    [(3, 1), (3, 2), (3, 1), (3, 1)],
    [(3, 1), (3, 2), (3, 1), (3, 2), (5, 1)],
]


def check_receptive_field(fn: Callable[[list[tuple[int, int]]], int]) -> Feedback:
    """Exercise 3: ``fn(layers)`` with ``layers = [(kernel, stride), ...]`` returns the receptive
    field (voxels per axis) of the stack."""
    name = "receptive field"
    for layers in RF_CASES:
        got, problem = _call(name, fn, list(layers))
        if problem is not None:
            return problem
        want = _rf(layers)
        if got == want:
            continue
        if got == 1 + sum(k - 1 for k, _ in layers):
            return _hint(name, f"for {layers} you gave {got}: after a stride-2 layer each further layer adds "
                               "(k-1) x 2 voxels, because its neighbours are 2 input voxels apart")
        wrong_order, jump = 1, 1
        for k, s in layers:
            jump *= s
            wrong_order += (k - 1) * jump
        if got == wrong_order:
            return _hint(name, f"for {layers} you gave {got}: a strided layer itself still sees neighbours at "
                               "the OLD spacing; multiply the jump by the stride after adding (k-1) x jump")
        return _hint(name, f"for {layers} you gave {got}, expected {want}: start at 1, add (k-1) x jump per "
                           "layer, and multiply jump by the stride")
    return _ok(name, "rf = 1 + sum (k_i - 1) x (product of the strides before layer i).")


# -- 4. UpKern one tensor ------------------------------------------------------------------------

def check_upkern(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> Feedback:
    """Exercise 4: ``fn(weight, k)`` resizes a conv weight ``[out, in, 3, 3, 3]`` (or 2D) to kernel k
    the way UpKern does: linear interpolation, ``align_corners=False``."""
    name = "upkern"
    from .upkern import upkern_tensor

    torch.manual_seed(0)
    for shape, k in (((4, 1, 3, 3, 3), 5), ((2, 3, 3, 3), 7)):
        w = torch.randn(shape)
        got, problem = _call(name, fn, w.clone(), k)
        if problem is not None:
            return problem
        mode = "trilinear" if w.ndim == 5 else "bilinear"
        want = upkern_tensor(w, k)  # the package's own UpKern: the answer cannot drift from it
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            shape_got = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            return _hint(name, f"for a {tuple(w.shape)} weight and k={k} expected shape {tuple(want.shape)}, "
                               f"got {shape_got}; only the spatial axes change")
        if torch.allclose(got, want, atol=1e-5):
            continue
        if torch.allclose(got, F.interpolate(w, size=want.shape[2:], mode=mode, align_corners=True), atol=1e-5):
            return _hint(name, "you used align_corners=True; UpKern (and the reference) use align_corners=False")
        pad = (k - 3) // 2
        if torch.allclose(got, F.pad(w, (pad, pad) * (w.ndim - 2)), atol=1e-5):
            return _hint(name, "that is zero-padding the small kernel; UpKern INTERPOLATES it, so the large "
                               "kernel is a smooth stretch of the small one")
        if torch.allclose(got, F.interpolate(w, size=want.shape[2:], mode="nearest"), atol=1e-5):
            return _hint(name, f"nearest-neighbour repeats values; use mode='{mode}' (linear)")
        return _hint(name, f"values differ from F.interpolate(weight, size={(k,) * (w.ndim - 2)}, mode='{mode}', "
                           "align_corners=False)")
    return _ok(name, "(tri/bi)linear interpolation with align_corners=False, in 2D and 3D.")


# -- 5. CT windows -------------------------------------------------------------------------------

def check_window_limits(fn: Callable[[float, float], tuple[float, float]]) -> Feedback:
    """Exercise 5a: ``fn(level, width)`` returns the display range ``(vmin, vmax)`` of a CT window."""
    from .viz import CT_WINDOWS, ct_window

    name = "window limits"
    for level, width in CT_WINDOWS.values():  # the viewer's own presets, answered by its ct_window
        got, problem = _call(name, fn, level, width)
        if problem is not None:
            return problem
        try:
            lo, hi = (float(v) for v in got)
        except (TypeError, ValueError):
            return _hint(name, f"return a pair (vmin, vmax), got {got!r}")
        want_lo, want_hi = ct_window(level, width)
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
    """Exercise 5b: choose (level, width) in HU that shows lung tissue (air -1000 HU, lung about
    -850..-500 HU, soft tissue 20..80 HU) with some soft tissue still distinguishable."""
    from .viz import ct_window

    name = "lung window"
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


# -- 6. Dice -------------------------------------------------------------------------------------

def check_dice(fn: Callable[[np.ndarray, np.ndarray], float]) -> Feedback:
    """Exercise 6a: ``fn(pred, truth)`` returns the Dice of two binary masks, 1.0 when both are
    empty (nothing to find, nothing found)."""
    name = "dice"
    rng = np.random.default_rng(0)
    cases = [(rng.random((8, 8, 8)) > 0.5, rng.random((8, 8, 8)) > 0.6) for _ in range(3)]
    cases.append((np.zeros((4, 4), bool), np.zeros((4, 4), bool)))
    for pred, truth in cases:
        got, problem = _call(name, fn, pred.copy(), truth.copy())
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


#: Exercise 6b reads this table: an illustrative Dice table (made-up numbers shaped like real runs
#: on a two-structure task) for practising how to read one.
DICE_TABLE: dict[str, dict[str, float]] = {
    "MedNeXt-S k3": {"background": 0.995, "head": 0.88, "tail": 0.61},
    "MedNeXt-S k5": {"background": 0.996, "head": 0.87, "tail": 0.70},
    "threshold rule": {"background": 0.999, "head": 0.83, "tail": 0.00},
}


def check_dice_table(answers: Mapping[str, Any]) -> Feedback:
    """Exercise 6b: from :data:`DICE_TABLE` answer ``best`` (run with the highest mean FOREGROUND
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
                     "the threshold rule cannot find it at all (same intensity as the head).")


# -- all checkers, their known mistakes, and the self-check ---------------------------------------

CHECKS: dict[str, Callable[..., Feedback]] = {
    "block_forward": check_block_forward,
    "block_parameters": check_block_parameters,
    "receptive_field": check_receptive_field,
    "upkern": check_upkern,
    "window_limits": check_window_limits,
    "lung_window": lambda answer: check_lung_window(*answer),
    "dice": check_dice,
    "dice_table": check_dice_table,
}

#: One typical wrong answer per exercise, with a phrase its hint must contain.
MISTAKES: dict[str, tuple[Any, str]] = {
    "block_forward": (lambda block, x: block.branch(x), "residual"),
    "block_parameters": (lambda c, r, k, d: c * k**d + 2 * r * c * c, "bias"),
    "receptive_field": (lambda layers: 1 + sum(k - 1 for k, _ in layers), "stride-2"),
    "upkern": (lambda w, k: F.interpolate(w, size=(k,) * (w.ndim - 2),
                                          mode="trilinear" if w.ndim == 5 else "bilinear", align_corners=True),
               "align_corners"),
    "window_limits": (lambda level, width: (level - width, level + width), "width/2"),
    "lung_window": ((40.0, 400.0), "lung"),
    "dice": (lambda p, t: np.logical_and(p, t).sum() / max(1, np.logical_or(p, t).sum()), "IoU"),
    "dice_table": ({"best": "MedNeXt-S k5", "hardest": "tail", "best_mean": 0.855}, "background"),
}


def verify_checkers(solutions: Mapping[str, Any]) -> dict[str, tuple[Feedback, Feedback]]:
    """Run every checker on the right answer (``solutions[name]``) and on its known mistake; raise
    ``AssertionError`` naming the exercise when a checker accepts a mistake, rejects the solution,
    or gives a hint without the expected words. Returns name -> (right, wrong) feedback."""
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
        results[name] = (right, wrong)
    return results
