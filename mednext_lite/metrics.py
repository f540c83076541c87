"""Scores of label maps: Dice, HD95, the running sums that training and evaluation share, and the
evaluation of a folder of predicted NIfTI files against reference labels.

Dice and HD95 come from MONAI (``compute_dice``, ``compute_hausdorff_distance``) on one-hot maps
without the background. :class:`ScoreAccumulator` keeps per-class sums rather than means, so the
shards of distributed validation add up exactly before one division. Folder evaluation is
geometric: a prediction on another voxel grid than its label is refused unless resampled.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import warnings
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from .data.dataset import voxel_spacing
from .predict_guard import check_predictions_folder, prediction_path
from .safe_io import atomic_write, nifti_header

__all__ = [
    "ScoreAccumulator",
    "dice_scores",
    "evaluate_folder",
    "grid_differences",
    "hd95_scores",
    "resample_nearest",
    "write_csv",
]


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[N, num_classes, *spatial]`` float one-hot of integer maps ``[N, 1, *spatial]`` (or ``[N, *spatial]``)."""
    labels = torch.as_tensor(labels).long()
    if labels.ndim >= 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    return torch.nn.functional.one_hot(labels, num_classes).movedim(-1, 1).float()


def dice_scores(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-case, per-foreground-class Dice ``[N, num_classes - 1]`` of integer maps ``[N, 1, *spatial]``.

    A class absent from both prediction and label scores 1 (nothing to find, nothing found), so
    a mean over cases is never NaN.
    """
    p, y = _one_hot(pred, num_classes), _one_hot(label, num_classes)
    return compute_dice(p, y, include_background=False, ignore_empty=False).float()


def hd95_scores(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Per-case, per-foreground-class 95th-percentile Hausdorff distance (in mm when ``spacing``
    is given, else voxels). NaN where the class is missing from prediction or label."""
    p, y = _one_hot(pred, num_classes), _one_hot(label, num_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI's own internal call trips its deprecation notice
        # A class missing from one map is expected here and answered with NaN, not a warning per case.
        warnings.filterwarnings("ignore", message=r"the (prediction|ground truth) of class \w+ is all 0", category=UserWarning)
        out = compute_hausdorff_distance(p, y, include_background=False, percentile=95,
                                         spacing=None if spacing is None else list(spacing))
    out = out.float()
    out[torch.isinf(out)] = float("nan")
    return out


class ScoreAccumulator:
    """Running per-class Dice (and HD95) sums over cases, for means that distributed ranks can share.

    Sums, not means, are kept, so shards add up exactly: each rank adds its cases, all-reduces
    :meth:`packed`, and :meth:`unpack` + :meth:`summary` give every rank the same numbers. A class
    missing from a case's prediction or label has no finite HD95; that case is left out of the
    class's HD95 mean and counted apart (``hd95_count`` holds the cases that have one), so one
    empty prediction cannot make the mean infinite.
    """

    def __init__(self, num_classes: int, hd95: bool = False) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r}: scores need the background and at least one foreground "
                             "class, e.g. num_classes=2")
        self.num_classes, self.hd95, self.n = int(num_classes), bool(hd95), 0
        self.dice_sum = torch.zeros(num_classes - 1, dtype=torch.float64)
        self.hd95_sum = torch.zeros_like(self.dice_sum)
        self.hd95_count = torch.zeros_like(self.dice_sum)

    def add(self, pred: torch.Tensor, label: torch.Tensor,
            spacing: Sequence[float] | None = None) -> tuple[list[float], list[float] | None]:
        """Score one case (integer maps ``[1, 1, *spatial]``, HD95 in mm when ``spacing`` is given)
        into the sums; returns its per-class Dice and HD95 (None without ``hd95``, NaN where missing)."""
        if pred.shape[0] != 1 or label.shape[0] != 1:
            raise ValueError(f"add scores one case at a time: got batches of {pred.shape[0]} and {label.shape[0]}; "
                             "call add once per case")
        dice = dice_scores(pred, label, self.num_classes)[0].double()
        self.dice_sum += dice
        self.n += 1
        if not self.hd95:
            return dice.tolist(), None
        hd = hd95_scores(pred, label, self.num_classes, spacing)[0].double()
        found = torch.isfinite(hd)
        self.hd95_sum += torch.where(found, hd, torch.zeros_like(hd))
        self.hd95_count += found.double()
        return dice.tolist(), hd.tolist()

    def packed(self) -> torch.Tensor:
        """Every sum in one float64 vector (Dice sums, HD95 sums, HD95 counts, then the case count),
        ready for one ``all_reduce``."""
        return torch.cat([self.dice_sum, self.hd95_sum, self.hd95_count,
                          torch.tensor([float(self.n)], dtype=torch.float64)])

    @classmethod
    def unpack(cls, packed: torch.Tensor, num_classes: int, hd95: bool) -> ScoreAccumulator:
        """The accumulator whose :meth:`packed` is ``packed`` (e.g. after summing it over ranks)."""
        k = num_classes - 1
        flat = torch.as_tensor(packed).detach().to("cpu", torch.float64)
        if flat.ndim != 1 or flat.numel() != 3 * k + 1:
            raise ValueError(f"packed scores of shape {tuple(flat.shape)} do not fit {num_classes} classes: expected "
                             f"{3 * k + 1} values (3 x {k} sums and the case count) from ScoreAccumulator.packed()")
        n = flat[-1].item()
        if not (math.isfinite(n) and n >= 0 and float(n).is_integer()):
            raise ValueError(f"packed scores hold a case count of {n}, not a whole number of cases: pass the "
                             "(summed) output of ScoreAccumulator.packed()")
        acc = cls(num_classes, hd95)
        acc.dice_sum, acc.hd95_sum, acc.hd95_count = flat[:k].clone(), flat[k:2 * k].clone(), flat[2 * k:3 * k].clone()
        acc.n = int(n)
        return acc

    def summary(self, names: Sequence[str]) -> dict[str, Any]:
        """Means over cases: ``{"dice": {name: mean}, "mean_dice", "n"}``, plus ``"hd95"`` (NaN for a
        class no case has an HD95 for) and ``"mean_hd95"`` (over the classes that have one) with ``hd95``."""
        names = list(names)
        if len(names) != self.num_classes - 1:
            raise ValueError(f"{len(names)} class name(s) {names} for {self.num_classes - 1} foreground class(es): "
                             "name every class but the background, in label order")
        mean = (self.dice_sum / max(self.n, 1)).tolist()
        out: dict[str, Any] = {"dice": dict(zip(names, mean)), "mean_dice": float(sum(mean) / len(mean)), "n": self.n}
        if self.hd95:
            hd = [(s / c).item() if c > 0 else float("nan") for s, c in zip(self.hd95_sum, self.hd95_count)]
            out["hd95"] = dict(zip(names, hd))
            finite = [h for h in hd if math.isfinite(h)]
            out["mean_hd95"] = float(sum(finite) / len(finite)) if finite else float("nan")
        return out


