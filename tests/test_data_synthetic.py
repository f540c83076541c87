"""The synthetic task: exact MSD layout, determinism, flavours, speed, and the intensity-only
baseline that it is designed to defeat."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time

import nibabel as nib
import numpy as np
import pytest
from task_links import assert_links_replaced, link_out

from mednext_lite.data import (
    load_task,
    make_synthetic_task,
    synthesize_case,
    threshold_baseline,
)
from mednext_lite.data.dataset import MSD_KEYS


@pytest.fixture(scope="module")
def default_task(tmp_path_factory):
    # The default task exactly as notebooks and `make demo` use it (40 + 4 cases, 48^3).
    start = time.perf_counter()
    task = make_synthetic_task(tmp_path_factory.mktemp("syn"), progress=False)
    return task, time.perf_counter() - start


def test_default_task_layout_and_speed(default_task):
    task, seconds = default_task
    assert task.name == "Task90_SyntheticMRI"
    assert seconds < 30.0, f"40 cases took {seconds:.1f} s; the budget is well under a minute"
    meta = json.loads((task / "dataset.json").read_text())
    assert set(MSD_KEYS) <= set(meta)
    assert meta["numTraining"] == len(meta["training"]) == 40 and meta["numTest"] == len(meta["test"]) == 4
    assert meta["labels"] == {"0": "background", "1": "head", "2": "tail"} and meta["tensorImageSize"] == "3D"
    assert meta["training"][0] == {"image": "./imagesTr/synmri_000.nii.gz", "label": "./labelsTr/synmri_000.nii.gz"}
    assert meta["test"][0] == "./imagesTs/synmri_040.nii.gz"
    assert sorted(p.name for p in task.iterdir()) == ["dataset.json", "imagesTr", "imagesTs", "labelsTr"]
    img = nib.load(str(task / "imagesTr" / "synmri_000.nii.gz"))
    assert img.shape == (48, 48, 48) and img.get_data_dtype() == np.float32
    assert np.allclose(img.header.get_zooms(), (1.0, 1.0, 1.25))
    assert np.allclose(np.diag(img.affine)[:3], (-1.0, -1.0, 1.25)) and int(img.header["sform_code"]) == 1
    info = load_task(task)  # full validation passes
    assert info.num_classes == 3


def test_objects_fill_a_useful_fraction_and_both_classes_present(default_task):
    task, _ = default_task
    info = load_task(task, validate=False)
    fractions = []
    for case in info.training[:10]:
        lbl = np.asanyarray(nib.load(str(case["label"])).dataobj)
        counts = np.bincount(lbl.ravel(), minlength=3)
        assert counts[1] > 0 and counts[2] > 0
        fractions.append(counts[1:] / lbl.size)
        # The object never touches the border, so no case loses part of its tail.
        assert not lbl[[0, -1]].any() and not lbl[:, [0, -1]].any() and not lbl[:, :, [0, -1]].any()
    head, tail = np.mean(fractions, axis=0)
    assert 0.01 < head < 0.05 and 0.004 < tail < 0.02 and head > tail


def test_head_and_tail_share_intensity_distribution():
    from scipy import ndimage

    # Per case, the bias field makes one part brighter or darker than the other, but neither is
    # systematically brighter: the head-minus-tail difference (in units of object-to-tissue
    # contrast) changes sign across cases and averages to about zero.
    diffs = []
    for i in range(12):
        image, label, _ = synthesize_case([0, 0, i])
        head = image[ndimage.binary_erosion(label == 1, iterations=2)].mean()
        tail = image[ndimage.binary_erosion(label == 2, iterations=1)].mean()
        tissue = image[(label == 0) & (image > 0)].mean()
        diffs.append((head - tail) / (head - tissue))
    diffs = np.array(diffs)
    assert (diffs > 0.01).sum() >= 3 and (diffs < -0.01).sum() >= 3
    assert abs(diffs.mean()) < 0.05 and np.abs(diffs).max() < 0.5


def test_deterministic_and_case_independent_of_count(tmp_path):
    a = make_synthetic_task(tmp_path / "a", n_train=3, n_test=1, seed=7, shape=(24, 24, 24), progress=False)
    b = make_synthetic_task(tmp_path / "b", n_train=5, n_test=0, seed=7, shape=(24, 24, 24), progress=False)
    c = make_synthetic_task(tmp_path / "c", n_train=3, n_test=0, seed=8, shape=(24, 24, 24), progress=False)

    def arrays(task, sub, i):
        return np.asanyarray(nib.load(str(task / sub / f"synmri_{i:03d}.nii.gz")).dataobj)

    for i in range(3):
        assert np.array_equal(arrays(a, "imagesTr", i), arrays(b, "imagesTr", i))
        assert np.array_equal(arrays(a, "labelsTr", i), arrays(b, "labelsTr", i))
    assert not np.array_equal(arrays(a, "imagesTr", 0), arrays(c, "imagesTr", 0))
    # Re-running into the same folder rewrites identical content.
    before = hashlib.md5(arrays(a, "imagesTr", 1).tobytes()).hexdigest()
    make_synthetic_task(tmp_path / "a", n_train=3, n_test=1, seed=7, shape=(24, 24, 24), progress=False)
    assert hashlib.md5(arrays(a, "imagesTr", 1).tobytes()).hexdigest() == before


def test_ct_and_4d_flavours(tmp_path):
    ct = load_task(make_synthetic_task(tmp_path, n_train=2, n_test=0, flavour="ct", shape=(24, 24, 24),
                                       progress=False))
    assert ct.root.name == "Task91_SyntheticCT" and ct.is_ct and ct.modality == {"0": "CT"}
    img = nib.load(str(ct.training[0]["image"]))
    data = np.asanyarray(img.dataobj)
    lbl = np.asanyarray(nib.load(str(ct.training[0]["label"])).dataobj)
    assert img.get_data_dtype() == np.int16 and data.min() < -900  # air in Hounsfield units
    assert 100 < np.median(data[lbl > 0]) < 180 and 0 < np.median(data[(lbl == 0) & (data > -500)]) < 80
    mr4 = load_task(make_synthetic_task(tmp_path, n_train=2, n_test=1, flavour="mri4d", shape=(24, 24, 24),
                                        progress=False))
    assert mr4.root.name == "Task92_SyntheticMRI4D" and mr4.in_channels == 2 and mr4.tensor_image_size == "4D"
    assert nib.load(str(mr4.training[0]["image"])).shape == (24, 24, 24, 2)
    assert nib.load(str(mr4.test[0])).shape == (24, 24, 24, 2)
    with pytest.raises(ValueError, match="flavour"):
        make_synthetic_task(tmp_path, flavour="pet")


def test_threshold_baseline_fails_on_head_tail_split(default_task):
    task, _ = default_task
    result = threshold_baseline(task)
    assert result["n_cases"] == 40
    # Intensity finds the object (binary foreground Dice high) ...
    assert result["foreground_dice"] > 0.85
    # ... but cannot split head from tail: one class takes all, the other scores ~0.
    assert result["mean_foreground_dice"] < 0.6
    assert min(result["dice"][1], result["dice"][2]) < 0.1
    assert len(result["bin_labels"]) == len(result["bin_edges"]) + 1


def test_threshold_baseline_on_ct_and_subset(tmp_path):
    task = make_synthetic_task(tmp_path, n_train=6, n_test=0, flavour="ct", progress=False)
    info = load_task(task)
    result = threshold_baseline(info, info.training[:3])
    assert result["n_cases"] == 3 and result["mean_foreground_dice"] < 0.6 and result["foreground_dice"] > 0.8


def test_regenerating_replaces_symlinked_files_and_spares_their_targets(tmp_path):
    # A task folder is the user's: a case or dataset.json there may be a link to a file elsewhere.
    kw = {"n_train": 2, "n_test": 1, "seed": 3, "shape": (16, 16, 16), "progress": False}
    task = make_synthetic_task(tmp_path / "root", **kw)
    user = tmp_path / "user"
    linked = {"dataset.json": task / "dataset.json", "image": task / "imagesTr" / "synmri_000.nii.gz",
              "label": task / "labelsTr" / "synmri_001.nii.gz", "test": task / "imagesTs" / "synmri_002.nii.gz"}
    link_out(linked, user)
    old_umask = os.umask(0o022)
    try:
        make_synthetic_task(tmp_path / "root", **kw)
    finally:
        os.umask(old_umask)
    assert_links_replaced(linked, user, task)
    for path in linked.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # a new file's mode, not mkstemp's 0600
    _, label, _ = synthesize_case([3, 0, 1], shape=(16, 16, 16))
    assert np.array_equal(np.asanyarray(nib.load(str(linked["label"])).dataobj), label)
    assert json.loads(linked["dataset.json"].read_text())["numTraining"] == 2
    assert load_task(task, strict=True).num_classes == 3
