"""Every exercise checker accepts the reference solution and answers a known mistake with its hint."""

from __future__ import annotations

import runpy

import numpy as np
import pytest
import torch

from mednext_lite import exercises as ex
from mednext_lite.notebooks import NOTEBOOK_DIR

SOLUTIONS = runpy.run_path(str(NOTEBOOK_DIR / "solutions" / "07_exercises_solutions.py"))["SOLUTIONS"]


def test_every_checker_accepts_the_solution_and_rejects_its_mistake():
    results = ex.verify_checkers(SOLUTIONS)
    assert set(results) == set(ex.CHECKS) and len(results) >= 5
    for right, wrong in results.values():
        assert right.passed and not wrong.passed
        assert "not yet" in str(wrong) and "correct" in right._repr_html_()


def test_unwritten_answers_get_a_hint_not_a_crash():
    def blank(*args):
        raise NotImplementedError

    for name in ("block_forward", "block_parameters", "receptive_field", "upkern", "window_limits", "dice"):
        fb = ex.CHECKS[name](blank)
        assert not fb and "not written yet" in fb.message
    fb = ex.check_block_forward(lambda block, x: 1 / 0)
    assert "ZeroDivisionError" in fb.message


@pytest.mark.parametrize("wrong, phrase", [
    (lambda b, x: x + b.conv3(b.act(b.conv2(b.conv1(x)))), "norm is missing"),
    (lambda b, x: x + b.conv3(torch.relu(b.conv2(b.norm(b.conv1(x))))), "ReLU"),
    (lambda b, x: x + b.conv3(b.act(b.conv2(b.conv1(b.norm(x))))), "THEN norm"),
    (lambda b, x: b.conv1(x), None),
])
def test_block_forward_hints(wrong, phrase):
    fb = ex.check_block_forward(wrong)
    assert not fb
    if phrase:
        assert phrase in fb.message


def test_other_specific_hints():
    def rf_wrong_order(layers):
        rf, jump = 1, 1
        for k, s in layers:
            jump *= s
            rf += (k - 1) * jump
        return rf

    assert "OLD spacing" in ex.check_receptive_field(rf_wrong_order).message
    pad = ex.check_upkern(lambda w, k: torch.nn.functional.pad(w, ((k - 3) // 2,) * 2 * (w.ndim - 2)))
    assert "zero-padding" in pad.message
    assert "swapped" in ex.check_window_limits(lambda level, width: (width - level / 2, width + level / 2)).message
    assert "factor 2" in ex.check_dice(lambda p, t: np.logical_and(p, t).sum() / (p.sum() + t.sum())).message
    with np.errstate(invalid="ignore"):
        assert "Dice = 1.0" in ex.check_dice(lambda p, t: 2 * np.logical_and(p, t).sum() / (p.sum() + t.sum())).message
    assert "misses the norm" in ex.check_block_parameters(
        lambda c, r, k, d: SOLUTIONS["block_parameters"](c, r, k, d) - 2 * c).message
    assert "DEPTHWISE" in ex.check_block_parameters(
        lambda c, r, k, d: SOLUTIONS["block_parameters"](c, r, k, d) - c * k**d + c * c * k**d).message
    assert not ex.check_lung_window(-600, 4000) and ex.check_lung_window(-550, 1600)
    assert "LOWEST" in ex.check_dice_table({"best": "MedNeXt-S k5", "hardest": "head", "best_mean": 0.785}).message


def test_verify_checkers_catches_a_broken_solution():
    broken = dict(SOLUTIONS, dice=lambda p, t: 0.0)
    with pytest.raises(AssertionError, match="'dice' rejected the reference solution"):
        ex.verify_checkers(broken)


@pytest.mark.notebooks
def test_blank_sheet_runs_without_errors(tmp_path):
    """A student's "Run all" on the untouched sheet shows hints and never stops on an error."""
    from mednext_lite.notebooks import run_notebook

    run = run_notebook("07_exercises", build_dir=tmp_path, parameters={"solutions": None})
    assert run.summary == {"score": 0, "total": len(ex.CHECKS), "solutions": False}
