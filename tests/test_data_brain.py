"""The MNI152 brain-tissue task: written from nilearn's bundled template in MSD layout, real
dtypes and geometry, plausible tissue fractions, labels that sit on the anatomy, and accepted by
the task reader."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from task_links import assert_links_replaced, link_out

pytest.importorskip("nilearn", reason="the brain task needs nilearn (pip install nilearn)")

from mednext_lite.data.brain import (
    BRAIN_TASK,
    TEMPLATE_NOTICE,
    _nilearn_datasets,
    brain_grid,
    make_brain_task,
    synthesize_brain_case,
)
from mednext_lite.data.commands import brain_main
from mednext_lite.data.validate import load_task

SPACING = 3.0  # coarser than the 2 mm default: the same code, a third of the voxels


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_brain_task(tmp_path_factory.mktemp("brain"), n_train=3, n_test=1, spacing=SPACING, progress=False)


def test_grid_is_tileable_and_covers_the_brain():
    shape, affine = brain_grid(2.0)
    assert shape == (96, 112, 96)  # the brain's 145 x 181 x 155 mm box plus margins, in multiples of 16
    assert np.allclose(np.diag(affine)[:3], 2.0) and np.allclose(affine[:3, :3], np.diag([2.0] * 3))
    centre = affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + affine[:3, 3]
    assert np.all(np.abs(centre - np.array([0.0, -17.0, 5.0])) < 1.0)  # centre of the MNI brain's bounding box
    assert all(s % 16 == 0 for s in brain_grid(1.5)[0])


def test_task_is_written_in_msd_layout_and_loads(task):
    assert task.name == BRAIN_TASK
    meta = json.loads((task / "dataset.json").read_text())
    assert meta["modality"] == {"0": "T1w"} and meta["tensorImageSize"] == "3D"
    assert meta["labels"] == {"0": "background", "1": "grey matter", "2": "white matter", "3": "other brain"}
    assert TEMPLATE_NOTICE in meta["licence"] and "ICBM152 2009" in meta["reference"]
    assert "Fonov" in meta["reference"] and "nilearn" in meta["reference"]
    assert meta["numTraining"] == 3 and meta["numTest"] == 1 and meta["test"] == ["./imagesTs/mnibrain_003.nii.gz"]
    assert not (task / "labelsTs").exists()
    info = load_task(task, strict=True)  # strict: a warning (affine mismatch, float labels...) would fail too
    assert len(info.training) == 3 and info.in_channels == 1 and not info.is_ct and info.num_classes == 4
    shape, affine = brain_grid(SPACING)
    for case in info.training:
        img, lbl = nib.load(str(case["image"])), nib.load(str(case["label"]))
        assert img.shape == lbl.shape == shape
        assert img.get_data_dtype() == np.float32 and lbl.get_data_dtype() == np.uint8
        assert np.allclose(img.affine, affine) and np.allclose(lbl.affine, affine)
        assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1


def _case(path):
    return np.asarray(nib.load(str(path)).dataobj)


def test_tissue_fractions_and_intensities_are_anatomical(task):
    info = load_task(task)
    images = [_case(c["image"]) for c in info.training]
    labels = [_case(c["label"]) for c in info.training]
    for image, label in zip(images, labels):
        assert set(np.unique(label).tolist()) == {0, 1, 2, 3}
        brain = label > 0
        # An adult brain in 1.9 l or so of mask; the template's: GM 58 %, WM 34 %, other 8 %.
        assert 1.4e6 < brain.sum() * SPACING ** 3 < 2.4e6
        fractions = [(label == c).sum() / brain.sum() for c in (1, 2, 3)]
        assert 0.45 < fractions[0] < 0.70 and 0.22 < fractions[1] < 0.45 and 0.03 < fractions[2] < 0.20, fractions
        # T1 contrast: white matter brighter than grey matter, grey brighter than CSF and the rest.
        means = [image[label == c].mean() for c in (1, 2, 3)]
        assert means[1] > 1.1 * means[0] > 1.1 * means[2], means
        # Skull stripped like the template: nothing but background where the image is zero.
        assert image.min() == 0.0 and not np.any(label[image == 0])
    # Each case is its own deformation, contrast and noise, not the template copied.
    for a, b in ((0, 1), (1, 2), (0, 2)):
        either = (labels[a] > 0) | (labels[b] > 0)
        assert (labels[a] != labels[b])[either].mean() > 0.05
        assert not np.allclose(images[a], images[b])


def test_cases_are_reproducible_from_the_seed():
    a = synthesize_brain_case([7, 0, 1], spacing=4.0)
    b = synthesize_brain_case([7, 0, 1], spacing=4.0)
    c = synthesize_brain_case([7, 0, 2], spacing=4.0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_bad_arguments_name_the_value_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"spacing=0.5 mm .*1.5-2 mm"):
        make_brain_task(tmp_path, spacing=0.5)
    with pytest.raises(ValueError, match="n_train=0"):
        make_brain_task(tmp_path, n_train=0)
    assert not (tmp_path / BRAIN_TASK).exists()


def test_missing_nilearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nilearn", None)  # what an absent package looks like to import
    with pytest.raises(ImportError, match="pip install nilearn"):
        _nilearn_datasets()


def test_the_module_imports_without_nilearn(monkeypatch):
    """Only making the task needs nilearn: a fresh copy of the module loads while nilearn is absent."""
    from mednext_lite.data import brain

    monkeypatch.setitem(sys.modules, "nilearn", None)
    spec = importlib.util.spec_from_file_location("mednext_lite.data._brain_without_nilearn", brain.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.BRAIN_TASK == BRAIN_TASK
    with pytest.raises(ImportError, match="pip install nilearn"):
        module.brain_grid(2.0)


def test_the_command_writes_the_task_where_asked(tmp_path, capsys):
    code = brain_main(["--data-dir", str(tmp_path), "--n-train", "1", "--n-test", "0", "--spacing", "4",
                       "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"wrote {tmp_path / BRAIN_TASK}: 1 training + 0 test cases, 48 x 64 x 48 voxels of 4 mm" in out
    assert "Louis Collins" in out
    assert load_task(tmp_path / BRAIN_TASK).training[0]["image"].name == "mnibrain_000.nii.gz"


def test_regenerating_replaces_symlinked_files_and_spares_their_targets(tmp_path):
    task = make_brain_task(tmp_path / "root", n_train=1, n_test=1, spacing=4.0, progress=False)
    user = tmp_path / "user"
    linked = {"dataset.json": task / "dataset.json", "image": task / "imagesTr" / "mnibrain_000.nii.gz",
              "label": task / "labelsTr" / "mnibrain_000.nii.gz", "test": task / "imagesTs" / "mnibrain_001.nii.gz"}
    link_out(linked, user)
    make_brain_task(tmp_path / "root", n_train=1, n_test=1, spacing=4.0, progress=False)
    assert_links_replaced(linked, user, task)
    _, label, _ = synthesize_brain_case([0, 0, 0], spacing=4.0)
    assert np.array_equal(np.asanyarray(nib.load(str(linked["label"])).dataobj), label)
    assert len(load_task(task, strict=True).training) == 1


def test_benchmark_replaces_only_its_own_run_files(tmp_path):
    """--run-dir may be a folder the user keeps other things in (`--run-dir runs`): the benchmark
    replaces its earlier run's files there and nothing else."""
    spec = importlib.util.spec_from_file_location(
        "bench_brain_task", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_brain_task.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    runs = tmp_path / "runs"
    (runs / "other_run").mkdir(parents=True)
    (runs / "notes.txt").write_text("the user's notes")
    (runs / "other_run" / "last.pt").write_bytes(b"another run's checkpoint")
    argv = ["--data-dir", str(tmp_path / "data"), "--run-dir", str(runs), "--n-train", "5", "--spacing", "4",
            "--base-width", "4", "--patch", "32", "--batch", "2", "--epochs", "1", "--iters", "1"]
    for _ in range(2):  # the second run meets the first one's files and replaces them
        figures = bench.main(argv)
        assert figures["held_out_cases"] == 1 and figures["train_cases"] == 4
        assert 0.0 <= figures["mednext_mean_dice"] <= 1.0
        assert (runs / "last.pt").is_file() and len(list((runs / "predictions").glob("*.nii.gz"))) == 1
        assert (runs / "notes.txt").read_text() == "the user's notes"
        assert (runs / "other_run" / "last.pt").read_bytes() == b"another run's checkpoint"
