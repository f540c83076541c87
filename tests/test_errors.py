"""Every error a user can cause becomes one line naming it with exit status 2; anything else is a bug (1)."""

import numpy as np

from mednext_lite.errors import error_line


def test_error_line_classes(tmp_path):
    """Real exceptions of each class a user can cause map to one line and exit status 2; anything
    else is a bug (exit 1) and says how to get the traceback."""
    import tarfile
    import zlib

    import torch
    from monai.transforms import Compose, LoadImaged

    from mednext_lite.data.transfer import DownloadError

    def raised(fn):
        try:
            fn()
        except BaseException as err:  # noqa: BLE001 -- collecting the real exception object
            return err
        raise AssertionError("did not raise")

    (tmp_path / "x.tar").write_bytes(b"not a tar archive at all" * 40)
    (tmp_path / "t.nii.gz").write_bytes(b"\x1f\x8b" + b"\0" * 30)
    cases = {
        "memory": (raised(lambda: np.empty(2**62, np.uint8)), "out of memory"),
        "missing": (raised(lambda: open(tmp_path / "missing.nii.gz", "rb")), "no such file or folder"),  # noqa: SIM115
        "folder": (raised(lambda: open(tmp_path, "rb")), "is a folder where a file is needed"),  # noqa: SIM115
        "tar": (raised(lambda: tarfile.open(tmp_path / "x.tar")), "truncated or damaged; download"),  # noqa: SIM115
        "zlib": (raised(lambda: zlib.decompress(b"garbage")), "truncated or damaged"),
        "monai": (raised(lambda: Compose([LoadImaged(keys="image")])({"image": str(tmp_path / "t.nii.gz")})), "t.nii.gz"),
        "torch": (raised(lambda: torch.zeros(2, 3) @ torch.zeros(2, 3)), "check the inputs and flags"),
        "channels": (raised(lambda: torch.nn.Conv3d(1, 2, 3)(torch.zeros(1, 2, 8, 8, 8))), "to have 1 channels"),
        "dtype": (raised(lambda: torch.nn.Conv3d(1, 2, 3)(torch.zeros(1, 1, 8, 8, 8).half())), "type the model cannot"),
        "classes": (raised(lambda: torch.nn.functional.one_hot(torch.tensor([5]), 3)), "Class values must be smaller"),
        "module": (raised(lambda: __import__("no_such_module_here")), "pip install no_such_module_here"),
        "download": (DownloadError("archive x.tar: MD5 mismatch: delete it and download again"), "MD5 mismatch"),
    }
    for name, (err, words) in cases.items():
        line, status = error_line(err)
        assert status == 2 and words in line and "\n" not in line, (name, line)
    # Anything else is a bug, whatever its class: a RuntimeError torch raises for a mistake in our
    # code, an import of our own module that fails.
    bugs = [raised(lambda: [].pop()), raised(lambda: torch.zeros(2).backward()),
            ImportError("cannot import name 'x' from 'mednext_lite.y'", name="mednext_lite.y")]
    for err in bugs:
        line, status = error_line(err)
        assert status == 1 and "this is a bug" in line and "--debug" in line and "\n" not in line, line


def test_a_task_failing_validation_lists_every_problem_on_its_own_line(tmp_path):
    from mednext_lite.data.validate import DatasetError

    err = DatasetError(tmp_path, ["imagesTr/a.nii.gz: missing", "labelsTr/b.nii.gz: shape (2, 2, 2)\nvs (3, 3, 3)"])
    line, status = error_line(err)
    assert status == 2
    assert line.splitlines() == [f"2 problem(s) in task {tmp_path}, fix each to use it:",
                                 "  - imagesTr/a.nii.gz: missing",
                                 "  - labelsTr/b.nii.gz: shape (2, 2, 2); vs (3, 3, 3)"]


def test_recognising_an_error_imports_neither_nibabel_nor_the_data_package():
    # Their exceptions are looked up among the modules already imported: one that is not loaded
    # cannot have raised anything.
    import subprocess
    import sys

    code = ("import sys, mednext_lite.errors as e; line, status = e.error_line(ValueError('x'));"
            "print(status, sorted(m for m in ('nibabel', 'mednext_lite.data', 'monai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split(maxsplit=1) == ["2", "[]\n"]


def test_exit_statuses_follow_the_list_in_the_module_docstring():
    import re

    from mednext_lite import errors
    from mednext_lite.train import TrainingDiverged

    diverged = TrainingDiverged("training diverged at epoch 2, iteration 1 of 1 (global step 2): the loss became nan.")
    cases = [(ValueError("--patch 100 is not divisible by 16"), 2), (KeyboardInterrupt(), 130),
             (diverged, 3), (AttributeError("'NoneType' object has no attribute 'shape'"), 1)]
    for err, status in cases:
        assert error_line(err)[1] == status, err
    assert error_line(diverged)[0] == str(diverged)  # its own words: where, what was kept, what to change
    documented = {int(n) for n in re.findall(r"^- (\d+): ", errors.__doc__, re.MULTILINE)}
    assert documented == {0, 1, 2, 3, 130}


def test_run_command_is_the_one_boundary(capsys):
    import argparse

    import pytest

    from mednext_lite.errors import run_command

    args = argparse.Namespace()
    assert run_command("prog", lambda a: None, args) == 0
    assert run_command("prog", lambda a: 3, args) == 3
    assert capsys.readouterr().err == ""

    def fails(_args):
        raise RuntimeError("applying transform <LoadImaged>") from FileNotFoundError(2, "No such file", "/x/a.nii.gz")

    assert run_command("mednext-lite data inspect", fails, args) == 2
    assert capsys.readouterr().err == "mednext-lite data inspect: error: no such file or folder: /x/a.nii.gz: check the path\n"
    with pytest.raises(RuntimeError, match="applying transform"):
        run_command("prog", fails, args, debug=True)
    assert capsys.readouterr().err == ""


def test_root_cause_unwraps_plain_runtime_errors_only():
    from mednext_lite.errors import root_cause

    inner = ValueError("bad voxel")
    middle, outer = RuntimeError("applying transform a"), RuntimeError("applying transform b")
    middle.__cause__, outer.__cause__ = inner, middle
    assert root_cause(outer) is inner  # through every wrapper
    oom = type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory")
    oom.__cause__ = inner
    assert root_cause(oom) is oom  # a subclass is the error itself
    loop = RuntimeError("a")
    loop.__cause__ = RuntimeError("b")
    loop.__cause__.__cause__ = loop
    assert root_cause(loop) is loop.__cause__  # a cycle ends at the last error not seen before
    assert root_cause(inner) is inner


def test_a_data_script_error_has_its_prefix_and_the_cli_debug_shows_the_traceback(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    run = [sys.executable, str(root / "data_scripts" / "inspect_task.py"), "NoSuchTaskXYZ", "--data-dir", str(tmp_path)]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("inspect_task.py: error: task 'NoSuchTaskXYZ' is neither a task folder"), proc.stderr
    run = [sys.executable, "-m", "mednext_lite.cli", "data", "inspect", "NoSuchTaskXYZ", "--data-dir", str(tmp_path),
           "--debug"]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 1 and "Traceback (most recent call last)" in proc.stderr, proc.stderr
    assert "ValueError: task 'NoSuchTaskXYZ' is neither a task folder" in proc.stderr
    assert list(tmp_path.iterdir()) == []
