"""The one task resolver: paths, names under the data root, MSD names, generated tasks, refusals."""

from __future__ import annotations

import pytest

from mednext_lite.data import locate, resolve_task_dir
from mednext_lite.data.brain import BRAIN_TASK
from mednext_lite.data.commands import inspect_main
from mednext_lite.data.synthetic import FLAVOURS


def _task_folder(folder):
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text("{}")
    return folder


def test_train_task_brain_writes_the_task_on_first_use(tmp_path):
    target = tmp_path / BRAIN_TASK
    assert resolve_task_dir("brain", str(tmp_path), create=False) == target
    assert not target.exists()


def test_a_path_a_name_under_the_root_and_msd_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    mine = _task_folder(tmp_path / "elsewhere" / "MyTask")
    assert resolve_task_dir(str(mine), root) == mine
    assert resolve_task_dir("elsewhere/MyTask", root) == mine.relative_to(tmp_path)
    named = _task_folder(root / "MyOwn")
    assert resolve_task_dir("MyOwn", root) == named
    hippocampus = _task_folder(root / "Task04_Hippocampus")
    for name in ("Task04_Hippocampus", "hippocampus", "04", "4", "Task04"):
        assert resolve_task_dir(name, root) == hippocampus, name
    monkeypatch.setenv("MEDNEXT_DATA", str(root))
    assert resolve_task_dir("04") == hippocampus


def test_what_cannot_be_a_task_is_one_error_naming_the_fix(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "empty").mkdir()
    cases = [
        (str(tmp_path / "empty"), "is a folder without dataset.json"),
        (str(tmp_path / "nowhere"), "does not exist"),
        ("../../elsewhere", "does not exist"),
        (".cache", "starts with '.'"),
        ("", "is empty"),
        ("x" * 300, "longer than a folder name"),
        ("a\x00b", "control character"),
        ("Spleen", "fetch it with `mednext-lite data download Spleen --data-dir"),
        ("Task42_Nothing", "neither a task folder nor a known task: unknown MSD task"),
    ]
    for task, words in cases:
        with pytest.raises(ValueError) as err:
            resolve_task_dir(task, root)
        assert words in str(err.value), (task, str(err.value))
    assert sorted(root.iterdir()) == []


def test_a_generated_task_is_written_once_and_only_when_asked(tmp_path, monkeypatch):
    written = []

    def fake_synthetic(root, *, flavour, progress):
        written.append(flavour)
        return _task_folder(root / FLAVOURS[flavour].task_name)

    monkeypatch.setattr(locate, "make_synthetic_task", fake_synthetic)
    target = tmp_path / FLAVOURS["ct"].task_name
    assert resolve_task_dir("synthetic-ct", tmp_path, create=False) == target and not target.exists()
    assert resolve_task_dir("Synthetic-CT", tmp_path) == target
    assert resolve_task_dir("synthetic-ct", tmp_path) == target
    assert resolve_task_dir("synthetic", tmp_path) == tmp_path / FLAVOURS["mri"].task_name
    assert written == ["ct", "mri"]


def test_other_ranks_wait_for_rank_zero_and_say_how_to_write_it_first(tmp_path, monkeypatch):
    monkeypatch.setattr(locate, "make_synthetic_task", lambda *a, **k: pytest.fail("only rank 0 writes"))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(locate, "_RANK_WAIT_S", 0)
    with pytest.raises(ValueError, match=r"rank 1 waited 0 s for rank 0 .* data synthesize --flavour mri4d"):
        resolve_task_dir("synthetic-mri4d", tmp_path)
    target = _task_folder(tmp_path / FLAVOURS["mri4d"].task_name)
    assert resolve_task_dir("synthetic-mri4d", tmp_path) == target


def test_inspect_finds_tasks_through_the_same_resolver(tmp_path, capsys):
    assert inspect_main(["hippocampus", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fetch it with `mednext-lite data download Hippocampus" in err, err
    assert inspect_main(["synthetic-ct", "--data-dir", str(tmp_path)]) == 2  # named, not written by inspect
    assert f"{tmp_path / FLAVOURS['ct'].task_name}: task directory does not exist" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == []
