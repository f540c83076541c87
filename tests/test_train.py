"""Trainer: loss weighting, schedule, config errors, files written, exact resume after a real
SIGKILL, the NaN/inf guards, run-directory and resume-settings rules, and refusal of corrupt
checkpoints. Tiny models on a tiny synthetic task; the command-line tests call the real CLI."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mednext_lite.checkpoint import CheckpointError, load_checkpoint
from mednext_lite.cli import main
from mednext_lite.losses import DeepSupervisionLoss, deep_supervision_weights, make_loss
from mednext_lite.run_files import RESUME_MAY_DIFFER, RESUME_MUST_MATCH
from mednext_lite.train import Trainer, TrainingDiverged, poly_lr, train
from mednext_lite.train_config import TrainConfig

TINY = {"base_width": 4, "block_counts": 1, "expansion_ratios": 1}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    from mednext_lite.data.synthetic import make_synthetic_task

    return make_synthetic_task(tmp_path_factory.mktemp("data"), n_train=3, n_test=1, shape=(32, 32, 32),
                               progress=False)


def tiny_cfg(task: Path, run_dir: Path, **kw) -> TrainConfig:
    base = {"task_dir": str(task), "run_dir": str(run_dir), "model_overrides": TINY, "patch_size": (32, 32, 32),
                "epochs": 2, "iters_per_epoch": 2, "batch_size": 2, "val_every": 100, "sw_batch_size": 1, "progress": False,
                "augment": False, "n_folds": 3}
    base.update(kw)
    return TrainConfig(**base)


# -- pure pieces -----------------------------------------------------------------------------------

def test_deep_supervision_weights_follow_the_paper():
    w = deep_supervision_weights(5)
    expected = [1, 0.5, 0.25, 0.125, 0]
    assert w == pytest.approx([e / 1.875 for e in expected])
    assert sum(w) == pytest.approx(1.0)
    assert deep_supervision_weights(1) == [1.0]


def test_deep_supervision_loss_downsamples_labels_by_nearest():
    torch.manual_seed(0)
    label = torch.randint(0, 3, (2, 1, 16, 16, 16)).float()
    outs = [torch.randn(2, 3, 16 // 2**i, 16 // 2**i, 16 // 2**i) for i in range(5)]
    loss = make_loss()
    got = loss(outs, label)
    base = loss.base_loss
    manual = sum(w * base(o, label[:, :, :: 2**i, :: 2**i, :: 2**i]) for i, (w, o) in
                 enumerate(zip(deep_supervision_weights(5), outs)))
    assert got.item() == pytest.approx(manual.item(), rel=1e-6)
    # A single tensor is plain DiceCE.
    assert loss(outs[0], label).item() == pytest.approx(base(outs[0], label).item(), rel=1e-6)
    with pytest.raises(ValueError, match="2 deep-supervision weights for 5 outputs"):
        DeepSupervisionLoss(base, [0.5, 0.5])(outs, label)


def test_poly_schedule():
    assert poly_lr(0, 1000) == 1.0
    assert poly_lr(500, 1000) == pytest.approx(0.5**0.9)
    assert poly_lr(1000, 1000) == 0.0


def test_config_defaults_are_the_paper_and_errors_name_the_fix(tmp_path):
    c = TrainConfig()
    assert (c.epochs, c.iters_per_epoch, c.batch_size, c.patch_size) == (1000, 250, 2, (128, 128, 128))
    assert (c.lr, c.eps, c.weight_decay, c.poly_exponent, c.grad_clip) == (1e-3, 1e-4, 3e-5, 0.9, 12.0)
    assert c.deep_supervision and c.variant == "S"
    with pytest.raises(ValueError, match="use 112"):
        TrainConfig(patch_size=(100, 128, 128))
    with pytest.raises(ValueError, match="bottleneck"):
        TrainConfig(patch_size=(16, 16, 16))
    with pytest.raises(ValueError, match="multiple of num_samples"):
        TrainConfig(batch_size=3, num_samples=2)
    with pytest.raises(ValueError, match="give 2 sizes"):
        TrainConfig(spatial_dims=2, patch_size=(64, 64, 64))
    with pytest.raises(ValueError, match="unknown MedNeXt variant"):
        TrainConfig(variant="XL")
    q = TrainConfig.cpu_quickstart("x", spatial_dims=2)
    assert q.patch_size == (32, 32) and q.spatial_dims == 2
    # model overrides join the quickstart's own instead of replacing them
    assert TrainConfig.cpu_quickstart("x", model_overrides={"grn": True}).model_overrides == {
        "base_width": 16, "block_counts": 1, "grn": True}
    assert TrainConfig.cpu_quickstart("x", model_overrides={"base_width": 8}).model_overrides["base_width"] == 8
    assert TrainConfig.from_dict(c.to_dict()) == c
    json.dumps(c.to_dict())


def test_resolve_device_picks_and_checks_devices():
    from mednext_lite.runtime import resolve_device

    cuda = torch.cuda.is_available()
    assert resolve_device() == (torch.device("cuda", 0) if cuda else torch.device("cpu"))
    assert resolve_device("auto", local_rank=0) == resolve_device()
    assert resolve_device("cpu", local_rank=3) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device='gpu0' is not a device name: use 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device("gpu0")
    if cuda:
        count = torch.cuda.device_count()
        assert resolve_device("cuda", local_rank=count - 1) == torch.device("cuda", count - 1)
        with pytest.raises(ValueError, match=rf"asks for GPU {count} but {count} GPU\(s\) are present"):
            resolve_device(f"cuda:{count}")
    else:
        with pytest.raises(ValueError, match=r"device='cuda:1' but CUDA is not available: use --device cpu"):
            resolve_device("cuda:1")


def test_seed_everything_repeats_every_generator_and_rng_state_restores_them(tmp_path):
    import random

    import numpy as np

    from mednext_lite.runtime import rng_state, seed_everything, set_rng_state

    def draw() -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    seed_everything(2**32 + 5)  # beyond NumPy's range: reduced for NumPy, not refused
    first = draw()
    seed_everything(2**32 + 5)
    assert draw() == first
    seed_everything(6)
    assert draw() != first
    torch.save(rng_state(), tmp_path / "rng.pt")  # plain containers: loads with weights_only=True
    expected = draw()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draw() == expected


def test_distributed_helpers_are_the_identity_in_one_process(monkeypatch):
    from mednext_lite import distributed

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    ranks = distributed.ranks_from_env()
    assert ranks == distributed.Ranks(rank=1, local_rank=1, world_size=4)
    assert ranks.distributed and not ranks.is_main
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name)
    single = distributed.ranks_from_env()
    assert single == distributed.Ranks() and single.is_main and not single.distributed
    assert distributed.init_process_group(single, torch.device("cpu")) is False  # nothing to join
    t = torch.tensor([1.5, 2.0], dtype=torch.float64)
    assert torch.equal(distributed.all_reduce_sum(t), t)
    assert distributed.any_rank(True) is True and distributed.any_rank(False) is False
    distributed.barrier()  # returns at once without a process group


def test_every_flag_in_the_flags_table_is_a_train_option_and_memory_formats_agree(task, tmp_path):
    import argparse
    from dataclasses import fields

    from mednext_lite.cli import _train_config, build_parser
    from mednext_lite.fast.layout import MEMORY_FORMATS
    from mednext_lite.train_config import FLAGS

    parser = build_parser()
    train_parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    options = train_parser._option_string_actions
    assert set(FLAGS) <= {f.name for f in fields(TrainConfig)}
    for name, flags in FLAGS.items():
        for flag in flags.split("/"):
            assert flag in options, (name, flag)
    assert tuple(options["--memory-format"].choices) == MEMORY_FORMATS
    args = parser.parse_args(["train", "--task", str(task), "--memory-format", "channels_last", "--no-keep-freed-memory"])
    cfg = _train_config(args)
    assert (cfg.memory_format, cfg.keep_freed_memory) == ("channels_last", False)
    defaults = _train_config(parser.parse_args(["train", "--task", str(task)]))
    assert (defaults.memory_format, defaults.keep_freed_memory) == ("auto", True)
    with pytest.raises(ValueError, match=r"memory_format='nhwc' \(--memory-format\): use one of \('auto', "):
        TrainConfig(memory_format="nhwc")


def test_resume_conflicts_compare_the_network_built_not_the_overrides_typed(tmp_path):
    from mednext_lite.run_files import resume_conflicts

    (tmp_path / "task").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "task")  # the same task through a link is the same task
    asked = TrainConfig(task_dir=str(tmp_path / "task"), lr=2e-3, model_overrides={"base_width": 32})
    stored = {**TrainConfig(task_dir=str(tmp_path / "link")).to_dict(), "model_overrides": {}}
    stored.pop("seed")  # a setting an older file lacks is skipped
    assert resume_conflicts(stored, asked) == ["lr (--lr): 0.001 -> 0.002"]


def test_curves_show_the_loss_each_epoch_and_dice_where_validated(tmp_path, monkeypatch):
    from mednext_lite import viz
    from mednext_lite.run_files import write_curves

    drawn = []

    def spy(rows, **kw):
        drawn.append((rows, kw))
        return real(rows, **kw)

    real = viz.plot_curves
    monkeypatch.setattr(viz, "plot_curves", spy)
    history = [{"epoch": 1, "step": 2, "lr": 1e-3, "train_loss": 1.2, "seconds": 3.0},
               {"epoch": 2, "step": 4, "lr": 5e-4, "train_loss": 0.9, "val_dice_mean": 0.5, "val_dice_head": 0.4,
                "val_dice_tail": 0.6, "val_hd95_mean": 3.0, "seconds": 3.0}]
    (tmp_path / "run_a").mkdir()
    path = write_curves(tmp_path / "run_a", history)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (rows, kw), = drawn
    assert kw["title"] == "run_a"
    assert list(rows[1]) == ["epoch", "train loss (Dice + CE)", "Dice mean", "Dice head", "Dice tail"]
    assert rows[0] == {"epoch": 1, "train loss (Dice + CE)": 1.2}
    assert not list(tmp_path.glob("run_a/.*")), "temporary files left behind"


# -- training runs ---------------------------------------------------------------------------------

def test_train_writes_checkpoints_metrics_and_curves(task, tmp_path):
    seen = []
    cfg = tiny_cfg(task, tmp_path / "run", val_every=1)
    result = train(cfg, on_epoch_end=seen.append)
    run = tmp_path / "run"
    assert [r["epoch"] for r in result.history] == [1, 2] == [r["epoch"] for r in seen]
    for name in ("last.pt", "best.pt", "metrics.csv", "metrics.json", "curves.png", "split.json", "config.json"):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*tmp*")), "temporary files left behind"
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "lr", "val_dice_mean", "val_dice_head", "val_dice_tail"} <= set(rows[0])
    assert json.loads((run / "metrics.json").read_text()) == result.history
    # Poly decay, stepped per epoch.
    assert result.history[1]["lr"] == pytest.approx(1e-3 * poly_lr(1, 2))
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 4
    # the recipe's AdamW, on PyTorch's fused kernel (>= 2.4 has one for CPU): same update, 2.7-4.1x faster
    group = ckpt["optimizer"]["param_groups"][0]
    assert (group["eps"], group["weight_decay"], group["fused"]) == (cfg.eps, cfg.weight_decay, True)
    assert ckpt["train_config"]["model_overrides"]["base_width"] == 4
    assert 0.0 <= result.best_mean_dice <= 1.0 and result.best_checkpoint == run / "best.pt"
    # A second start into the same run directory is refused rather than overwriting it,
    # and resuming it for another fold is refused rather than training on the stored fold.
    with pytest.raises(ValueError, match="--resume"):
        train(cfg)
    with pytest.raises(ValueError, match=r"fold \(--fold\): 0 -> 1"):
        train(cfg.replace(resume=True, fold=1, epochs=3))


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mednext_lite.train import train
    from mednext_lite.train_config import TrainConfig
    cfg = TrainConfig.from_dict(__import__("json").loads(sys.argv[1]))
    marker = Path(sys.argv[2])
    def on_step(info):
        if info["epoch"] == 1 and info["step"] == 1:
            marker.write_text("mid-epoch")
            time.sleep(600)
    train(cfg, on_step_end=on_step)
""")


