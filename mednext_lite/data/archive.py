"""Extract a tar archive all or nothing, after checking every member and the archive's size and completeness.

MONAI's tar extraction stops at the first unsafe member after having written the earlier ones;
here the whole archive is read first, refused when a member is unsafe, the archive is truncated
or it exceeds :class:`ExtractLimits` (a decompression bomb), and a failure part-way removes
what was written. The per-member path check is MONAI's ``safe_extract_member``.
"""

from __future__ import annotations

import errno
import os
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from monai.apps.utils import safe_extract_member
from tqdm.auto import tqdm

from .transfer import DownloadError

try:
    from lzma import LZMAError
except ImportError:  # pragma: no cover - a Python built without lzma cannot open .xz archives anyway
    LZMAError = OSError  # type: ignore[misc,assignment]

__all__ = ["ArchiveLimitError", "ExtractLimits", "incomplete_reason", "safe_extract"]

_CHUNK = 1 << 20
_MiB = 1 << 20
_GiB = 1 << 30

#: Any archive may expand to this much whatever its ratio, so small hand-made archives of
#: uncompressed NIfTI are never refused by ``max_ratio``.
_RATIO_FREE_BYTES = 16 * _MiB

# What reading a broken archive raises: tarfile's own errors, and the decompressors' (gzip's
# BadGzipFile is an OSError, a truncated stream an EOFError, a damaged deflate block zlib.error).
_ARCHIVE_ERRORS = (tarfile.TarError, zlib.error, EOFError, LZMAError, OSError)


class ArchiveLimitError(DownloadError):
    """An archive would write more bytes or members than :class:`ExtractLimits` allows."""


@dataclass(frozen=True)
class ExtractLimits:
    """Ceilings on what extracting one archive may write, checked from the tar headers before
    the first byte is written and again while the data streams.

    ``max_bytes`` (default 128 GiB) bounds the members' total uncompressed size: the largest MSD
    archive, Liver, is about 27 GB (BrainTumour about 7 GB), and MSD archives are plain tars of
    ``.nii.gz`` files, so they expand about 1x. ``max_members`` (default 100,000) bounds the
    number of entries: BrainTumour, the task with most cases, has about 2,500 counting its macOS
    ``._`` files. ``max_ratio`` (default 100) bounds uncompressed size over the archive's size on
    disk once past 16 MiB: gzip shrinks zeros about 1,000x, so a decompression bomb trips it while
    a tar.gz even of uncompressed images stays far below it.
    """

    max_bytes: int = 128 * _GiB
    max_members: int = 100_000
    max_ratio: float = 100.0

    def __post_init__(self) -> None:
        for field in ("max_bytes", "max_members", "max_ratio"):
            if not getattr(self, field) > 0:
                raise ValueError(f"ExtractLimits({field}={getattr(self, field)!r}) must be > 0")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # pragma: no cover


class _Damaged(Exception):
    """The archive is truncated or corrupt; the message says how it shows."""


def _scan(tar: tarfile.TarFile, archive: Path, limits: ExtractLimits,
          label: str | None = None) -> list[tarfile.TarInfo]:
    """Read every header of ``tar`` and then the archive to its very end, and return the members.

    Limits are checked as each header arrives, so a bomb is refused at its header, before its
    data is decompressed. tarfile treats a file that simply stops between two members as a
    finished archive, so the end-of-archive marker (a zero block) is required; reading the rest
    of a compressed stream makes the decompressor check its CRC and length. ``label`` names the
    archive in messages (default: its path)."""
    label = label or str(archive)
    archive_size = archive.stat().st_size
    ratio_cap = max(int(limits.max_ratio * archive_size), _RATIO_FREE_BYTES)
    members: list[tarfile.TarInfo] = []
    total = 0
    while (member := tar.next()) is not None:
        members.append(member)
        if len(members) > limits.max_members:
            raise _limit_error(label, f"it holds more than {limits.max_members:,} members",
                               f"max_members={limits.max_members:,}", "max_members")
        if member.isfile():
            total += member.size
            if total > limits.max_bytes:
                raise _limit_error(label, f"its members hold at least {_size(total)} uncompressed",
                                   f"max_bytes={_size(limits.max_bytes)}", "max_bytes")
            if total > ratio_cap:
                raise _limit_error(
                    label, f"its members hold at least {_size(total)}, {total / max(archive_size, 1):,.0f} times "
                    f"its {_size(archive_size)} on disk (a decompression bomb looks like this; MSD archives "
                    "expand about 1x)", f"max_ratio={limits.max_ratio:g}", "max_ratio")
    fileobj = tar.fileobj
    fileobj.seek(tar.offset)
    block = fileobj.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE or block.count(0) != tarfile.BLOCKSIZE:
        # tarfile also ends its listing quietly at a damaged header, so this catches that too.
        raise _Damaged(f"it stops after {len(members)} members without the end-of-archive marker: the file is "
                       "truncated or damaged")
    while fileobj.read(_CHUNK):
        pass
    return members


def _limit_error(archive: Path | str, what: str, limit: str, field: str) -> ArchiveLimitError:
    return ArchiveLimitError(
        f"refusing to extract {archive}: {what}, above the limit {limit}; nothing was written. If you trust this "
        f"archive, raise the limit: limits=ExtractLimits({field}=...) in download_task or safe_extract"
    )


