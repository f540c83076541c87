"""Test helpers for the data layer: MSD-layout archives built on the fly and a loopback HTTP
server with Range support, a switchable mid-transfer cut and a trickle mode (a server that
sends a byte now and then, forever as far as the client can tell), so the download code is
tested against a real server on 127.0.0.1 without touching the network.
"""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np

from mednext_lite.data.synthetic import synthesize_case

__all__ = ["LoopbackServer", "build_gzip_bomb", "build_msd_archive", "tar_add_bytes"]


def tar_add_bytes(tar: tarfile.TarFile, name: str, data: bytes, *, kind: bytes = tarfile.REGTYPE,
                  linkname: str = "") -> None:
    """Add a member called exactly ``name`` (no normalisation, so absolute and ``..`` names
    survive) holding ``data``, or a link when ``kind`` is SYMTYPE/LNKTYPE."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def build_msd_archive(
    path: str | Path,
    task_name: str = "Task04_Hippocampus",
    *,
    n_train: int = 2,
    n_test: int = 1,
    resource_forks: bool = False,
    extra: Iterable[tuple[str, bytes]] = (),
    seed: int = 0,
) -> Path:
    """Build an MSD-style tar at ``path``: ``<task_name>/dataset.json``, ``imagesTr``,
    ``labelsTr`` and ``imagesTs`` with small real NIfTI cases. ``resource_forks`` adds macOS
    ``._`` AppleDouble members beside every file (as the released archives have); ``extra``
    appends raw (name, bytes) members verbatim, e.g. unsafe names."""
    path = Path(path)
    members: list[tuple[str, bytes]] = []
    training, test = [], []
    for i in range(n_train + n_test):
        image, label, affine = synthesize_case([seed, i], shape=(16, 16, 16))
        fname = f"case_{i:03d}.nii.gz"
        if i < n_train:
            members.append((f"{task_name}/imagesTr/{fname}", _nifti_gz(image, affine)))
            members.append((f"{task_name}/labelsTr/{fname}", _nifti_gz(label, affine)))
            training.append({"image": f"./imagesTr/{fname}", "label": f"./labelsTr/{fname}"})
        else:
            members.append((f"{task_name}/imagesTs/{fname}", _nifti_gz(image, affine)))
            test.append(f"./imagesTs/{fname}")
    meta = {
        "name": task_name.split("_", 1)[-1], "description": "test archive", "reference": "mednext_lite tests",
        "licence": "CC0", "release": "test", "tensorImageSize": "3D", "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "head", "2": "tail"}, "numTraining": n_train, "numTest": n_test,
        "training": training, "test": test,
    }
    members.insert(0, (f"{task_name}/dataset.json", json.dumps(meta, indent=2).encode()))
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            if resource_forks:
                head, _, base = name.rpartition("/")
                # AppleDouble header bytes: what macOS tar writes, and certainly not NIfTI/JSON.
                tar_add_bytes(tar, f"{head}/._{base}", b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
            tar_add_bytes(tar, name, data)
        for name, data in extra:
            tar_add_bytes(tar, name, data)
    return path


class _Zeros:
    """A file-like source of ``n`` zero bytes, so a bomb is built without holding it in memory."""

    def __init__(self, n: int) -> None:
        self.left = n

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return bytes(size)


def build_gzip_bomb(path: str | Path, task_name: str = "Task99_Bomb", *, size: int = 64 << 20) -> Path:
    """Write a tar.gz at ``path`` holding ``<task_name>/dataset.json`` and one member of ``size``
    zero bytes: it is about ``size / 1000`` on disk (gzip's best ratio on zeros)."""
    path = Path(path)
    with tarfile.open(path, "w:gz", compresslevel=9) as tar:
        tar_add_bytes(tar, f"{task_name}/dataset.json", b"{}")
        info = tarfile.TarInfo(f"{task_name}/imagesTr/bomb.nii")
        info.size, info.mode = size, 0o644
        tar.addfile(info, _Zeros(size))
    return path


def _nifti_gz(array: np.ndarray, affine: np.ndarray) -> bytes:
    import gzip

    return gzip.compress(nib.Nifti1Image(array, affine).to_bytes(), compresslevel=1, mtime=0)


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 (random free port) serving ``files`` (URL path ->
    bytes) with ``Range: bytes=N-`` support. ``cut_next`` makes the next N full or partial
    responses stop after ``cut_fraction`` of their body and drop the connection, as a flaky
    network does. ``trickle="body"`` sends the headers (with the full Content-Length) and then
    the body at ``trickle_rate`` bytes per second; ``trickle="headers"`` sends the status line and
    then header bytes at that rate; either stops by itself after ``trickle_for`` seconds or when
    the server closes, so no test can hang on it. Every request is logged in ``requests`` as
    ``(path, range header or None)``. Use as a context manager; ``url(path)`` gives the address."""

    def __init__(self, files: dict[str, bytes], *, cut_next: int = 0, cut_fraction: float = 0.5,
                 trickle: str | None = None, trickle_rate: float = 1.0, trickle_for: float = 10.0):
        if trickle not in (None, "body", "headers"):
            raise ValueError(f"trickle={trickle!r}: use None, 'body' or 'headers'")
        self.files = dict(files)
        self.cut_next = cut_next
        self.cut_fraction = cut_fraction
        self.trickle, self.trickle_rate, self.trickle_for = trickle, trickle_rate, trickle_for
        self._closing = threading.Event()
        self.requests: list[tuple[str, str | None]] = []
        self.bytes_sent = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                with server._lock:
                    server.requests.append((self.path, rng))
                    cut = server.cut_next > 0
                    if cut:
                        server.cut_next -= 1
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                if server.trickle == "headers":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    self._drip(b"X-Slow: " + b"a" * 1_000_000)
                    return
                start = 0
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[6:-1])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if server.trickle == "body":
                    self._drip(body)
                    return
                if cut:
                    body = body[: int(len(body) * server.cut_fraction)]
                    self.close_connection = True
                self.wfile.write(body)
                self.wfile.flush()
                with server._lock:
                    server.bytes_sent += len(body)

            def _drip(self, data: bytes) -> None:
                # One byte per 1/rate seconds until the time is up, the data ends, the client
                # hangs up or the server closes; then drop the connection.
                self.close_connection = True
                stop = time.monotonic() + server.trickle_for
                try:
                    for i in range(len(data)):
                        if time.monotonic() > stop or server._closing.wait(1.0 / server.trickle_rate):
                            return
                        self.wfile.write(data[i:i + 1])
                        with server._lock:
                            server.bytes_sent += 1
                except OSError:
                    return  # the client gave up, which is what the test wants

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        """The port the server listens on (chosen by the OS)."""
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        """Full http://127.0.0.1 address of ``path``."""
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def __enter__(self) -> LoopbackServer:  # noqa: PYI034 - Self needs Python 3.11; we support 3.10
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
