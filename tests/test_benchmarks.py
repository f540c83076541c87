"""The benchmark scripts run end to end at tiny sizes (nothing is timed: only their tables are checked)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_cpu_benchmark_sections_run_and_check_before_they_time(tmp_path):
    out = run("bench_model.py", "--only", "train,peak,ckpt,alloc", "--repeats", "1", "--dims", "2", "--size2d", "32",
              "--size3d", "32", "--kernels", "3", "--threads", "1", "--json", str(tmp_path / "rows.json"))
    rows = json.loads((tmp_path / "rows.json").read_text())
    (train,) = [r for r in rows if r["section"] == "train"]
    assert train["max_abs_diff"] < 1e-4  # the two networks were checked equal before timing
    assert train["speedup"] == train["monai_s"] / train["ours_s"] > 0
    assert train["floor_s"] < train["monai_s"] and train["ceiling"] > 1  # no step beats the matmul floor
    assert "| 32x32 | 3 |" in out and "highest possible speed-up" in out
    (ckpt,) = [r for r in rows if r["section"] == "ckpt"]
    assert ckpt["on_peak"] < ckpt["off_peak"]  # checkpointing frees activations: a memory fact, not a timing
    (alloc,) = [r for r in rows if r["section"] == "alloc"]
    assert alloc["default_s"] > 0 and alloc["kept_s"] > 0


def test_gpu_script_dry_runs_on_cpu(tmp_path):
    # the GPU table's code paths (fp32, bf16 autocast, channels-last) on the CPU, at the smallest size
    out = run("gpu_bench.py", "--device", "cpu", "--size", "32", "--variants", "S", "--kernels", "3",
              "--repeats", "1", "--warmup", "1", "--compile", "", "--json", str(tmp_path / "gpu.json"),
              "--infer", "--infer-size", "40", "--infer-repeats", "1")
    rows = json.loads((tmp_path / "gpu.json").read_text())
    assert [r["label"] for r in rows] == ["MONAI fp32", "ours fp32", "ours bf16", "ours bf16 + channels-last"]
    assert all(r["ms"] > 0 for r in rows)
    diff = re.search(r"max abs diff to MONAI ([0-9.e+-]+) in strict fp32", out)
    assert diff and float(diff.group(1)) < 5e-5
    infer = re.findall(r"\| MedNeXt-S \| 3 \| (MONAI fp32|ours fp32|ours bf16) \| ([0-9.]+) \|",
                       out.split("# sliding-window inference")[-1])
    assert [label for label, _ in infer] == ["MONAI fp32", "ours fp32", "ours bf16"]
    assert all(float(vpm) > 0 for _, vpm in infer)


def test_op_benchmark_backs_the_exactness_claims():
    # README and blocks.py say our channels-last norm is as exact as PyTorch's channels-first one and
    # far more exact than its channels-last one: the benchmark's own error columns must say so too
    out = run("bench_ops.py", "--only", "norm,wgrad,pointwise,adamw", "--repeats", "1")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| 1x")]
    assert len(rows) == 4
    for row in rows:
        err_nhwc, err_ours, err_nchw = (float(v) for v in row[-3:])
        assert err_ours < 2e-6 and err_ours < 2 * err_nchw and err_nhwc > 20 * err_ours, row
    assert "k x 3 strips" in out and "oneDNN conv" in out
    # and the fused AdamW the trainer uses makes the loop's update, to float rounding
    adamw = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith(("| 3D S", "| 2D S"))]
    assert len(adamw) == 2 and all(float(row[-1]) < 1e-6 for row in adamw), adamw


def test_op_benchmark_backs_the_up_block_and_folded_norm_claims():
    # blocks.py says the hand-written transposed conv is PyTorch's maths and the folded norm is as
    # exact as PyTorch's channels-first GroupNorm + conv: the benchmark checks both as it times them
    out = run("bench_ops.py", "--only", "transposed,normconv", "--repeats", "1")
    transposed = [line.split("|")[1:-1] for line in out.splitlines() if re.match(r"\| \d+ x \d+\^[23] -> ", line)]
    assert len(transposed) == 6 and all(float(row[-1]) < 1e-4 for row in transposed), transposed
    folded = [line.split("|")[1:-1] for line in out.splitlines() if re.match(r"\| [12]x\d+x", line)]
    assert len(folded) == 5
    for row in folded:
        err_nchw, err_folded = float(row[-2]), float(row[-1])
        assert err_folded < 1e-4 and err_folded < 4 * err_nchw, row


def test_step_profile_bins_every_op_and_names_the_heaviest():
    out = run("profile_step.py", "--dims", "2", "--size", "32", "--kernels", "3", "--repeats", "1", "--top", "3")
    rows = {line.split("|")[2].strip(): line.split("|")[3:-1] for line in out.splitlines() if line.startswith("| 3 |")}
    assert set(rows) == {"MONAI", "ours"}
    for cells in rows.values():  # three bins that add up to the total, shares to 100%
        seconds = [float(c.split("(")[0]) for c in cells[:3]]
        assert abs(sum(seconds) - float(cells[3])) < 2e-3 and all(s >= 0 for s in seconds)
    tops = out.split("## k3, ")[1:]
    assert [t.split(":")[0] for t in tops] == ["MONAI", "ours"]
    assert all(len(re.findall(r"^\| [\w:#. ]+ \| [0-9.]+ \|$", t, re.MULTILINE)) == 3 for t in tops), tops


def test_gpu_code_path_script_dry_runs_on_cpu(tmp_path):
    # benchmarks/gpu_paths.sh (torchrun training, resume, predict, evaluate) end to end on the CPU
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "AMP": "off", "PATCH": "32",
           "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_paths.sh")], check=False, capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert checks == ["synthesize", "train_torchrun_1proc_off", "resume", "resumed_to_epoch_2", "predict", "evaluate"]
    assert "0 failed" in proc.stdout


def test_gpu_kernels_auto_entry_needs_a_win_in_every_row_and_per_op():
    """The AUTO_TRITON entry gpu_kernels.py proposes: a kernel size whose Triton step beat PyTorch's
    in every (preset, dtype) row, and only the ops triton_check.py timed faster over all directions."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from gpu_kernels import auto_entry
    finally:
        sys.path.pop(0)

    def rows(k, ours_ms, triton_ms):
        return [{"variant": v, "k": k, "dtype": d, "label": label, "ms": ms}
                for v in ("S", "B") for d in ("bf16", "fp32")
                for label, ms in (("ours PyTorch kernels", ours_ms), ("ours Triton kernels", triton_ms))]

    steps = rows(3, 100.0, 120.0) + rows(5, 200.0, 150.0)
    assert auto_entry(steps, None) == {("conv_s1", 5), ("convT_s2", 5)}
    steps[-1]["ms"] = 250.0  # one row lost at k5: no entry
    assert auto_entry(steps, None) == set()
    steps[-1]["ms"] = 150.0
    ops = {"rows": [{"k": 5, "op": op, "layout": "contiguous", "dtype": "bf16", "ours_ms": ours, "torch_ms": 1.0}
                    for op, ours in (("conv_s1", 0.5), ("convT_s2", 2.0))]}
    assert auto_entry(steps, ops) == {("conv_s1", 5)}
