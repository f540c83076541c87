"""The ``mednext-lite`` command: every subcommand is wired, every documented flag is in --help,
errors are one line with exit status 2, and train -> predict -> evaluate works end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mednext_lite.checkpoint import load_checkpoint
from mednext_lite.cli import main

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
    data_help = help_text(capsys, "data")
    assert "synthesize" in data_help and "brain" in data_help and "inspect" in data_help
    train = help_text(capsys, "train")
    for flag in ("--data-dir", "--task", "--variant", "--kernel", "--spatial-dims", "--epochs", "--iters", "--batch",
                 "--patch", "--device", "--resume", "--upkern-from", "--amp", "--memory-format", "--grad-checkpointing",
                 "--overlap", "--blend", "--hd95", "--lr", "--fold", "--quickstart", "--run-dir", "--no-keep-freed-memory"):
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
    from mednext_lite.checkpoint import save_checkpoint
    from mednext_lite.data.synthetic import make_synthetic_task
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


# -- predictions never touch inputs; every bad input gets one line ---------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A synthetic task and a saved (untrained) base-width-4 checkpoint for it."""
    from mednext_lite.checkpoint import save_checkpoint
    from mednext_lite.data.synthetic import make_synthetic_task
    from mednext_lite.model import MedNeXt, MedNeXtConfig

    root = tmp_path_factory.mktemp("tiny")
    task = make_synthetic_task(root / "data", n_train=2, n_test=1, shape=(32, 32, 24), progress=False)
    ckpt = save_checkpoint(root / "m.pt", MedNeXt(MedNeXtConfig(base_width=4, block_counts=1, num_classes=3)))
    return task, ckpt


def _predict(tiny, *args: str) -> list[str]:
    task, ckpt = tiny
    return ["predict", "--checkpoint", str(ckpt), "--task", str(task), "--patch", "32", *args]


