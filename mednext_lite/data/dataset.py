"""Read and validate an MSD-layout task (dataset.json + NIfTI files), and make seeded splits.

The reader takes a dataset.json as the Decathlon released it: only the keys training reads
(``training``, ``labels``, ``modality``) are required, and the descriptive ones may be missing or,
like the releases' ``"relase"``, misspelt. Validation happens before any training and sorts what
it finds into errors (the task cannot be used) and warnings (usable, but look at the case), each
one line naming the file and the fix. Everything is reported at once, so a user repairs a task in
one pass instead of meeting one error per epoch.
"""

from __future__ import annotations

import errno
import json
import os
import reprlib
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from tqdm.auto import tqdm

from ..safe_io import atomic_write, nifti_header

__all__ = [
    "MSD_KEYS",
    "TRAINING_KEYS",
    "DatasetError",
    "DatasetWarning",
    "TaskInfo",
    "TaskReport",
    "check_task",
    "get_or_make_split",
    "load_split",
    "load_task",
    "make_split",
    "read_image",
    "save_split",
    "validate_task",
    "voxel_spacing",
]

#: The keys training reads: a dataset.json without one of them cannot be used. Every other key is
#: optional: the releases spell "release" as "relase" (sic), and either spelling, or neither, is
#: accepted; ``tensorImageSize`` is inferred from the first image when absent; a
#: ``numTraining``/``numTest`` that disagrees with the lists is a warning.
TRAINING_KEYS = ("training", "labels", "modality")
#: The twelve keys the package's own task writers put in a dataset.json ("release" spelt right).
MSD_KEYS = ("name", "description", "reference", "licence", "release", "tensorImageSize",
            "modality", "labels", "numTraining", "numTest", "training", "test")

# Geometry tolerance: affines are compared in millimetres; 1e-3 mm absorbs float32 round-off in
# headers written by different tools while still catching a wrong spacing or origin.
_AFFINE_ATOL = 1e-3

# What nibabel raises on bad files: unknown format, bad header values, gzip/zlib damage, short
# reads of a truncated file (and safe_io's refusal of an absurd header, a ValueError).
_NIFTI_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error)

_REEXTRACT = "re-extract it from the archive (or regenerate the task)"

# Values quoted in problem lines: a hostile entry (a 10^6-character name, a list nested 900 deep)
# still gives one readable line.
_QUOTE = reprlib.Repr()
_QUOTE.maxstring = _QUOTE.maxother = 160
_QUOTE.maxlevel, _QUOTE.maxlist, _QUOTE.maxdict = 3, 4, 4


def _shown(value: Any) -> str:
    return _QUOTE.repr(value)


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
class TaskInfo:
    """What a training run needs to know about a task, read from its dataset.json.

    ``labels`` maps integer label values to names and includes background (0); ``num_classes``
    counts them. ``in_channels`` is the number of modalities (the channel count after 4D images
    are moved channel-first). ``training`` holds dicts with absolute ``image``/``label`` paths;
    ``test`` holds absolute image paths. ``warnings`` keeps what validation asked to look at.
    """

    root: Path
    name: str
    modality: dict[str, str]
    labels: dict[int, str]
    training: list[dict[str, Path]]
    test: list[Path]
    tensor_image_size: str = "3D"
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    warnings: list[str] = field(default_factory=list, repr=False)

    @property
    def num_classes(self) -> int:
        """Number of output classes including background."""
        return len(self.labels)

    @property
    def in_channels(self) -> int:
        """Number of input channels (modalities)."""
        return len(self.modality)

    @property
    def is_ct(self) -> bool:
        """True when every modality is CT (Hounsfield units: window, not z-score)."""
        return bool(self.modality) and all(m.strip().upper() == "CT" for m in self.modality.values())

    @property
    def foreground_labels(self) -> list[int]:
        """Label values other than background, sorted."""
        return sorted(v for v in self.labels if v != 0)


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


# ---------------------------------------------------------------- dataset.json


