"""Download path end to end against a real HTTP server on 127.0.0.1 (never the network)."""

from __future__ import annotations

import hashlib
import os
import tarfile

import pytest
from loopback_msd import LoopbackServer, build_msd_archive, tar_add_bytes

from mednext_lite.data import (
    DownloadError,
    download_task,
    get_task,
    load_task,
    resolve_data_dir,
    safe_extract,
)
from mednext_lite.data.commands import download_main
from mednext_lite.data.download import EXTRACTED_MARKER

TASK = "Task04_Hippocampus"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # A proxy variable would route even 127.0.0.1 requests off the machine: drop them all.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    path = build_msd_archive(tmp_path_factory.mktemp("srv") / f"{TASK}.tar", TASK, n_train=3, n_test=1,
                             resource_forks=True)
    data = path.read_bytes()
    return data, hashlib.md5(data).hexdigest()


def test_good_archive_downloads_extracts_and_rerun_is_offline(tmp_path, archive):
    data, md5 = archive
    with LoopbackServer({"/t.tar": data}) as srv:
        task_dir = download_task("Hippocampus", tmp_path, url=srv.url("t.tar"), md5=md5, progress=False)
        assert task_dir == tmp_path / TASK
        info = load_task(task_dir)  # validates every file
        assert len(info.training) == 3 and len(info.test) == 1
        assert (task_dir / EXTRACTED_MARKER).read_text().strip() == md5
        assert (tmp_path / f"{TASK}.tar").read_bytes() == data
        # macOS resource forks in the archive are not extracted.
        assert not [p for p in task_dir.rglob("._*")]
        n_requests = len(srv.requests)
        assert n_requests == 1 and srv.requests[0][1] is None
        again = download_task(TASK, tmp_path, url=srv.url("t.tar"), md5=md5, progress=False)
        assert again == task_dir and len(srv.requests) == n_requests  # idempotent, no network


def test_wrong_md5_keeps_file_aside_and_deletes_nothing(tmp_path, archive):
    data, _ = archive
    good = tmp_path / "Task09_Spleen" / "keep.txt"
    good.parent.mkdir()
    good.write_text("precious")
    wrong = "0" * 32
    with LoopbackServer({"/t.tar": data}) as srv, pytest.raises(DownloadError) as err:
        download_task(TASK, tmp_path, url=srv.url("t.tar"), md5=wrong, progress=False)
    msg = str(err.value)
    assert "MD5" in msg and wrong in msg and f"{TASK}.tar.md5-mismatch" in msg and "run again" in msg
    assert (tmp_path / f"{TASK}.tar.md5-mismatch").read_bytes() == data
    assert not (tmp_path / TASK).exists() and not (tmp_path / f"{TASK}.tar").exists()
    assert good.read_text() == "precious"


def test_existing_archive_with_wrong_md5_is_not_deleted(tmp_path, archive):
    data, _ = archive
    (tmp_path / f"{TASK}.tar").write_bytes(data)
    with LoopbackServer({"/t.tar": data}) as srv:
        with pytest.raises(DownloadError, match="Move or delete") as err:
            download_task(TASK, tmp_path, url=srv.url("t.tar"), md5="f" * 32, progress=False)
        assert srv.requests == []  # decided from the local file alone
    assert str(tmp_path / f"{TASK}.tar") in str(err.value)
    assert (tmp_path / f"{TASK}.tar").read_bytes() == data


def test_cut_connection_resumes_with_range_on_rerun(tmp_path, archive):
    data, md5 = archive
    with LoopbackServer({"/t.tar": data}, cut_next=1) as srv:
        with pytest.raises(DownloadError, match="resume") as err:
            download_task(TASK, tmp_path, url=srv.url("t.tar"), md5=md5, progress=False, retries=0)
        part = tmp_path / f"{TASK}.tar.part"
        assert str(part) in str(err.value)
        half = len(data) // 2
        assert part.stat().st_size == half
        task_dir = download_task(TASK, tmp_path, url=srv.url("t.tar"), md5=md5, progress=False, retries=0)
        assert srv.requests[-1] == ("/t.tar", f"bytes={half}-")
        # Resume fetched only the missing half: total bytes on the wire = one archive.
        assert srv.bytes_sent == len(data)
    assert not part.exists()
    assert len(load_task(task_dir).training) == 3


