"""Check a task before training, and load it only when it can be used.

Validation sorts what it finds into errors (the task cannot be used) and warnings (usable, but
look at the case), each one line naming the file and the fix. Everything is reported at once, so
a user repairs a task in one pass instead of meeting one error per epoch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .dataset import (
    NIFTI_ERRORS,
    TaskInfo,
    label_problem,
    nifti_header,
    read_dataset_json,
    voxel_spacing,
)

__all__ = [
    "DatasetError",
    "DatasetWarning",
    "TaskReport",
    "check_task",
    "load_task",
    "validate_task",
]

# Geometry tolerance: affines are compared in millimetres; 1e-3 mm absorbs float32 round-off in
# headers written by different tools while still catching a wrong spacing or origin.
_AFFINE_ATOL = 1e-3
_REEXTRACT = "re-extract it from the archive (or regenerate the task)"


class DatasetError(ValueError):
    """A task failed validation; ``problems`` holds one line per problem, each naming a file."""

    def __init__(self, task_dir: Path, problems: list[str]):
        self.task_dir = task_dir
        self.problems = list(problems)
        lines = "\n".join(f"- {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in task {task_dir}:\n{lines}")


class DatasetWarning(UserWarning):
    """A task is usable but something in it deserves a look (the message names the case)."""


@dataclass
class TaskReport:
    """What validation found in a task: ``errors`` make it unusable, ``warnings`` ask for a look.

    Each entry is one line naming the file and the fix. ``info`` is the parsed task (``None`` when
    dataset.json itself cannot be used); ``flagged`` holds the training cases a warning names, so a
    figure can draw them first.
    """

    task_dir: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: TaskInfo | None = None
    flagged: list[dict[str, Path]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the task can be trained on (warnings allowed)."""
        return not self.errors

    def problems(self, strict: bool = False) -> list[str]:
        """The lines that make the task unusable: the errors, then the warnings when ``strict``."""
        return self.errors + (self.warnings if strict else [])


def _read_task(task_dir: Path) -> TaskReport:
    """The report of dataset.json alone; ``report.info`` is ``None`` when it cannot be used."""
    info, errors, found = read_dataset_json(task_dir)
    return TaskReport(task_dir, errors=errors, warnings=found, info=info)


# ---------------------------------------------------------------- the files


def _open(path: Path, what: str, read_data: bool) -> tuple[Any, np.ndarray | None, str | None]:
    """Open a listed file: its header (an absurd size is refused before any allocation) and, when
    ``read_data``, its voxels. Returns (image, data, error line)."""
    try:
        present = path.is_file()
    except OSError as err:  # a name too long for the file system, a folder that cannot be searched
        return None, None, f"{path}: {what} cannot be looked up ({err.strerror or err}); check the name in dataset.json"
    if not present:
        return None, None, (f"{path}: {what} file listed in dataset.json is missing; re-extract the archive "
                            "or remove the entry from dataset.json")
    try:
        img = nifti_header(path)
    except NIFTI_ERRORS as err:
        text = str(err)
        if text.startswith(f"{path}:"):  # nifti_header's refusal already names the file and the fix
            return None, None, text
        return None, None, f"{path}: {what} is not a readable NIfTI file ({type(err).__name__}: {err}); {_REEXTRACT}"
    if not read_data:
        return img, None, None
    try:
        return img, np.asanyarray(img.dataobj), None
    except NIFTI_ERRORS as err:
        return img, None, f"{path}: {what} is truncated or corrupt ({type(err).__name__}: {err}); {_REEXTRACT}"


@dataclass
class _Case:
    """One case's files as opened for checking: headers always, voxels when contents are checked
    (``None`` otherwise). A test image has no label."""

    info: TaskInfo
    image_path: Path
    image: Any
    image_data: np.ndarray | None
    label_path: Path | None = None
    label: Any = None
    label_data: np.ndarray | None = None

    @cached_property
    def label_values(self) -> np.ndarray:
        return np.unique(self.label_data)

    @cached_property
    def label_problem(self) -> str | None:
        """What makes the label's voxels no class numbers (:func:`~mednext_lite.data.dataset.label_problem`)."""
        return label_problem(self.label_data)

    def see_montage(self) -> str:
        """Where to look: the case's row in the montage that ``inspect`` draws."""
        name = self.image_path.name.split(".")[0]
        return (f"look at {name} in {self.info.root / 'montage.png'} "
                f"(`mednext-lite data inspect {self.info.root}` draws it)")


