"""Resumable, checksummed download and safe extraction of MSD task archives.

MONAI's ``download_url`` fetches into a temporary directory with ``urlretrieve`` and starts over
on every failure, and its tar extraction stops at the first unsafe member after having written
the earlier ones; a multi-gigabyte MSD archive needs resume and an all-or-nothing safety check.
So the transfer (HTTP Range resume) and the extraction loop are written here, while the checksum
(``monai.apps.utils.check_hash``) and the per-member path check
(``monai.apps.utils.safe_extract_member``) are MONAI's.
"""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from monai.apps.utils import check_hash, safe_extract_member
from tqdm.auto import tqdm

from .catalogue import MSDTask, get_task, resolve_data_dir

__all__ = ["EXTRACTED_MARKER", "DownloadError", "download_task", "fetch_archive", "safe_extract"]

log = logging.getLogger(__name__)

#: File written inside an extracted task directory once extraction finished; its content is the
#: archive's MD5, so a re-run can tell "complete" from "half-extracted" without re-reading data.
EXTRACTED_MARKER = ".mednext_extracted"

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download, checksum or extraction step failed; the message says what to do next."""


def _md5_ok(path: Path, md5: str | None) -> bool:
    # check_hash logs an error on mismatch; keep our own message as the one the user acts on.
    monai_log = logging.getLogger("monai.apps")
    level = monai_log.level
    monai_log.setLevel(logging.CRITICAL)
    try:
        return check_hash(path, md5, "md5") if md5 else True
    finally:
        monai_log.setLevel(level)


def _transfer(url: str, part: Path, *, progress: bool, timeout: float) -> None:
    """Append the remaining bytes of ``url`` to ``part``, resuming from its current size with an
    HTTP Range request; raise ``OSError`` subclasses when the connection breaks early."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "mednext_lite"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
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
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
        if length is not None and got < int(length):
            raise ConnectionError(f"connection closed after {have + got} of {total} bytes")


def fetch_archive(
    url: str,
    dest: str | os.PathLike,
    *,
    md5: str | None = None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` with resume and MD5 verification, and return ``dest``.

    Bytes go to ``dest + ".part"`` first; a broken connection is resumed with an HTTP Range
    request, ``retries`` times here and again on the next call, so no byte is fetched twice. An
    existing ``dest`` whose MD5 matches is kept without any network access. A finished download
    whose MD5 differs is moved aside to ``dest + ".md5-mismatch"`` (never deleted, never
    overwriting a good file) and ``DownloadError`` says what to do.
    """
    dest = Path(dest)
    scheme = urlparse(url).scheme
    if scheme not in ("http", "https"):
        raise DownloadError(f"unsupported address {url!r}: use an http:// or https:// URL")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
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
            _transfer(url, part, progress=progress, timeout=timeout)
            break
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
    if not _md5_ok(part, md5):
        bad = dest.with_name(dest.name + ".md5-mismatch")
        os.replace(part, bad)
        raise DownloadError(
            f"MD5 of the file downloaded from {url} is not {md5}; it was kept as {bad} and nothing "
            f"else was touched. Delete {bad} and run again; if it fails again the server holds a "
            "different archive: check the address, or pass the new checksum with --md5."
        )
    os.replace(part, dest)
    return dest


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


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as err:
        raise DownloadError(f"{archive} is not a readable tar archive ({err}): delete it and download again") from err


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike, *, progress: bool = True) -> list[Path]:
    """Extract a tar archive into ``target`` after checking every member, and return the files
    written. The whole archive is refused (nothing written) when any member is an absolute path,
    climbs out with ``..``, is a link or a device; macOS ``._*`` resource-fork files are
    skipped."""
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with _open_tar(archive) as tar:
        members = tar.getmembers()
        problems = _archive_problems(members, target)
        if problems:
            listed = "\n  ".join(problems)
            raise DownloadError(
                f"refusing to extract {archive}: it has unsafe members (nothing was written):\n  {listed}\n"
                "Do not use this archive; download it again from the official address."
            )
        files = [m for m in members if m.isfile() and not _is_resource_fork(m.name)]
        for member in tqdm(files, desc=f"extract {archive.name}", unit="file", disable=not progress, leave=False):
            out = Path(safe_extract_member(member, str(target)))
            out.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is None:  # pragma: no cover - isfile() members always have data
                continue
            with source, open(out, "wb") as sink:
                shutil.copyfileobj(source, sink, _CHUNK)
            written.append(out)
    return written


def download_task(
    task: str,
    data_dir: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    retries: int = 3,
    keep_archive: bool = True,
) -> Path:
    """Download, verify and extract one MSD task into the data root, and return the task
    directory (``<data_dir>/<TaskNN_Name>``).

    ``task`` accepts any name ``get_task`` does; a name outside the catalogue is allowed when
    ``url`` is given (it then names the task directory). ``url`` and ``md5`` override the
    catalogue, e.g. to use a mirror. Re-runs are cheap: a task directory that finished extracting
    from an archive with the same MD5 is returned untouched, and a partial download resumes.
    """
    root = resolve_data_dir(data_dir)
    try:
        entry: MSDTask | None = get_task(task)
    except KeyError:
        if url is None:
            raise
        entry = None
    name = entry.name if entry else str(task)
    url = url or entry.url  # type: ignore[union-attr]
    md5 = md5 if md5 is not None else (entry.md5 if entry else None)
    task_dir = root / name
    marker = task_dir / EXTRACTED_MARKER
    if marker.exists() and marker.read_text().strip() == (md5 or "unverified"):
        log.info("%s already extracted in %s", name, task_dir)
        return task_dir
    if task_dir.exists():
        # Never overwrite a directory we did not finish writing ourselves: it may be the user's.
        if (task_dir / "dataset.json").exists() and not marker.exists():
            log.info("%s exists without our marker (extracted by hand?); using it as is", task_dir)
            return task_dir
        raise DownloadError(
            f"{task_dir} exists but is not a finished extraction of this archive (md5 {md5}); nothing was "
            f"changed. Move or delete {task_dir} and run again to extract a fresh copy."
        )
    archive = fetch_archive(url, root / f"{name}.tar", md5=md5, progress=progress, retries=retries)
    # Extract beside the final directory, then move into place, so an interrupted extraction
    # never leaves a task directory that looks complete.
    staging = root / f".{name}.extracting"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        safe_extract(archive, staging, progress=progress)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # only our own half-written staging area
        raise
    found = staging / name if (staging / name).is_dir() else _single_task_dir(staging, archive)
    # The marker goes in before the move, so the task directory appears complete or not at all.
    (found / EXTRACTED_MARKER).write_text((md5 or "unverified") + "\n")
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
