"""Writing files so that a crash or a symlink can never cost a user data.

Every writer in the package goes through :func:`atomic_write`: it writes to a fresh temporary
file beside the target, flushes it to disk and renames it over the target. A crash leaves the
old file or the new one, never a torn one, and the rename replaces a symlink *itself*: nothing
is ever written through a link found in a task or run folder. :func:`write_csv` writes a table
the same way.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["UnsafePathError", "atomic_write", "refuse_symlink", "write_csv"]


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


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]], fieldnames: Sequence[str] | None = None) -> Path:
    """Write ``rows`` as a CSV table with a header, atomically (:func:`atomic_write`).

    ``fieldnames`` default to every key of every row in order of first appearance; a row lacking
    one leaves its cell empty (validation columns exist only in the epochs that validate).
    """
    if fieldnames is None:
        fieldnames = list(dict.fromkeys(key for row in rows for key in row))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(fieldnames))
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(path, table.getvalue())
