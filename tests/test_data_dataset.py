"""dataset.json reader/validator on real NIfTI files, and seeded k-fold splits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mednext_lite.data import (
    DatasetError,
    get_or_make_split,
    load_split,
    load_task,
    make_split,
    make_synthetic_task,
    read_image,
    save_split,
    validate_task,
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    return {fl: make_synthetic_task(root, n_train=6, n_test=1, flavour=fl, shape=(16, 16, 16), progress=False)
            for fl in ("mri", "mri4d")}


@pytest.fixture
def task(pristine, tmp_path):
    return Path(shutil.copytree(pristine["mri"], tmp_path / pristine["mri"].name))


def _case(task: Path, i: int, kind: str) -> Path:
    sub = "imagesTr" if kind == "image" else "labelsTr"
    return task / sub / f"synmri_{i:03d}.nii.gz"


def _rewrite(path: Path, array=None, affine=None) -> None:
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj) if array is None else array
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), str(path))


def _problem_for(problems: list[str], path: Path) -> str:
    hits = [p for p in problems if str(path) in p]
    assert len(hits) == 1, f"expected one problem naming {path}, got {problems}"
    return hits[0]


def test_clean_task_loads(task):
    info = load_task(task)
    assert info.name == "SyntheticMRI" and info.num_classes == 3 and info.in_channels == 1 and not info.is_ct
    assert info.labels == {0: "background", 1: "head", 2: "tail"}
    assert len(info.training) == 6 and len(info.test) == 1
    assert all(c["image"].is_absolute() and c["label"].exists() for c in info.training)
    assert validate_task(task) == []


def test_each_broken_case_names_file_and_fix(task):
    missing_img, missing_lbl = _case(task, 0, "image"), _case(task, 1, "label")
    missing_img.unlink()
    missing_lbl.unlink()
    shape_lbl = _case(task, 2, "label")
    _rewrite(shape_lbl, np.zeros((16, 16, 12), np.uint8))
    affine_lbl = _case(task, 3, "label")
    aff = nib.load(str(affine_lbl)).affine.copy()
    aff[:3, :3] *= 2.0  # wrong spacing
    _rewrite(affine_lbl, affine=aff)
    values_lbl = _case(task, 4, "label")
    lbl = np.asanyarray(nib.load(str(values_lbl)).dataobj).copy()
    lbl[0, 0, 0] = 7
    _rewrite(values_lbl, lbl)
    trunc_img = _case(task, 5, "image")
    raw = trunc_img.read_bytes()
    trunc_img.write_bytes(raw[: len(raw) // 2])
    garbage = task / "imagesTs" / "synmri_006.nii.gz"
    garbage.write_bytes(b"this is not a nifti file at all" * 20)

    problems = validate_task(task)
    assert len(problems) == 7, problems
    assert "missing" in _problem_for(problems, missing_img) and "re-extract" in _problem_for(problems, missing_img)
    assert "missing" in _problem_for(problems, missing_lbl)
    assert "(16, 16, 12)" in _problem_for(problems, shape_lbl) and "resample" in _problem_for(problems, shape_lbl)
    msg = _problem_for(problems, affine_lbl)
    assert "affine" in msg and "[2.0, 2.0, 2.5]" in msg and "[1.0, 1.0, 1.25]" in msg
    msg = _problem_for(problems, values_lbl)
    assert "[7]" in msg and "not declared" in msg and "'labels'" in msg
    assert "truncated" in _problem_for(problems, trunc_img)
    assert "not a readable NIfTI" in _problem_for(problems, garbage)

    with pytest.raises(DatasetError) as err:
        load_task(task)
    assert isinstance(err.value, ValueError)
    assert err.value.problems == problems
    text = str(err.value)
    assert text.startswith("7 problem(s)") and len(text.splitlines()) == 8  # header + one line per problem
    # Header-only validation is cheap and still sees shape, affine and missing files.
    quick = validate_task(task, check_contents=False)
    assert any(str(shape_lbl) in p for p in quick) and any(str(affine_lbl) in p for p in quick)
    assert not any(str(values_lbl) in p for p in quick)


def test_dataset_json_problems(task):
    (task / "dataset.json").unlink()
    problems = validate_task(task)
    assert len(problems) == 1 and str(task / "dataset.json") in problems[0]
    (task / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_task(task)
    assert "does not exist" in validate_task(task / "nope")[0]


def test_dataset_json_key_and_count_problems(task):
    meta = json.loads((task / "dataset.json").read_text())
    del meta["licence"]
    meta["numTraining"] = 99
    meta["labels"] = {"1": "head", "2": "tail"}
    (task / "dataset.json").write_text(json.dumps(meta))
    problems = validate_task(task)
    text = "\n".join(problems)
    assert "'licence' is missing" in text and "numTraining is 99 but 6" in text and "background" in text
    # Background was undeclared, so every label file with zeros is flagged too.
    assert sum("not declared" in p for p in problems) == 6
    del meta["training"]
    (task / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="'training' is missing"):
        load_task(task)


def test_4d_image_channel_first_and_channel_count(pristine, tmp_path):
    src = pristine["mri4d"]
    info = load_task(src)
    assert info.in_channels == 2 and info.tensor_image_size == "4D"
    raw = nib.load(str(info.training[0]["image"])).shape
    assert raw == (16, 16, 16, 2)  # modalities last on disk, as MSD stores them
    data, affine = read_image(info.training[0]["image"])
    assert data.shape == (2, 16, 16, 16) and affine.shape == (4, 4)
    task = Path(shutil.copytree(src, tmp_path / src.name))
    meta = json.loads((task / "dataset.json").read_text())
    meta["modality"] = {"0": "T1w", "1": "T2w", "2": "FLAIR"}
    (task / "dataset.json").write_text(json.dumps(meta))
    problems = validate_task(task, check_contents=False)
    assert len(problems) == 6 and all("2 channels" in p and "3 modalities" in p for p in problems)


def test_label_with_interpolated_values(task):
    path = _case(task, 0, "label")
    lbl = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float32)
    lbl[lbl == 2] = 1.5
    _rewrite(path, lbl)
    problem = _problem_for(validate_task(task), path)
    assert "non-integer" in problem and "nearest" in problem


def test_split_is_seeded_disjoint_and_k_fold():
    cases = [f"case{i}" for i in range(23)]
    folds = [make_split(cases, n_folds=5, fold=k, seed=3) for k in range(5)]
    vals = [set(v) for _, v in folds]
    assert sorted(len(v) for v in vals) == [4, 4, 5, 5, 5]
    assert set().union(*vals) == set(cases) and sum(len(v) for v in vals) == 23
    for train, val in folds:
        assert set(train).isdisjoint(val) and len(train) + len(val) == 23
    assert make_split(cases, fold=2, seed=3) == folds[2]
    assert make_split(cases, fold=2, seed=4) != folds[2]
    for bad in ({"n_folds": 1}, {"fold": 5}, {"n_folds": 30}):
        with pytest.raises(ValueError):
            make_split(cases, **bad)


def test_split_save_load_round_trip(task, tmp_path):
    info = load_task(task)
    train, val = make_split(info.training, n_folds=3, fold=1, seed=0)
    path = save_split(tmp_path / "run" / "split.json", train, val, fold=1, seed=0)
    assert load_split(path) == (train, val)
    assert json.loads(path.read_text())["meta"] == {"fold": 1, "seed": 0}
    # get_or_make_split keeps what is on disk: a resumed run trains on the same cases...
    again = get_or_make_split(info.training, path, n_folds=3, fold=1, seed=0)
    assert again == (train, val)
    # ...and refuses a stored split made for another fold or seed instead of training on it
    with pytest.raises(ValueError, match=r"fold=1, seed=0, but fold=0, seed=9 was asked for"):
        get_or_make_split(info.training, path, n_folds=3, fold=0, seed=9)
    fresh = get_or_make_split(info.training, tmp_path / "run2" / "split.json", n_folds=3, fold=0, seed=9)
    assert fresh == make_split(info.training, n_folds=3, fold=0, seed=9)
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="bad.json"):
        load_split(tmp_path / "bad.json")


def test_voxel_spacing_reads_column_norms_of_any_affine():
    from mednext_lite.data import voxel_spacing

    # an oblique 0.8 x 1.2 x 2.5 mm grid: rotated 30 degrees about z, the first axis flipped
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-0.8, 1.2, 2.5])
    affine[:3, 3] = [10.0, -4.0, 7.0]
    np.testing.assert_allclose(voxel_spacing(affine), [0.8, 1.2, 2.5], rtol=1e-12)
    np.testing.assert_allclose(voxel_spacing(torch.as_tensor(affine)[None], spatial_dims=2), [0.8, 1.2])
    np.testing.assert_allclose(voxel_spacing(np.diag([0.5, 0.7, 1.0])), [0.5, 0.7])  # a 2D (3x3) affine
