"""Resumable, checksummed download and safe extraction of MSD task archives.

MONAI's ``download_url`` fetches into a temporary directory with ``urlretrieve`` and starts over
on every failure, and its tar extraction stops at the first unsafe member after having written
the earlier ones; a multi-gigabyte MSD archive needs resume and an all-or-nothing safety check.
So the transfer (HTTP Range resume, a stall watchdog) and the extraction loop are written here,
while the checksum (``monai.apps.utils.check_hash``) and the per-member path check
(``monai.apps.utils.safe_extract_member``) are MONAI's.

Three kinds of limit keep a hostile or broken server or archive from costing more than it
should: :class:`TransferLimits` (per-read timeout, a minimum average rate, a per-attempt
deadline), :class:`ExtractLimits` (total bytes, member count, expansion ratio) and, when no MD5
is known, a completeness check that reads the archive to its end before it is accepted.
"""

from __future__ import annotations

import errno
import http.client
import logging
import os
import shutil
import socket
import tarfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from monai.apps.utils import check_hash, safe_extract_member
from tqdm.auto import tqdm

from ..safe_io import UnsafePathError, atomic_write, refuse_symlink
from .catalogue import MSDTask, get_task, resolve_data_dir, validate_task_name

try:
    from lzma import LZMAError
except ImportError:  # pragma: no cover - a Python built without lzma cannot open .xz archives anyway
    LZMAError = OSError  # type: ignore[misc,assignment]

__all__ = [
    "EXTRACTED_MARKER",
    "ArchiveLimitError",
    "DownloadError",
    "ExtractLimits",
    "TransferLimits",
    "download_task",
    "fetch_archive",
    "safe_extract",
]

log = logging.getLogger(__name__)

#: File written inside an extracted task directory once extraction finished; its content is the
#: archive's MD5, so a re-run can tell "complete" from "half-extracted" without re-reading data.
EXTRACTED_MARKER = ".mednext_extracted"

_CHUNK = 1 << 20
_MiB = 1 << 20
_GiB = 1 << 30

#: Any archive may expand to this much whatever its ratio, so small hand-made archives of
#: uncompressed NIfTI are never refused by ``max_ratio``.
_RATIO_FREE_BYTES = 16 * _MiB

# What reading a broken archive raises: tarfile's own errors, and the decompressors' (gzip's
# BadGzipFile is an OSError, a truncated stream an EOFError, a damaged deflate block zlib.error).
_ARCHIVE_ERRORS = (tarfile.TarError, zlib.error, EOFError, LZMAError, OSError)


class DownloadError(RuntimeError):
    """A download, checksum or extraction step failed; the message says what to do next."""


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


@dataclass(frozen=True)
class TransferLimits:
    """How long one download attempt may wait on a slow or silent server.

    ``timeout`` (default 60 s) is the socket timeout of the connection and of each read.
    A per-read timeout never fires on a server that sends one byte a second, so a watchdog also
    aborts the attempt when fewer than ``min_rate`` bytes per second (default 1 KiB/s, at which
    the smallest MSD task would take eight hours) arrive on average over any ``window`` seconds
    (default 60 s), or when the attempt is older than ``deadline`` seconds (default 6 hours;
    None for no deadline). An aborted attempt keeps its bytes: the next attempt resumes there.
    """

    timeout: float = 60.0
    min_rate: float = 1024.0
    window: float = 60.0
    deadline: float | None = 6 * 3600.0

    def __post_init__(self) -> None:
        for field in ("timeout", "window", "deadline"):
            value = getattr(self, field)
            if value is not None and not value > 0:
                raise ValueError(f"TransferLimits({field}={value!r}) must be > 0 seconds")
        if not self.min_rate >= 0:
            raise ValueError(f"TransferLimits(min_rate={self.min_rate!r}) must be >= 0 bytes per second")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # pragma: no cover


def _md5_ok(path: Path, md5: str | None) -> bool:
    # check_hash logs an error on mismatch; keep our own message as the one the user acts on.
    monai_log = logging.getLogger("monai.apps")
    level = monai_log.level
    monai_log.setLevel(logging.CRITICAL)
    try:
        return check_hash(path, md5, "md5") if md5 else True
    finally:
        monai_log.setLevel(level)


