"""Every exercise checker accepts the reference solution, answers a known mistake with its hint, and
refuses a shortcut (an answer that delegates to the package function it should re-implement)."""

from __future__ import annotations

import runpy

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mednext_lite import exercises as ex
from mednext_lite.blocks import MedNeXtDownBlock
from mednext_lite.notebooks import lessons_dir
from mednext_lite.upkern import (
    upkern_tensor,  # imported BEFORE any check: a shortcut through it must still be seen
)

SOLUTIONS_PY = lessons_dir() / "solutions" / "07_exercises_solutions.py"
SOLUTIONS = runpy.run_path(str(SOLUTIONS_PY))["SOLUTIONS"]
FUNCTION_EXERCISES = sorted(ex.SHORTCUTS)


def test_every_checker_accepts_the_solution_and_rejects_its_mistake_and_shortcut():
    results = ex.verify_checkers(SOLUTIONS)
    assert set(results) == set(ex.CHECKS) and len(results) >= 10
    for name, (right, wrong, shortcut) in results.items():
        assert right.passed and not wrong.passed, name
        assert "not yet" in str(wrong) and "correct" in right._repr_html_()
        if name in ex.SHORTCUTS:
            assert not shortcut and "shortcut" in shortcut.message
    assert set(ex.SHORTCUTS) == set(ex.CHECKS) - {"lung_window", "dice_table"}  # every function exercise


@pytest.mark.parametrize("name", FUNCTION_EXERCISES)
def test_each_shortcut_is_refused_with_a_hint(name):
    fb = ex.CHECKS[name](ex.SHORTCUTS[name])
    assert not fb and "shortcut: your function calls" in fb.message and "proves nothing" in fb.message


def test_the_two_old_shortcuts_fail_now():
    """`return block(x)` and a call of upkern_tensor passed the old sheet; both are refused now,
    however the package function was imported (this module imported upkern_tensor at the top)."""
    fb = ex.check_down_block_forward(lambda block, x: block(x))
    assert not fb and "MedNeXtDownBlock.forward" in fb.message
    fb = ex.check_down_block_forward(lambda block, x: block.branch(x) + block.res_conv(x))
    assert not fb and "branch" in fb.message
    fb = ex.check_upkern_1d(lambda w, k: upkern_tensor(w[None, None], k)[0, 0])
    assert not fb and "upkern_tensor" in fb.message
    fb = ex.check_upkern_1d(lambda w, k: F.interpolate(w[None, None], size=k, mode="linear")[0, 0])
    assert not fb and "interpolate" in fb.message


def test_a_swallowed_shortcut_is_still_seen_and_everything_is_restored():
    def sneaky(block, x):
        try:
            return block(x)
        except BaseException:  # noqa: BLE001 -- a student hiding the refusal
            return torch.zeros(1)

    assert "shortcut" in ex.check_down_block_forward(sneaky).message
    # after the checks the package works again
    w = torch.randn(1, 1, 3)
    assert upkern_tensor(w, 5).shape == (1, 1, 5)
    assert F.interpolate(w, size=5, mode="linear").shape == (1, 1, 5)
    block = MedNeXtDownBlock(4, expansion_ratio=2, kernel_size=3, spatial_dims=2)
    assert block(torch.randn(1, 4, 8, 8)).shape == (1, 8, 4, 4)
    from mednext_lite.losses import deep_supervision_weights
    from mednext_lite.profile import count_parameters
    assert deep_supervision_weights(2) == [1.0, 0.0] and count_parameters(block) > 0


def test_unwritten_answers_get_a_hint_not_a_crash():
    def blank(*args):
        raise NotImplementedError

    for name in FUNCTION_EXERCISES:
        fb = ex.CHECKS[name](blank)
        assert not fb and "not written yet" in fb.message, name
    assert "ZeroDivisionError" in ex.check_down_block_forward(lambda block, x: 1 / 0).message
    assert "fill in" in ex.check_lung_window(None, None).message


def _sol(name):
    return SOLUTIONS[name]


def test_down_block_hints():
    def identity_residual(b, x):
        return x + b.conv3(b.grn(b.act(b.conv2(b.norm(b.conv1(x))))))

    assert "res_conv(x)" in ex.check_down_block_forward(identity_residual).message

    def no_norm(b, x):
        h = b.conv3(b.grn(b.act(b.conv2(b.conv1(x)))))
        return h if b.res_conv is None else h + b.res_conv(x)

    assert "norm is missing" in ex.check_down_block_forward(no_norm).message

    def no_grn(b, x):
        h = b.conv3(b.act(b.conv2(b.norm(b.conv1(x)))))
        return h if b.res_conv is None else h + b.res_conv(x)

    assert "GRN is missing" in ex.check_down_block_forward(no_grn).message

    def always_res(b, x):
        return b.conv3(b.grn(b.act(b.conv2(b.norm(b.conv1(x)))))) + b.res_conv(x)

    assert "residual=False" in ex.check_down_block_forward(always_res).message