def test_cut_connection_is_resumed_automatically(tmp_path, archive):
    data, md5 = archive
    with LoopbackServer({"/t.tar": data}, cut_next=2, cut_fraction=0.4) as srv:
        task_dir = download_task(TASK, tmp_path, url=srv.url("t.tar"), md5=md5, progress=False, retries=3)
        ranges = [r for _, r in srv.requests]
    first = int(len(data) * 0.4)
    assert ranges[0] is None and ranges[1] == f"bytes={first}-" and len(ranges) == 3
    assert (tmp_path / f"{TASK}.tar").read_bytes() == data
    assert (task_dir / "dataset.json").exists()


def test_complete_part_file_is_finished_without_refetch(tmp_path, archive):
    data, md5 = archive
    (tmp_path / f"{TASK}.tar.part").write_bytes(data)  # e.g. killed right before the rename
    with LoopbackServer({"/t.tar": data}) as srv:
        download_task(TASK, tmp_path, url=srv.url("t.tar"), md5=md5, progress=False)
        assert srv.requests == [("/t.tar", f"bytes={len(data)}-")] and srv.bytes_sent == 0
    assert (tmp_path / TASK / "dataset.json").exists()


def test_existing_directories_are_never_overwritten(tmp_path, archive):
    data, md5 = archive
    by_hand = tmp_path / TASK
    by_hand.mkdir()
    (by_hand / "dataset.json").write_text("{}")
    with LoopbackServer({"/t.tar": data}) as srv:
        assert download_task(TASK, tmp_path, url=srv.url("t.tar"), md5=md5, progress=False) == by_hand
        assert srv.requests == []
        (by_hand / "dataset.json").unlink()
        (by_hand / "notes.txt").write_text("mine")
        with pytest.raises(DownloadError, match="Move or delete"):
            download_task(TASK, tmp_path, url=srv.url("t.tar"), md5=md5, progress=False)
    assert (by_hand / "notes.txt").read_text() == "mine"


def test_server_without_range_support_restarts_cleanly(tmp_path, archive):
    data, md5 = archive
    (tmp_path / f"{TASK}.tar.part").write_bytes(b"garbage that is not a prefix")

    with LoopbackServer({"/t.tar": data}) as srv:
        # Simulate a server that ignores Range by serving a path whose handler we wrap.
        original = srv._httpd.RequestHandlerClass.do_GET

        def no_range(handler):
            del handler.headers["Range"]
            original(handler)

        srv._httpd.RequestHandlerClass.do_GET = no_range
        download_task(TASK, tmp_path, url=srv.url("t.tar"), md5=md5, progress=False)
    assert (tmp_path / f"{TASK}.tar").read_bytes() == data


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink_out", "hardlink_out"])
def test_unsafe_members_refuse_whole_archive(tmp_path, kind):
    outside = tmp_path / "outside"
    outside.mkdir()
    target_abs = tmp_path / "abs_evil.txt"
    extra = {
        "dotdot": [(f"{TASK}/../../outside/evil.txt", b"pwned")],
        "absolute": [(str(target_abs), b"pwned")],
    }.get(kind, [])
    path = build_msd_archive(tmp_path / "srv.tar", TASK, n_train=1, n_test=0, extra=extra)
    if kind.endswith("link_out"):
        with tarfile.open(path, "a") as tar:
            link_type = tarfile.SYMTYPE if kind == "symlink_out" else tarfile.LNKTYPE
            tar_add_bytes(tar, f"{TASK}/imagesTr/link", b"", kind=link_type, linkname=str(outside / "evil.txt"))
    data = path.read_bytes()
    root = tmp_path / "root"
    with LoopbackServer({"/t.tar": data}) as srv, pytest.raises(DownloadError, match="unsafe members") as err:
        download_task(TASK, root, url=srv.url("t.tar"), md5=hashlib.md5(data).hexdigest(), progress=False)
    assert "nothing was written" in str(err.value)
    assert list(outside.iterdir()) == [] and not target_abs.exists()
    assert not (root / TASK).exists()
    written = [p for p in root.rglob("*") if p.is_file() and p.name != f"{TASK}.tar"]
    assert written == []  # the good members were not extracted either
    assert sorted(p.name for p in root.iterdir()) == [f"{TASK}.tar"]  # no staging left behind


