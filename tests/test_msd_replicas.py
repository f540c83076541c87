"""Replicas of the ten released MSD tasks go the whole way a user goes: served by a loopback HTTP
server -> ``mednext-lite data download`` (MD5 checked, safe extraction) -> ``load_task`` ->
one short ``mednext-lite train`` epoch -> ``predict`` (output in the input's shape and affine)
-> ``evaluate``. The replicas (tests/msd_replicas.py) carry each release's dataset.json keys and
spelling, dtypes, modality axis, spacing, flipped/oblique affines and ``._`` files."""

from __future__ import annotations

import json
import math
import tarfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from loopback_msd import LoopbackServer
from msd_replicas import RELEASES, build_replica_archive, pack_replica, replica_members

from mednext_lite.cli import main
from mednext_lite.data.validate import load_task

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

TASKS = list(RELEASES)


def _members(name: str) -> dict[str, bytes]:
    return dict(replica_members(name))


@pytest.mark.parametrize("name", TASKS)
def test_replica_dataset_json_keys_are_the_released_keys(name):
    task = RELEASES[name]
    meta = json.loads(_members(name)[f"{name}/dataset.json"])
    assert tuple(meta) == task.dataset_json_keys  # names, spelling and order as released
    # Each release spells the date key one way only ("relase" in the 04/05/2018 ones).
    assert ("relase" in meta) != ("release" in meta)
    for key in ("name", "description", "reference", "licence", "tensorImageSize", "modality", "labels"):
        assert meta[key] == task.header[key], key
    assert meta["numTraining"] == len(meta["training"]) == 3 and meta["numTest"] == len(meta["test"]) == 1
    assert all(c["image"].startswith("./imagesTr/") and c["label"].startswith("./labelsTr/") for c in meta["training"])
    assert all(t.startswith("./imagesTs/") and t.endswith(".nii.gz") for t in meta["test"])
    assert set(task.sources) and all(task.sources.values())  # every task says where its facts come from


def test_release_spellings_match_the_published_files():
    # The MSD releases of 04/05/2018 misspell the key; the later ones and BrainTumour do not.
    relase = {n for n, t in RELEASES.items() if "relase" in t.header}
    assert {"Task04_Hippocampus", "Task05_Prostate", "Task07_Pancreas"} <= relase
    assert not relase & {"Task01_BrainTumour", "Task08_HepaticVessel", "Task09_Spleen"}
    assert RELEASES["Task05_Prostate"].header["modality"] == {"0": "T2", "1": "ADC"}
    assert RELEASES["Task01_BrainTumour"].modalities == ["FLAIR", "T1w", "t1gd", "T2w"]


def test_case_file_names_use_each_release_numbering():
    # Released names pad the case number differently: liver_0 / spleen_2, prostate_04, la_003.
    def names(name):
        return sorted(p.rsplit("/", 1)[1] for p in _members(name) if "/imagesTr/" in p)
    assert names("Task03_Liver") == ["liver_10.nii.gz", "liver_17.nii.gz", "liver_3.nii.gz"]
    assert names("Task09_Spleen")[-1] == "spleen_3.nii.gz"
    assert names("Task05_Prostate") == ["prostate_03.nii.gz", "prostate_10.nii.gz", "prostate_17.nii.gz"]
    assert names("Task02_Heart")[0] == "la_003.nii.gz" and names("Task06_Lung")[0] == "lung_003.nii.gz"
    # Every typical spacing names the public measurement it was taken from.
    assert all(any(k.startswith("spacing") for k in t.sources) for t in RELEASES.values())


@pytest.mark.parametrize("name", TASKS)
def test_replica_files_have_the_released_dtypes_axes_and_geometry(name, tmp_path):
    task = RELEASES[name]
    members = _members(name)
    images = sorted(p for p in members if "/imagesTr/" in p)
    n_mod = len(task.modalities)
    affines = []
    for path in images:
        (tmp_path / "i.nii.gz").write_bytes(members[path])
        (tmp_path / "l.nii.gz").write_bytes(members[path.replace("imagesTr", "labelsTr")])
        img, lbl = nib.load(str(tmp_path / "i.nii.gz")), nib.load(str(tmp_path / "l.nii.gz"))
        assert img.get_data_dtype() == np.dtype(task.image_dtype) and lbl.get_data_dtype() == np.dtype(task.label_dtype)
        assert img.shape == (lbl.shape + (n_mod,) if n_mod > 1 else lbl.shape)  # modalities LAST
        assert max(lbl.shape) <= 24
        assert np.array_equal(img.affine, lbl.affine)
        assert np.allclose(nib.affines.voxel_sizes(img.affine), task.spacing, atol=1e-4)
        labels = np.asanyarray(lbl.dataobj)
        assert sorted(np.unique(labels).tolist()) == task.label_values  # every declared class present
        # Structure follows the labels: the foreground differs from the background in intensity.
        data = np.asanyarray(img.dataobj).astype(np.float64)
        first = data[..., 0] if n_mod > 1 else data
        assert abs(first[labels > 0].mean() - first[labels == 0].mean()) > 50
        affines.append(img.affine)
    codes = {nib.aff2axcodes(a) for a in affines}
    oblique = [a for a in affines if np.count_nonzero(np.round(a[:3, :3], 6)) > 3]
    assert len(codes) > 1 and oblique  # some flipped, some oblique
    if task.is_ct:
        assert task.image_dtype == "int16" and min(np.asanyarray(nib.load(str(tmp_path / "i.nii.gz")).dataobj).min(), 0) <= -900


