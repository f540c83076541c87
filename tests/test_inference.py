"""Prediction: sliding-window stitching, 2D-on-3D, NIfTI geometry round trip (non-trivial affine,
foreground cropping, reorientation), checkpoint settings, and refusals before any work."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from label_files import mini_task, tree_bytes, write_nifti
from torch import nn

from mednext_lite.checkpoint import save_checkpoint
from mednext_lite.data.transforms import get_transforms
from mednext_lite.data.validate import load_task
from mednext_lite.inference import (
    evaluate_model,
    predict_files,
    predict_from_checkpoint,
    sliding_window_logits,
    window_size,
)
from mednext_lite.metrics import ScoreAccumulator
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


def test_any_callable_predicts_through_the_same_window_given_its_dimensionality():
    # An exported network's runtime is a plain function: it says its dimensionality itself.
    vol = torch.randn(1, 1, 20, 35, 7)
    out = sliding_window_logits(lambda x: torch.cat([-x, x], dim=1), vol, 16, spatial_dims=3)
    assert out.shape == (1, 2, 20, 35, 7) and torch.allclose(out[:, 1], vol[:, 0], atol=1e-5)
    seen: list[int] = []

    def slices(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.ndim)
        return torch.cat([-x, x], dim=1)

    out = sliding_window_logits(slices, vol, (16, 16), spatial_dims=2)
    assert set(seen) == {4} and torch.allclose(out[:, 1], vol[:, 0], atol=1e-5)
    with pytest.raises(ValueError, match="pass spatial_dims=2 or spatial_dims=3"):
        sliding_window_logits(slices, vol, 16)


def test_evaluate_model_adds_every_case_into_the_given_scores():
    image = -torch.ones(1, 16, 16, 16)
    image[:, :8] = 1.0  # PointwiseNet predicts class 1 on these 2048 voxels
    half = torch.zeros(1, 16, 16, 16, dtype=torch.long)
    half[:, :4] = 1  # 1024 of them are class 1: Dice 2 * 1024 / 3072
    items = [{"image": image, "label": half}, {"image": image, "label": (image > 0).long()}]
    scores = ScoreAccumulator(3)
    res = evaluate_model(PointwiseNet(), items, 16, 3, scores=scores, progress=False)
    assert res["n"] == 2 and scores.n == 2 and "_sums" not in res
    assert res["dice"] == pytest.approx({"class1": (2 / 3 + 1) / 2, "class2": 1.0})
    assert [d for c in res["cases"] for d in c["dice"]] == pytest.approx([2 / 3, 1.0, 1.0, 1.0])
    assert ScoreAccumulator.unpack(scores.packed(), 3, hd95=False).summary(["class1", "class2"]) == {
        k: res[k] for k in ("dice", "mean_dice", "n")}
    with pytest.raises(ValueError, match=r"pass ScoreAccumulator\(3, hd95=False\)"):
        evaluate_model(PointwiseNet(), items, 16, 3, scores=ScoreAccumulator(3, hd95=True), progress=False)


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



def test_the_checkpoints_task_is_guarded_too(tmp_path):
    # The checkpoint's task keeps labels outside its folder (a layout the reader refuses, but the
    # guard protects what it lists all the same); nothing else says these files are a task's.
    task = mini_task(tmp_path / "T")
    meta = json.loads((task / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/case_001.nii.gz", "label": "../shared_labels/case_002.nii.gz"})
    (task / "dataset.json").write_text(json.dumps(meta))
    write_nifti(tmp_path / "shared_labels" / "case_002.nii.gz", np.zeros((16, 16, 16), np.uint8))
    ckpt = save_checkpoint(tmp_path / "m.pt", MedNeXt(MedNeXtConfig(base_width=4, block_counts=1, num_classes=2)),
                           train_config={"task_dir": str(task), "patch_size": [16, 16, 16]})
    image = write_nifti(tmp_path / "in" / "case_002.nii.gz", np.zeros((16, 16, 16), np.float32))
    before = (tmp_path / "shared_labels" / "case_002.nii.gz").read_bytes()
    with pytest.raises(ValueError, match=f"is {tmp_path / 'shared_labels'}, a data folder of the task {task}"):
        predict_from_checkpoint(ckpt, [image], tmp_path / "shared_labels", overwrite=True, device="cpu", progress=False)
    assert (tmp_path / "shared_labels" / "case_002.nii.gz").read_bytes() == before


def test_a_checkpoint_setting_of_the_wrong_kind_is_named_with_the_file(tmp_path):
    task = mini_task(tmp_path / "T")
    model = MedNeXt(MedNeXtConfig(base_width=4, block_counts=1, num_classes=2))
    image = write_nifti(tmp_path / "in" / "a.nii.gz", np.zeros((16, 16, 16), np.float32))
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


def test_predict_refuses_before_any_work_and_leaves_inputs_bit_identical(task, tmp_path):
    info = load_task(task, validate=False)
    tf = get_transforms(info, mode="infer", patch_size=(16, 16, 16))
    inputs = tmp_path / "in"
    _oblique_image(inputs / "a.nii.gz")
    before = tree_bytes(inputs)
    net = PointwiseNet()
    with pytest.raises(ValueError, match="is the input folder"):
        predict_files(net, [inputs / "a.nii.gz"], inputs, tf, 16, progress=False)
    assert net.calls == 0 and tree_bytes(inputs) == before
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
    write_nifti(tmp_path / "in" / "bad.nii.gz", bad, affine)
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
    (ref,) = predict_files(net, [write_nifti(tmp_path / "in2" / "bad.nii.gz", cleaned, affine)], tmp_path / "ref", tf, 16,
                           progress=False)
    assert np.array_equal(np.asanyarray(nib.load(str(written[1])).dataobj), np.asanyarray(nib.load(str(ref)).dataobj))
    with pytest.raises(ValueError, match="finite number"):
        predict_files(net, files, tmp_path / "p3", tf, 16, nan_to_num=float("nan"), progress=False)