def one_line(capsys) -> str:
    """The error output of a failed command: exactly one line, no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_predict_refuses_outputs_that_touch_inputs(tiny, tmp_path, capsys):
    task, _ = tiny
    before = {p: p.read_bytes() for p in sorted(task.rglob("*.nii.gz"))}
    assert main(_predict(tiny, "--input", str(task / "imagesTs"), "--output", str(task / "imagesTs"))) == 2
    assert "is " + str(task / "imagesTs") in one_line(capsys)
    assert main(_predict(tiny, "--input", str(task / "imagesTs"), "--output", str(task / "labelsTr"))) == 2
    assert "a data folder of the task" in one_line(capsys)
    assert {p: p.read_bytes() for p in sorted(task.rglob("*.nii.gz"))} == before  # bit-identical, nothing added

    out = tmp_path / "pred"
    assert main(_predict(tiny, "--input", str(task / "imagesTs"), "--output", str(out))) == 0
    (written,) = out.iterdir()
    first = written.read_bytes()
    capsys.readouterr()
    assert main(_predict(tiny, "--input", str(task / "imagesTs"), "--output", str(out))) == 2
    line = one_line(capsys)
    assert "exist already" in line and "--overwrite" in line
    assert main(_predict(tiny, "--input", str(task / "imagesTs"), "--output", str(out), "--overwrite",
                         "--no-progress")) == 0
    assert capsys.readouterr().err == ""  # no progress bar, no warning
    assert written.read_bytes() == first  # same model, same input: the replacement is identical


def test_predict_refuses_output_name_collisions(tiny, tmp_path, capsys):
    image = next((tiny[0] / "imagesTs").glob("*.nii.gz"))
    (tmp_path / "in").mkdir()
    a, b = tmp_path / "in" / "dup.nii", tmp_path / "in" / "dup.nii.gz"
    nib.save(nib.load(str(image)), str(a))
    b.write_bytes(image.read_bytes())
    assert main(_predict(tiny, "--input", str(a), str(b), "--output", str(tmp_path / "pred"))) == 2
    line = one_line(capsys)
    assert str(a) in line and str(b) in line and "dup.nii.gz" in line
    assert not (tmp_path / "pred").exists()


def test_predict_refuses_non_finite_voxels_unless_asked_to_clean_them(tiny, tmp_path, capsys):
    image = nib.load(str(next((tiny[0] / "imagesTs").glob("*.nii.gz"))))
    data = np.asanyarray(image.dataobj).astype(np.float32)
    data[3, 4, 5] = np.nan
    src = tmp_path / "in" / "nan.nii.gz"
    src.parent.mkdir()
    nib.save(nib.Nifti1Image(data, image.affine), str(src))
    assert main(_predict(tiny, "--input", str(src), "--output", str(tmp_path / "pred"))) == 2
    assert f"{src}: 1 of {data.size} voxel value(s) are not finite" in one_line(capsys)
    assert main(_predict(tiny, "--input", str(src), "--output", str(tmp_path / "pred"), "--nan-to-num", "0")) == 0
    assert f"{src}: replaced 1 non-finite voxel value(s) with 0 (--nan-to-num)" in capsys.readouterr().err
    assert (tmp_path / "pred" / "nan.nii.gz").is_file()


def test_predict_refuses_a_checkpoint_with_nan_weights(tiny, tmp_path, capsys):
    import torch

    from mednext_lite.checkpoint import save_checkpoint
    from mednext_lite.model import MedNeXt, MedNeXtConfig

    model = MedNeXt(MedNeXtConfig(base_width=4, block_counts=1, num_classes=3))
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    bad = save_checkpoint(tmp_path / "nan.pt", model)
    args = _predict(tiny, "--input", str(tiny[0] / "imagesTs"), "--output", str(tmp_path / "pred"))
    args[args.index("--checkpoint") + 1] = str(bad)
    assert main(args) == 2
    line = one_line(capsys)
    assert str(bad) in line and "NaN/inf" in line
    assert not (tmp_path / "pred").exists()


def test_evaluate_refuses_a_prediction_on_another_grid(tiny, tmp_path, capsys):
    task, _ = tiny
    label = next((task / "labelsTr").glob("*.nii.gz"))
    ref = nib.load(str(label))
    shifted = ref.affine.copy()
    shifted[:3, 3] += 100.0
    (tmp_path / "pred").mkdir()
    nib.save(nib.Nifti1Image(np.asanyarray(ref.dataobj), shifted), str(tmp_path / "pred" / label.name))
    args = ["evaluate", "--predictions", str(tmp_path / "pred"), "--labels", str(label), "--task", str(task)]
    assert main(args) == 2
    line = one_line(capsys)
    assert str(label) in line and str(tmp_path / "pred" / label.name) in line and "origin" in line
    # The same segmentation stored with axis 0 reversed: refused as is, Dice 1 once resampled.
    flipped = ref.affine @ np.array([[-1, 0, 0, ref.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.asanyarray(ref.dataobj)[::-1].copy(), flipped), str(tmp_path / "pred" / label.name))
    assert main(args) == 2
    assert "axis direction" in one_line(capsys)
    assert main([*args, "--resample"]) == 0
    report = json.loads((tmp_path / "pred" / "evaluation.json").read_text())
    assert report["mean_dice"] == 1.0 and report["cases"][0]["resampled"] is True


def _bad_inputs(tiny, folder: Path) -> dict[str, Path]:
    image = next((tiny[0] / "imagesTs").glob("*.nii.gz"))
    folder.mkdir()
    raw = image.read_bytes()
    (folder / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    nib.save(nib.Nifti1Image(np.zeros((40, 30), np.float32), np.eye(4)), str(folder / "flat.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), str(folder / "huge.nii"))
    head = bytearray((folder / "huge.nii").read_bytes())
    head[40:56] = np.array([3, 32767, 32767, 32767, 1, 1, 1, 1], "<i2").tobytes()  # the header's dim[]
    (folder / "huge.nii").write_bytes(bytes(head))
    (folder / "notnifti.nii.gz").write_bytes(b"this is not an image")
    return {p.name: p for p in folder.iterdir()}


def test_every_bad_input_ends_in_one_line_naming_it(tiny, tmp_path, capsys):
    bad = _bad_inputs(tiny, tmp_path / "bad")
    expect = {
        "truncated.nii.gz": "truncated or damaged",
        "flat.nii.gz": "shape (40, 30) is a 2D image but this 3D model",
        "huge.nii": "(32767, 32767, 32767)",
        "notnifti.nii.gz": "not a readable NIfTI image",
    }
    for name, words in expect.items():
        assert main(_predict(tiny, "--input", str(bad[name]), "--output", str(tmp_path / "pred"))) == 2, name
        line = one_line(capsys)
        assert str(bad[name]) in line and words in line, line
    (tmp_path / "ckpt_dir.pt").mkdir()
    args = _predict(tiny, "--input", str(tiny[0] / "imagesTs"), "--output", str(tmp_path / "pred"))
    args[args.index("--checkpoint") + 1] = str(tmp_path / "ckpt_dir.pt")
    assert main(args) == 2
    assert "is a folder: pass the checkpoint file in it" in one_line(capsys)
    assert main(["predict", "--checkpoint", str(tiny[1]), "--input", str(tiny[0] / "imagesTs"), "--output",
                 str(tmp_path / "p"), "--task", "../../elsewhere"]) == 2
    assert "../../elsewhere" in one_line(capsys)
    assert not (tmp_path / "pred").exists() and not (tmp_path / "p").exists()
    # An fp16 checkpoint is a valid one: its weights load into the float32 model.
    import torch

    half = tmp_path / "half.pt"
    ckpt = torch.load(tiny[1], weights_only=True)
    from mednext_lite.checkpoint import save_checkpoint
    from mednext_lite.model import MedNeXt, MedNeXtConfig

    model = MedNeXt(MedNeXtConfig.from_dict(ckpt["config"]))
    save_checkpoint(half, model.half())
    args[args.index("--checkpoint") + 1] = str(half)
    assert main(args) == 0


def test_cli_boundary_in_a_real_process(tiny, tmp_path):
    import subprocess
    import sys

    bad = _bad_inputs(tiny, tmp_path / "bad")
    args = [sys.executable, "-m", "mednext_lite.cli"]
    rest = _predict(tiny, "--input", str(bad["truncated.nii.gz"]), "--output", str(tmp_path / "pred"))
    proc = subprocess.run([*args, *rest], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "truncated.nii.gz" in proc.stderr
    proc = subprocess.run([*args, "--debug", *rest], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "truncated.nii.gz" in proc.stderr


def test_predict_never_overwrites_labels_kept_in_a_folder_of_another_name(tmp_path, capsys):
    # dataset.json lists ./labels/...: `predict --input T/imagesTr --output T/labels --task T
    # --overwrite` used to replace every label.
    from mednext_lite.checkpoint import save_checkpoint
    from mednext_lite.data.synthetic import make_synthetic_task
    from mednext_lite.model import MedNeXt, MedNeXtConfig

    task = make_synthetic_task(tmp_path / "data", n_train=2, n_test=0, shape=(32, 32, 16), progress=False)
    (task / "labelsTr").rename(task / "labels")
    meta = json.loads((task / "dataset.json").read_text())
    for case in meta["training"]:
        case["label"] = case["label"].replace("./labelsTr/", "./labels/")
    (task / "dataset.json").write_text(json.dumps(meta))
    before = {p: p.read_bytes() for p in sorted((task / "labels").iterdir())}
    model = MedNeXt(MedNeXtConfig(base_width=4, block_counts=1, num_classes=3))
    with_task = save_checkpoint(tmp_path / "with_task.pt", model,
                                train_config={"task_dir": str(task), "patch_size": [32, 32, 32]})
    runs = [["--checkpoint", str(with_task), "--task", str(task)],
            ["--checkpoint", str(with_task)]]  # the task comes from the checkpoint
    for args in runs:
        assert main(["predict", *args, "--input", str(task / "imagesTr"), "--output", str(task / "labels"),
                     "--overwrite", "--patch", "32"]) == 2
        line = one_line(capsys)
        assert f"is {task / 'labels'}, a data folder of the task {task}" in line, line
    assert {p: p.read_bytes() for p in sorted((task / "labels").iterdir())} == before


def test_evaluate_refuses_the_labels_as_their_own_predictions(tiny, capsys):
    # `evaluate --predictions T/labelsTr --task T` used to print Dice 1.0 and write its report there.
    task, _ = tiny
    before = sorted(p.name for p in (task / "labelsTr").iterdir())
    assert main(["evaluate", "--predictions", str(task / "labelsTr"), "--task", str(task)]) == 2
    line = one_line(capsys)
    assert f"predictions folder {task / 'labelsTr'} is {task / 'labelsTr'}, a data folder" in line
    assert "Dice 1.0 whatever the model" in line
    assert sorted(p.name for p in (task / "labelsTr").iterdir()) == before  # no evaluation.json/csv


def test_a_task_that_cannot_be_used_lists_every_problem(tmp_path, capsys):
    task = tmp_path / "Task77_Broken"
    task.mkdir()
    cases = [{"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"} for i in range(5)]
    (task / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "fg"}, "modality": {"0": "MRI"},
                                                   "training": cases, "test": []}))
    assert main(["train", "--task", str(task), "--run-dir", str(tmp_path / "run"), "--quickstart",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[0].startswith("mednext-lite train: error: ")
    assert f"problem(s) in task {task}" in lines[0]
    n = int(lines[0].split("error: ")[1].split()[0])
    assert n >= 10 and len(lines) == 1 + n  # the headline, then one line per problem
    for case in cases:  # every missing file is named, none left behind an "and N more"
        for key in ("image", "label"):
            path = str(task / case[key][2:])
            assert sum(path in line for line in lines[1:]) == 1, path
    assert "more" not in err


@pytest.mark.parametrize("command", ["train", "predict"])
@pytest.mark.parametrize("value", ["-1", "0", "two"])
def test_threads_must_be_a_positive_whole_number(tmp_path, capsys, command, value):
    args = {"train": ["train", "--task", str(tmp_path / "t")],
            "predict": ["predict", "--checkpoint", "c.pt", "--input", "x", "--output", str(tmp_path / "p")]}[command]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--threads", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # argparse's usage, then one line
    assert last.startswith(f"mednext-lite {command}: error: argument --threads: {value!r}"[: -len(repr(value))])
    assert ("must be at least 1" if value != "two" else "'two' is not a whole number") in last
    assert "Traceback" not in err and "this is a bug" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_with_a_patch_that_is_no_number_is_named(tiny, tmp_path, capsys):
    from mednext_lite.checkpoint import save_checkpoint
    from mednext_lite.model import MedNeXt, MedNeXtConfig

    task, _ = tiny
    bad = save_checkpoint(tmp_path / "bad.pt", MedNeXt(MedNeXtConfig(base_width=4, block_counts=1, num_classes=3)),
                          train_config={"task_dir": str(task), "patch_size": ["32x", 32, 32]})
    assert main(["predict", "--checkpoint", str(bad), "--input", str(task / "imagesTs"), "--output",
                 str(tmp_path / "pred")]) == 2
    line = one_line(capsys)
    assert f"checkpoint {bad}: train_config.patch_size = ['32x', 32, 32]" in line and "--patch" in line
    assert "invalid literal" not in line and not (tmp_path / "pred").exists()


NO_NILEARN = """
import sys
sys.modules["nilearn"] = None  # as if nilearn were not installed: importing it raises ImportError
from mednext_lite.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_missing_optional_package_is_an_install_hint_not_a_bug(tmp_path):
    import subprocess
    import sys

    argv = ["train", "--task", "brain", "--data-dir", str(tmp_path / "data"), "--run-dir", str(tmp_path / "run"),
            "--quickstart", "--no-progress"]
    proc = subprocess.run([sys.executable, "-c", NO_NILEARN, *argv], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("mednext-lite train: error: ") and "nilearn" in lines[0]
    assert "pip install nilearn" in lines[0] and "mednext_lite[notebooks]" in lines[0]
    assert "this is a bug" not in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_data_subcommand_error_names_the_subcommand(tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    assert main(["data", "synthesize", "--data-dir", str(tmp_path / "a_file"), "--no-progress"]) == 2
    line = one_line(capsys)
    assert line.startswith("mednext-lite data synthesize: error: ") and str(tmp_path / "a_file") in line


def test_a_data_command_error_has_its_prefix_and_debug_raises_it(tmp_path, capsys):
    # `data inspect` used to catch its own errors: a bare "error: ..." line, and --debug showed nothing more.
    argv = ["data", "inspect", "NoSuchTaskXYZ", "--data-dir", str(tmp_path)]
    assert main(argv) == 2
    line = one_line(capsys)
    assert line.startswith("mednext-lite data inspect: error: task 'NoSuchTaskXYZ' is neither a task folder"), line
    for debug in (["--debug", *argv], [*argv, "--debug"]):
        with pytest.raises(ValueError, match="task 'NoSuchTaskXYZ' is neither a task folder"):
            main(debug)
    assert capsys.readouterr().err == ""  # nothing printed: the exception itself propagates
    assert list(tmp_path.iterdir()) == []


def test_data_brain_without_nilearn_gets_the_install_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "nilearn", None)  # importing nilearn now raises ImportError
    assert main(["data", "brain", "--data-dir", str(tmp_path), "--no-progress"]) == 2
    line = one_line(capsys)
    assert line.startswith("mednext-lite data brain: error: ") and "pip install nilearn" in line, line
    assert "this is a bug" not in line and list(tmp_path.iterdir()) == []


def test_threads_apply_to_the_command_and_are_restored_after_it(tmp_path, capsys):
    """``--threads`` sets torch's thread count for the command only: a caller in the same process
    (a notebook, a test) keeps its own, also when the command fails."""
    import torch

    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    status = main(["predict", "--checkpoint", str(tmp_path / "missing.pt"), "--input", str(tmp_path / "x.nii.gz"),
                   "--output", str(tmp_path / "p"), "--threads", str(wanted)])
    assert status == 2 and "error:" in capsys.readouterr().err
    assert torch.get_num_threads() == before