def _read_json(task_dir: Path) -> tuple[dict[str, Any] | None, list[str]]:
    path = task_dir / "dataset.json"
    if not task_dir.is_dir():
        return None, [(f"{task_dir}: task directory does not exist; download it (data_scripts/download_msd.py) "
                       "or write one (data_scripts/make_synthetic_task.py)")]
    if not path.is_file():
        return None, [(f"{path}: missing; an MSD task needs dataset.json beside imagesTr/ and labelsTr/ "
                       "(re-extract the archive)")]
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return None, [f"{path}: not valid JSON ({err}); re-extract the archive or fix the file"]
    except RecursionError:
        return None, [(f"{path}: nested deeper than a JSON reader can follow (RecursionError); a dataset.json is "
                       "one object of lists and names: re-extract the archive or fix the file")]
    except OSError as err:
        return None, [f"{path}: cannot be read ({err.strerror or err}); check its permissions or re-extract it"]
    if not isinstance(meta, dict):
        return None, [f"{path}: top level must be a JSON object, got {type(meta).__name__}"]
    return meta, []


def _parse_labels(raw: Any, path: Path) -> tuple[dict[int, str] | None, list[str]]:
    """``labels`` as {value: name}; the values must be exactly 0..N-1 because the loss one-hot
    encodes them into N channels."""
    try:
        labels = {int(k): str(v) for k, v in dict(raw).items()}
    except (TypeError, ValueError):
        return None, [(f"{path}: 'labels' must map integer values to names, e.g. "
                       f"{{\"0\": \"background\", \"1\": \"tumour\"}}, got {_shown(raw)}")]
    values = sorted(labels)
    if 0 not in labels:
        return labels, [f"{path}: 'labels' has no background entry \"0\"; add \"0\": \"background\""]
    if len(values) < 2:
        return labels, [f"{path}: 'labels' declares only background; add the classes, e.g. \"1\": \"tumour\""]
    if values != list(range(len(values))):
        mapping = ", ".join(f"{v} -> {i}" for i, v in enumerate(values) if v != i)
        return labels, [(f"{path}: 'labels' declares values {values}, but training needs exactly 0..{len(values) - 1} "
                         f"(one output channel per value): renumber ({mapping}) in 'labels' and in every label file")]
    return labels, []


def _parse_modality(raw: Any, path: Path) -> tuple[dict[str, str] | None, list[str]]:
    try:
        modality = {str(k): str(v) for k, v in dict(raw).items()}
    except (TypeError, ValueError):
        return None, [(f"{path}: 'modality' must map channel indices to names, e.g. {{\"0\": \"CT\"}}, "
                       f"got {_shown(raw)}")]
    if not modality:
        return modality, [f"{path}: 'modality' is empty; list one entry per image channel, e.g. {{\"0\": \"MRI\"}}"]
    return modality, []


def _resolve_inside(task_dir: Path, rel: Any, where: str) -> tuple[Path | None, str | None]:
    """Resolve a dataset.json path against the task folder, refusing one that leaves it (``../``,
    an absolute path, or a symlink pointing elsewhere): a task must not read files it does not hold.
    A path no file system can hold (a NUL character, a name too long) is refused here too, so that
    it is one problem line naming the entry rather than an exception in the middle of the checks."""
    path = task_dir / "dataset.json"
    shown = _shown(rel)
    if not isinstance(rel, str) or not rel:
        return None, f"{path}: {where} = {shown} is not a path; use one like './imagesTr/case_001.nii.gz'"
    if "\x00" in rel:
        return None, (f"{path}: {where} = {shown} holds a NUL character, which no file name can contain; "
                      "write the file's name as it is on disk")
    if os.path.isabs(rel):
        return None, (f"{path}: {where} = {shown} is an absolute path; dataset.json paths are relative to the "
                      f"task folder: move the file into it and write './imagesTr/{Path(rel).name}'")
    try:
        resolved = (task_dir / rel).resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop
        return None, f"{path}: {where} = {shown} cannot be resolved ({err}); replace the link by the file"
    if not resolved.is_relative_to(task_dir.resolve()):
        return None, (f"{path}: {where} = {shown} leads outside the task folder (to {resolved}); move the file "
                      "into the task folder and list it relative to it")
    try:
        resolved.stat()
    except (FileNotFoundError, NotADirectoryError):
        pass  # a missing file is reported when the files are checked, with its own fix
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            longest = max(len(os.fsencode(part)) for part in Path(rel).parts)
            what = (f"has a name of {longest} bytes, longer than the file system allows (usually 255)" if longest > 255
                    else f"is {len(os.fsencode(str(resolved)))} bytes long, longer than a path may be")
            return None, (f"{path}: {where} = {shown} {what}: no such file can exist; list the file's real, "
                          "shorter name")
        return None, (f"{path}: {where} = {shown} cannot be looked up ({err.strerror or err}); check the name and "
                      "the permissions of its folder")
    return resolved, None