# ----------------------------------------------------------------------------- transfer


class _Stalled(TimeoutError):
    """The watchdog aborted an attempt; the message says why."""


class _Watchdog:
    """Watches one attempt from a side thread and shuts its socket down when the average rate
    over ``window`` falls below ``min_rate`` or the deadline passes. Shutting the socket down is
    what wakes the main thread from a blocked read; the main thread then reports ``reason``."""

    def __init__(self, limits: TransferLimits) -> None:
        self.limits = limits
        self.received = 0  # bytes of this attempt, headers excluded; written by the main thread
        self.reason: str | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="mednext-download-watchdog", daemon=True)

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.reason is not None:
                self._shutdown(sock)

    def __enter__(self) -> _Watchdog:  # noqa: PYI034 -- a private class, never subclassed
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        lim = self.limits
        start = mark = time.monotonic()
        mark_bytes = 0
        while not self._done.wait(min(1.0, lim.window / 4)):
            now = time.monotonic()
            if lim.deadline is not None and now - start > lim.deadline:
                self._abort(f"the attempt passed its deadline of {lim.deadline:g} s")
                return
            if now - mark >= lim.window:
                got = self.received - mark_bytes
                if got < lim.min_rate * (now - mark):
                    self._abort(f"only {got} bytes arrived in the last {now - mark:.3g} s, below the floor of "
                                f"{lim.min_rate:g} bytes/s")
                    return
                mark, mark_bytes = now, self.received

    def _abort(self, reason: str) -> None:
        with self._lock:
            self.reason = reason
            for sock in self._sockets:
                self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        try:
            # The plain socket's method: an SSL socket's own shutdown() would drop its TLS state
            # under the reader's feet instead of just making the blocked read return.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


def _watched(base: type[http.client.HTTPConnection], watchdog: _Watchdog) -> type[http.client.HTTPConnection]:
    class Watched(base):  # type: ignore[valid-type,misc]
        def connect(self) -> None:
            super().connect()
            watchdog.attach(self.sock)

    return Watched


def _opener(watchdog: _Watchdog) -> urllib.request.OpenerDirector:
    class HTTP(urllib.request.HTTPHandler):
        def http_open(self, req):  # type: ignore[no-untyped-def]
            return self.do_open(_watched(http.client.HTTPConnection, watchdog), req)

    class HTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req):  # type: ignore[no-untyped-def]
            return self.do_open(_watched(http.client.HTTPSConnection, watchdog), req, context=self._context)

    # Subclasses of the default handlers replace them; proxy handling from the environment stays.
    return urllib.request.build_opener(HTTP, HTTPS)


def _transfer(url: str, part: Path, *, progress: bool, limits: TransferLimits) -> None:
    """Append the remaining bytes of ``url`` to ``part``, resuming from its current size with an
    HTTP Range request; raise ``OSError`` subclasses when the connection breaks early or stalls."""
    refuse_symlink(part, "partial download")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "mednext_lite"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    with _Watchdog(limits) as watchdog:
        try:
            _receive(_opener(watchdog), request, part, have, watchdog, progress=progress, timeout=limits.timeout)
        except (OSError, http.client.HTTPException) as err:
            if watchdog.reason is not None:
                raise _stalled(watchdog) from err
            raise
    # A response without Content-Length ends where the watchdog cut it, with no error of its own.
    if watchdog.reason is not None:
        raise _stalled(watchdog)


def _stalled(watchdog: _Watchdog) -> _Stalled:
    return _Stalled(f"stalled after {watchdog.received} bytes in this attempt: {watchdog.reason}")


