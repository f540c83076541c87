"""Writing a task in MSD layout: NIfTI cases and dataset.json, each renamed into place.

The package's task generators (the synthetic comma, the MNI152 brain task) share this writer.
Every file goes through :func:`~mednext_lite.safe_io.atomic_write`, so regenerating a task in a
folder where a case or dataset.json is a symlink replaces the link and leaves whatever it points
at untouched, and an interrupted run leaves whole files only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from ..safe_io import atomic_write

__all__ = ["CaseMaker", "save_nifti", "write_dataset_json", "write_msd_task"]

#: ``make_case(kind, i)`` -> ``(image, label, affine)`` for the ``i``-th case of ``kind``
#: ("train" or "test"; a test case's label is not written).
CaseMaker = Callable[[str, int], tuple[np.ndarray, np.ndarray, np.ndarray]]


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Write ``array`` as a NIfTI-1 file at ``path`` with ``affine`` as both qform and sform
    (code 1, scanner space) and millimetre units, atomically: a temporary ``.nii.gz`` beside it is
    renamed over ``path`` (a symlink there is replaced, never written through). Returns ``path``."""
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return atomic_write(path, lambda tmp: nib.save(img, os.fspath(tmp)), suffix=".nii.gz")


def write_dataset_json(task_dir: str | os.PathLike, meta: Mapping[str, Any]) -> Path:
    """Write ``meta`` as ``<task_dir>/dataset.json`` (indented like the released files) atomically,
    replacing a symlink there rather than writing through it. Returns the file's path."""
    return atomic_write(Path(task_dir) / "dataset.json", json.dumps(dict(meta), indent=4) + "\n")


def write_msd_task(
    task_dir: str | os.PathLike,
    *,
    prefix: str,
    n_train: int,
    n_test: int,
    make_case: CaseMaker,
    meta: Mapping[str, Any],
    progress: bool = True,
) -> Path:
    """Write ``n_train`` labelled and ``n_test`` unlabelled cases made by ``make_case`` into
    ``task_dir`` in MSD layout, then its dataset.json, and return ``task_dir``.

    Files are ``imagesTr/<prefix>_NNN.nii.gz`` with the label of the same name in ``labelsTr/``
    for training (NNN = 000 .. n_train-1) and ``imagesTs/<prefix>_NNN.nii.gz`` numbered after them
    for test, as the releases number them. dataset.json is ``meta`` followed by ``numTraining``,
    ``numTest`` and the ``training``/``test`` lists of ``./``-relative paths; it is written last,
    so a task whose writing stopped half-way has no new dataset.json pointing at missing files.
    """
    if n_train < 1 or n_test < 0:
        raise ValueError(f"n_train={n_train}, n_test={n_test}: use n_train >= 1 and n_test >= 0")
    task_dir = Path(task_dir)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task_dir / sub).mkdir(parents=True, exist_ok=True)
    training, test = [], []
    jobs = [("train", i) for i in range(n_train)] + [("test", i) for i in range(n_test)]
    for kind, i in tqdm(jobs, desc=f"synthesize {task_dir.name}", unit="case", disable=not progress, leave=False):
        image, label, affine = make_case(kind, i)
        fname = f"{prefix}_{i if kind == 'train' else n_train + i:03d}.nii.gz"
        if kind == "train":
            save_nifti(image, affine, task_dir / "imagesTr" / fname)
            save_nifti(label, affine, task_dir / "labelsTr" / fname)
            training.append({"image": f"./imagesTr/{fname}", "label": f"./labelsTr/{fname}"})
        else:
            save_nifti(image, affine, task_dir / "imagesTs" / fname)
            test.append(f"./imagesTs/{fname}")
    write_dataset_json(task_dir, {**meta, "numTraining": len(training), "numTest": len(test),
                                  "training": training, "test": test})
    return task_dir
