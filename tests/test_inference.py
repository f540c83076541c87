"""Inference: sliding-window stitching, 2D-on-3D, Dice numbers, NIfTI geometry round trip
(non-trivial affine, foreground cropping, reorientation) and folder evaluation."""

from __future__ import annotations

import contextlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from mednext_lite.data.dataset import load_task
from mednext_lite.data.transforms import get_transforms
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
    src = tmp_path / "case_007.nii.gz"
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
    src = tmp_path / "case.nii.gz"
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