def _parse_cases(task_dir: Path, meta: dict[str, Any]) -> tuple[list[dict[str, Path]], list[Path], list[str]]:
    """The training pairs and test images as absolute paths, with a line for each entry refused
    (malformed, outside the task, or a file listed twice)."""
    path = task_dir / "dataset.json"
    errors: list[str] = []
    seen: dict[Path, str] = {}

    def place(rel: Any, where: str) -> Path | None:
        resolved, error = _resolve_inside(task_dir, rel, where)
        if resolved in seen:
            # A repeated file is trained on twice and can land in both training and validation.
            error = f"{resolved}: listed twice in dataset.json ({seen[resolved]} and {where}); list each case once"
        if error:
            errors.append(error)
            return None
        seen[resolved] = where
        return resolved

    def entries(key: str) -> list:
        value = meta.get(key, [])
        if isinstance(value, list):
            return value
        errors.append(f"{path}: '{key}' must be a list, got {type(value).__name__}")
        return []

    training = []
    for i, entry in enumerate(entries("training")):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            errors.append(f"{path}: training[{i}] = {_shown(entry)} needs both 'image' and 'label' paths")
            continue
        image, label = place(entry["image"], f"training[{i}].image"), place(entry["label"], f"training[{i}].label")
        if image is not None and label is not None:
            training.append({"image": image, "label": label})
    # Some derived datasets store test entries as {"image": ...}; accept both forms.
    test = [place(e.get("image") if isinstance(e, dict) else e, f"test[{i}]") for i, e in enumerate(entries("test"))]
    return training, [p for p in test if p], errors


def _count_warnings(meta: dict[str, Any], path: Path) -> list[str]:
    lines = []
    for key, listed in (("numTraining", "training"), ("numTest", "test")):
        n = len(meta[listed]) if isinstance(meta.get(listed), list) else 0
        if key in meta and meta[key] != n:
            lines.append(f"{path}: {key} is {meta[key]!r} but '{listed}' lists {n} entries; set {key} to {n} "
                         f"(nothing reads it: training uses the '{listed}' list)")
    return lines


def _tensor_image_size(meta: dict[str, Any], training: list[dict[str, Path]], n_modalities: int) -> str:
    """The declared tensorImageSize, else "3D"/"4D" from the first image's header, else from the
    modality count."""
    if "tensorImageSize" in meta:
        return str(meta["tensorImageSize"])
    if training:
        try:
            return f"{len(nifti_header(training[0]['image']).shape)}D"
        except _NIFTI_ERRORS:
            pass  # validation reports the unreadable file
    return "4D" if n_modalities > 1 else "3D"


