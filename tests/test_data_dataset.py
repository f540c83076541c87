"""dataset.json reader/validator on real NIfTI files (errors, warnings, releases' spellings), the
inspect door, and seeded k-fold splits."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mednext_lite.data import (
    DatasetError,
    DatasetWarning,
    check_task,
    get_or_make_split,
    load_split,
    load_task,
    make_split,
    make_synthetic_task,
    read_image,
    save_split,
    validate_task,
)
from mednext_lite.data.commands import inspect_main
from mednext_lite.data.dataset import MAX_VOXELS, label_problem, nifti_header

# The descriptive keys as Task07_Pancreas releases them (note "relase").
RELEASED = {"name": "Pancreas", "description": "Pancreas and cancer segmentation",
            "reference": "Memorial Sloan Kettering Cancer Center", "licence": "CC-BY-SA 4.0",
            "relase": "1.0 04/05/2018"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    return {fl: make_synthetic_task(root, n_train=6, n_test=1, flavour=fl, shape=(16, 16, 16), progress=False)
            for fl in ("mri", "mri4d")}


@pytest.fixture
def task(pristine, tmp_path):
    return Path(shutil.copytree(pristine["mri"], tmp_path / pristine["mri"].name))


def _case(task: Path, i: int, kind: str) -> Path:
    sub = {"image": "imagesTr", "label": "labelsTr", "test": "imagesTs"}[kind]
    return task / sub / f"synmri_{i:03d}.nii.gz"


def _rewrite(path: Path, array=None, affine=None) -> None:
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj) if array is None else array
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), str(path))


def _data(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj).copy()


def _meta(task: Path) -> dict:
    return json.loads((task / "dataset.json").read_text())


def _write_meta(task: Path, meta: dict) -> None:
    (task / "dataset.json").write_text(json.dumps(meta))


def _line_for(lines: list[str], path: Path) -> str:
    hits = [p for p in lines if str(path) in p]
    assert len(hits) == 1, f"expected one line naming {path}, got {lines}"
    return hits[0]


def test_clean_task_loads_without_warnings(task):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        info = load_task(task, strict=True)
    assert info.name == "SyntheticMRI" and info.num_classes == 3 and info.in_channels == 1 and not info.is_ct
    assert info.labels == {0: "background", 1: "head", 2: "tail"}
    assert len(info.training) == 6 and len(info.test) == 1 and info.warnings == []
    assert all(c["image"].is_absolute() and c["label"].exists() for c in info.training)
    report = check_task(task)
    assert report.ok and report.errors == [] and report.warnings == [] and validate_task(task) == []


@pytest.mark.parametrize("descriptive", ["relase", "release", "none"])
def test_release_spellings_and_bare_dataset_json_accepted(pristine, tmp_path, descriptive):
    for flavour, size in (("mri", "3D"), ("mri4d", "4D")):
        task = Path(shutil.copytree(pristine[flavour], tmp_path / flavour))
        meta = _meta(task)
        if descriptive == "none":  # no descriptive key at all, not even tensorImageSize or test
            meta = {k: meta[k] for k in ("training", "labels", "modality")}
        elif descriptive == "relase":
            meta = {**{k: v for k, v in meta.items() if k != "release"}, **RELEASED}
        _write_meta(task, meta)  # "release" as the synthetic writer spells it
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            info = load_task(task, strict=True)
        assert info.tensor_image_size == size and len(info.training) == 6
        assert len(info.test) == (0 if descriptive == "none" else 1)
        assert set(info.raw) & {"relase", "release"} == ({descriptive} - {"none"})


def test_tensor_image_size_inferred_from_first_image_header(pristine, tmp_path):
    task = Path(shutil.copytree(pristine["mri4d"], tmp_path / "t"))
    meta = _meta(task)
    del meta["tensorImageSize"]
    meta["modality"] = {"0": "T1w"}  # the header, not the modality count, decides
    _write_meta(task, meta)
    assert load_task(task, validate=False).tensor_image_size == "4D"
    assert "tensorImageSize" not in _meta(task)


def test_every_error_listed_at_once_naming_the_file(task):
    missing_img, missing_lbl = _case(task, 0, "image"), _case(task, 1, "label")
    missing_img.unlink()
    missing_lbl.unlink()
    shape_lbl = _case(task, 2, "label")
    _rewrite(shape_lbl, np.zeros((16, 16, 12), np.uint8))
    values_lbl = _case(task, 3, "label")
    lbl = _data(values_lbl)
    lbl[0, 0, 0] = 7
    _rewrite(values_lbl, lbl)
    nan_img = _case(task, 4, "image")
    img = _data(nan_img)
    img[1, 2, 3], img[4, 5, 6] = np.nan, np.inf
    _rewrite(nan_img, img)
    trunc_img = _case(task, 5, "image")
    raw = trunc_img.read_bytes()
    trunc_img.write_bytes(raw[: len(raw) // 2])
    garbage = _case(task, 6, "test")
    garbage.write_bytes(b"this is not a nifti file at all" * 20)

    report = check_task(task)
    assert len(report.errors) == 7 and report.warnings == [], report.errors
    assert "missing" in _line_for(report.errors, missing_img) and "re-extract" in _line_for(report.errors, missing_img)
    assert "missing" in _line_for(report.errors, missing_lbl)
    msg = _line_for(report.errors, shape_lbl)
    assert "(16, 16, 12)" in msg and "resample" in msg
    msg = _line_for(report.errors, values_lbl)
    assert "[7]" in msg and "not declared" in msg and "'labels'" in msg
    msg = _line_for(report.errors, nan_img)
    assert "2 NaN/inf voxel(s)" in msg and "replace them" in msg
    assert "truncated" in _line_for(report.errors, trunc_img)
    assert "not a readable NIfTI" in _line_for(report.errors, garbage)

    with pytest.raises(DatasetError) as err:
        load_task(task)
    assert isinstance(err.value, ValueError) and err.value.problems == report.errors
    text = str(err.value)
    assert text.startswith("7 problem(s)") and len(text.splitlines()) == 8  # header + one line per problem
    assert validate_task(task) == report.errors
    # Header-only validation is cheap and still sees shapes and missing files, not voxel values.
    quick = check_task(task, check_contents=False).errors
    assert any(str(shape_lbl) in p for p in quick) and any(str(missing_img) in p for p in quick)
    assert not any(str(values_lbl) in p or str(nan_img) in p for p in quick)


def test_warnings_name_the_case_and_the_figure(task):
    affine_lbl = _case(task, 0, "label")
    aff = nib.load(str(affine_lbl)).affine.copy()
    aff[:3, 3] += 2.0  # a 2 mm shift: beyond rounding
    _rewrite(affine_lbl, affine=aff)
    rounded_lbl = _case(task, 1, "label")
    aff = nib.load(str(rounded_lbl)).affine.copy()
    aff[:3, 3] += 1e-5  # float32 round-off: not worth a line
    _rewrite(rounded_lbl, affine=aff)
    float_lbl = _case(task, 2, "label")
    _rewrite(float_lbl, _data(float_lbl).astype(np.float32))
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub / "._synmri_000.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    (task / "._dataset.json").write_bytes(b"\x00\x05\x16\x07")
    meta = _meta(task)
    meta["numTraining"], meta["numTest"] = 99, 3
    _write_meta(task, meta)

    report = check_task(task)
    assert report.errors == [] and len(report.warnings) == 8, report.warnings
    montage = str(task / "montage.png")
    msg = _line_for(report.warnings, affine_lbl)
    assert "affine differs" in msg and "origin" in msg and "synmri_000" in msg and montage in msg
    msg = _line_for(report.warnings, float_lbl)
    assert "float32" in msg and "[0, 1, 2]" in msg and "uint8" in msg and montage in msg
    assert not any(str(rounded_lbl) in w for w in report.warnings)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        line = next(w for w in report.warnings if w.startswith(f"{task / sub}:"))
        assert "1 macOS '._' AppleDouble file(s) (._synmri_000.nii.gz)" in line and "-delete" in line
    assert any(w.startswith(f"{task}: 1 macOS '._' AppleDouble file(s) (._dataset.json)") for w in report.warnings)
    text = "\n".join(report.warnings)
    assert "numTraining is 99 but 'training' lists 6 entries" in text and "numTest is 3 but 'test' lists 1" in text
    assert [c["label"] for c in report.flagged] == [affine_lbl, float_lbl]  # drawn first in the montage

    with pytest.warns(DatasetWarning, match="8 warning") as caught:
        info = load_task(task)
    assert info.warnings == report.warnings and len(caught) == 1
    assert validate_task(task) == [] and validate_task(task, strict=True) == report.warnings
    with pytest.raises(DatasetError) as err:
        load_task(task, strict=True)
    assert err.value.problems == report.warnings


def test_paths_leaving_the_task_folder_are_refused(task, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(_case(task, 0, "image"), outside / "a.nii.gz")
    shutil.copy(_case(task, 1, "label"), outside / "b.nii.gz")
    shutil.copy(_case(task, 2, "image"), outside / "c.nii.gz")
    link = task / "imagesTr" / "linked.nii.gz"
    link.symlink_to(outside / "c.nii.gz")
    meta = _meta(task)
    meta["training"][0]["image"] = "../elsewhere/a.nii.gz"
    meta["training"][1]["label"] = str(outside / "b.nii.gz")
    meta["training"][2]["image"] = "./imagesTr/linked.nii.gz"
    _write_meta(task, meta)
    for errors in (check_task(task).errors, check_task(task, check_contents=False).errors):
        assert len(errors) == 3, errors
        assert "'../elsewhere/a.nii.gz' leads outside the task folder" in errors[0]
        assert "is an absolute path" in errors[1] and "'./imagesTr/b.nii.gz'" in errors[1]
        assert "'./imagesTr/linked.nii.gz' leads outside" in errors[2] and str(outside / "c.nii.gz") in errors[2]
    # Even a reader that skips validation never follows them.
    with pytest.raises(DatasetError, match="3 problem"):
        load_task(task, validate=False)


def test_duplicate_cases_are_refused(task):
    meta = _meta(task)
    meta["training"].append({"image": "imagesTr/synmri_000.nii.gz", "label": "./labelsTr/synmri_005.nii.gz"})
    meta["test"].append("./imagesTr/synmri_001.nii.gz")  # a training image as a test image leaks too
    meta["numTraining"], meta["numTest"] = 7, 2
    _write_meta(task, meta)
    errors = check_task(task).errors
    assert len(errors) == 3, errors
    assert "listed twice in dataset.json (training[0].image and training[6].image)" in _line_for(
        errors, _case(task, 0, "image"))
    assert "(training[5].label and training[6].label)" in _line_for(errors, _case(task, 5, "label"))
    assert "(training[1].image and test[1])" in _line_for(errors, _case(task, 1, "image"))


def test_labels_must_be_0_to_n_minus_1(task):
    meta = _meta(task)
    meta["labels"] = {"0": "background", "1": "head", "5": "tail"}
    _write_meta(task, meta)
    for label_file, old, new in ((_case(task, i, "label"), 2, 5) for i in range(6)):
        lbl = _data(label_file)
        lbl[lbl == old] = new
        _rewrite(label_file, lbl)
    with pytest.raises(DatasetError) as err:
        load_task(task, validate=False)  # refused by dataset.json alone: the loss would fail later
    (line,) = err.value.problems
    assert "declares values [0, 1, 5]" in line and "0..2" in line and "renumber (5 -> 2)" in line
    assert check_task(task).errors == [line]  # the files hold only declared values


def test_paths_no_file_system_can_hold_are_problem_lines(task, capsys):
    # A NUL character and a 300-character name used to escape as ValueError / OSError (ENAMETOOLONG).
    meta = _meta(task)
    meta["training"][0]["image"] = "./imagesTr/synmri\x00000.nii.gz"
    meta["training"][1]["label"] = "./labelsTr/" + "x" * 300 + ".nii.gz"
    meta["test"][0] = "./imagesTs/" + "y" * 300
    meta["training"][2] = ["not", ["a", ["dict", ["deep"]]]] * 100
    _write_meta(task, meta)
    json_path = str(task / "dataset.json")
    for errors in (check_task(task).errors, check_task(task, check_contents=False).errors):
        assert len(errors) == 4, errors
        assert all(line.startswith(json_path) and "\n" not in line and len(line) < 600 for line in errors)
        nul, long_label, bad_entry, long_test = errors
        assert "training[0].image = './imagesTr/synmri\\x00000.nii.gz' holds a NUL character" in nul
        assert "training[1].label = './labelsTr/xxx" in long_label and "name of 307 bytes" in long_label
        assert "training[2] = ['not', [" in bad_entry and "needs both 'image' and 'label'" in bad_entry
        assert "test[0] = './imagesTs/yyy" in long_test and "name of 300 bytes" in long_test
    with pytest.raises(DatasetError, match="4 problem"):
        load_task(task, validate=False)
    assert inspect_main([str(task)]) == 2
    assert "holds a NUL character" in capsys.readouterr().err


def test_dataset_json_nested_too_deeply_is_a_problem_line(task):
    (task / "dataset.json").write_text('{"training": ' + "[" * 100_000 + "]" * 100_000 + "}")
    (line,) = validate_task(task)
    assert line.startswith(str(task / "dataset.json")) and "nested deeper" in line and "RecursionError" in line
    with pytest.raises(DatasetError, match="nested deeper"):
        load_task(task)


def test_dataset_json_problems(task):
    (task / "dataset.json").unlink()
    problems = validate_task(task)
    assert len(problems) == 1 and str(task / "dataset.json") in problems[0]
    (task / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_task(task)
    assert "does not exist" in validate_task(task / "nope")[0]


def test_required_keys_and_background(task):
    meta = _meta(task)
    meta["labels"] = {"1": "head", "2": "tail"}
    _write_meta(task, meta)
    errors = check_task(task).errors
    assert "no background entry" in errors[0]
    # Background was undeclared, so every label file with zeros is flagged too.
    assert sum("not declared" in p for p in errors) == 6 and len(errors) == 7
    for key in ("training", "labels", "modality"):
        broken = {k: v for k, v in meta.items() if k != key}
        _write_meta(task, broken)
        with pytest.raises(DatasetError, match=f"key '{key}' is missing"):
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
    meta = _meta(task)
    meta["modality"] = {"0": "T1w", "1": "T2w", "2": "FLAIR"}
    _write_meta(task, meta)
    problems = validate_task(task, check_contents=False)
    assert len(problems) == 7 and all("2 channels" in p and "3 modalities" in p for p in problems)  # 6 + 1 test


def test_label_with_interpolated_values(task):
    path = _case(task, 0, "label")
    lbl = _data(path).astype(np.float32)
    lbl[lbl == 2] = 1.5
    _rewrite(path, lbl)
    report = check_task(task)
    problem = _line_for(report.errors, path)
    assert "non-integer" in problem and "nearest" in problem
    assert report.warnings == []  # an error, not also the float-dtype warning


def test_nifti_header_limit_is_inclusive(tmp_path):
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.uint8), np.eye(4)), str(path))
    assert nifti_header(path, max_voxels=120).shape == (4, 5, 6)  # exactly at the limit: read
    with pytest.raises(ValueError, match=r"shape \(4, 5, 6\) \(120 values\), above the limit of 119"):
        nifti_header(path, max_voxels=119)
    four_d = tmp_path / "img4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 3, 4, 2), np.float32), np.eye(4)), str(four_d))
    assert nifti_header(four_d, max_voxels=48).shape == (2, 3, 4, 2)  # channels count as values
    with pytest.raises(ValueError, match="48 values"):
        nifti_header(four_d, max_voxels=47)
    assert MAX_VOXELS == 2**31


def test_label_problem_names_the_first_bad_value_and_counts_them():
    assert label_problem(np.array([[0, 1], [2, 1]], np.uint8)) is None
    assert label_problem(np.array([0.0, 1.0, 2.0], np.float32)) is None  # class numbers stored as floats
    assert label_problem(np.array([0.0, np.nan, np.inf, np.nan])) == (
        "holds inf, which is not an integer label: 3 label value(s) are not finite (NaN or inf)")
    assert label_problem(np.array([0.0, 1.5, 0.25, 1.5])) == (
        "holds 0.25, which is not an integer label: 3 label value(s) are non-integer (fractions, as linear "
        "interpolation leaves them)")
    assert label_problem(np.array(["a", "b"])) == "has dtype <U1, which holds no class numbers"


def test_header_claiming_32767_cubed_is_refused_before_allocation(task):
    path = _case(task, 3, "image")
    img = nib.load(str(path))
    header = img.header.copy()
    header.set_data_shape((32767, 32767, 32767))  # 3.5e13 voxels: 140 TB of float32
    small = np.asanyarray(img.dataobj)
    # The header and the 16^3 voxels as nibabel lays them out, compressed as the task stores them.
    offset = int(header["vox_offset"])
    blob = header.binaryblock + b"\x00" * (offset - len(header.binaryblock)) + small.astype(np.float32).tobytes("F")
    path.write_bytes(gzip.compress(blob))
    assert nib.load(str(path)).shape == (32767, 32767, 32767)
    report = check_task(task)
    line = _line_for([e for e in report.errors if "header claims" in e], path)
    assert "(32767, 32767, 32767)" in line and "re-export" in line
    with pytest.raises(ValueError, match="header claims shape"):
        read_image(path)


def test_inspect_sections_and_exit_codes(task, capsys):
    float_lbl = _case(task, 1, "label")
    _rewrite(float_lbl, _data(float_lbl).astype(np.float32))
    assert inspect_main([str(task), "--n-montage", "1"]) == 0
    out = capsys.readouterr().out
    assert "warnings    1: usable" in out and f"warning: {float_lbl}" in out and "ready to train" in out
    assert (task / "montage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _case(task, 0, "label").unlink()
    assert inspect_main([str(task)]) == 2
    captured = capsys.readouterr()
    assert "errors      1: the task cannot be used" in captured.err and "synmri_000.nii.gz" in captured.err
    assert "UNUSABLE" in captured.err and f"warning: {float_lbl}" in captured.out


def test_inspect_validates_a_task_name_before_looking_under_the_root(task, tmp_path, capsys, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.chdir(root)  # a relative path is the user's own; a name is looked up under --data-dir
    assert inspect_main([task.name, "--data-dir", str(task.parent), "--n-montage", "1"]) == 0
    capsys.readouterr()
    for bad, why in [(".cache", "starts with '.'"), ("", "is empty"), ("x" * 300, "longer than a folder name"),
                     ("a\x01b", "control character")]:
        assert inspect_main([bad, "--data-dir", str(root)]) == 2, bad
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("inspect_task.py: error: task name") and why in err, err
    assert sorted(root.iterdir()) == []


def test_inspect_replaces_a_symlinked_montage_and_spares_its_target(task, tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("a user's file")
    (task / "montage.png").symlink_to(precious)
    assert inspect_main([str(task), "--n-montage", "1"]) == 0
    montage = task / "montage.png"
    assert not montage.is_symlink() and montage.read_bytes()[:4] == b"\x89PNG"
    assert precious.read_text() == "a user's file"
    assert sorted(p.name for p in task.iterdir() if p.name.startswith(".")) == []  # no temporary left


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


def test_save_split_replaces_a_symlink_instead_of_writing_through_it(tmp_path):
    precious = tmp_path / "precious.json"
    precious.write_text("keep me")
    link = tmp_path / "run" / "split.json"
    link.parent.mkdir()
    link.symlink_to(precious)
    save_split(link, ["a"], ["b"], fold=0)
    assert not link.is_symlink() and load_split(link) == ([Path("a")], [Path("b")])
    assert precious.read_text() == "keep me" and os.listdir(link.parent) == ["split.json"]


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