def incomplete_reason(archive: Path, limits: ExtractLimits, label: str) -> str | None:
    """None when ``archive`` reads as a complete tar, else what is wrong with it."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            _scan(tar, archive, limits, label)
    except _Damaged as err:
        return str(err)
    except _ARCHIVE_ERRORS as err:
        return f"{type(err).__name__}: {err}"
    return None


def _archive_problems(members: list[tarfile.TarInfo], target: Path) -> list[str]:
    problems = []
    for member in members:
        try:
            safe_extract_member(member, str(target))
        except ValueError as err:
            problems.append(f"{member.name!r}: {err}")
            continue
        if not (member.isfile() or member.isdir()):
            problems.append(f"{member.name!r}: special file type is not allowed")
    return problems


def _is_resource_fork(name: str) -> bool:
    # macOS tar adds "._name" AppleDouble files beside real ones; they are not NIfTI.
    return any(part.startswith("._") for part in Path(name).parts) or "__MACOSX" in Path(name).parts


# ----------------------------------------------------------------------------- extraction


class _Extraction:
    """Files and folders one extraction created, so a failure can remove exactly those and
    nothing that was there before."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.files: list[Path] = []
        self.dirs: list[Path] = []

    def mkdir(self, folder: Path) -> None:
        missing = []
        probe = folder
        while not probe.exists() and not probe.is_symlink():
            missing.append(probe)
            probe = probe.parent
        folder.mkdir(parents=True, exist_ok=True)
        self.dirs.extend(reversed(missing))

    def open_new(self, out: Path):  # type: ignore[no-untyped-def]
        self.mkdir(out.parent)
        # A folder on the way that is a link would carry the file out of the target.
        if not out.parent.resolve().is_relative_to(self.target.resolve()):
            raise DownloadError(f"refusing to write {out}: a folder on its path leads outside {self.target} "
                                "(a symlink?); extract into an empty folder")
        again = out in self.files  # a tar may hold a name twice; the later copy wins, as with tar
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | (0 if again else os.O_EXCL)
        try:
            fd = os.open(out, flags, 0o644)
        except FileExistsError as err:
            raise DownloadError(f"refusing to extract over {out}, which already exists (nothing of it was "
                                "changed): extract into an empty folder") from err
        if not again:
            self.files.append(out)
        return os.fdopen(fd, "wb")

    def undo(self) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)
        for folder in reversed(self.dirs):
            try:
                folder.rmdir()
            except OSError:
                pass  # holds something this extraction did not write


def _write_error(archive: Path, target: Path, err: OSError) -> DownloadError:
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return DownloadError(f"no space left while extracting {archive} into {target} ({err}); the partial files "
                             "were removed. Free disk space or choose another --data-dir, then run again.")
    return DownloadError(f"could not write while extracting {archive} into {target} ({err}); the partial files "
                         "were removed. Check that the folder is writable, or choose another --data-dir.")


def safe_extract(
    archive: str | os.PathLike,
    target: str | os.PathLike,
    *,
    progress: bool = True,
    limits: ExtractLimits = ExtractLimits(),
) -> list[Path]:
    """Extract a tar archive into ``target`` after checking every member, and return the files
    written.

    Before anything is written, the whole archive is read: it is refused when any member is an
    absolute path, climbs out with ``..``, is a link or a device; when it exceeds ``limits``
    (:class:`ExtractLimits`: total bytes, member count, expansion ratio); and when it is truncated
    or damaged. macOS ``._*`` resource-fork files are skipped, no existing file or symlink in
    ``target`` is written over, and a failure part-way (disk full, a read error) removes every
    file and folder this call created. Every failure is a :class:`DownloadError` naming the
    archive and what to do.
    """
    archive, target = Path(archive), Path(target)
    created = _Extraction(target)
    written = 0
    stage = "writing"  # whether an OSError comes from the disk we write or the archive we read
    try:
        created.mkdir(target)
        stage = "reading"
        with tarfile.open(archive, "r:*") as tar:
            members = _scan(tar, archive, limits)
            problems = _archive_problems(members, target)
            if problems:
                listed = "\n  ".join(problems)
                raise DownloadError(
                    f"refusing to extract {archive}: it has unsafe members (nothing was written):\n  {listed}\n"
                    "Do not use this archive; download it again from the official address."
                )
            files = [m for m in members if m.isfile() and not _is_resource_fork(m.name)]
            need = sum(m.size for m in files)
            free = shutil.disk_usage(target).free
            if need > free:
                raise DownloadError(f"extracting {archive} needs {_size(need)} but {target} has {_size(free)} free; "
                                    "nothing was written. Free disk space or choose another --data-dir.")
            for member in tqdm(files, desc=f"extract {archive.name}", unit="file", disable=not progress,
                               leave=False):
                out = Path(safe_extract_member(member, str(target)))
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - isfile() members always have data
                    continue
                stage = "writing"
                with source, created.open_new(out) as sink:
                    while True:
                        stage = "reading"
                        chunk = source.read(_CHUNK)
                        if not chunk:
                            break
                        # Headers were checked, but count what really streams out as well.
                        written += len(chunk)
                        if written > limits.max_bytes:
                            raise _limit_error(archive, f"it streams more than {_size(written)}",
                                               f"max_bytes={_size(limits.max_bytes)}", "max_bytes")
                        stage = "writing"
                        sink.write(chunk)
    except BaseException as err:
        created.undo()
        if isinstance(err, DownloadError):
            raise
        if isinstance(err, _Damaged):
            raise DownloadError(f"{archive} is not a complete tar archive ({err}); nothing was written. Delete it "
                                "and download it again.") from err
        if isinstance(err, OSError) and stage == "writing":
            raise _write_error(archive, target, err) from err
        if isinstance(err, _ARCHIVE_ERRORS):
            raise DownloadError(f"{archive} is damaged or not a tar archive ({type(err).__name__}: {err}); nothing "
                                "of it was kept. Delete it and download it again.") from err
        raise
    return created.files