def _image_layout(case: _Case) -> list[str]:
    shape, n = tuple(case.image.shape), case.info.in_channels
    if len(shape) == 4 and shape[3] != n:
        return [(f"{case.image_path}: image has {shape[3]} channels on its last axis but dataset.json declares "
                 f"{n} modalities; fix 'modality' or the image")]
    if len(shape) == 3 and n != 1:
        return [(f"{case.image_path}: image is 3D but dataset.json declares {n} modalities; store the modalities "
                 "as a 4D image (modalities last) or fix 'modality'")]
    if len(shape) not in (3, 4):
        return [f"{case.image_path}: image has {len(shape)} dimensions {shape}; expected (x, y, z[, modality])"]
    return []


def _label_grid(case: _Case) -> list[str]:
    ishape, lshape = tuple(case.image.shape), tuple(case.label.shape)
    if len(lshape) != 3:
        return [f"{case.label_path}: label has shape {lshape}; a label map must be 3D (x, y, z)"]
    if ishape[:3] != lshape:
        return [(f"{case.label_path}: label shape {lshape} does not match image shape {ishape[:3]} of "
                 f"{case.image_path.name}; resample the label onto the image grid")]
    return []


def _label_geometry(case: _Case) -> list[str]:
    img, lbl = case.image.affine, case.label.affine
    if np.allclose(img, lbl, atol=_AFFINE_ATOL):
        return []
    # Orientation and resampling follow each file's own header, so the label may land off the anatomy.
    i_sp, l_sp = np.round(voxel_spacing(img), 4).tolist(), np.round(voxel_spacing(lbl), 4).tolist()
    return [(f"{case.label_path}: label affine differs from image {case.image_path.name} (spacing {l_sp} vs {i_sp}, "
             f"origin {np.round(lbl[:3, 3], 3).tolist()} vs {np.round(img[:3, 3], 3).tolist()}); "
             f"{case.see_montage()}; if they overlap, copy the image header into the label, else resample it")]


def _label_values(case: _Case) -> list[str]:
    if case.label_data is None:
        return []
    if case.label_problem is not None:
        return [(f"{case.label_path}: label {case.label_problem}; rewrite it with class numbers only (a label "
                 "is resampled with nearest neighbour, never linear interpolation)")]
    unknown = sorted({int(v) for v in case.label_values} - set(case.info.labels))
    if unknown:
        return [(f"{case.label_path}: label values {unknown} are not declared in dataset.json 'labels' "
                 f"{sorted(case.info.labels)}; add them to 'labels' or relabel the file")]
    return []


def _label_dtype(case: _Case) -> list[str]:
    data = case.label_data
    if data is None or data.dtype.kind != "f" or case.label_problem is not None:
        return []  # _label_values reports a label that holds anything but class numbers
    return [(f"{case.label_path}: label is stored as {data.dtype} holding the integers "
             f"{case.label_values[:8].astype(np.int64).tolist()}; it trains as is, but {case.see_montage()} and "
             "store labels as uint8 (a float label is often one that was interpolated)")]


def _image_finite(case: _Case) -> list[str]:
    data = case.image_data
    if data is None or data.dtype.kind != "f":
        return []
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if not bad:
        return []
    return [(f"{case.image_path}: image has {bad:,} NaN/inf voxel(s); one is enough to turn every prediction into "
             "background: replace them (e.g. with 0, or the background intensity) and save the image again")]


# The checks of one opened case, in report order: (is a warning, check). A check returns one line
# per problem found; content checks return nothing when the voxels were not read.
_CASE_CHECKS: tuple[tuple[bool, Callable[[_Case], list[str]]], ...] = (
    (False, _image_layout),
    (False, _label_grid),
    (True, _label_geometry),
    (False, _label_values),
    (True, _label_dtype),
    (False, _image_finite),
)
_TEST_CHECKS = ((False, _image_layout), (False, _image_finite))