def test_sigkill_mid_epoch_then_resume_continues_exactly(task, tmp_path):
    # The child runs with OMP_NUM_THREADS=1, like this process (fixture above): same reductions.
    ref = train(tiny_cfg(task, tmp_path / "ref"))

    cfg = tiny_cfg(task, tmp_path / "killed")
    marker = tmp_path / "marker"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, json.dumps(cfg.to_dict()), str(marker)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while not marker.exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() < deadline, "child never reached epoch 2"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    saved = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert saved["epoch"] == 1 and saved["global_step"] == 2

    trainer = Trainer(cfg.replace(resume=True))
    trainer._setup_data()
    trainer._setup_model()
    trainer.epoch, trainer.global_step, trainer.history, trainer.best_dice, trainer.best_epoch = 0, 0, [], -1.0, -1
    trainer._resume()
    assert (trainer.epoch, trainer.global_step) == (1, 2)
    state = trainer.optimizer.state_dict()
    for key, value in saved["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(state["state"][key][name]), torch.as_tensor(value[name]))
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * poly_lr(1, 2))

    resumed = train(cfg.replace(resume=True))
    final = load_checkpoint(resumed.last_checkpoint)
    reference = load_checkpoint(ref.last_checkpoint)
    assert final["epoch"] == reference["epoch"] == 2 and final["global_step"] == 4
    for k, v in reference["state_dict"].items():
        assert torch.allclose(final["state_dict"][k], v, rtol=0, atol=1e-6), k
    assert [r["train_loss"] for r in resumed.history] == pytest.approx([r["train_loss"] for r in ref.history], abs=1e-6)
    # The metrics files are rebuilt from the checkpoint's history: no lost or doubled epoch.
    with open(tmp_path / "killed" / "metrics.csv") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2]


