"""Test helper for the task writers: swap files of a written task for symlinks to a user's files,
then check that rewriting the task replaced the links and left the user's files alone."""

from __future__ import annotations

from pathlib import Path


def link_out(files: dict[str, Path], user: Path) -> None:
    """Replace each of ``files`` by a symlink to a new file ``user/<name>`` holding known bytes."""
    user.mkdir(exist_ok=True)
    for name, path in files.items():
        (user / name).write_bytes(f"the user's {name}".encode())
        path.unlink()
        path.symlink_to(user / name)


def assert_links_replaced(files: dict[str, Path], user: Path, task: Path) -> None:
    """Each of ``files`` is a regular file again, every link target still holds the user's bytes, and
    no temporary file is left in the task's folders."""
    for name, path in files.items():
        assert not path.is_symlink() and path.is_file(), path
        assert (user / name).read_bytes() == f"the user's {name}".encode()
    for folder in (task, *(task / sub for sub in ("imagesTr", "labelsTr", "imagesTs"))):
        assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []
