"""safe_io on real files: permissions as any new file gets them, no temporary left behind, links
replaced and never followed, folders refused, and CSV tables written whole."""

from __future__ import annotations

import csv
import os
import stat

import pytest

from mednext_lite.safe_io import (
    UnsafePathError,
    atomic_write,
    refuse_symlink,
    write_csv,
)


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask():
    """Run the test under a known umask and restore the caller's afterwards."""
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("data", [b"bytes", "text", lambda tmp: tmp.write_bytes(b"by a writer")])
def test_new_file_gets_0666_less_the_umask(tmp_path, umask, data):
    out = atomic_write(tmp_path / "new.json", data)
    assert _mode(out) == 0o666 & ~umask == 0o640
    os.umask(0o002)
    assert _mode(atomic_write(tmp_path / "other.json", data)) == 0o664
    assert _leftovers(tmp_path) == []


def test_replacing_a_file_keeps_its_mode(tmp_path, umask):
    target = tmp_path / "dataset.json"
    target.write_text("old")
    target.chmod(0o604)
    atomic_write(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o604
    target.chmod(0o755)
    atomic_write(target, lambda tmp: tmp.write_text("newer"))
    assert target.read_text() == "newer" and _mode(target) == 0o755


@pytest.mark.parametrize("kind", ["bytes", "writer"])
def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path, kind):
    target = tmp_path / "case.nii.gz"
    target.write_bytes(b"the old content")

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    class Unencodable(str):
        def encode(self, *args, **kwargs):
            raise UnicodeEncodeError("utf-8", "x", 0, 1, "cannot encode")

    with pytest.raises((OSError, UnicodeEncodeError)):
        atomic_write(target, broken if kind == "writer" else Unencodable("text"), suffix=".nii.gz")
    assert target.read_bytes() == b"the old content"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("dangling", [False, True])
def test_a_symlink_is_replaced_and_its_target_untouched(tmp_path, umask, dangling):
    precious = tmp_path / "precious.txt"
    if not dangling:
        precious.write_text("a user's file")
        precious.chmod(0o600)
    link = tmp_path / "task" / "dataset.json"
    link.parent.mkdir()
    link.symlink_to(precious)
    atomic_write(link, "{}\n")
    assert not link.is_symlink() and link.read_text() == "{}\n"
    assert _mode(link) == 0o640  # a new file: the link's target lends it nothing
    if dangling:
        assert not precious.exists()
    else:
        assert precious.read_text() == "a user's file" and _mode(precious) == 0o600
    assert _leftovers(link.parent) == []


def test_a_folder_in_place_of_the_file_is_refused(tmp_path):
    folder = tmp_path / "montage.png"
    folder.mkdir()
    (folder / "keep.txt").write_text("kept")
    with pytest.raises(UnsafePathError, match="not a regular file"):
        atomic_write(folder, b"png")
    assert (folder / "keep.txt").read_text() == "kept" and _leftovers(tmp_path) == []


def test_refuse_symlink(tmp_path):
    assert refuse_symlink(tmp_path / "absent") == tmp_path / "absent"
    regular = tmp_path / "regular.pt"
    regular.write_bytes(b"x")
    assert refuse_symlink(regular) == regular
    link = tmp_path / "link.pt"
    link.symlink_to(regular)
    with pytest.raises(UnsafePathError, match=r"cache file to write is a symlink \(to .*regular\.pt\)"):
        refuse_symlink(link, "cache file")
    with pytest.raises(UnsafePathError, match="not a regular file"):
        refuse_symlink(tmp_path)
    assert regular.read_bytes() == b"x"


def test_write_csv_fills_missing_cells(tmp_path):
    path = write_csv(tmp_path / "t.csv", [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25, "dice": 0.75}])
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows == [{"epoch": "1", "loss": "0.5", "dice": ""}, {"epoch": "2", "loss": "0.25", "dice": "0.75"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]
