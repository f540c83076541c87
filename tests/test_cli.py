"""The ``mednext-lite`` command: every subcommand is wired, every documented flag is in --help,
errors are one line with exit status 2, and train -> predict -> evaluate works end to end."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mednext_lite.cli import main
from mednext_lite.train import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def help_text(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_every_subcommand_is_wired(capsys):
    top = help_text(capsys)
    for name in ("train", "predict", "evaluate", "profile", "data"):
        assert name in top
    assert "synthesize" in help_text(capsys, "data")
    train = help_text(capsys, "train")
    for flag in ("--data-dir", "--task", "--variant", "--kernel", "--spatial-dims", "--epochs", "--iters", "--batch",
                 "--patch", "--device", "--resume", "--upkern-from", "--amp", "--channels-last", "--grad-checkpointing",
                 "--overlap", "--blend", "--hd95", "--lr", "--fold", "--quickstart", "--run-dir", "--release-freed-memory"):
        assert flag in train, flag
    for flag in ("--checkpoint", "--input", "--output", "--overlap", "--blend", "--patch"):
        assert flag in help_text(capsys, "predict"), flag
    for flag in ("--predictions", "--labels", "--split", "--hd95"):
        assert flag in help_text(capsys, "evaluate"), flag


def test_errors_are_one_line_with_the_fix(capsys, tmp_path):
    assert main(["train", "--task", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err
    assert main(["train", "--task", "synthetic", "--data-dir", str(tmp_path), "--patch", "100"]) == 2
    assert "use 112" in capsys.readouterr().err
    assert main(["evaluate", "--predictions", str(tmp_path)]) == 2
    assert "--labels" in capsys.readouterr().err


def test_train_predict_evaluate_end_to_end(tmp_path, capsys):
    from mednext_lite.data.synthetic import make_synthetic_task

    task = make_synthetic_task(tmp_path / "data", n_train=3, n_test=1, shape=(32, 32, 32), progress=False)
    run = tmp_path / "run"
    common = ["train", "--task", str(task), "--run-dir", str(run), "--base-width", "4", "--blocks", "1",
              "--patch", "32", "--iters", "1", "--batch", "1", "--no-progress", "--no-augment", "--n-folds", "3",
              "--sw-batch-size", "1"]
    assert main([*common, "--epochs", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["best"] == str(run / "best.pt")
    assert json.loads((run / "config.json").read_text())["keep_freed_memory"] is True  # the CPU default
    assert main([*common, "--epochs", "2", "--resume"]) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 2

    split = json.loads((run / "split.json").read_text())
    val_images = [c["image"] for c in split["val"]]
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(run / "best.pt"), "--input", *val_images, str(task / "imagesTs"),
                 "--output", str(out)]) == 0
    for src in val_images + [str(p) for p in (task / "imagesTs").glob("*.nii.gz")]:
        ref, pred = nib.load(src), nib.load(str(out / Path(src).name))
        assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine)

    capsys.readouterr()
    assert main(["evaluate", "--predictions", str(out), "--split", str(run / "split.json"), "--task", str(task)]) == 0
    text = capsys.readouterr().out
    assert "head" in text and "tail" in text and "mean" in text
    report = json.loads((out / "evaluation.json").read_text())
    assert report["n"] == len(val_images) and set(report["dice"]) == {"head", "tail"}


def test_predict_patch_flag_and_missing_input(tmp_path, capsys):
    from mednext_lite.data.synthetic import make_synthetic_task
    from mednext_lite.interop import save_checkpoint
    from mednext_lite.model import MedNeXt, MedNeXtConfig

    task = make_synthetic_task(tmp_path / "data", n_train=2, n_test=1, shape=(32, 32, 24), progress=False)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, MedNeXt(MedNeXtConfig(base_width=4, block_counts=1, num_classes=3)))  # no train_config
    args = ["predict", "--checkpoint", str(ckpt), "--input", str(task / "imagesTs"), "--output", str(tmp_path / "p")]
    assert main(args) == 2
    assert "--task" in capsys.readouterr().err
    assert main([*args, "--task", str(task), "--patch", "32"]) == 0
    (out,) = (tmp_path / "p").glob("*.nii.gz")
    assert nib.load(str(out)).shape == (32, 32, 24)
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "none"), "--output", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
