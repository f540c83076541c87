"""Scores of label maps: Dice and HD95 numbers, the score accumulator shared by training and
evaluation, and folder evaluation (geometry checks, resampling, refusals, reports)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from label_files import renamed_task, tree_bytes, write_nifti

from mednext_lite.metrics import (
    ScoreAccumulator,
    dice_scores,
    evaluate_folder,
    hd95_scores,
    write_csv,
)


def test_dice_and_hd95_numbers():
    label = torch.zeros(1, 1, 10, 10, 10, dtype=torch.long)
    label[0, 0, :5] = 1
    label[0, 0, 8:] = 2
    pred = label.clone()
    pred[0, 0, 4] = 0  # class 1: 400 of 500 voxels found -> Dice 800/900
    d = dice_scores(pred, label, 3)
    assert d.shape == (1, 2)
    assert d[0, 0].item() == pytest.approx(800 / 900)
    assert d[0, 1].item() == pytest.approx(1.0)
    # A class absent from both counts as perfect, never NaN.
    assert dice_scores(torch.zeros_like(label), torch.zeros_like(label), 3).tolist() == [[1.0, 1.0]]
    h = hd95_scores(pred, label, 3, spacing=(2.0, 1.0, 1.0))
    assert h[0, 1].item() == pytest.approx(0.0)
    assert h[0, 0].item() == pytest.approx(2.0)  # the missing slab is one voxel of 2 mm along x


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


def test_write_csv_fills_missing_cells(tmp_path):
    path = write_csv(tmp_path / "t.csv", [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25, "dice": 0.75}])
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows == [{"epoch": "1", "loss": "0.5", "dice": ""}, {"epoch": "2", "loss": "0.25", "dice": "0.75"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


# -- the score accumulator shared by training and evaluation ------------------------------------

def _two_cases() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Case 1: class 1 misses one slab of 100 voxels (Dice 800/900, HD95 2 mm at 2 mm spacing
    along x), class 2 exact. Case 2: class 1 exact, class 2 missing from the prediction (Dice 0,
    no finite HD95)."""
    label = torch.zeros(1, 1, 10, 10, 10, dtype=torch.long)
    label[0, 0, :5] = 1
    label[0, 0, 8:] = 2
    first = label.clone()
    first[0, 0, 4] = 0
    second = label.clone()
    second[second == 2] = 0
    return [(first, label), (second, label)]


def _same(a: dict, b: dict) -> bool:
    # NaN-aware equality of two summaries.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_score_accumulator_means_on_a_hand_made_case():
    (p1, y1), (p2, y2) = _two_cases()
    acc = ScoreAccumulator(3, hd95=True)
    dice, hd = acc.add(p1, y1, spacing=(2.0, 1.0, 1.0))
    assert dice == pytest.approx([800 / 900, 1.0]) and hd == pytest.approx([2.0, 0.0])
    dice, hd = acc.add(p2, y2, spacing=(2.0, 1.0, 1.0))
    assert dice == pytest.approx([1.0, 0.0]) and hd[0] == 0.0 and math.isnan(hd[1])
    s = acc.summary(["head", "tail"])
    assert s["n"] == 2
    assert s["dice"] == pytest.approx({"head": (800 / 900 + 1) / 2, "tail": 0.5})
    assert s["mean_dice"] == pytest.approx(((800 / 900 + 1) / 2 + 0.5) / 2)
    # The case without a finite HD95 for the tail is counted apart, not averaged in as 0 or inf.
    assert acc.hd95_count.tolist() == [2.0, 1.0]
    assert s["hd95"] == pytest.approx({"head": 1.0, "tail": 0.0})
    assert s["mean_hd95"] == pytest.approx(0.5)
    # A class no case has an HD95 for is NaN, and left out of the mean over classes.
    only = ScoreAccumulator(3, hd95=True)
    only.add(p2, y2)
    s = only.summary(["head", "tail"])
    assert s["hd95"]["head"] == 0.0 and math.isnan(s["hd95"]["tail"]) and s["mean_hd95"] == 0.0
    # Without hd95 the summary has no HD95 keys, and add returns None for them.
    plain = ScoreAccumulator(3)
    assert plain.add(p1, y1)[1] is None
    assert set(plain.summary(["head", "tail"])) == {"dice", "mean_dice", "n"}


def test_score_accumulator_packed_round_trip_and_shards_add_up():
    cases = _two_cases()
    whole, shards = ScoreAccumulator(3, hd95=True), [ScoreAccumulator(3, hd95=True) for _ in cases]
    for (p, y), shard in zip(cases, shards):
        whole.add(p, y, (2.0, 1.0, 1.0))
        shard.add(p, y, (2.0, 1.0, 1.0))
    packed = whole.packed()
    assert packed.dtype == torch.float64 and packed.shape == (7,)
    assert packed.tolist() == pytest.approx([800 / 900 + 1, 1.0, 2.0, 0.0, 2.0, 1.0, 2.0])
    back = ScoreAccumulator.unpack(packed, 3, hd95=True)
    assert torch.equal(back.packed(), packed) and back.n == 2
    assert _same(back.summary(["a", "b"]), whole.summary(["a", "b"]))
    # What an all_reduce does: the sum of the shards' vectors is the whole's.
    summed = ScoreAccumulator.unpack(shards[0].packed() + shards[1].packed(), 3, hd95=True)
    assert torch.allclose(summed.packed(), packed, rtol=0, atol=1e-12)
    assert _same(summed.summary(["a", "b"]), whole.summary(["a", "b"]))


def test_score_accumulator_refuses_what_does_not_fit():
    acc = ScoreAccumulator(3)
    with pytest.raises(ValueError, match=r"expected 7 values"):
        ScoreAccumulator.unpack(torch.zeros(5, dtype=torch.float64), 3, hd95=False)
    with pytest.raises(ValueError, match="case count of 1.5"):
        ScoreAccumulator.unpack(torch.tensor([0.0] * 6 + [1.5]), 3, hd95=False)
    with pytest.raises(ValueError, match=r"1 class name\(s\) \['a'\] for 2 foreground"):
        acc.summary(["a"])
    label = torch.zeros(2, 1, 4, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="one case at a time: got batches of 2"):
        acc.add(label, label)
    with pytest.raises(ValueError, match="num_classes=1"):
        ScoreAccumulator(1)