SAVE_LOOP = textwrap.dedent("""
    import sys, torch
    from mednext_lite.model import MedNeXt, MedNeXtConfig
    from mednext_lite.checkpoint import save_checkpoint
    model = MedNeXt(MedNeXtConfig(base_width=16))  # ~5 MB of weights: a save takes a while
    path, i = sys.argv[1], 0
    while True:
        i += 1
        save_checkpoint(path, model, epoch=i, filler=torch.full((250_000,), float(i)))
        print(i, flush=True)
""")


def test_sigkill_during_checkpoint_writes_never_leaves_a_broken_file(tmp_path):
    path = tmp_path / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):  # the loop is now always somewhere inside a save
            assert proc.stdout.readline().strip(), "saver died"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] >= 3
    assert torch.equal(ckpt["filler"], torch.full((250_000,), float(ckpt["epoch"])))


@pytest.mark.parametrize("step", [0, 1])
def test_nan_weights_stop_the_run_and_keep_the_last_finite_checkpoint(task, tmp_path, step):
    # A weight turned NaN in the middle of an epoch (step 0 of 2) or by its last update (step 1),
    # which used to be saved as last.pt with nothing after it to notice.
    def poison(info):
        if info["epoch"] == 1 and info["step"] == step:
            with torch.no_grad():
                info["model"].stem.weight.view(-1)[0] = float("nan")

    cfg = tiny_cfg(task, tmp_path / "run")
    good = {}
    with pytest.raises(TrainingDiverged, match=rf"epoch 2, iteration 2 of 2 \(global step 4\): weight 'stem\.weight' "
                       rf"got 1 NaN/inf value\(s\) of \d+ after iteration {step + 1}\. Nothing was saved .*last\.pt \(epoch 1\)"):
        train(cfg, on_epoch_end=lambda row: good.update(last=(tmp_path / "run" / "last.pt").read_bytes()),
              on_step_end=poison)
    assert (tmp_path / "run" / "last.pt").read_bytes() == good["last"]
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert [r["epoch"] for r in json.loads((tmp_path / "run" / "metrics.json").read_text())] == [1]


