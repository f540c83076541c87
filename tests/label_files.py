"""Test helper for prediction and evaluation: NIfTI files, small MSD-layout tasks on disk, and a
byte-exact snapshot of a folder to show that a refused run left it untouched."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Save ``data`` at ``path`` (folders created) with ``affine`` (default: 1 mm voxels at the origin)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def mini_task(root: Path) -> Path:
    """An MSD-layout folder with one training case and one test image."""
    rng = np.random.default_rng(0)
    for sub in ("imagesTr", "imagesTs"):
        write_nifti(root / sub / "case_001.nii.gz", rng.normal(size=(16, 16, 16)).astype(np.float32))
    write_nifti(root / "labelsTr" / "case_001.nii.gz", (rng.random((16, 16, 16)) > 0.5).astype(np.uint8))
    (root / "dataset.json").write_text('{"labels": {"0": "background", "1": "fg"}, "modality": {"0": "MRI"}, '
                                       '"training": [{"image": "./imagesTr/case_001.nii.gz", '
                                       '"label": "./labelsTr/case_001.nii.gz"}], "test": ["./imagesTs/case_001.nii.gz"]}')
    return root


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes, to compare before and after a run."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def renamed_task(root: Path) -> Path:
    """A task whose dataset.json keeps its data in folders of its own naming: images in scans/,
    labels in labels/, test images in holdout/; a label that is a link into a store elsewhere."""
    rng = np.random.default_rng(0)
    for i in (1, 2):
        write_nifti(root / "scans" / f"c{i}.nii.gz", rng.normal(size=(8, 8, 8)).astype(np.float32))
        write_nifti(root / "labels" / f"c{i}.nii.gz", (rng.random((8, 8, 8)) > 0.5).astype(np.uint8))
    write_nifti(root / "holdout" / "t1.nii.gz", rng.normal(size=(8, 8, 8)).astype(np.float32))
    write_nifti(root.parent / "store" / "c3.nii.gz", np.zeros((8, 8, 8), np.uint8))
    (root / "labels" / "c3.nii.gz").symlink_to(root.parent / "store" / "c3.nii.gz")
    write_nifti(root / "scans" / "c3.nii.gz", np.zeros((8, 8, 8), np.float32))
    meta = {"labels": {"0": "background", "1": "fg"}, "modality": {"0": "MRI"},
            "training": [{"image": f"./scans/c{i}.nii.gz", "label": f"./labels/c{i}.nii.gz"} for i in (1, 2, 3)],
            "test": ["./holdout/t1.nii.gz"]}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root
