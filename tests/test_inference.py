"""Inference: sliding-window stitching, 2D-on-3D, Dice numbers, NIfTI geometry round trip
(non-trivial affine, foreground cropping, reorientation) and folder evaluation."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from mednext_lite.data.transforms import get_transforms
from mednext_lite.data.validate import load_task
from mednext_lite.inference import (
    dice_scores,
    evaluate_folder,
    hd95_scores,
    predict_files,
    sliding_window_logits,
    window_size,
)
from mednext_lite.model import MedNeXt, MedNeXtConfig


class PointwiseNet(nn.Module):
    """Stand-in network whose prediction is known voxel by voxel: class 1 where the (normalised)
    input is positive, else 0. Any misalignment in cropping, padding, stitching or reorientation
    shows up as wrong voxels."""

    def __init__(self, spatial_dims: int = 3) -> None:
        super().__init__()
        self.config = MedNeXtConfig(spatial_dims=spatial_dims, num_classes=3)
        self.dummy = nn.Parameter(torch.zeros(()))
        self.calls = 0

    @contextlib.contextmanager
    def full_resolution_only(self):
        yield self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.cat([torch.zeros_like(x), x, torch.full_like(x, -1e3)], dim=1)


def test_window_size():
    assert window_size(32, 3) == (32, 32, 32)
    assert window_size((32, 48), 2) == (32, 48, 1)
    with pytest.raises(ValueError, match="does not fit"):
        window_size((32, 32, 32), 2, 5)


def test_sliding_window_stitches_exactly_and_switches_off_deep_supervision():
    x = torch.randn(1, 1, 40, 37, 21)
    net = PointwiseNet()
    logits = sliding_window_logits(net, x, (16, 16, 16), overlap=0.5, blend="gaussian")
    assert logits.shape == (1, 3, 40, 37, 21)
    assert torch.allclose(logits[:, 1], x[:, 0], atol=1e-5)  # every window agrees, so blending is exact
    assert net.calls > 1
    # A real MedNeXt with deep supervision returns ONE tensor here, and stays in training mode afterwards.
    model = MedNeXt(MedNeXtConfig(base_width=4, block_counts=1, num_classes=3, deep_supervision=True)).train()
    out = sliding_window_logits(model, torch.randn(1, 1, 40, 33, 20), 32, sw_batch_size=2)
    assert out.shape == (1, 3, 40, 33, 20) and model.training and model.deep_supervision
    with pytest.raises(ValueError, match="blend"):
        sliding_window_logits(net, x, 16, blend="median")


def test_2d_model_predicts_a_volume_slice_by_slice():
    model = MedNeXt(MedNeXtConfig(base_width=4, block_counts=1, num_classes=2, spatial_dims=2)).eval()
    vol = torch.randn(1, 1, 20, 35, 7)
    out = sliding_window_logits(model, vol, (32, 32))
    assert out.shape == (1, 2, 20, 35, 7)
    # Every voxel of every slice lands where it came from.
    net = PointwiseNet(spatial_dims=2)
    assert torch.allclose(sliding_window_logits(net, vol, (16, 16))[:, 1], vol[:, 0], atol=1e-5)


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


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    from mednext_lite.data.synthetic import make_synthetic_task

    return make_synthetic_task(tmp_path_factory.mktemp("data"), n_train=2, n_test=1, shape=(32, 32, 32),
                               progress=False)


def _oblique_image(path: Path) -> tuple[np.ndarray, np.ndarray]:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    shape = (37, 30, 23)
    image = np.zeros(shape, np.float32)
    image[4:33, 3:27, 2:20] = rng.normal(100, 30, (29, 24, 18)).clip(1, None)  # body; zero border gets cropped
    c, s = np.cos(0.4), np.sin(0.4)
    affine = np.array([[-0.8 * c, 0.9 * s, 0.0, 12.5],
                       [-0.8 * s, -0.9 * c, 0.0, -30.0],
                       [0.0, 0.0, 2.5, 7.25],
                       [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(image, affine), str(path))
    return image, affine


def test_predict_writes_labels_in_the_input_geometry(task, tmp_path):
    src = tmp_path / "in" / "case_007.nii.gz"
    image, affine = _oblique_image(src)
    info = load_task(task, validate=False)
    tf = get_transforms(info, mode="infer", patch_size=(16, 16, 16))
    (out,) = predict_files(PointwiseNet(), [src], tmp_path / "pred", tf, (16, 16, 16), progress=False)
    assert out == tmp_path / "pred" / "case_007.nii.gz"
    written = nib.load(str(out))
    assert written.shape == image.shape
    assert np.allclose(written.affine, affine, atol=1e-5)
    labels = np.asanyarray(written.dataobj)
    # z-score over the body keeps the order of intensities: label 1 exactly where the input is above
    # the body's mean, 0 elsewhere (including the cropped-away border).
    body = image > 0
    expected = (image > image[body].mean()).astype(np.uint8)
    assert labels.dtype == np.uint8
    assert (labels == expected).mean() == 1.0


def test_predict_with_a_real_model_and_resampling(task, tmp_path):
    src = tmp_path / "in" / "case.nii.gz"
    image, affine = _oblique_image(src)
    info = load_task(task, validate=False)
    tf = get_transforms(info, mode="infer", patch_size=(32, 32, 32), spacing=(1.5, 1.5, 1.5))
    model = MedNeXt(MedNeXtConfig(base_width=4, block_counts=1, num_classes=3)).eval()
    (out,) = predict_files(model, [src], tmp_path / "pred", tf, (32, 32, 32), suffix="_seg", progress=False)
    written = nib.load(str(out))
    assert out.name == "case_seg.nii.gz"
    assert written.shape == image.shape and np.allclose(written.affine, affine, atol=1e-5)
    assert set(np.unique(np.asanyarray(written.dataobj))) <= {0, 1, 2}


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


def test_predict_multimodal_4d_input_writes_a_3d_label_map(tmp_path):
    from mednext_lite.data.synthetic import make_synthetic_task

    task = make_synthetic_task(tmp_path / "data", n_train=2, n_test=1, flavour="mri4d", shape=(32, 32, 20),
                               progress=False)
    info = load_task(task, validate=False)
    (src,) = info.test
    original = nib.load(str(src))
    assert original.ndim == 4 and original.shape[-1] == 2
    tf = get_transforms(info, mode="infer", patch_size=(32, 32, 32))
    model = MedNeXt(MedNeXtConfig(in_channels=2, base_width=4, block_counts=1, num_classes=3)).eval()
    (out,) = predict_files(model, [src], tmp_path / "pred", tf, (32, 32, 32), progress=False)
    written = nib.load(str(out))
    assert written.shape == original.shape[:3] and np.allclose(written.affine, original.affine)


# -- outputs never touch inputs ---------------------------------------------------------------

def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def _mini_task(root: Path) -> Path:
    """An MSD-layout folder with one training case and one test image."""
    rng = np.random.default_rng(0)
    for sub in ("imagesTr", "imagesTs"):
        _nifti(root / sub / "case_001.nii.gz", rng.normal(size=(16, 16, 16)).astype(np.float32))
    _nifti(root / "labelsTr" / "case_001.nii.gz", (rng.random((16, 16, 16)) > 0.5).astype(np.uint8))
    (root / "dataset.json").write_text('{"labels": {"0": "background", "1": "fg"}, "modality": {"0": "MRI"}, '
                                       '"training": [{"image": "./imagesTr/case_001.nii.gz", '
                                       '"label": "./labelsTr/case_001.nii.gz"}], "test": ["./imagesTs/case_001.nii.gz"]}')
    return root


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_plan_outputs_refuses_every_output_that_could_touch_an_input(tmp_path):
    from mednext_lite.inference import plan_outputs

    task = _mini_task(tmp_path / "Task99")
    image = task / "imagesTs" / "case_001.nii.gz"
    elsewhere = _nifti(tmp_path / "scans" / "a.nii.gz", np.zeros((4, 4, 4), np.float32))
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


def _renamed_task(root: Path) -> Path:
    """A task whose dataset.json keeps its data in folders of its own naming: images in scans/,
    labels in labels/, test images in holdout/; a label that is a link into a store elsewhere."""
    rng = np.random.default_rng(0)
    for i in (1, 2):
        _nifti(root / "scans" / f"c{i}.nii.gz", rng.normal(size=(8, 8, 8)).astype(np.float32))
        _nifti(root / "labels" / f"c{i}.nii.gz", (rng.random((8, 8, 8)) > 0.5).astype(np.uint8))
    _nifti(root / "holdout" / "t1.nii.gz", rng.normal(size=(8, 8, 8)).astype(np.float32))
    _nifti(root.parent / "store" / "c3.nii.gz", np.zeros((8, 8, 8), np.uint8))
    (root / "labels" / "c3.nii.gz").symlink_to(root.parent / "store" / "c3.nii.gz")
    _nifti(root / "scans" / "c3.nii.gz", np.zeros((8, 8, 8), np.float32))
    meta = {"labels": {"0": "background", "1": "fg"}, "modality": {"0": "MRI"},
            "training": [{"image": f"./scans/c{i}.nii.gz", "label": f"./labels/c{i}.nii.gz"} for i in (1, 2, 3)],
            "test": ["./holdout/t1.nii.gz"]}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_plan_outputs_guards_every_folder_a_task_lists_whatever_its_name(tmp_path):
    # Only folders literally named imagesTr/labelsTr/imagesTs used to be guarded: predicting the
    # images of a task that keeps its labels in labels/ into labels/ replaced every label.
    from mednext_lite.inference import plan_outputs

    task = _renamed_task(tmp_path / "T")
    before = _tree_bytes(task)
    images = sorted((task / "scans").glob("*.nii.gz"))
    outside = _nifti(tmp_path / "in" / "x.nii.gz", np.zeros((8, 8, 8), np.float32))
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
    assert _tree_bytes(task) == before
    # The message's suggestion is a folder the plan accepts.
    with pytest.raises(ValueError, match="e.g. ") as err:
        plan_outputs(images, task / "labels")
    suggested = Path(str(err.value).rsplit("e.g. ", 1)[1])
    assert suggested == task / "predictions" and plan_outputs(images, suggested)


def test_the_checkpoints_task_is_guarded_too(tmp_path):
    from mednext_lite.inference import predict_from_checkpoint
    from mednext_lite.interop import save_checkpoint

    # The checkpoint's task keeps labels outside its folder (a layout the reader refuses, but the
    # guard protects what it lists all the same); nothing else says these files are a task's.
    task = _mini_task(tmp_path / "T")
    meta = json.loads((task / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/case_001.nii.gz", "label": "../shared_labels/case_002.nii.gz"})
    (task / "dataset.json").write_text(json.dumps(meta))
    _nifti(tmp_path / "shared_labels" / "case_002.nii.gz", np.zeros((16, 16, 16), np.uint8))
    ckpt = save_checkpoint(tmp_path / "m.pt", MedNeXt(MedNeXtConfig(base_width=4, block_counts=1, num_classes=2)),
                           train_config={"task_dir": str(task), "patch_size": [16, 16, 16]})
    image = _nifti(tmp_path / "in" / "case_002.nii.gz", np.zeros((16, 16, 16), np.float32))
    before = (tmp_path / "shared_labels" / "case_002.nii.gz").read_bytes()
    with pytest.raises(ValueError, match=f"is {tmp_path / 'shared_labels'}, a data folder of the task {task}"):
        predict_from_checkpoint(ckpt, [image], tmp_path / "shared_labels", overwrite=True, device="cpu", progress=False)
    assert (tmp_path / "shared_labels" / "case_002.nii.gz").read_bytes() == before


def test_a_checkpoint_setting_of_the_wrong_kind_is_named_with_the_file(tmp_path):
    from mednext_lite.inference import predict_from_checkpoint
    from mednext_lite.interop import save_checkpoint

    task = _mini_task(tmp_path / "T")
    model = MedNeXt(MedNeXtConfig(base_width=4, block_counts=1, num_classes=2))
    image = _nifti(tmp_path / "in" / "a.nii.gz", np.zeros((16, 16, 16), np.float32))
    bad = {"patch_size": (["16", "x", 16], (r"train_config\.patch_size = \['16', 'x', 16\] is not a list of "
                                            r"positive whole numbers.*--patch")),
           "spacing": ([1.0, float("nan"), 1.0], r"train_config\.spacing = \[1\.0, nan, 1\.0\].*--spacing"),
           "task_dir": (42, r"train_config\.task_dir = 42 is not a path: pass --task")}
    for key, (value, words) in bad.items():
        settings = {"task_dir": str(task), "patch_size": [16, 16, 16], key: value}
        ckpt = save_checkpoint(tmp_path / f"{key}.pt", model, train_config=settings)
        with pytest.raises(ValueError, match=rf"checkpoint {ckpt}: {words}"):
            predict_from_checkpoint(ckpt, [image], tmp_path / "pred", device="cpu", progress=False)
    assert not (tmp_path / "pred").exists()


def test_plan_outputs_refuses_collisions_and_existing_files(tmp_path):
    from mednext_lite.inference import plan_outputs

    data = np.zeros((4, 4, 4), np.float32)
    dup = [_nifti(tmp_path / "in" / "dup.nii", data), _nifti(tmp_path / "in" / "dup.nii.gz", data),
           _nifti(tmp_path / "in" / "Case.nii.gz", data), _nifti(tmp_path / "in" / "case.nii.gz", data)]
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


def test_predict_refuses_before_any_work_and_leaves_inputs_bit_identical(task, tmp_path):
    info = load_task(task, validate=False)
    tf = get_transforms(info, mode="infer", patch_size=(16, 16, 16))
    inputs = tmp_path / "in"
    _oblique_image(inputs / "a.nii.gz")
    before = _tree_bytes(inputs)
    net = PointwiseNet()
    with pytest.raises(ValueError, match="is the input folder"):
        predict_files(net, [inputs / "a.nii.gz"], inputs, tf, 16, progress=False)
    assert net.calls == 0 and _tree_bytes(inputs) == before
    # With overwrite, a link at an output path is replaced by a regular file, never written through.
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "a.nii.gz").symlink_to(victim)
    (out,) = predict_files(net, [inputs / "a.nii.gz"], tmp_path / "pred", tf, 16, overwrite=True, progress=False)
    assert victim.read_text() == "precious" and not out.is_symlink() and nib.load(str(out)).shape == (37, 30, 23)
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["a.nii.gz"]  # no temporary left behind


def test_non_finite_voxels_are_refused_or_cleaned_by_request(task, tmp_path):
    info = load_task(task, validate=False)
    tf = get_transforms(info, mode="infer", patch_size=(16, 16, 16))
    good, affine = _oblique_image(tmp_path / "in" / "good.nii.gz")
    bad = good.copy()
    bad[10, 10, 10], bad[11, 12, 5], bad[5, 5, 5] = np.nan, np.inf, -np.inf
    _nifti(tmp_path / "in" / "bad.nii.gz", bad, affine)
    files = [tmp_path / "in" / "good.nii.gz", tmp_path / "in" / "bad.nii.gz"]
    net = PointwiseNet()
    # The second file's NaN stops the batch before the first case is predicted or written.
    with pytest.raises(ValueError, match=r"bad\.nii\.gz: 3 of 25530 voxel value\(s\) are not finite.*--nan-to-num"):
        predict_files(net, files, tmp_path / "pred", tf, 16, progress=False)
    assert net.calls == 0 and not (tmp_path / "pred").exists()
    lines: list[str] = []
    written = predict_files(net, files, tmp_path / "pred", tf, 16, nan_to_num=0.0, report=lines.append, progress=False)
    assert lines == [f"{files[1]}: replaced 3 non-finite voxel value(s) with 0 (--nan-to-num)"]
    cleaned = bad.copy()
    cleaned[~np.isfinite(cleaned)] = 0.0
    (ref,) = predict_files(net, [_nifti(tmp_path / "in2" / "bad.nii.gz", cleaned, affine)], tmp_path / "ref", tf, 16,
                           progress=False)
    assert np.array_equal(np.asanyarray(nib.load(str(written[1])).dataobj), np.asanyarray(nib.load(str(ref)).dataobj))
    with pytest.raises(ValueError, match="finite number"):
        predict_files(net, files, tmp_path / "p3", tf, 16, nan_to_num=float("nan"), progress=False)


def test_inputs_the_model_cannot_take_are_named_with_their_shape(tmp_path):
    from mednext_lite.inference import check_input_image
    from mednext_lite.safe_io import MAX_VOXELS

    flat = _nifti(tmp_path / "flat.nii.gz", np.zeros((40, 30), np.float32))
    with pytest.raises(ValueError, match=r"flat\.nii\.gz: shape \(40, 30\) is a 2D image but this 3D model"):
        check_input_image(flat, 3, 1)
    with pytest.raises(ValueError, match=r"one-slice volume of shape \(40, 30, 1\)"):
        check_input_image(flat, 2, 1)
    two = _nifti(tmp_path / "two.nii.gz", np.zeros((8, 8, 8, 2), np.float32))
    with pytest.raises(ValueError, match=r"shape \(8, 8, 8, 2\) does not fit.*needs a volume \(x, y, z\)"):
        check_input_image(two, 3, 1)
    assert check_input_image(two, 3, 2).shape == (8, 8, 8, 2)
    with pytest.raises(ValueError, match="not a readable NIfTI"):
        check_input_image(tmp_path / "missing.nii.gz")
    huge = _nifti(tmp_path / "huge.nii", np.zeros((2, 2, 2), np.float32))
    raw = bytearray(huge.read_bytes())
    raw[40:56] = np.array([3, 32767, 32767, 32767, 1, 1, 1, 1], "<i2").tobytes()  # dim[] of the header
    huge.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=rf"32767, 32767, 32767.*above the limit of {MAX_VOXELS:,}"):
        check_input_image(huge)


# -- evaluation is geometric --------------------------------------------------------------------

def _geometry_case(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    ref = np.zeros((12, 10, 8), np.uint8)
    ref[2:5, 3:8, 1:6] = 1  # off-centre, so a flip moves it
    ref[7:11, 1:4, 2:7] = 2
    affine = np.array([[1.5, 0, 0, -20.0], [0, 1.0, 0, 5.0], [0, 0, 2.0, 30.0], [0, 0, 0, 1]])
    return _nifti(tmp_path / "labels" / "c.nii.gz", ref, affine), ref, affine


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
        pred = _nifti(tmp_path / name / "c.nii.gz", data, aff)
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
    _nifti(tmp_path / "rounded" / "c.nii.gz", ref, affine + 2e-4)
    assert evaluate_folder(tmp_path / "rounded", [label], 3)["mean_dice"] == 1.0


def test_evaluate_refuses_label_values_outside_the_classes(tmp_path):
    label, ref, affine = _geometry_case(tmp_path)
    pred = ref.copy()
    pred[0, 0, 0] = 5
    _nifti(tmp_path / "pred" / "c.nii.gz", pred, affine)
    with pytest.raises(ValueError, match=r"c\.nii\.gz: holds label value\(s\) 5 outside 0\.\.2"):
        evaluate_folder(tmp_path / "pred", [label], 3)
    nan = ref.astype(np.float32)
    nan[1, 1, 1] = np.nan
    _nifti(tmp_path / "nan" / "c.nii.gz", nan, affine)
    with pytest.raises(ValueError, match=r"1 label value\(s\) are not finite"):
        evaluate_folder(tmp_path / "nan", [label], 3)


def test_evaluate_refuses_to_score_labels_against_themselves(tmp_path):
    # `evaluate --predictions T/labelsTr` used to report Dice 1.0 and write its report into labelsTr.
    task = _renamed_task(tmp_path / "T")
    labels = sorted((task / "labels").glob("c[12].nii.gz"))
    before = _tree_bytes(task)
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
    assert _tree_bytes(task) == before  # nothing written into the task
    assert evaluate_folder(tmp_path / "pred", labels, 2, out_json=tmp_path / "ev.json")["mean_dice"] == 1.0


def test_write_csv_fills_missing_cells(tmp_path):
    import csv

    from mednext_lite.inference import write_csv

    path = write_csv(tmp_path / "t.csv", [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25, "dice": 0.75}])
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows == [{"epoch": "1", "loss": "0.5", "dice": ""}, {"epoch": "2", "loss": "0.25", "dice": "0.75"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]