def test_corrupt_checkpoint_is_refused_with_a_clear_message(task, tmp_path):
    cfg = tiny_cfg(task, tmp_path / "run", epochs=1, iters_per_epoch=1)
    train(cfg)
    last = tmp_path / "run" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # cut off mid-write (what a non-atomic save leaves)
    with pytest.raises(CheckpointError, match="corrupt"):
        train(cfg.replace(resume=True, epochs=2))
    last.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match=str(last)):
        load_checkpoint(last)
    with pytest.raises(ValueError, match="does not exist"):
        train(cfg.replace(run_dir=str(tmp_path / "nothing"), resume=True))


def test_upkern_initialisation_from_a_small_kernel_run(task, tmp_path):
    from mednext_lite.upkern import upkern_tensor

    small = train(tiny_cfg(task, tmp_path / "k3", epochs=1, iters_per_epoch=1))
    k3 = load_checkpoint(small.last_checkpoint)["state_dict"]
    seen = {}

    def grab(info):  # weights right after the first (negligible, lr 1e-9) step
        seen.update({k: v.detach().clone() for k, v in info["model"].state_dict().items()})

    big = tiny_cfg(task, tmp_path / "k5", kernel_size=5, epochs=1, iters_per_epoch=1, lr=1e-9,
                   upkern_from=str(small.last_checkpoint))
    train(big, on_step_end=grab)
    assert seen["encoders.0.0.conv1.weight"].shape[-3:] == (5, 5, 5)
    assert torch.allclose(seen["encoders.0.0.conv1.weight"], upkern_tensor(k3["encoders.0.0.conv1.weight"], 5), atol=1e-6)
    assert torch.allclose(seen["stem.weight"], k3["stem.weight"], atol=1e-6)


