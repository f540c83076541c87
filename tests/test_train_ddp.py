"""DDP: two real CPU processes launched by torchrun (gloo) train one model together; rank 0
alone writes the checkpoint and metrics, and the replicas end bit-identical."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mednext_lite.checkpoint import load_checkpoint
from mednext_lite.train_config import TrainConfig

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    from mednext_lite.train import train
    from mednext_lite.train_config import TrainConfig
    cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
    result = train(cfg)
    total = sum(p.double().sum().item() for p in result.model.parameters())
    print(f"RANK {os.environ['RANK']} WORLD {os.environ['WORLD_SIZE']} STEP {result.history[-1]['step']} "
          f"CHECKSUM {total!r}", flush=True)
""")


def torchrun() -> str:
    import shutil

    exe = Path(sys.executable).with_name("torchrun")  # the venv's own launcher, as in the README
    found = str(exe) if exe.exists() else shutil.which("torchrun")
    assert found, f"torchrun is neither beside {sys.executable} nor on PATH: it ships with torch, reinstall torch"
    return found


def test_torchrun_two_processes_train_one_model(tmp_path):
    from mednext_lite.data.synthetic import make_synthetic_task

    task = make_synthetic_task(tmp_path / "data", n_train=6, n_test=0, shape=(32, 32, 32), progress=False)
    run = tmp_path / "run"
    cfg = TrainConfig(task_dir=str(task), run_dir=str(run), model_overrides={"base_width": 4, "block_counts": 1,
                      "expansion_ratios": 1}, patch_size=(32, 32, 32), epochs=2, iters_per_epoch=2, batch_size=1,
                      val_every=1, sw_batch_size=1, augment=False, progress=False, device="cpu", n_folds=3)
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([torchrun(), "--standalone", "--nproc_per_node", "2", str(script), json.dumps(cfg.to_dict())],
                          env=env, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    lines = re.findall(r"RANK (\d) WORLD (\d) STEP (\d+) CHECKSUM (\S+)", proc.stdout)
    assert sorted(r for r, *_ in lines) == ["0", "1"], proc.stdout
    assert {w for _, w, _, _ in lines} == {"2"} and {s for _, _, s, _ in lines} == {"4"}
    # DDP averaged the gradients, so both replicas hold exactly the same weights.
    assert lines[0][3] == lines[1][3]

    # Rank 0 alone wrote: one checkpoint pair, one metrics file, nothing temporary.
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["best.pt", "config.json", "curves.png", "last.pt", "metrics.csv", "metrics.json", "split.json"])
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(float(r["train_loss"]) > 0 for r in rows)
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 4
    assert sum(v.double().sum().item() for k, v in ckpt["state_dict"].items()) == pytest.approx(float(lines[0][3]))
    # Each rank validated its own case; the summed Dice equals a one-process evaluation of both.
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) == 4 and len(split["val"]) == 2
    from mednext_lite.checkpoint import model_from_checkpoint
    from mednext_lite.data.transforms import get_transforms
    from mednext_lite.data.validate import load_task
    from mednext_lite.inference import evaluate_model

    info = load_task(task, validate=False)
    tf = get_transforms(info, mode="val", patch_size=(32, 32, 32))
    items = [tf(case) for case in split["val"]]
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers; other thread counts may flip a voxel at an argmax tie
    try:
        res = evaluate_model(model_from_checkpoint(ckpt).eval(), items, (32, 32, 32), 3, progress=False,
                             sw_batch_size=1)
    finally:
        torch.set_num_threads(threads)
    assert res["n"] == 2
    # Rank 0's case alone would differ by far more than a few voxels' worth of Dice.
    assert float(rows[-1]["val_dice_mean"]) == pytest.approx(res["mean_dice"], abs=1e-4)