def _check_entry(report: TaskReport, entry: dict[str, Path], read_data: bool) -> None:
    """Open one training case (or, without a "label", one test image) and run its checks into ``report``."""
    is_test = "label" not in entry
    image, image_data, error = _open(entry["image"], "test image" if is_test else "image", read_data)
    label, label_data, label_error = (None, None, None) if is_test else _open(entry["label"], "label", read_data)
    report.errors += [e for e in (error, label_error) if e]
    if image is None or (label is None and not is_test):
        return
    case = _Case(report.info, entry["image"], image, image_data, entry.get("label"), label, label_data)
    for is_warning, check in _TEST_CHECKS if is_test else _CASE_CHECKS:
        lines = check(case)
        if is_warning and lines and entry not in report.flagged:
            report.flagged.append(entry)
        (report.warnings if is_warning else report.errors).extend(lines)


def _appledouble_warnings(task_dir: Path) -> list[str]:
    """One line per folder (the task's and its image folders) holding macOS "._" resource-fork
    files, as the released archives do."""
    lines = []
    for sub in ("", "imagesTr", "labelsTr", "imagesTs"):
        folder = task_dir / sub
        found = sorted(p.name for p in folder.iterdir() if p.name.startswith("._")) if folder.is_dir() else []
        if found:
            shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
            lines.append(f"{folder}: {len(found)} macOS '._' AppleDouble file(s) ({shown}) that are not images; "
                         f"nothing here reads them, but delete them (find {task_dir} -name '._*' -delete) "
                         "before a tool that globs the folder trips on them")
    return lines


def _check_files(report: TaskReport, check_contents: bool, progress: bool) -> TaskReport:
    info = report.info
    if not info.training:
        report.errors.append(f"{info.root / 'dataset.json'}: 'training' lists no cases; add at least one "
                             "image/label pair")
    report.warnings += _appledouble_warnings(info.root)
    entries = [*info.training, *({"image": p} for p in info.test)]
    for entry in tqdm(entries, desc=f"validate {info.name}", unit="case", disable=not progress, leave=False):
        _check_entry(report, entry, check_contents)
    return report


def check_task(task: str | os.PathLike | TaskInfo, *, check_contents: bool = True,
               progress: bool = False) -> TaskReport:
    """Check a whole task and return a ``TaskReport`` of its errors (unusable) and warnings (look).

    Errors: dataset.json unreadable or without training/labels/modality, labels not exactly
    0..N-1, paths leaving the task folder, a file listed twice, missing, unreadable or truncated
    files, headers claiming absurd sizes, a wrong channel count, image/label shapes that differ,
    label values not declared (or not integers), non-finite image voxels. Warnings: image/label
    affines that differ beyond rounding, float labels holding integers, "._" files, wrong
    numTraining/numTest. ``check_contents=False`` reads headers only (fast, but misses truncation
    and voxel values). A ``TaskInfo`` is checked as given (its dataset.json is not read again).
    """
    report = TaskReport(task.root, info=task) if isinstance(task, TaskInfo) else _read_task(Path(task))
    return _check_files(report, check_contents, progress) if report.info is not None else report


def validate_task(task: str | os.PathLike | TaskInfo, *, check_contents: bool = True, progress: bool = False,
                  strict: bool = False) -> list[str]:
    """Return every problem that makes a task unusable (empty list = ready to train), each naming
    the file and the fix; with ``strict`` the warnings count too. See ``check_task`` for the
    checks and for the warnings themselves."""
    return check_task(task, check_contents=check_contents, progress=progress).problems(strict)


def load_task(task_dir: str | os.PathLike, *, validate: bool = True, check_contents: bool = True,
              progress: bool = False, strict: bool = False) -> TaskInfo:
    """Read ``<task_dir>/dataset.json`` into a ``TaskInfo``. With ``validate`` (the default) the
    whole task is checked first (see ``check_task``); without it only dataset.json is (its keys,
    labels and paths). Errors raise ``DatasetError`` listing every problem at once; warnings are
    issued as one ``DatasetWarning`` and kept in ``info.warnings``, or raise too when ``strict``."""
    task_dir = Path(task_dir)
    report = _read_task(task_dir)
    if validate and report.info is not None:
        _check_files(report, check_contents, progress)
    problems = report.problems(strict)
    if problems or report.info is None:
        raise DatasetError(task_dir, problems)
    report.info.warnings = list(report.warnings)
    if report.warnings:
        lines = "\n".join(f"- {w}" for w in report.warnings)
        warnings.warn(f"{len(report.warnings)} warning(s) in task {task_dir} (usable; strict=True refuses it):\n"
                      f"{lines}", DatasetWarning, stacklevel=2)
    return report.info