def test_2d_training_on_slices_with_hd95_channels_last_and_checkpointing(task, tmp_path):
    cfg = tiny_cfg(task, tmp_path / "run2d", spatial_dims=2, patch_size=(32, 32), epochs=1, iters_per_epoch=2,
                   hd95=True, memory_format="channels_last", grad_checkpointing=True, augment=True)
    result = train(cfg)
    row = result.history[-1]
    assert result.model.config.spatial_dims == 2 and result.model.grad_checkpointing
    assert 0.0 <= row["val_dice_mean"] <= 1.0
    assert "val_hd95_mean" in row
    assert load_checkpoint(result.last_checkpoint)["config"]["spatial_dims"] == 2


# -- bad numbers, run directories and resume settings, through the command line ---------------------

def cli_args(task: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--task", str(task), "--run-dir", str(run), "--base-width", "4", "--blocks", "1",
            "--patch", "32", "--iters", "1", "--batch", "1", "--no-progress", "--no-augment", "--n-folds", "3",
            "--sw-batch-size", "1", "--device", "cpu", *extra]


@pytest.mark.parametrize("flag,value", [("--lr", "inf"), ("--lr", "nan"), ("--lr", "0"), ("--grad-clip", "nan"),
                                        ("--grad-clip", "inf"), ("--eps=-1e-4", None), ("--weight-decay", "nan")])
