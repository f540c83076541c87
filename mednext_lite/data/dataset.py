"""Read an MSD-layout task: its dataset.json into a ``TaskInfo``, and its NIfTI files into arrays.

The dataset.json is taken as the Decathlon released it: only the keys training reads
(``training``, ``labels``, ``modality``) are required, and the descriptive ones may be missing or,
like the releases' ``"relase"``, misspelt. What cannot be used is returned as one line per problem,
naming the file and the fix, for ``validate.check_task`` to report with the file checks. Every
NIfTI file is opened through :func:`nifti_header`, which refuses a header claiming more than
:data:`MAX_VOXELS` values before any array is allocated; :func:`label_problem` says what makes an
array no label map (NaN, inf or fractions), for every reader of labels to refuse it alike.
"""

from __future__ import annotations

import errno
import json
import os
import reprlib
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

__all__ = [
    "MAX_VOXELS",
    "MSD_KEYS",
    "NIFTI_ERRORS",
    "TRAINING_KEYS",
    "TaskInfo",
    "label_problem",
    "nifti_header",
    "read_dataset_json",
    "read_image",
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

#: Largest image (voxels x channels) the package reads: 2^31 float32 values are 8 GiB, beyond any
#: released MSD case (BrainTumour 240x240x155x4 is 36 M) by a factor of 60.
MAX_VOXELS = 2**31

#: What nibabel raises on bad files: unknown format, bad header values, gzip/zlib damage, short
#: reads of a truncated file (and :func:`nifti_header`'s refusal of an absurd header, a ValueError).
NIFTI_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error)

# Values quoted in problem lines: a hostile entry (a 10^6-character name, a list nested 900 deep)
# still gives one readable line.
_QUOTE = reprlib.Repr()
_QUOTE.maxstring = _QUOTE.maxother = 160
_QUOTE.maxlevel, _QUOTE.maxlist, _QUOTE.maxdict = 3, 4, 4


def _shown(value: Any) -> str:
    return _QUOTE.repr(value)


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
        except NIFTI_ERRORS:
            pass  # validation reports the unreadable file
    return "4D" if n_modalities > 1 else "3D"


def read_dataset_json(task_dir: Path) -> tuple[TaskInfo | None, list[str], list[str]]:
    """Read and parse ``<task_dir>/dataset.json``: ``(info, errors, warnings)``, each problem one
    line naming the file and the fix; ``info`` is ``None`` when the file cannot be used at all."""
    meta, errors = _read_json(task_dir)
    if meta is None:
        return None, errors, []
    path = task_dir / "dataset.json"
    missing = [k for k in TRAINING_KEYS if k not in meta]
    errors += [f"{path}: key {k!r} is missing; add it (training needs {', '.join(TRAINING_KEYS)}; "
               "every other key is optional)" for k in missing]
    if missing:
        return None, errors, []
    labels, label_errors = _parse_labels(meta["labels"], path)
    modality, modality_errors = _parse_modality(meta["modality"], path)
    training, test, case_errors = _parse_cases(task_dir, meta)
    errors += label_errors + modality_errors + case_errors
    warnings = _count_warnings(meta, path)
    if labels is None or modality is None:
        return None, errors, warnings
    info = TaskInfo(
        root=task_dir, name=str(meta.get("name", task_dir.name)), modality=modality, labels=labels,
        training=training, test=test, tensor_image_size=_tensor_image_size(meta, training, len(modality)),
        description=str(meta.get("description", "")), raw=meta,
    )
    return info, errors, warnings


# ---------------------------------------------------------------- images


def nifti_header(path: str | os.PathLike, *, max_voxels: int = MAX_VOXELS) -> Any:
    """Open a NIfTI image lazily (header only) with nibabel and return it; refuse with
    ``ValueError`` a header whose shape holds more than ``max_voxels`` values, naming the shape."""
    img = nib.load(os.fspath(path))
    shape = tuple(int(s) for s in img.shape)
    count = 1
    for s in shape:
        count *= max(s, 1)
    if count > max_voxels:
        raise ValueError(f"{path}: header claims shape {shape} ({count:,} values), above the limit of "
                         f"{max_voxels:,}; the header is probably damaged: re-export the file")
    return img


def label_problem(data: np.ndarray) -> str | None:
    """What makes ``data`` no label map, as words to follow its name, or None when every value is a
    class number (a finite integer, whatever the dtype stores it as).

    A label map holds class numbers only: NaN or inf (say, a failed export), or fractions (what
    resampling with linear interpolation leaves) would be scored, drawn or trained on as some other
    class. The words name the first such value and how many there are, e.g. ``"holds nan, which is
    not an integer label: 1 label value(s) are not finite (NaN or inf)"``.
    """
    data = np.asanyarray(data)
    if data.dtype.kind in "iub":
        return None
    if data.dtype.kind != "f":
        return f"has dtype {data.dtype}, which holds no class numbers"
    bad, what = ~np.isfinite(data), "are not finite (NaN or inf)"
    if not bad.any():
        bad, what = data != np.round(data), "are non-integer (fractions, as linear interpolation leaves them)"
        if not bad.any():
            return None
    first = float(np.unique(data[bad])[0])
    return f"holds {first:g}, which is not an integer label: {int(bad.sum())} label value(s) {what}"


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
