"""Download path end to end against a real HTTP server on 127.0.0.1 (never the network)."""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import time

import pytest
from loopback_msd import (
    LoopbackServer,
    build_gzip_bomb,
    build_msd_archive,
    tar_add_bytes,
)

from mednext_lite.data import (
    DownloadError,
    download_task,
    fetch_archive,
    get_task,
    load_task,
    resolve_data_dir,
    safe_extract,
)
from mednext_lite.data.archive import ArchiveLimitError, ExtractLimits
from mednext_lite.data.catalogue import validate_task_name
from mednext_lite.data.commands import download_main
from mednext_lite.data.download import EXTRACTED_MARKER
from mednext_lite.data.transfer import TransferLimits

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


def test_cli_reports_an_unsafe_archive_in_one_line(tmp_path, capsys):
    path = build_msd_archive(tmp_path / "srv.tar", TASK, n_train=1, n_test=0,
                             extra=[(f"{TASK}/../../a.txt", b"x"), (f"{TASK}/../../b.txt", b"y")])
    data = path.read_bytes()
    with LoopbackServer({"/t.tar": data}) as srv:
        rc = download_main(["04", "--data-dir", str(tmp_path / "root"), "--url", srv.url("t.tar"),
                            "--md5", hashlib.md5(data).hexdigest(), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("download_msd.py: error: refusing to extract")
    assert "../../a.txt" in err and "../../b.txt" in err  # both members named, on the one line
    assert not (tmp_path / "a.txt").exists() and not (tmp_path / "root" / TASK).exists()


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
    err = capsys.readouterr().err
    # A user's mistake: exit 2 (1 means a bug), one line naming the value and the valid names.
    assert rc == 2 and err.count("\n") == 1 and err.startswith("download_msd.py: error: unknown MSD task 'NoSuchTask'")
    assert "Task04_Hippocampus" in err


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



# ----------------------------------------------------------------------------- extraction limits

BOMB = "Task99_Bomb"


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    # 64 MiB of zeros in about 65 KB: small enough to build in half a second, big enough that
    # an 8 MiB limit and the default expansion ratio must both refuse it.
    path = build_gzip_bomb(tmp_path_factory.mktemp("bomb") / "bomb.tar.gz", BOMB, size=64 << 20)
    return path.read_bytes()


def _files_under(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("with_md5", [True, False])
def test_gzip_bomb_is_refused_at_its_header_and_nothing_is_written(tmp_path, bomb, with_md5):
    md5 = hashlib.md5(bomb).hexdigest() if with_md5 else None
    limits = ExtractLimits(max_bytes=8 << 20)
    start = time.perf_counter()
    with LoopbackServer({"/b.tgz": bomb}) as srv, pytest.raises(ArchiveLimitError) as err:
        download_task(BOMB, tmp_path, url=srv.url("b.tgz"), md5=md5, progress=False, limits=limits)
    msg = str(err.value)
    assert f"{BOMB}.tar" in msg and "max_bytes=8.0 MiB" in msg and "ExtractLimits(max_bytes=" in msg
    assert "nothing was written" in msg
    # Refused at the header: the 64 MiB body was never even decompressed.
    assert time.perf_counter() - start < 5
    kept = f"{BOMB}.tar" if with_md5 else f"{BOMB}.tar.part"
    assert _files_under(tmp_path) == [kept] and sorted(p.name for p in tmp_path.iterdir()) == [kept]
    if not with_md5:
        # The message's advice works: a raised limit finishes from the kept file, no byte refetched.
        with LoopbackServer({"/b.tgz": bomb}) as srv:
            task_dir = download_task(BOMB, tmp_path, url=srv.url("b.tgz"), progress=False,
                                     limits=ExtractLimits(max_bytes=128 << 20, max_ratio=10_000))
            assert srv.bytes_sent == 0
        assert (task_dir / "imagesTr" / "bomb.nii").stat().st_size == 64 << 20
        assert (task_dir / EXTRACTED_MARKER).read_text().strip() == "unverified"


def test_default_limits_refuse_a_gzip_bomb_by_its_ratio(tmp_path, bomb):
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(bomb)
    target = tmp_path / "out"
    with pytest.raises(ArchiveLimitError, match=r"max_ratio=100\b") as err:
        safe_extract(path, target, progress=False)
    assert str(path) in str(err.value) and "ExtractLimits(max_ratio=" in str(err.value)
    assert not target.exists()  # the folder this call made is gone again


def test_member_count_limit(tmp_path):
    path = build_msd_archive(tmp_path / "a.tar", TASK, n_train=2, n_test=1)
    with tarfile.open(path) as tar:
        n_members = len(tar.getmembers())
    assert n_members == 6
    with pytest.raises(ArchiveLimitError, match="more than 5 members.*max_members=5"):
        safe_extract(path, tmp_path / "out", progress=False, limits=ExtractLimits(max_members=5))
    assert not (tmp_path / "out").exists()
    assert len(safe_extract(path, tmp_path / "ok", progress=False, limits=ExtractLimits(max_members=6))) == 6


def test_too_little_free_space_refuses_before_the_first_write(tmp_path, monkeypatch):
    import shutil

    from mednext_lite.data import archive as archive_module

    path = build_msd_archive(tmp_path / "a.tar", TASK, n_train=1, n_test=0)
    real = shutil.disk_usage
    monkeypatch.setattr(archive_module.shutil, "disk_usage", lambda p: real(p)._replace(free=100))  # a nearly full disk
    with pytest.raises(DownloadError, match=r"needs .* but .* has 100 B free; nothing was written"):
        safe_extract(path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.nii.gz"))


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match=r"max_bytes=0"):
        ExtractLimits(max_bytes=0)
    with pytest.raises(ValueError, match=r"window=-1"):
        TransferLimits(window=-1)


# ----------------------------------------------------------------------------- completeness without an MD5

CUSTOM = "Task99_Custom"


def _damaged(data: bytes, how: str) -> bytes:
    with tarfile.open(fileobj=__import__("io").BytesIO(data)) as tar:
        third = tar.getmembers()[3]
    if how == "cut_at_member":  # tarfile alone reads this as a shorter, finished archive
        return data[: third.offset]
    if how == "cut_in_header":
        return data[: third.offset + 100]
    packed = gzip.compress(data, mtime=0)
    if how == "gz_tail_missing":  # every member and the end marker are there; the gzip trailer is not
        return packed[:-8]
    if how == "gz_crc_flipped":
        return packed[:-8] + bytes([packed[-8] ^ 0xFF]) + packed[-7:]
    raise AssertionError(how)


@pytest.fixture(scope="module")
def custom_archive(tmp_path_factory):
    return build_msd_archive(tmp_path_factory.mktemp("custom") / "c.tar", CUSTOM, n_train=3, n_test=1).read_bytes()


@pytest.mark.parametrize("how", ["cut_at_member", "cut_in_header", "gz_tail_missing", "gz_crc_flipped"])
def test_incomplete_archive_without_md5_is_refused_and_never_marked_done(tmp_path, custom_archive, how):
    served = _damaged(custom_archive, how)
    with LoopbackServer({"/c.tar": served}) as srv:
        for _ in range(2):  # a re-run meets the same refusal: nothing was marked finished
            with pytest.raises(DownloadError, match="not a complete tar") as err:
                download_task(CUSTOM, tmp_path, url=srv.url("c.tar"), progress=False, retries=0)
            msg = str(err.value)
            assert srv.url("c.tar") in msg and "no MD5" in msg and "Run again" in msg
            assert not (tmp_path / CUSTOM).exists()
            assert _files_under(tmp_path) == [f"{CUSTOM}.tar.damaged"]
            assert (tmp_path / f"{CUSTOM}.tar.damaged").read_bytes() == served
    # The whole archive, served right, goes through without an MD5 too.
    with LoopbackServer({"/c.tar": custom_archive}) as srv:
        task_dir = download_task(CUSTOM, tmp_path, url=srv.url("c.tar"), progress=False)
    assert (task_dir / EXTRACTED_MARKER).read_text().strip() == "unverified"
    assert len(load_task(task_dir).training) == 3


def test_existing_incomplete_archive_is_named_not_extracted(tmp_path, custom_archive):
    (tmp_path / f"{CUSTOM}.tar").write_bytes(_damaged(custom_archive, "cut_at_member"))
    with LoopbackServer({"/c.tar": custom_archive}) as srv:
        with pytest.raises(DownloadError, match="exists but is not a complete tar.*Move or delete"):
            download_task(CUSTOM, tmp_path, url=srv.url("c.tar"), progress=False)
        assert srv.requests == []
    assert not (tmp_path / CUSTOM).exists()


@pytest.mark.parametrize("how", ["garbage", "cut_in_header", "gz_tail_missing", "gz_crc_flipped", "gz_body_flipped"])
def test_damaged_archive_errors_become_download_errors(tmp_path, custom_archive, how):
    if how == "garbage":
        data = gzip.compress(b"this is not a tar file" * 100)
    elif how == "gz_body_flipped":
        packed = bytearray(gzip.compress(custom_archive, mtime=0))
        for i in range(len(packed) // 2, len(packed) // 2 + 64):
            packed[i] ^= 0x5A
        data = bytes(packed)
    else:
        data = _damaged(custom_archive, how)
    path = tmp_path / "broken.tar.gz"
    path.write_bytes(data)
    with pytest.raises(DownloadError) as err:
        safe_extract(path, tmp_path / "out", progress=False)
    msg = str(err.value)
    assert str(path) in msg and "download it again" in msg
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- extraction never overwrites

def test_extraction_does_not_overwrite_and_undoes_its_own_files(tmp_path):
    path = build_msd_archive(tmp_path / "a.tar", TASK, n_train=2, n_test=0)
    target = tmp_path / "out"
    mine = target / TASK / "labelsTr" / "case_001.nii.gz"  # the archive's last member
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's own file")
    with pytest.raises(DownloadError, match="refusing to extract over .*case_001.nii.gz"):
        safe_extract(path, target, progress=False)
    assert mine.read_bytes() == b"the user's own file"
    assert _files_under(target) == [f"{TASK}/labelsTr/case_001.nii.gz"]  # the earlier members were removed


def test_extraction_does_not_follow_a_symlinked_folder(tmp_path):
    path = build_msd_archive(tmp_path / "a.tar", TASK, n_train=1, n_test=0)
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "out"
    (target / TASK).mkdir(parents=True)
    (target / TASK / "imagesTr").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DownloadError, match="unsafe members|leads outside"):
        safe_extract(path, target, progress=False)
    assert list(outside.iterdir()) == []
    assert _files_under(target) == []


# ----------------------------------------------------------------------------- slow servers

FAST_GIVE_UP = TransferLimits(timeout=10.0, min_rate=64.0, window=0.5, deadline=None)


@pytest.mark.parametrize("trickle", ["body", "headers"])
def test_trickling_server_is_abandoned_and_a_rerun_resumes(tmp_path, archive, trickle):
    data, md5 = archive
    start = time.perf_counter()
    with LoopbackServer({"/t.tar": data}, trickle=trickle, trickle_rate=4.0) as srv, \
            pytest.raises(DownloadError) as err:
        download_task(TASK, tmp_path, url=srv.url("t.tar"), md5=md5, progress=False, retries=0,
                      transfer=FAST_GIVE_UP)
    elapsed = time.perf_counter() - start
    assert elapsed < 5, elapsed  # 1 byte/s of a real archive would take hours; per-read timeouts never fire
    part = tmp_path / f"{TASK}.tar.part"
    msg = str(err.value)
    assert srv.url("t.tar") in msg and "stalled" in msg and "64 bytes/s" in msg
    assert "resume" in msg and str(part) in msg
    have = part.stat().st_size if part.exists() else 0
    assert f"{have} bytes are kept" in msg
    if trickle == "body":
        assert have >= 1 and data.startswith(part.read_bytes())
    with LoopbackServer({"/t.tar": data}) as srv:
        task_dir = download_task(TASK, tmp_path, url=srv.url("t.tar"), md5=md5, progress=False)
        assert srv.requests == [("/t.tar", f"bytes={have}-" if have else None)]
    assert len(load_task(task_dir).training) == 3


def test_attempt_deadline(tmp_path, archive):
    data, md5 = archive
    limits = TransferLimits(timeout=10.0, min_rate=1.0, window=0.3, deadline=1.0)
    start = time.perf_counter()
    with LoopbackServer({"/t.tar": data}, trickle="body", trickle_rate=100.0) as srv, \
            pytest.raises(DownloadError, match="deadline of 1 s") as err:
        fetch_archive(srv.url("t.tar"), tmp_path / "t.tar", md5=md5, progress=False, retries=0, transfer=limits)
    assert 1.0 <= time.perf_counter() - start < 4
    assert "Run the same command again to resume" in str(err.value)
    assert 20 < (tmp_path / "t.tar.part").stat().st_size < len(data)


# ----------------------------------------------------------------------------- task names

@pytest.mark.parametrize("name", ["../../x", "ABSOLUTE", "a/b", "a\\b", "", "..", ".hidden"])
def test_task_names_that_leave_the_root_are_refused_before_any_write(tmp_path, archive, name):
    data, md5 = archive
    if name == "ABSOLUTE":
        name = str(tmp_path / "abs_task")
    root = tmp_path / "deep" / "root"
    with LoopbackServer({"/t.tar": data}) as srv:
        with pytest.raises(DownloadError, match="task name") as err:
            download_task(name, root, url=srv.url("t.tar"), md5=md5, progress=False)
        assert srv.requests == []
    assert repr(name) in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_validate_task_name_and_cli_message(tmp_path, capsys):
    assert validate_task_name("Task04_Hippocampus") == "Task04_Hippocampus"
    assert validate_task_name("my task-2.v1") == "my task-2.v1"
    for bad, why in [("../../x", "climbs out"), ("/etc", "absolute"), ("a/b", "separator"), ("C:x", "drive"),
                     ("  ", "empty"), (".", "data root itself"), ("a\x00b", "control"), ("x" * 256, "255")]:
        with pytest.raises(ValueError, match=why):
            validate_task_name(bad)
    rc = download_main(["../../x", "--data-dir", str(tmp_path / "root"), "--url", "http://127.0.0.1:9/t.tar",
                        "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "task name '../../x' climbs out of the data root" in err
    assert list(tmp_path.iterdir()) == []


def test_write_failure_mid_extraction_removes_the_partial_files(tmp_path):
    # The file-size limit of this very process stops the write of a 256 KiB member part-way, as
    # a full disk would: the error names the archive, and no partial file or folder is left.
    import resource
    import signal

    path = build_msd_archive(tmp_path / "a.tar", TASK, n_train=1, n_test=0,
                             extra=[(f"{TASK}/imagesTr/big.bin", os.urandom(256 << 10))])
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an EFBIG error instead of death
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, limit[1]))
        with pytest.raises(DownloadError) as err:
            safe_extract(path, tmp_path / "out", progress=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, handler)
    msg = str(err.value)
    assert "could not write while extracting" in msg and str(path) in msg and "partial files were removed" in msg
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(__import__("shutil").which("openssl") is None, reason="needs the openssl command for a test cert")
@pytest.mark.parametrize("trickle", [None, "body"])
def test_https_download_and_its_stall_guard(tmp_path, archive, monkeypatch, trickle):
    # The watched connection replaces urllib's HTTPS handler: check it on a real TLS server.
    import ssl
    import subprocess

    data, md5 = archive
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust this one certificate, as a system store would
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with LoopbackServer({"/t.tar": data}, trickle=trickle, trickle_rate=4.0) as srv:
        srv._httpd.socket = context.wrap_socket(srv._httpd.socket, server_side=True)
        url = srv.url("t.tar").replace("http://", "https://")
        if trickle is None:
            assert fetch_archive(url, tmp_path / "t.tar", md5=md5, progress=False).read_bytes() == data
            return
        with pytest.raises(DownloadError, match="stalled") as err:
            fetch_archive(url, tmp_path / "t.tar", md5=md5, progress=False, retries=0, transfer=FAST_GIVE_UP)
    assert url in str(err.value) and "resume" in str(err.value)
