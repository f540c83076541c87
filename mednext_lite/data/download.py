"""Download an MSD task: fetch its archive, verify it, extract it safely and move it into place.

A re-run is cheap: a partial download resumes (``transfer``), a verified archive is not fetched
again, and a finished extraction is recognised by its marker file. The archive is verified by its
MD5 (MONAI's ``check_hash``) or, when none is known, by reading it to its end (``archive``).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from monai.apps.utils import check_hash

from ..safe_io import atomic_write
from .archive import ExtractLimits, incomplete_reason, safe_extract
from .catalogue import MSDTask, get_task, resolve_data_dir, validate_task_name
from .transfer import DownloadError, TransferLimits, fetch_resumable, require_http

__all__ = ["EXTRACTED_MARKER", "download_task", "fetch_archive"]

log = logging.getLogger(__name__)

#: File written inside an extracted task directory once extraction finished; its content is the
#: archive's MD5, so a re-run can tell "complete" from "half-extracted" without re-reading data.
EXTRACTED_MARKER = ".mednext_extracted"


def _md5_ok(path: Path, md5: str | None) -> bool:
    # check_hash logs an error on mismatch; keep our own message as the one the user acts on.
    monai_log = logging.getLogger("monai.apps")
    level = monai_log.level
    monai_log.setLevel(logging.CRITICAL)
    try:
        return check_hash(path, md5, "md5") if md5 else True
    finally:
        monai_log.setLevel(level)


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
    transfer: TransferLimits | None = None,
    limits: ExtractLimits | None = None,
) -> Path:
    """Download ``url`` to ``dest`` with resume and verification, and return ``dest``.

    Bytes go to ``dest + ".part"`` first (``transfer.fetch_resumable``): a broken or stalled
    connection is resumed ``retries`` times here and again on the next call. With an ``md5``, an existing ``dest``
    whose MD5 matches is kept without any network access, and a finished download whose MD5
    differs is moved aside to ``dest + ".md5-mismatch"``. Without one, the archive must read as
    a complete tar to its end (end-of-archive marker present, compressed stream's checksum
    right) before it becomes ``dest``; one that does not is moved aside to ``dest + ".damaged"``.
    Nothing is ever deleted, and ``DownloadError`` says what to do. ``transfer`` and ``limits``
    default to ``TransferLimits()`` and ``ExtractLimits()``.
    """
    dest = Path(dest)
    require_http(url)
    transfer, limits = transfer or TransferLimits(), limits or ExtractLimits()
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if not md5:
            problem = incomplete_reason(dest, limits, str(dest))
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
    fetch_resumable(url, part, retries=retries, progress=progress, limits=transfer)
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
        problem = incomplete_reason(part, limits, f"{dest.name} (downloaded from {url}, kept as {part})")
        if problem is not None:
            bad = _set_aside(part, dest, ".damaged")
            raise DownloadError(
                f"the archive downloaded from {url} is not a complete tar ({problem}) and no MD5 was given to "
                f"check it; it was kept as {bad} and nothing was extracted. Run again to download a fresh copy; "
                "if it fails the same way the copy on the server is damaged: use another address or pass its --md5."
            )
    os.replace(part, dest)
    return dest


def download_task(
    task: str,
    data_dir: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    retries: int = 3,
    keep_archive: bool = True,
    transfer: TransferLimits | None = None,
    limits: ExtractLimits | None = None,
) -> Path:
    """Download, verify and extract one MSD task into the data root, and return the task
    directory (``<data_dir>/<TaskNN_Name>``).

    ``task`` accepts any name ``get_task`` does; a name outside the catalogue is allowed when
    ``url`` is given (it then names the task directory, and must be a plain folder name:
    ``validate_task_name``). ``url`` and ``md5`` override the catalogue, e.g. to use a mirror.
    ``transfer`` and ``limits`` bound the download's waiting and the extraction's size (see
    :class:`TransferLimits`, :class:`ExtractLimits`; their defaults when None). Re-runs are
    cheap: a task directory that finished extracting from an archive with the same MD5 is
    returned untouched, and a partial download resumes.
    """
    root = resolve_data_dir(data_dir)
    limits = limits or ExtractLimits()
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
