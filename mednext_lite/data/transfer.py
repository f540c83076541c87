"""Fetch a file over HTTP(S) so that a broken, slow or silent connection costs no byte twice.

Bytes are appended to a ``.part`` file; a broken connection is resumed with an HTTP Range
request, and a watchdog thread aborts an attempt that stalls (:class:`TransferLimits`). MONAI's
``download_url`` starts over on every failure, which a multi-gigabyte MSD archive cannot afford.
"""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tqdm.auto import tqdm

from ..safe_io import UnsafePathError, refuse_symlink

__all__ = ["DownloadError", "TransferLimits", "fetch_resumable", "require_http"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download, checksum or extraction step failed; the message says what to do next."""


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


def require_http(url: str) -> None:
    """Refuse an address that is not http:// or https:// (urllib would also open file:// and ftp://)."""
    if urlparse(url).scheme not in ("http", "https"):
        raise DownloadError(f"unsupported address {url!r}: use an http:// or https:// URL")


def fetch_resumable(url: str, part: Path, *, retries: int = 3, progress: bool = True,
                    limits: TransferLimits = TransferLimits()) -> None:
    """Append the rest of ``url`` to ``part``, resuming after a broken or stalled connection
    ``retries`` times; on the last failure raise ``DownloadError``, keeping the bytes in ``part``
    so that the next call resumes there."""
    require_http(url)
    attempt = 0
    while True:
        try:
            _transfer(url, part, progress=progress, limits=limits)
            return
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