def _receive(opener: urllib.request.OpenerDirector, request: urllib.request.Request, part: Path, have: int,
             watchdog: _Watchdog, *, progress: bool, timeout: float) -> None:
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:
            return  # the server says there is nothing past our size: the part file is complete
        raise
    with response:
        status = getattr(response, "status", 200)
        if have and status != 206:
            # The server ignored the Range header and sends everything: start the file over.
            log.info("server does not support resume; restarting %s from zero", part.name)
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        mode = "ab" if have else "wb"
        got = 0
        with open(part, mode) as out, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name.replace(".part", ""), disable=not progress, leave=False,
        ) as bar:
            while True:
                # read1 returns what has arrived instead of waiting for a full chunk, so the
                # watchdog sees progress at once and a slow but healthy link is not mistaken
                # for a stalled one.
                chunk = response.read1(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                got += len(chunk)
                watchdog.received = got
                bar.update(len(chunk))
        if length is not None and got < int(length):
            raise ConnectionError(f"connection closed after {have + got} of {total} bytes")


def _set_aside(part: Path, dest: Path, suffix: str) -> Path:
    """Move a finished but unusable download to ``dest + suffix`` (kept for the user to inspect, never
    deleted, never in the way of the next attempt) and return where it went."""
    bad = dest.with_name(dest.name + suffix)
    os.replace(part, bad)
    return bad


def fetch_archive(
    url: str,
    dest: str | os.PathLike,
    *,
    md5: str | None = None,
    progress: bool = True,
    retries: int = 3,
    transfer: TransferLimits = TransferLimits(),
    limits: ExtractLimits = ExtractLimits(),
) -> Path:
    """Download ``url`` to ``dest`` with resume and verification, and return ``dest``.

    Bytes go to ``dest + ".part"`` first; a broken or stalled connection (see
    :class:`TransferLimits`) is resumed with an HTTP Range request, ``retries`` times here and
    again on the next call, so no byte is fetched twice. With an ``md5``, an existing ``dest``
    whose MD5 matches is kept without any network access, and a finished download whose MD5
    differs is moved aside to ``dest + ".md5-mismatch"``. Without one, the archive must read as
    a complete tar to its end (end-of-archive marker present, compressed stream's checksum
    right) before it becomes ``dest``; one that does not is moved aside to ``dest + ".damaged"``.
    Nothing is ever deleted, and ``DownloadError`` says what to do.
    """
    dest = Path(dest)
    scheme = urlparse(url).scheme
    if scheme not in ("http", "https"):
        raise DownloadError(f"unsupported address {url!r}: use an http:// or https:// URL")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if not md5:
            problem = _incomplete_reason(dest, limits, str(dest))
            if problem is None:
                return dest
            raise DownloadError(f"{dest} exists but is not a complete tar archive ({problem}). Move or delete "
                                f"{dest} and run again to download a fresh copy (nothing was deleted).")
        if _md5_ok(dest, md5):
            log.info("archive %s already present and verified", dest)
            return dest
        raise DownloadError(
            f"{dest} exists but its MD5 is not {md5}: it is not the expected archive. "
            f"Move or delete {dest} and run again to download a fresh copy (nothing was deleted)."
        )
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        try:
            _transfer(url, part, progress=progress, limits=transfer)
            break
        except UnsafePathError as err:
            raise DownloadError(str(err)) from err
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as err:
            if isinstance(err, urllib.error.HTTPError) and err.code < 500:
                raise DownloadError(f"download of {url} failed with HTTP {err.code}: check the address") from err
            attempt += 1
            if attempt > retries:
                size = part.stat().st_size if part.exists() else 0
                raise DownloadError(
                    f"download of {url} failed ({err}); {size} bytes are kept in {part}. "
                    "Run the same command again to resume from there."
                ) from err
            log.warning("download interrupted (%s); resuming, attempt %d of %d", err, attempt, retries)
            time.sleep(min(2.0 ** attempt * 0.1, 5.0))
    if md5 and not _md5_ok(part, md5):
        bad = _set_aside(part, dest, ".md5-mismatch")
        raise DownloadError(
            f"MD5 of the file downloaded from {url} is not {md5}; it was kept as {bad} and nothing "
            f"else was touched. Delete {bad} and run again; if it fails again the server holds a "
            "different archive: check the address, or pass the new checksum with --md5."
        )
    if not md5:
        # An ArchiveLimitError leaves the part file in place: with a raised limit the next run
        # finds it complete (HTTP 416) and goes on without fetching a byte.
        problem = _incomplete_reason(part, limits, f"{dest.name} (downloaded from {url}, kept as {part})")
        if problem is not None:
            bad = _set_aside(part, dest, ".damaged")
            raise DownloadError(
                f"the archive downloaded from {url} is not a complete tar ({problem}) and no MD5 was given to "
                f"check it; it was kept as {bad} and nothing was extracted. Run again to download a fresh copy; "
                "if it fails the same way the copy on the server is damaged: use another address or pass its --md5."
            )
    os.replace(part, dest)
    return dest


# ----------------------------------------------------------------------------- archive checks


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


def _incomplete_reason(archive: Path, limits: ExtractLimits, label: str) -> str | None:
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


# ----------------------------------------------------------------------------- the task


def download_task(
    task: str,
    data_dir: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    retries: int = 3,
    keep_archive: bool = True,
    transfer: TransferLimits = TransferLimits(),
    limits: ExtractLimits = ExtractLimits(),
) -> Path:
    """Download, verify and extract one MSD task into the data root, and return the task
    directory (``<data_dir>/<TaskNN_Name>``).

    ``task`` accepts any name ``get_task`` does; a name outside the catalogue is allowed when
    ``url`` is given (it then names the task directory, and must be a plain folder name:
    ``validate_task_name``). ``url`` and ``md5`` override the catalogue, e.g. to use a mirror.
    ``transfer`` and ``limits`` bound the download's waiting and the extraction's size (see
    :class:`TransferLimits`, :class:`ExtractLimits`). Re-runs are cheap: a task directory that
    finished extracting from an archive with the same MD5 is returned untouched, and a partial
    download resumes.
    """
    root = resolve_data_dir(data_dir)
    try:
        entry: MSDTask | None = get_task(task)
    except KeyError:
        if url is None:
            raise
        entry = None
    try:
        name = entry.name if entry else validate_task_name(task)
    except ValueError as err:
        raise DownloadError(str(err)) from err
    url = url or entry.url  # type: ignore[union-attr]
    md5 = md5 if md5 is not None else (entry.md5 if entry else None)
    task_dir = root / name
    marker = task_dir / EXTRACTED_MARKER
    if marker.is_file() and not marker.is_symlink() and marker.read_text().strip() == (md5 or "unverified"):
        log.info("%s already extracted in %s", name, task_dir)
        return task_dir
    if task_dir.exists() or task_dir.is_symlink():
        # Never overwrite a directory we did not finish writing ourselves: it may be the user's.
        if (task_dir / "dataset.json").exists() and not marker.exists():
            log.info("%s exists without our marker (extracted by hand?); using it as is", task_dir)
            return task_dir
        raise DownloadError(
            f"{task_dir} exists but is not a finished extraction of this archive (md5 {md5}); nothing was "
            f"changed. Move or delete {task_dir} and run again to extract a fresh copy."
        )
    archive = fetch_archive(url, root / f"{name}.tar", md5=md5, progress=progress, retries=retries,
                            transfer=transfer, limits=limits)
    # Extract beside the final directory, then move into place, so an interrupted extraction
    # never leaves a task directory that looks complete.
    staging = root / f".{name}.extracting"
    if staging.is_symlink():
        staging.unlink()  # our own name; removing the link leaves whatever it points at alone
    elif staging.exists():
        shutil.rmtree(staging)
    try:
        safe_extract(archive, staging, progress=progress, limits=limits)
        found = staging / name if (staging / name).is_dir() else _single_task_dir(staging, archive)
        # The marker goes in before the move, so the task directory appears complete or not at all.
        atomic_write(found / EXTRACTED_MARKER, (md5 or "unverified") + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # only our own half-written staging area
        raise
    os.replace(found, task_dir)
    shutil.rmtree(staging, ignore_errors=True)
    if not keep_archive:
        archive.unlink()
    return task_dir


def _single_task_dir(staging: Path, archive: Path) -> Path:
    candidates = [p for p in staging.iterdir() if p.is_dir() and (p / "dataset.json").exists()]
    if (staging / "dataset.json").exists():
        return staging
    if len(candidates) == 1:
        return candidates[0]
    raise DownloadError(
        f"{archive} does not hold one MSD task directory with a dataset.json (found "
        f"{sorted(p.name for p in staging.iterdir())}); check that the address points at an MSD task archive"
    )