def _read_task(task_dir: Path) -> TaskReport:
    """Read and parse dataset.json into a report; ``report.info`` is ``None`` when it cannot be used."""
    report = TaskReport(task_dir)
    meta, report.errors = _read_json(task_dir)
    if meta is None:
        return report
    path = task_dir / "dataset.json"
    missing = [k for k in TRAINING_KEYS if k not in meta]
    report.errors += [f"{path}: key {k!r} is missing; add it (training needs {', '.join(TRAINING_KEYS)}; "
                      "every other key is optional)" for k in missing]
    if missing:
        return report
    labels, label_errors = _parse_labels(meta["labels"], path)
    modality, modality_errors = _parse_modality(meta["modality"], path)
    training, test, case_errors = _parse_cases(task_dir, meta)
    report.errors += label_errors + modality_errors + case_errors
    report.warnings += _count_warnings(meta, path)
    if labels is None or modality is None:
        return report
    report.info = TaskInfo(
        root=task_dir, name=str(meta.get("name", task_dir.name)), modality=modality, labels=labels,
        training=training, test=test, tensor_image_size=_tensor_image_size(meta, training, len(modality)),
        description=str(meta.get("description", "")), raw=meta,
    )
    return report


# ---------------------------------------------------------------- the files


def voxel_spacing(affine: Any, spatial_dims: int = 3) -> list[float]:
    """Voxel edge lengths (mm) along the first ``spatial_dims`` array axes of an image.

    The column norms of the affine's linear part (``nibabel.affines.voxel_sizes``), so oblique and
    flipped orientations give the true edge lengths. Takes a NumPy or torch affine, 3x3 or 4x4, or a
    batched ``[1, 4, 4]`` one as MONAI's MetaTensors carry it.
    """
    a = affine.detach().cpu().numpy() if hasattr(affine, "detach") else np.asarray(affine)
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 3:
        a = a[0]
    return [float(v) for v in nib.affines.voxel_sizes(a)[:spatial_dims]]