def test_non_finite_or_non_positive_settings_are_refused_before_anything_is_written(task, tmp_path, capsys, flag,
                                                                                    value):
    run = tmp_path / "run"
    assert main(cli_args(task, run, *([flag, value] if value else [flag]))) == 2  # "--eps=-1e-4": not an option
    err = capsys.readouterr().err
    assert f"({flag.split('=')[0]}) must be a finite number" in err and "Traceback" not in err
    assert not run.exists()


def test_an_update_that_makes_weights_inf_stops_before_any_checkpoint(task, tmp_path, capsys):
    # 1e39 is a finite float64 but overflows float32: the first AdamW update turns weights into inf,
    # which used to be written to last.pt as "the last good checkpoint".
    run = tmp_path / "run"
    assert main(cli_args(task, run, "--lr", "1e39", "--epochs", "1")) == 3
    err = capsys.readouterr().err
    assert "epoch 1, iteration 1 of 1" in err and "NaN/inf value(s)" in err and "after iteration 1." in err
    assert "no checkpoint had been written yet" in err and "--overwrite" in err
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "split.json"]  # nothing from that state


def test_divergence_on_resume_leaves_the_last_finite_checkpoint_bit_identical(task, tmp_path, capsys):
    # lr 1e30: the first epoch's single update leaves finite (if absurd, ~1e30) weights; the next
    # forward pass overflows, so the resumed epoch diverges at its first iteration.
    run = tmp_path / "run"
    assert main(cli_args(task, run, "--lr", "1e30", "--epochs", "1")) == 0
    before = {name: (run / name).read_bytes() for name in ("last.pt", "best.pt", "metrics.json", "metrics.csv")}
    capsys.readouterr()
    assert main(cli_args(task, run, "--lr", "1e30", "--epochs", "2", "--resume")) == 3
    err = capsys.readouterr().err
    assert "training diverged at epoch 2, iteration 1 of 1" in err
    assert f"{run / 'last.pt'} (epoch 1) is still the last checkpoint" in err
    assert {name: (run / name).read_bytes() for name in before} == before
    ckpt = load_checkpoint(run / "last.pt")  # refuses NaN/inf weights: it loads, so they are finite
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_a_run_dir_with_best_and_config_but_no_last_is_not_overwritten(task, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(cli_args(task, run, "--epochs", "1")) == 0
    for name in ("last.pt", "split.json", "metrics.csv", "metrics.json", "curves.png"):
        (run / name).unlink()
    kept = {name: (run / name).read_bytes() for name in ("best.pt", "config.json")}
    capsys.readouterr()
    assert main(cli_args(task, run, "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert "already holds a run (config.json, best.pt)" in err and "--overwrite" in err
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.json"]
    assert {name: (run / name).read_bytes() for name in kept} == kept
    assert main(cli_args(task, run, "--epochs", "1", "--resume")) == 2
    assert "holds config.json, best.pt but no last.pt: start it again with --overwrite" in capsys.readouterr().err
    assert main(cli_args(task, run, "--epochs", "1", "--resume", "--overwrite")) == 2
    assert "pass one of them" in capsys.readouterr().err


def test_overwrite_removes_only_the_files_a_run_writes(task, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(cli_args(task, run, "--epochs", "1")) == 0
    old_best = (run / "best.pt").read_bytes()
    (run / "notes.txt").write_text("my notes")
    outside = tmp_path / "precious.json"
    outside.write_text("keep me")
    (run / "metrics.json").unlink()
    (run / "metrics.json").symlink_to(outside)  # a link is removed, its target never written
    assert main(cli_args(task, run, "--epochs", "1", "--overwrite", "--seed", "1")) == 0
    assert (run / "notes.txt").read_text() == "my notes" and outside.read_text() == "keep me"
    assert not (run / "metrics.json").is_symlink()
    assert json.loads((run / "split.json").read_text())["meta"]["seed"] == 1  # a fresh split, not the old one
    assert (run / "best.pt").read_bytes() != old_best


def test_resume_refuses_settings_that_change_the_run_and_keeps_config_json(task, tmp_path, capsys):
    from mednext_lite.data.synthetic import make_synthetic_task

    run = tmp_path / "run"
    assert main(cli_args(task, run, "--epochs", "1")) == 0
    files = {name: (run / name).read_bytes() for name in ("config.json", "last.pt", "split.json")}
    other = make_synthetic_task(tmp_path / "other", n_train=3, n_test=0, shape=(32, 32, 32), seed=5, progress=False)
    refused = {
        ("--lr", "0.01"): "lr (--lr): 0.001 -> 0.01",
        ("--fold", "1"): "fold (--fold): 0 -> 1",
        ("--seed", "7"): "seed (--seed): 0 -> 7",
        ("--patch", "48"): "patch_size (--patch): [32, 32, 32] -> [48, 48, 48]",
        ("--base-width", "8"): "model_overrides (--base-width/--blocks): {'base_width': 4, 'block_counts': 1} -> "
                               "{'base_width': 8, 'block_counts': 1}",
    }
    for extra, message in refused.items():
        capsys.readouterr()
        assert main(cli_args(task, run, "--epochs", "2", "--resume", *extra)) == 2, extra
        err = capsys.readouterr().err
        assert "--resume would change the run" in err and message in err, err
    capsys.readouterr()
    assert main(cli_args(other, run, "--epochs", "2", "--resume")) == 2
    assert f"task_dir (--task): {str(task)!r} -> {str(other)!r}" in capsys.readouterr().err
    assert main(cli_args(task, run, "--epochs", "0", "--resume")) == 2  # refused by the flag check itself
    assert {name: (run / name).read_bytes() for name in files} == files  # nothing rewritten
    # settings that leave the maths alone may change: more epochs, validation cadence, workers
    assert main(cli_args(task, run, "--epochs", "2", "--resume", "--val-every", "2", "--num-workers", "0",
                         "--no-keep-freed-memory")) == 0
    stored = json.loads((run / "config.json").read_text())
    assert (stored["epochs"], stored["val_every"], stored["lr"], stored["resume"]) == (2, 2, 1e-3, True)
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    capsys.readouterr()
    assert main(cli_args(task, run, "--epochs", "1", "--resume")) == 2
    assert "fewer than the 2 epochs" in capsys.readouterr().err


def test_resume_lists_cover_every_setting_once():
    from dataclasses import fields

    names = [f.name for f in fields(TrainConfig)]
    assert sorted(RESUME_MUST_MATCH + RESUME_MAY_DIFFER) == sorted(names)
    assert not set(RESUME_MUST_MATCH) & set(RESUME_MAY_DIFFER)


def test_resume_records_the_upkern_source_the_run_really_used(task, tmp_path, capsys):
    # config.json used to record a new --upkern-from given on resume, an initialisation that never happened.
    from mednext_lite.checkpoint import save_checkpoint
    from mednext_lite.model import MedNeXt

    cfg = tiny_cfg(task, tmp_path / "run", epochs=1, iters_per_epoch=1)
    source = save_checkpoint(tmp_path / "k3.pt", MedNeXt(cfg.model_config(1, 3)))
    other = save_checkpoint(tmp_path / "other.pt", MedNeXt(cfg.model_config(1, 3)))
    train(cfg.replace(upkern_from=str(source)))
    for asked in (str(other), None):
        capsys.readouterr()
        train(cfg.replace(resume=True, epochs=2 if asked else 3, upkern_from=asked))
        assert json.loads((tmp_path / "run" / "config.json").read_text())["upkern_from"] == str(source)
        assert load_checkpoint(tmp_path / "run" / "last.pt")["train_config"]["upkern_from"] == str(source)
        err = capsys.readouterr().err
        assert (f"--upkern-from {other} is ignored on resume: the run keeps its own initialisation ({source})" in err) \
            == (asked is not None)


class _NaNGradient(torch.autograd.Function):
    """The identity forward; its backward turns every gradient into NaN (the loss itself stays finite)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def test_a_nan_gradient_norm_stops_the_run_before_anything_is_saved(task, tmp_path, capsys, monkeypatch):
    # --lr inf and --grad-clip nan are refused up front now, so a NaN gradient norm is forced
    # through a real run: from its second iteration on, the loss's backward yields NaN gradients.
    import mednext_lite.train as train_module

    calls = []

    def make_poisoned_loss():
        loss = make_loss()

        def poisoned(outputs, labels):
            calls.append(1)
            value = loss(outputs, labels)
            return _NaNGradient.apply(value) if len(calls) > 1 else value
        return poisoned

    monkeypatch.setattr(train_module, "make_loss", make_poisoned_loss)
    run = tmp_path / "run"
    assert main(cli_args(task, run, "--epochs", "1", "--iters", "2")) == 3
    err = capsys.readouterr().err
    assert "training diverged at epoch 1, iteration 2 of 2 (global step 2): the gradient norm became nan." in err
    assert "Nothing was saved from that state: no checkpoint had been written yet" in err
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "split.json"]
    assert len(calls) == 2  # it stopped at the first bad step


def test_kernels_and_checkpointing_policy_flags_reach_the_config_and_round_trip(task):
    from mednext_lite.cli import _train_config, build_parser

    parser = build_parser()

    def cfg(*flags):
        return _train_config(parser.parse_args(["train", "--task", str(task), *flags]))

    assert (cfg().kernels, cfg().grad_checkpointing) == ("pytorch", None)
    assert cfg("--kernels", "auto", "--variant", "V2-B").kernels == "auto"
    assert cfg("--grad-checkpointing", "on").grad_checkpointing is True
    assert cfg("--grad-checkpointing", "off").grad_checkpointing is False
    assert cfg("--grad-checkpointing", "expansion").grad_checkpointing == "expansion"
    per_stage = cfg("--grad-checkpointing", "off,block,expansion,off,block,off,off,expansion,block").grad_checkpointing
    assert per_stage == (None, "block", "expansion", None, "block", None, None, "expansion", "block")
    with pytest.raises(SystemExit):
        cfg("--grad-checkpointing", "block,off")
    stored = TrainConfig(grad_checkpointing=per_stage, kernels="auto").to_dict()
    assert stored["grad_checkpointing"][1] == "block" and TrainConfig.from_dict(stored).grad_checkpointing == per_stage
    with pytest.raises(ValueError, match=r"kernels='cuda' \(--kernels\): use one of \('pytorch', 'triton', 'auto'\)"):
        TrainConfig(kernels="cuda")
    with pytest.raises(ValueError, match=r"grad_checkpointing='wide' \(--grad-checkpointing\)"):
        TrainConfig(grad_checkpointing="wide")
    assert "kernels" in RESUME_MAY_DIFFER and "grad_checkpointing" in RESUME_MAY_DIFFER


def test_build_model_applies_the_checkpointing_policy():
    from mednext_lite.train import build_model

    model = build_model(TrainConfig(variant="M", grad_checkpointing="expansion"), 1, 2)
    assert model.checkpoint_policy == ("expansion",) * 9
    assert build_model(TrainConfig(variant="M"), 1, 2).checkpoint_policy == ("block",) * 9  # the preset's


def test_triton_kernels_on_a_cpu_run_are_refused_with_the_fix(task, tmp_path, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"--kernels triton\) runs on CUDA devices, not on cpu.*--kernels pytorch"):
        train(TrainConfig.cpu_quickstart(task, run_dir=str(tmp_path / "run"), kernels="triton", device="cpu",
                                         epochs=1, iters_per_epoch=1, progress=False))