def test_safe_extract_skips_resource_forks(tmp_path):
    path = build_msd_archive(tmp_path / "a.tar", TASK, n_train=1, n_test=0, resource_forks=True,
                             extra=[("__MACOSX/Task04_Hippocampus/._dataset.json", b"junk")])
    with tarfile.open(path) as tar:
        assert sum(os.path.basename(m.name).startswith("._") for m in tar.getmembers()) == 4
    written = safe_extract(path, tmp_path / "out", progress=False)
    names = sorted(p.relative_to(tmp_path / "out").as_posix() for p in written)
    assert names == [f"{TASK}/dataset.json", f"{TASK}/imagesTr/case_000.nii.gz", f"{TASK}/labelsTr/case_000.nii.gz"]
    assert not (tmp_path / "out" / "__MACOSX").exists()


def test_non_http_scheme_is_refused(tmp_path):
    with pytest.raises(DownloadError, match="http"):
        download_task(TASK, tmp_path, url="file:///etc/passwd", md5=None, progress=False)


def test_http_404_names_status(tmp_path):
    with LoopbackServer({}) as srv, pytest.raises(DownloadError, match="HTTP 404"):
        download_task(TASK, tmp_path, url=srv.url("missing.tar"), progress=False, retries=0)


def test_cli_download_uses_env_data_dir(tmp_path, archive, monkeypatch, capsys):
    data, md5 = archive
    monkeypatch.setenv("MEDNEXT_DATA", str(tmp_path / "envroot"))
    assert resolve_data_dir() == tmp_path / "envroot"
    with LoopbackServer({"/t.tar": data}) as srv:
        rc = download_main(["04", "--url", srv.url("t.tar"), "--md5", md5, "--no-progress"])
    assert rc == 0
    assert "task ready" in capsys.readouterr().out
    assert (tmp_path / "envroot" / TASK / "dataset.json").exists()
    rc = download_main(["NoSuchTask", "--no-progress"])
    assert rc == 1 and "Task04_Hippocampus" in capsys.readouterr().err


def test_catalogue_aliases_and_data_dir_rule(tmp_path, monkeypatch):
    assert get_task("Hippocampus").name == TASK
    assert get_task("04").name == get_task("Task04").name == get_task("4").name == TASK
    assert get_task("task09_spleen").md5 == "410d4a301da4e5b2f6f86ec3ddba524e"
    assert get_task("BrainTumour").tensor_image_size == "4D" and get_task("Spleen").is_ct
    with pytest.raises(KeyError, match="Task10_Colon"):
        get_task("Task11")
    monkeypatch.delenv("MEDNEXT_DATA", raising=False)
    assert resolve_data_dir() == resolve_data_dir("") == __import__("pathlib").Path("data")
    monkeypatch.setenv("MEDNEXT_DATA", str(tmp_path))
    assert resolve_data_dir() == tmp_path and resolve_data_dir("x") == __import__("pathlib").Path("x")


def test_catalogue_matches_monai_decathlon_table():
    from monai.apps.datasets import DecathlonDataset

    from mednext_lite.data import MSD_TASKS

    assert sorted(MSD_TASKS) == sorted(DecathlonDataset.md5)
    for name, task in MSD_TASKS.items():
        assert task.md5 == DecathlonDataset.md5[name] and task.url == DecathlonDataset.resource[name]
        assert task.labels[0] == "background" and task.tensor_image_size in ("3D", "4D")
        assert (task.tensor_image_size == "4D") == (len(task.modality) > 1)