def read_image(path: str | os.PathLike, *, channel_first: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file fully and return ``(array, affine)``. A 4D image (modalities last, as
    nibabel reads MSD files) is returned channel-first when ``channel_first``; a 3D image is
    returned as is. A header claiming an absurd size is refused (``ValueError``) before anything is
    allocated; unreadable files raise ``OSError``/``ValueError``-family errors."""
    img = nifti_header(path)
    data = np.asanyarray(img.dataobj)
    if channel_first and data.ndim == 4:
        data = np.moveaxis(data, -1, 0)
    return data, img.affine


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
    except _NIFTI_ERRORS as err:
        text = str(err)
        if text.startswith(f"{path}:"):  # safe_io's refusal already names the file and the fix
            return None, None, text
        return None, None, f"{path}: {what} is not a readable NIfTI file ({type(err).__name__}: {err}); {_REEXTRACT}"
    if not read_data:
        return img, None, None
    try:
        return img, np.asanyarray(img.dataobj), None
    except _NIFTI_ERRORS as err:
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
    values = case.label_values
    if not np.all(np.isfinite(values)):
        return [f"{case.label_path}: label contains NaN/inf; rewrite it with integer values"]
    fractional = values[values != np.round(values)]
    if fractional.size:
        return [(f"{case.label_path}: label has non-integer values {fractional[:5].tolist()}; it was probably "
                 "resampled with linear interpolation: use nearest neighbour")]
    unknown = sorted({int(v) for v in values} - set(case.info.labels))
    if unknown:
        return [(f"{case.label_path}: label values {unknown} are not declared in dataset.json 'labels' "
                 f"{sorted(case.info.labels)}; add them to 'labels' or relabel the file")]
    return []


def _label_dtype(case: _Case) -> list[str]:
    data = case.label_data
    if data is None or data.dtype.kind != "f" or not np.all(np.isfinite(case.label_values)):
        return []
    if not np.all(case.label_values == np.round(case.label_values)):
        return []  # _label_values reports it
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


# ---------------------------------------------------------------- splits


def make_split(cases: Sequence[Any], *, n_folds: int = 5, fold: int = 0, seed: int = 0) -> tuple[list, list]:
    """Split ``cases`` into (train, val) for one fold of a seeded k-fold partition. The same
    cases, ``n_folds`` and ``seed`` always give the same folds, and the ``n_folds`` validation
    sets are disjoint and cover every case; order inside each list follows the input order."""
    cases = list(cases)
    if not isinstance(n_folds, int) or n_folds < 2:
        raise ValueError(f"n_folds={n_folds!r} is invalid: use an integer >= 2 (5 is the nnU-Net convention)")
    if len(cases) < n_folds:
        raise ValueError(f"cannot make {n_folds} folds from {len(cases)} cases: use n_folds <= {len(cases)}")
    if not isinstance(fold, int) or not 0 <= fold < n_folds:
        raise ValueError(f"fold={fold!r} is out of range: use 0..{n_folds - 1}")
    order = np.random.default_rng(seed).permutation(len(cases))
    val_idx = set(np.array_split(order, n_folds)[fold].tolist())
    train = [c for i, c in enumerate(cases) if i not in val_idx]
    val = [c for i, c in enumerate(cases) if i in val_idx]
    return train, val


def _to_json(item: Any) -> Any:
    if isinstance(item, dict):
        return {k: _to_json(v) for k, v in item.items()}
    if isinstance(item, (list, tuple)):
        return [_to_json(v) for v in item]
    if isinstance(item, os.PathLike):
        return os.fspath(item)
    return item


def _from_json(item: Any) -> Any:
    if isinstance(item, dict):
        return {k: Path(v) if k in ("image", "label") and isinstance(v, str) else _from_json(v)
                for k, v in item.items()}
    if isinstance(item, str):
        return Path(item)
    return item


def save_split(path: str | os.PathLike, train: Sequence[Any], val: Sequence[Any], **meta: Any) -> Path:
    """Write a split as JSON (``{"train": [...], "val": [...], "meta": {...}}``) so a run, and
    its resumption, always trains on the cases it started with; extra keywords (fold, seed...)
    are stored under "meta". Paths are stored as strings; the file is replaced atomically (a
    symlink at ``path`` is replaced, never written through)."""
    payload = {"train": _to_json(list(train)), "val": _to_json(list(val)), "meta": _to_json(meta)}
    return atomic_write(path, json.dumps(payload, indent=2) + "\n")


def load_split(path: str | os.PathLike) -> tuple[list, list]:
    """Read a split written by ``save_split`` and return (train, val); string entries and the
    "image"/"label" values of dict entries come back as ``Path``."""
    train, val, _ = _read_split(Path(path))
    return train, val


def _read_split(path: Path) -> tuple[list, list, dict[str, Any]]:
    """(train, val, meta) of a split file, in one read."""
    try:
        payload = json.loads(path.read_text())
        train, val = [_from_json(c) for c in payload["train"]], [_from_json(c) for c in payload["val"]]
        return train, val, payload.get("meta") or {}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a split file written by save_split ({err}); delete it to make a new split") from err


def get_or_make_split(cases: Sequence[Any], split_path: str | os.PathLike, *, n_folds: int = 5, fold: int = 0,
                      seed: int = 0) -> tuple[list, list]:
    """Return the split stored at ``split_path`` when it exists (so a resumed run keeps its
    cases), else make one with ``make_split`` and save it there. A stored split whose "meta"
    names another ``n_folds``, ``fold`` or ``seed`` is refused: returning it would train the
    wrong fold without a word."""
    split_path = Path(split_path)
    if not split_path.exists():
        train, val = make_split(cases, n_folds=n_folds, fold=fold, seed=seed)
        save_split(split_path, train, val, n_folds=n_folds, fold=fold, seed=seed)
        return train, val
    train, val, stored = _read_split(split_path)
    asked = {"n_folds": n_folds, "fold": fold, "seed": seed}
    clash = [key for key, value in asked.items() if key in stored and stored[key] != value]
    if clash:
        have = ", ".join(f"{key}={stored[key]!r}" for key in clash)
        want = ", ".join(f"{key}={asked[key]!r}" for key in clash)
        raise ValueError(f"{split_path} holds the split for {have}, but {want} was asked for: "
                         "use another run directory (--run-dir) for another fold, or delete the file")
    return train, val