def test_parameter_hints():
    right = _sol("down_block_parameters")
    assert "res_conv" in ex.check_down_block_parameters(lambda c, r, k, d: right(c, r, k, d) - 2 * c * c - 2 * c).message
    assert "norm's affine" in ex.check_down_block_parameters(lambda c, r, k, d: right(c, r, k, d) - 2 * c).message
    assert "DEPTHWISE" in ex.check_down_block_parameters(
        lambda c, r, k, d: right(c, r, k, d) - c * k**d + c * c * k**d).message
    predict = _sol("predict_parameters")
    assert "whole count" in ex.check_predict_parameters(
        lambda p, a, b, blocks, c: predict(p, a, b, blocks, c) - p).message

    def monai_down_ratio(p, a, b, blocks, c):  # the down block after stage i with R[i] instead of R[i+1]
        return predict(p, a, b, blocks, c) + sum(
            ((b[i] - a[i]) - (b[i + 1] - a[i + 1])) * (3 * (c * 2**i) ** 2 + c * 2**i) for i in range(4))

    assert "NEXT stage" in ex.check_predict_parameters(monai_down_ratio).message


def test_receptive_field_hints_and_the_exact_replay():
    from mednext_lite.model import MedNeXtConfig
    from mednext_lite.profile import receptive_field

    for k, blocks in ex.RF_CASES:
        rule, exact, profiled = ex._rf_references(k, tuple(blocks))
        assert exact[:5] == rule[:5], "the closed rule is exact through the bottleneck"
        assert all(e <= r for e, r in zip(exact, rule)), "the rule bounds the decoder from above"
        assert exact[-1] == profiled == receptive_field(MedNeXtConfig(block_counts=blocks, enc_kernel_size=k,
                                                                      dec_kernel_size=k))
    fb = ex.check_stage_receptive_fields(_sol("stage_receptive_fields"))
    assert fb and "UPPER bound" in fb.message and "235" in fb.message  # MedNeXt-S k3: rule 245, exact 235
    assert ex.check_stage_receptive_fields(lambda k, b: ex.stage_receptive_fields_exact(k, b))

    def wrong_order(k, blocks):
        out = _sol("stage_receptive_fields")(k, blocks)
        rf, jump = 1, 1
        for s in range(5):
            if s:
                jump *= 2
                rf += (k - 1) * jump
            rf += blocks[s] * (k - 1) * jump
            out[s] = rf
        return out

    assert "OLD spacing" in ex.check_stage_receptive_fields(wrong_order).message

    def decoder_not_halved(k, blocks):
        out = _sol("stage_receptive_fields")(k, blocks)
        out[5] += 1000
        return out

    assert "HALVES" in ex.check_stage_receptive_fields(decoder_not_halved).message
    assert "9 values" in ex.check_stage_receptive_fields(lambda k, b: [1] * 5).message


