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
import tempfile
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


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[Path], Any], *,
                 suffix: str = ".tmp") -> Path:
    """Write ``data`` (bytes, text, or a function that writes a file at the path it is given) to a
    new temporary file in ``path``'s folder, fsync it, then rename it over ``path``.

    ``suffix`` is the temporary name's ending, for writers that pick a format from it (nibabel
    needs ``.nii.gz``, matplotlib ``.png``). A symlink at ``path`` is replaced by the new regular
    file, never followed; a directory there is an :class:`UnsafePathError`.
    """
    path = Path(path)
    if path.exists() and not path.is_symlink() and not path.is_file():
        raise UnsafePathError(f"{path}: exists and is not a regular file; move it away")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    tmp = Path(tmp_name)
    try:
        if callable(data):
            os.close(fd)
            data(tmp)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
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
