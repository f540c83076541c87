"""Scoring a folder of predictions against labels: the numbers, the geometry checks and
resampling, refused label values, labels scored against themselves, and the reports written."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from label_files import renamed_task, tree_bytes, write_nifti

from mednext_lite.evaluation import evaluate_folder


def test_evaluate_folder(tmp_path):
    labels_dir, pred_dir = tmp_path / "labels", tmp_path / "pred"
    labels_dir.mkdir()
    pred_dir.mkdir()
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[:5] = 1
    ref[8:] = 2
    pred = ref.copy()
    pred[4] = 0
    nib.save(nib.Nifti1Image(ref, affine), str(labels_dir / "a.nii.gz"))
    nib.save(nib.Nifti1Image(pred, affine), str(pred_dir / "a.nii.gz"))
    res = evaluate_folder(pred_dir, [labels_dir / "a.nii.gz"], 3, class_names=["head", "tail"], hd95=True,
                          out_json=tmp_path / "ev.json")
    assert res["dice"]["head"] == pytest.approx(800 / 900)
    assert res["dice"]["tail"] == pytest.approx(1.0)
    assert res["mean_dice"] == pytest.approx((800 / 900 + 1) / 2)
    assert res["hd95"]["head"] == pytest.approx(1.0)
    assert (tmp_path / "ev.json").is_file() and (tmp_path / "ev.csv").is_file()
    nib.save(nib.Nifti1Image(ref, affine), str(labels_dir / "b.nii.gz"))
    with pytest.raises(ValueError, match="no prediction"):
        evaluate_folder(pred_dir, [labels_dir / "b.nii.gz"], 3)


def _geometry_case(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    ref = np.zeros((12, 10, 8), np.uint8)
    ref[2:5, 3:8, 1:6] = 1  # off-centre, so a flip moves it
    ref[7:11, 1:4, 2:7] = 2
    affine = np.array([[1.5, 0, 0, -20.0], [0, 1.0, 0, 5.0], [0, 0, 2.0, 30.0], [0, 0, 0, 1]])
    return write_nifti(tmp_path / "labels" / "c.nii.gz", ref, affine), ref, affine


def test_evaluate_refuses_predictions_on_another_grid_and_resamples_on_request(tmp_path):
    label, ref, affine = _geometry_case(tmp_path)
    # The same segmentation in world space, stored with axis 0 reversed.
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, ref.shape[0] - 1
    cases = {
        "world_equal": (ref[::-1].copy(), affine @ flip, "axis direction axis 0 \\(-1, 0, 0\\) vs \\(1, 0, 0\\)"),
        "naive_flip": (ref.copy(), affine @ flip, "axis direction"),
        "shifted": (ref.copy(), affine + np.pad(np.array([[0, 0, 0, 100.0]]), ((0, 3), (0, 0))),
                    r"origin \(80, 5, 30\) vs \(-20, 5, 30\) mm"),
        "spacing": (ref.copy(), affine @ np.diag([1, 1, 1.5, 1]), r"spacing \(1.5, 1, 3\) vs \(1.5, 1, 2\) mm"),
    }
    for name, (data, aff, words) in cases.items():
        pred = write_nifti(tmp_path / name / "c.nii.gz", data, aff)
        with pytest.raises(ValueError, match=words) as err:
            evaluate_folder(tmp_path / name, [label], 3)
        assert str(pred) in str(err.value) and str(label) in str(err.value) and "--resample" in str(err.value)
    res = evaluate_folder(tmp_path / "world_equal", [label], 3, resample=True, out_json=tmp_path / "ev.json")
    assert res["dice"] == {"class1": 1.0, "class2": 1.0} and res["cases"][0]["resampled"] is True
    naive = evaluate_folder(tmp_path / "naive_flip", [label], 3, resample=True)
    assert naive["mean_dice"] < 0.5  # the mirrored structures barely overlap the truth
    shifted = evaluate_folder(tmp_path / "shifted", [label], 3, resample=True)
    assert shifted["mean_dice"] == pytest.approx(0.0)  # 100 mm away: nothing of it lands on the label grid
    # Rounding in a stored affine is not a different grid.
    write_nifti(tmp_path / "rounded" / "c.nii.gz", ref, affine + 2e-4)
    assert evaluate_folder(tmp_path / "rounded", [label], 3)["mean_dice"] == 1.0


def test_evaluate_refuses_label_values_outside_the_classes(tmp_path):
    label, ref, affine = _geometry_case(tmp_path)
    pred = ref.copy()
    pred[0, 0, 0] = 5
    write_nifti(tmp_path / "pred" / "c.nii.gz", pred, affine)
    with pytest.raises(ValueError, match=r"c\.nii\.gz: holds label value\(s\) 5 outside 0\.\.2"):
        evaluate_folder(tmp_path / "pred", [label], 3)
    nan = ref.astype(np.float32)
    nan[1, 1, 1] = np.nan
    write_nifti(tmp_path / "nan" / "c.nii.gz", nan, affine)
    with pytest.raises(ValueError, match=r"1 label value\(s\) are not finite"):
        evaluate_folder(tmp_path / "nan", [label], 3)


def test_evaluate_refuses_to_score_labels_against_themselves(tmp_path):
    # `evaluate --predictions T/labelsTr` used to report Dice 1.0 and write its report into labelsTr.
    task = renamed_task(tmp_path / "T")
    labels = sorted((task / "labels").glob("c[12].nii.gz"))
    before = tree_bytes(task)
    for pred_dir in (task / "labels", tmp_path / "alias"):
        if pred_dir.name == "alias":
            pred_dir.symlink_to(task / "labels")
        with pytest.raises(ValueError, match=f"predictions folder {pred_dir} is {task / 'labels'}, a data folder of "
                                             f"the task {task}.*Dice 1.0"):
            evaluate_folder(pred_dir, labels, 2, out_json=pred_dir / "evaluation.json")
    # A hard link to each label, in a folder of its own: the same file on disk.
    (tmp_path / "pred").mkdir()
    for label in labels:
        os.link(label, tmp_path / "pred" / label.name)
    with pytest.raises(ValueError, match=f"prediction {tmp_path / 'pred' / 'c1.nii.gz'} is the label file {labels[0]} "
                                         "itself"):
        evaluate_folder(tmp_path / "pred", labels, 2)
    # Real predictions, but the report asked for inside the task's label folder.
    for label in labels:
        (tmp_path / "pred" / label.name).unlink()
        (tmp_path / "pred" / label.name).write_bytes(label.read_bytes())
    with pytest.raises(ValueError, match=f"report {task / 'labels' / 'ev.json'} would be written into "
                                         f"{task / 'labels'}, a data folder"):
        evaluate_folder(tmp_path / "pred", labels, 2, out_json=task / "labels" / "ev.json")
    assert tree_bytes(task) == before  # nothing written into the task
    assert evaluate_folder(tmp_path / "pred", labels, 2, out_json=tmp_path / "ev.json")["mean_dice"] == 1.0


def test_evaluate_refuses_fractional_and_damaged_label_maps(tmp_path):
    label, ref, affine = _geometry_case(tmp_path)
    blurred = ref.astype(np.float32)
    blurred[2:4, 3:5, 1:3] = 0.5  # 8 voxels left between classes by linear interpolation
    pred = write_nifti(tmp_path / "blurred" / "c.nii.gz", blurred, affine)
    with pytest.raises(ValueError, match=rf"{pred}: holds 0.5, which is not an integer label: 8 label value\(s\) "
                                         r"are non-integer"):
        evaluate_folder(tmp_path / "blurred", [label], 3)
    # The same classes stored as floats are scored as they are.
    write_nifti(tmp_path / "floats" / "c.nii.gz", ref.astype(np.float32), affine)
    assert evaluate_folder(tmp_path / "floats", [label], 3)["mean_dice"] == 1.0
    # A prediction cut off while being written: the same message as prediction gives a damaged input.
    raw = (tmp_path / "floats" / "c.nii.gz").read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "c.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"cut/c\.nii\.gz: the voxels cannot be read .*truncated or damaged"):
        evaluate_folder(tmp_path / "cut", [label], 3)