def test_upkern_hints():
    assert "zero-padding" in ex.check_upkern_1d(lambda w, k: torch.nn.functional.pad(w, ((k - w.numel()) // 2,) * 2)).message
    assert "clamp" in ex.check_upkern_1d(lambda w, k: ex._linear_resize(w, k, align_corners=False, clamp=False)).message
    assert "nearest" in ex.check_upkern_1d(lambda w, k: w[torch.floor(torch.arange(k) * w.numel() / k).long()]).message


def test_sliding_window_references_equal_monai():
    from monai.data.utils import dense_patch_slices
    from monai.inferers import sliding_window_inference
    from monai.inferers.utils import _get_scan_interval

    for length, window, overlap in ((100, 32, 0.5), (64, 32, 0.5), (90, 20, 0.25), (50, 16, 0.9), (33, 32, 0.0)):
        interval = _get_scan_interval((length,), (window,), 1, (overlap,))
        monai_starts = [s[0].start for s in dense_patch_slices((length,), (window,), interval)]
        assert ex._starts(length, window, overlap) == monai_starts
    signal = torch.randn(1, 1, 75)
    bump = torch.linspace(-1, 1, 16) ** 2  # position-dependent output, so the blend is not trivial
    stitched = sliding_window_inference(signal, (16,), 4, lambda t: t + bump, overlap=0.5, mode="constant")
    starts = ex._starts(75, 16, 0.5)
    outputs = [(signal[0, 0, s:s + 16] + bump).numpy() for s in starts]
    assert np.allclose(ex._blend(75, starts, outputs, np.ones(16)), stitched[0, 0].numpy(), atol=1e-6)


def test_window_and_overlap_hints():
    assert "duplicate" in ex.check_window_starts(
        lambda n, w, o: _sol("window_starts")(n, w, o) + ([n - w] if w < n else [])).message
    assert "past the end" in ex.check_window_starts(
        lambda n, w, o: list(range(0, n, max(1, int(w * (1 - o)))))).message
    assert "summed" in ex.check_overlap_average(
        lambda n, starts, outs, wt: sum(np.pad(wt * o, (s, n - s - len(o))) for s, o in zip(starts, outs))).message

    def ignores_weight(n, starts, outs, wt):
        return _sol("overlap_average")(n, starts, outs, np.ones_like(wt))

    assert "weight is ignored" in ex.check_overlap_average(ignores_weight).message


def test_deep_supervision_hints():
    raw = lambda n: [1 / 2**i for i in range(n)]
    assert "weighted 0" in ex.check_ds_weights(lambda n: [w / sum(raw(n)) for w in raw(n)]).message
    assert "BEFORE" in ex.check_ds_weights(
        lambda n: [w / sum(raw(n)) for w in raw(n)][:-1] + [0.0] if n > 1 else [1.0]).message
    assert "FULL resolution" in ex.check_ds_weights(lambda n: _sol("ds_weights")(n)[::-1]).message

    def no_resize(outputs, label, base_loss):
        return sum(w * base_loss(o, label) for w, o in zip(_sol("ds_weights")(len(outputs)), outputs))

    assert "downsample the label" in ex.check_ds_loss(no_resize).message

    def reversed_weights(outputs, label, base_loss):
        weights = _sol("ds_weights")(len(outputs))[::-1]
        return sum(w * base_loss(o, F.interpolate(label.float(), size=o.shape[2:], mode="nearest"))
                   for w, o in zip(weights, outputs))

    assert "reversed" in ex.check_ds_loss(reversed_weights).message


def test_window_and_dice_hints():
    assert "swapped" in ex.check_window_limits(lambda level, width: (width - level / 2, width + level / 2)).message
    assert "factor 2" in ex.check_dice(lambda p, t: np.logical_and(p, t).sum() / (p.sum() + t.sum())).message
    with np.errstate(invalid="ignore"):
        assert "Dice = 1.0" in ex.check_dice(lambda p, t: 2 * np.logical_and(p, t).sum() / (p.sum() + t.sum())).message
    assert not ex.check_lung_window(-600, 4000) and ex.check_lung_window(-550, 1600)
    assert "LOWEST" in ex.check_dice_table({"best": "MedNeXt-S k5", "hardest": "head", "best_mean": 0.785}).message
    assert "Illustrative" in ex.check_dice_table(SOLUTIONS["dice_table"]).message


def test_verify_checkers_catches_a_broken_solution():
    broken = dict(SOLUTIONS, dice=lambda p, t: 0.0)
    with pytest.raises(AssertionError, match="'dice' rejected the reference solution"):
        ex.verify_checkers(broken)


def test_the_sheet_holds_no_answers_and_the_solutions_notebook_matches_its_source():
    sheet = nbformat.read(lessons_dir() / "07_exercises.ipynb", as_version=4)
    code = "\n".join(c.source for c in sheet.cells if c.cell_type == "code")
    assert code.count("raise NotImplementedError") == len(ex.SHORTCUTS)
    assert "07_exercises_solutions" not in code and "solutions = None" in code  # loaded only when passed in
    assert "illustrative" in "\n".join(c.source for c in sheet.cells).lower()
    spec = __import__("importlib.util").util.spec_from_file_location("sol_build", SOLUTIONS_PY.parent / "_build.py")
    builder = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    committed = nbformat.read(SOLUTIONS_PY.with_suffix(".ipynb"), as_version=4)
    assert [c.source for c in committed.cells] == [c.source for c in builder.build().cells], (
        "solutions notebook and its .py differ: run python notebooks/solutions/_build.py")
    assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code")
    from mednext_lite.notebooks import notebook_problems

    assert notebook_problems(SOLUTIONS_PY.with_suffix(".ipynb")) == []  # the house rules of every notebook
    text = "\n".join(c.source for c in committed.cells)
    for lesson in ("00", "01", "02", "03", "04", "05", "06"):
        assert f"Lesson {lesson}" in text, f"no Try-this answers for lesson {lesson}"


@pytest.mark.notebooks
def test_blank_sheet_runs_without_errors(tmp_path):
    """A student's "Run all" on the untouched sheet shows hints and never stops on an error."""
    from mednext_lite.notebooks import run_notebook

    run = run_notebook("07_exercises", build_dir=tmp_path, parameters={"solutions": None})
    assert run.summary == {"size": "ci", "score": 0, "total": len(ex.CHECKS), "solutions": False}


@pytest.mark.notebooks
def test_solutions_notebook_executes(tmp_path):
    import papermill as pm

    out = tmp_path / "solutions.ipynb"
    pm.execute_notebook(str(SOLUTIONS_PY.with_suffix(".ipynb")), str(out), cwd=str(SOLUTIONS_PY.parent),
                        progress_bar=False, kernel_name="python3")
    executed = nbformat.read(out, as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "REJECTED" not in printed and printed.count("solution -> correct") == len(ex.CHECKS)
