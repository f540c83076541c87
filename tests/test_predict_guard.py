"""What predict refuses before it writes: outputs in, around or inside an input or a task's data
folders (by identity, whatever their names), output name collisions and existing files, and
inputs whose shape the model cannot take."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from label_files import mini_task, renamed_task, tree_bytes, write_nifti

from mednext_lite.data.dataset import MAX_VOXELS
from mednext_lite.predict_guard import check_input_image, plan_outputs


def test_plan_outputs_refuses_every_output_that_could_touch_an_input(tmp_path):
    task = mini_task(tmp_path / "Task99")
    image = task / "imagesTs" / "case_001.nii.gz"
    elsewhere = write_nifti(tmp_path / "scans" / "a.nii.gz", np.zeros((4, 4, 4), np.float32))
    refused = {
        tmp_path / "scans": "is the input folder",
        tmp_path / "scans" / "sub": "is inside the input folder",
        tmp_path: "contains the input folder",
    }
    for out, words in refused.items():
        with pytest.raises(ValueError, match=words):
            plan_outputs([elsewhere], out)
    for out in (task / "imagesTs", task / "labelsTr"):  # the input's folder, and the labels beside it
        with pytest.raises(ValueError, match=f"is {out}, a data folder of the task {task}"):
            plan_outputs([image], out)
    with pytest.raises(ValueError, match="contains .*imagesTs, a data folder of the task"):
        plan_outputs([image], task)
    # A task's data folder is recognised by its dataset.json even when no input comes from it,
    # and the folders of an explicit task are guarded wherever the inputs are.
    with pytest.raises(ValueError, match="is inside .*labelsTr, a data folder of the task"):
        plan_outputs([elsewhere], task / "labelsTr" / "deeper")
    with pytest.raises(ValueError, match="is .*unlisted.labelsTr, a data folder of the task .*unlisted"):
        plan_outputs([elsewhere], tmp_path / "unlisted" / "labelsTr", task_dirs=[tmp_path / "unlisted"])
    (tmp_path / "link").symlink_to(tmp_path / "scans")
    with pytest.raises(ValueError, match="is the input folder"):
        plan_outputs([elsewhere], tmp_path / "link")
    with pytest.raises(ValueError, match="is the input folder"):
        plan_outputs([elsewhere], tmp_path / "other", protected=[tmp_path / "other"])
    # Fine: a folder of its own; the same file named twice is predicted once.
    plan = plan_outputs([elsewhere, tmp_path / "scans" / ".." / "scans" / "a.nii.gz"], tmp_path / "pred", suffix="_s")
    assert plan == [(elsewhere, tmp_path / "pred" / "a_s.nii.gz")]


def test_plan_outputs_guards_every_folder_a_task_lists_whatever_its_name(tmp_path):
    # Only folders literally named imagesTr/labelsTr/imagesTs used to be guarded: predicting the
    # images of a task that keeps its labels in labels/ into labels/ replaced every label.
    task = renamed_task(tmp_path / "T")
    before = tree_bytes(task)
    images = sorted((task / "scans").glob("*.nii.gz"))
    outside = write_nifti(tmp_path / "in" / "x.nii.gz", np.zeros((8, 8, 8), np.float32))
    for out in (task / "labels", task / "holdout", task / "labels" / "deeper", tmp_path / "store"):
        how = "is inside" if out.name == "deeper" else "is"
        folder = out.parent if out.name == "deeper" else out
        # found as the task of the inputs, as the task above the output, and as the given task
        for inputs, tasks in ((images, []), ([outside], []), ([outside], [task])):
            if out.parent == tmp_path and not tasks:
                continue  # the store lies outside the task: only a known task guards it
            with pytest.raises(ValueError, match=f"{how} {folder}, a data folder of the task {task}"):
                plan_outputs(inputs, out, overwrite=True, task_dirs=tasks)
    # A link to a data folder is that folder; the name rule ignores case (one folder on macOS).
    (tmp_path / "alias").symlink_to(task / "labels")
    with pytest.raises(ValueError, match=f"is {task / 'labels'}, a data folder"):
        plan_outputs([outside], tmp_path / "alias", task_dirs=[task])
    with pytest.raises(ValueError, match="LABELSTR, a data folder of the task"):
        plan_outputs([outside], task / "LABELSTR")
    assert tree_bytes(task) == before
    # The message's suggestion is a folder the plan accepts.
    with pytest.raises(ValueError, match="e.g. ") as err:
        plan_outputs(images, task / "labels")
    suggested = Path(str(err.value).rsplit("e.g. ", 1)[1])
    assert suggested == task / "predictions" and plan_outputs(images, suggested)


def test_plan_outputs_refuses_collisions_and_existing_files(tmp_path):
    data = np.zeros((4, 4, 4), np.float32)
    dup = [write_nifti(tmp_path / "in" / "dup.nii", data), write_nifti(tmp_path / "in" / "dup.nii.gz", data),
           write_nifti(tmp_path / "in" / "Case.nii.gz", data), write_nifti(tmp_path / "in" / "case.nii.gz", data)]
    with pytest.raises(ValueError, match="2 output name collision") as err:
        plan_outputs(dup, tmp_path / "pred")
    assert all(str(p) in str(err.value) for p in dup)
    out = tmp_path / "pred"
    out.mkdir()
    (out / "dup.nii.gz").write_bytes(b"earlier result")
    with pytest.raises(ValueError, match=r"1 output file\(s\) exist already .*--overwrite"):
        plan_outputs(dup[:1], out)
    assert plan_outputs(dup[:1], out, overwrite=True) == [(dup[0], out / "dup.nii.gz")]
    (out / "case.nii.gz").mkdir()
    with pytest.raises(ValueError, match="not a regular file"):
        plan_outputs(dup[3:], out, overwrite=True)
    with pytest.raises(ValueError, match="is not a folder"):
        plan_outputs(dup[:1], out / "dup.nii.gz")


def test_inputs_the_model_cannot_take_are_named_with_their_shape(tmp_path):
    flat = write_nifti(tmp_path / "flat.nii.gz", np.zeros((40, 30), np.float32))
    with pytest.raises(ValueError, match=r"flat\.nii\.gz: shape \(40, 30\) is a 2D image but this 3D model"):
        check_input_image(flat, 3, 1)
    with pytest.raises(ValueError, match=r"one-slice volume of shape \(40, 30, 1\)"):
        check_input_image(flat, 2, 1)
    two = write_nifti(tmp_path / "two.nii.gz", np.zeros((8, 8, 8, 2), np.float32))
    with pytest.raises(ValueError, match=r"shape \(8, 8, 8, 2\) does not fit.*needs a volume \(x, y, z\)"):
        check_input_image(two, 3, 1)
    assert check_input_image(two, 3, 2).shape == (8, 8, 8, 2)
    with pytest.raises(ValueError, match="not a readable NIfTI"):
        check_input_image(tmp_path / "missing.nii.gz")
    huge = write_nifti(tmp_path / "huge.nii", np.zeros((2, 2, 2), np.float32))
    raw = bytearray(huge.read_bytes())
    raw[40:56] = np.array([3, 32767, 32767, 32767, 1, 1, 1, 1], "<i2").tobytes()  # dim[] of the header
    huge.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=rf"32767, 32767, 32767.*above the limit of {MAX_VOXELS:,}"):
        check_input_image(huge)