@pytest.mark.parametrize("name", TASKS)
def test_replica_archive_has_one_top_folder_and_appledouble_files(name, tmp_path):
    archive, md5 = build_replica_archive(tmp_path / f"{name}.tar", name)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert {n.split("/")[0] for n in names} == {name}
    real = [n for n in names if not Path(n).name.startswith("._") and "." in Path(n).name]
    forks = {n for n in names if Path(n).name.startswith("._")}
    assert real and all(f"{Path(n).parent!s}/._{Path(n).name}" in forks for n in real)
    assert len(md5) == 32 and md5 == __import__("hashlib").md5(archive.read_bytes()).hexdigest()


def _reader_warnings(info, recorded) -> list[str]:
    # The reader may report warnings on the TaskInfo, through the warnings module, or both.
    found = [str(w) for w in getattr(info, "warnings", []) or []]
    return found + [str(w.message) for w in recorded]


@pytest.mark.parametrize("name", ["Task04_Hippocampus", "Task05_Prostate"])
def test_extracted_by_hand_with_appledouble_files_loads_with_warnings(name, tmp_path):
    # A user who runs `tar xf` keeps the ._ files; they must warn, not stop training.
    (tmp_path / "t.tar").write_bytes(pack_replica(replica_members(name)))
    with tarfile.open(tmp_path / "t.tar") as tar:
        tar.extractall(tmp_path / "data", filter="data")
    task_dir = tmp_path / "data" / name
    assert list((task_dir / "imagesTr").glob("._*"))
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        info = load_task(task_dir)
    assert len(info.training) == 3 and info.in_channels == len(RELEASES[name].modalities)
    assert any("._" in w for w in _reader_warnings(info, recorded))


@pytest.mark.slow
@pytest.mark.parametrize("name", TASKS)
def test_replica_download_train_predict_evaluate(name, tmp_path, capsys):
    task = RELEASES[name]
    data = pack_replica(replica_members(name))
    md5 = __import__("hashlib").md5(data).hexdigest()
    root = tmp_path / "data"
    with LoopbackServer({f"/msd/{name}.tar": data}) as srv:
        assert main(["data", "download", name.split("_", 1)[1], "--data-dir", str(root),
                     "--url", srv.url(f"msd/{name}.tar"), "--md5", md5, "--no-progress"]) == 0
        assert [p for p, _ in srv.requests] == [f"/msd/{name}.tar"]
    task_dir = root / name
    assert not list(task_dir.rglob("._*"))  # safe extraction leaves the resource forks behind
    info = load_task(task_dir)
    assert info.num_classes == len(task.label_values) and info.in_channels == len(task.modalities)
    assert info.is_ct == task.is_ct

    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "--task", str(task_dir), "--run-dir", str(run), "--base-width", "4", "--blocks", "1",
                 "--patch", "32", "16", "16", "--iters", "1", "--batch", "1", "--epochs", "1", "--no-progress", "--no-augment",
                 "--n-folds", "3", "--sw-batch-size", "1", "--threads", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert Path(summary["last"]).is_file()

    split = json.loads((run / "split.json").read_text())
    val_images = [c["image"] for c in split["val"]]
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", summary["last"], "--input", *val_images, str(task_dir / "imagesTs"),
                 "--output", str(out), "--sw-batch-size", "1", "--threads", "1"]) == 0
    test_images = sorted(str(p) for p in (task_dir / "imagesTs").glob("*.nii.gz"))
    assert len(test_images) == 1
    for src in val_images + test_images:
        ref, pred = nib.load(src), nib.load(str(out / Path(src).name))
        assert pred.shape == ref.shape[:3]
        assert np.allclose(pred.affine, ref.affine, atol=1e-5)
        values = set(np.unique(np.asanyarray(pred.dataobj)).tolist())
        assert values <= set(task.label_values)

    capsys.readouterr()
    assert main(["evaluate", "--predictions", str(out), "--split", str(run / "split.json"), "--task", str(task_dir)]) == 0
    text = capsys.readouterr().out
    assert "mean" in text and "Dice" in text
    report = json.loads((out / "evaluation.json").read_text())
    assert report["n"] == len(val_images)
    names = [task.header["labels"][str(v)] for v in task.label_values if v]
    assert set(report["dice"]) == set(names)
    assert all(math.isfinite(d) and 0.0 <= d <= 1.0 for d in report["dice"].values())
    assert math.isfinite(report["mean_dice"])
