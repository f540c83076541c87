"""Score a folder of predictions against labels: Dice (and HD95) per case and overall, as JSON and CSV.

Evaluation is geometric: a prediction is matched to its label by file name
(:func:`mednext_lite.predict_guard.prediction_path`) and refused when it lies on another voxel
grid, unless resampled onto the label's grid by nearest neighbour in world coordinates. The
scores themselves are :mod:`mednext_lite.metrics`'s, summed by its ``ScoreAccumulator``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.dataset import nifti_header, voxel_spacing
from .metrics import ScoreAccumulator
from .predict_guard import (
    check_label_map,
    check_predictions_folder,
    prediction_path,
    refuse_unreadable,
)
from .safe_io import atomic_write, write_csv

__all__ = ["evaluate_folder", "grid_differences", "resample_nearest"]


def _fmt(values: Iterable[float]) -> str:
    # + 0.0 turns -0.0 into 0.0 so a message never shows "-0".
    return "(" + ", ".join(f"{v + 0.0:g}" for v in np.round(np.asarray(list(values), dtype=float), 4)) + ")"


def grid_differences(image: Any, reference: Any, tolerance: float = 1e-3) -> list[str]:
    """How the voxel grid of ``image`` differs from ``reference``'s (nibabel images): shape,
    spacing, axis direction and origin, each a short phrase; empty when they agree within
    ``tolerance`` (mm for spacing and origin, cosine components for directions)."""
    diffs = []
    a_shape, b_shape = tuple(image.shape[:3]), tuple(reference.shape[:3])
    if a_shape != b_shape:
        diffs.append(f"shape {a_shape} vs {b_shape}")
    a, b = np.asarray(image.affine, dtype=float), np.asarray(reference.affine, dtype=float)
    a_size, b_size = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
    if not np.allclose(a_size, b_size, rtol=0, atol=tolerance):
        diffs.append(f"spacing {_fmt(a_size)} vs {_fmt(b_size)} mm")
    a_dir, b_dir = a[:3, :3] / np.maximum(a_size, 1e-12), b[:3, :3] / np.maximum(b_size, 1e-12)
    turned = [i for i in range(3) if not np.allclose(a_dir[:, i], b_dir[:, i], rtol=0, atol=tolerance)]
    if turned:
        diffs.append("axis direction " + ", ".join(f"axis {i} {_fmt(a_dir[:, i])} vs {_fmt(b_dir[:, i])}" for i in turned))
    if not np.allclose(a[:3, 3], b[:3, 3], rtol=0, atol=tolerance):
        diffs.append(f"origin {_fmt(a[:3, 3])} vs {_fmt(b[:3, 3])} mm")
    return diffs


def resample_nearest(labels: np.ndarray, affine: np.ndarray, reference: Any) -> np.ndarray:
    """Label map ``labels`` (on the grid of ``affine``) resampled onto ``reference``'s grid by
    nearest neighbour through the two affines (world coordinates); reference voxels outside the
    source grid get label 0."""
    from scipy.ndimage import affine_transform

    # reference voxel -> world (mm) -> source voxel
    m = np.linalg.inv(np.asarray(affine, dtype=float)) @ np.asarray(reference.affine, dtype=float)
    return affine_transform(labels, m[:3, :3], offset=m[:3, 3], output_shape=tuple(reference.shape[:3]),
                            order=0, mode="constant", cval=0)


def _read_labels(img: Any, path: Path, num_classes: int) -> np.ndarray:
    """The integer label map of a NIfTI image, refused (:func:`~mednext_lite.predict_guard.check_label_map`)
    unless it holds the classes 0..num_classes-1 only, which would otherwise be scored as some
    other class or crash one_hot."""
    with refuse_unreadable(path):
        data = np.asanyarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    check_label_map(data, path, num_classes)
    return data.astype(np.int64)


def evaluate_folder(
    pred_dir: str | os.PathLike,
    labels: Sequence[str | os.PathLike],
    num_classes: int,
    *,
    class_names: Sequence[str] | None = None,
    suffix: str = "",
    hd95: bool = False,
    resample: bool = False,
    tolerance: float = 1e-3,
    out_json: str | os.PathLike | None = None,
    task_dirs: Iterable[str | os.PathLike] = (),
) -> dict[str, Any]:
    """Compare predictions in ``pred_dir`` with reference label files (matched by file name).

    Returns per-case and mean Dice (and HD95 in mm when asked) and writes them to ``out_json``
    plus a CSV beside it when given. A missing prediction is an error naming the file, and so is
    a prediction on another voxel grid than its label (shape, spacing, direction or origin
    differing by more than ``tolerance`` mm, see :func:`grid_differences`), unless ``resample``,
    which maps the prediction onto the label's grid by nearest neighbour in world coordinates.
    Before anything is read, :func:`mednext_lite.predict_guard.check_predictions_folder` refuses
    labels scored against themselves and a report written into a task's data folders.
    """
    pred_dir = Path(pred_dir)
    label_paths = [Path(p) for p in labels]
    check_predictions_folder(pred_dir, label_paths, suffix=suffix, out_json=out_json, task_dirs=task_dirs)
    names = list(class_names) if class_names is not None else [f"class{i}" for i in range(1, num_classes)]
    rows: list[dict[str, Any]] = []
    scores = ScoreAccumulator(num_classes, hd95)
    for label_path in label_paths:
        pred_path = prediction_path(label_path, pred_dir, suffix)
        if not pred_path.is_file():
            raise ValueError(f"no prediction {pred_path} for label {label_path}: run `mednext-lite predict` "
                             f"into {pred_dir} first (or check --suffix)")
        ref, pred_img = nifti_header(label_path), nifti_header(pred_path)
        diffs = grid_differences(pred_img, ref, tolerance)
        if diffs and not resample:
            raise ValueError(f"{pred_path} and {label_path} lie on different voxel grids ({'; '.join(diffs)}): a "
                             "voxel-by-voxel score would compare different places; write the prediction in the "
                             "label's geometry (`mednext-lite predict` does) or pass --resample (resample=True) to "
                             "map it onto the label's grid by nearest neighbour")
        y = _read_labels(ref, label_path, num_classes)
        p = _read_labels(pred_img, pred_path, num_classes)
        if diffs:
            p = resample_nearest(p, pred_img.affine, ref)
        dice, hd = scores.add(torch.as_tensor(p)[None, None], torch.as_tensor(y)[None, None],
                              voxel_spacing(ref.affine) if hd95 else None)
        row: dict[str, Any] = {"case": label_path.name, **{f"dice_{n}": v for n, v in zip(names, dice)}}
        if hd is not None:
            row.update({f"hd95_{n}": v for n, v in zip(names, hd)})
        if resample:
            row["resampled"] = bool(diffs)
        rows.append(row)
    result = scores.summary(names)
    result["cases"] = rows
    if out_json is not None:
        out_json = Path(out_json)
        atomic_write(out_json, json.dumps(result, indent=2) + "\n")
        if rows:
            write_csv(out_json.with_suffix(".csv"), rows)
    return result
