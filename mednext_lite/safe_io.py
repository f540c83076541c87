"""Writing files so that a crash, a symlink or a hostile header can never cost a user data.

Two ideas, used by every writer and reader in the package:

* :func:`atomic_write` writes to a fresh temporary file beside the target, flushes it to disk and
  renames it over the target. A crash leaves the old file or the new one, never a torn one, and
  the rename replaces a symlink *itself*: nothing is ever written through a link found in a task
  or run folder.
* :func:`nifti_header` opens a NIfTI file's header only and refuses one whose shape claims more
  voxels than :data:`MAX_VOXELS` before any array is allocated.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["MAX_VOXELS", "UnsafePathError", "atomic_write", "nifti_header", "refuse_symlink"]

#: Largest image (voxels x channels) the package reads: 2^31 float32 values are 8 GiB, beyond any
#: released MSD case (BrainTumour 240x240x155x4 is 36 M) by a factor of 60.
MAX_VOXELS = 2**31


class UnsafePathError(ValueError):
    """A path the package was asked to write is a symlink or not a regular file."""


def refuse_symlink(path: str | os.PathLike, what: str = "file") -> Path:
    """Return ``path`` if it is absent or a regular file; raise :class:`UnsafePathError` if it is a
    symlink (which a writer would follow) or a directory/device."""
    path = Path(path)
    if path.is_symlink():
        raise UnsafePathError(f"{path}: the {what} to write is a symlink (to {os.readlink(path)}); "
                              "mednext_lite never writes through links: remove the link or choose another path")
    if path.exists() and not path.is_file():
        raise UnsafePathError(f"{path}: the {what} to write exists and is not a regular file; move it away")
    return path


def _new_temp(folder: Path, name: str, suffix: str) -> tuple[int, Path]:
    """Create a fresh file beside ``name`` in ``folder`` and return its descriptor and path.

    ``os.open`` with mode 0o666 lets the kernel apply the umask (and a folder's default ACL), so a
    new file gets the permissions any other program's new file would; ``mkstemp`` would force 0600
    and leave every dataset.json or prediction unreadable to the user's group."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(4)}{suffix}"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: could not create a temporary file for {name} (100 names taken); "
                          f"remove stale '.{name}.*' files there")


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[Path], Any], *,
                 suffix: str = ".tmp") -> Path:
    """Write ``data`` (bytes, text, or a function that writes a file at the path it is given) to a
    new temporary file in ``path``'s folder, fsync it, then rename it over ``path``.

    ``suffix`` is the temporary name's ending, for writers that pick a format from it (nibabel
    needs ``.nii.gz``, matplotlib ``.png``). A symlink at ``path`` is replaced by the new regular
    file, never followed; a directory there is an :class:`UnsafePathError`. The file keeps the
    permission bits of the regular file it replaces; a new one (or one replacing a link) gets
    0o666 less the umask, as ``open()`` would give it. A failing writer leaves no temporary file.
    """
    path = Path(path)
    try:
        old = path.lstat()
    except FileNotFoundError:
        old = None
    if old is not None and not stat.S_ISLNK(old.st_mode) and not stat.S_ISREG(old.st_mode):
        raise UnsafePathError(f"{path}: exists and is not a regular file; move it away")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_temp(path.parent, path.name, suffix)
    try:
        if old is not None and stat.S_ISREG(old.st_mode):
            os.chmod(tmp, stat.S_IMODE(old.st_mode) & 0o777)
        if callable(data):
            os.close(fd)
            fd = -1
            data(tmp)
        else:
            with os.fdopen(fd, "wb") as f:
                fd = -1
                f.write(data.encode() if isinstance(data, str) else data)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return path


def nifti_header(path: str | os.PathLike, *, max_voxels: int = MAX_VOXELS) -> Any:
    """Open a NIfTI image lazily (header only) with nibabel and return it; refuse with
    ``ValueError`` a header whose shape holds more than ``max_voxels`` values, naming the shape."""
    import nibabel as nib

    img = nib.load(os.fspath(path))
    shape = tuple(int(s) for s in img.shape)
    count = 1
    for s in shape:
        count *= max(s, 1)
    if count > max_voxels:
        raise ValueError(f"{path}: header claims shape {shape} ({count:,} values), above the limit of "
                         f"{max_voxels:,}; the header is probably damaged: re-export the file")
    return img