# -- evaluation of predicted files ----------------------------------------------------------------

def _first_few(items: Sequence[Any], limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


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
    """The integer label map of a NIfTI image, refusing non-finite values and classes outside
    0..num_classes-1 (which would otherwise be scored as some other class or crash one_hot)."""
    try:
        data = np.asanyarray(img.dataobj)
    except (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error) as err:
        raise ValueError(f"{path}: the voxels cannot be read ({type(err).__name__}: {err}): the file is truncated or "
                         "damaged; re-export it") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        count = int(data.size - np.count_nonzero(np.isfinite(data)))
        raise ValueError(f"{path}: {count} label value(s) are not finite (NaN or inf): a label map holds class "
                         "numbers only; re-export it")
    data = np.rint(data).astype(np.int64)
    outside = np.unique(data[(data < 0) | (data >= num_classes)])
    if outside.size:
        raise ValueError(f"{path}: holds label value(s) {_first_few(outside.tolist())} outside 0..{num_classes - 1} "
                         f"({num_classes} classes): check that it belongs to this task (or pass the task's --task)")
    return data


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


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]], fieldnames: Sequence[str] | None = None) -> Path:
    """Write ``rows`` as a CSV table with a header, atomically (:func:`mednext_lite.safe_io.atomic_write`).

    ``fieldnames`` default to every key of every row in order of first appearance; a row lacking
    one leaves its cell empty (validation columns exist only in the epochs that validate).
    """
    if fieldnames is None:
        fieldnames = list(dict.fromkeys(key for row in rows for key in row))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(fieldnames))
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(path, table.getvalue())
