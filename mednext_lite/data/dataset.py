"""Read and validate an MSD-layout task (dataset.json + NIfTI files), and make seeded splits.

Validation happens before any training: every problem found is collected and reported at once,
each line naming the file and the fix, so a user repairs a task in one pass instead of meeting
one error per epoch.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from tqdm.auto import tqdm

__all__ = [
    "REQUIRED_KEYS",
    "DatasetError",
    "TaskInfo",
    "get_or_make_split",
    "load_split",
    "load_task",
    "make_split",
    "read_image",
    "save_split",
    "validate_task",
]

#: Keys every MSD dataset.json carries; the reader needs only some of them but reports all.
REQUIRED_KEYS = (
    "name", "description", "reference", "licence", "release", "tensorImageSize",
    "modality", "labels", "numTraining", "numTest", "training", "test",
)
# Keys without which the task cannot be used at all (the others only earn a problem line).
_ESSENTIAL_KEYS = ("modality", "labels", "training")

# Geometry tolerance: affines are compared in millimetres; 1e-3 mm absorbs float32 round-off in
# headers written by different tools while still catching a wrong spacing or origin.
_AFFINE_ATOL = 1e-3

# What nibabel raises on bad files: unknown format, bad header values, gzip/zlib damage, short
# reads of a truncated file.
_NIFTI_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error)


class DatasetError(ValueError):
    """A task failed validation; ``problems`` holds one line per problem, each naming a file."""

    def __init__(self, task_dir: Path, problems: list[str]):
        self.task_dir = task_dir
        self.problems = list(problems)
        lines = "\n".join(f"- {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in task {task_dir}:\n{lines}")


@dataclass
class TaskInfo:
    """What a training run needs to know about a task, read from its dataset.json.

    ``labels`` maps integer label values to names and includes background (0); ``num_classes``
    counts them. ``in_channels`` is the number of modalities (the channel count after 4D images
    are moved channel-first). ``training`` holds dicts with absolute ``image``/``label`` paths;
    ``test`` holds absolute image paths.
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


def _resolve(root: Path, rel: str) -> Path:
    return (root / rel).resolve() if not os.path.isabs(rel) else Path(rel)


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
    if not isinstance(meta, dict):
        return None, [f"{path}: top level must be a JSON object, got {type(meta).__name__}"]
    return meta, []


def _parse(task_dir: Path, meta: dict[str, Any]) -> tuple[TaskInfo | None, list[str]]:
    path = task_dir / "dataset.json"
    problems = [f"{path}: key {k!r} is missing; add it (MSD dataset.json keys: {', '.join(REQUIRED_KEYS)})"
                for k in REQUIRED_KEYS if k not in meta]
    if any(k not in meta for k in _ESSENTIAL_KEYS):
        return None, problems
    try:
        labels = {int(k): str(v) for k, v in dict(meta["labels"]).items()}
    except (TypeError, ValueError):
        return None, problems + [(f"{path}: 'labels' must map integer values to names, e.g. "
                                  f"{{\"0\": \"background\"}}, got {meta['labels']!r}")]
    if 0 not in labels:
        problems.append(f"{path}: 'labels' has no background entry \"0\"; add \"0\": \"background\"")
    modality = {str(k): str(v) for k, v in dict(meta["modality"]).items()}
    if not modality:
        problems.append(f"{path}: 'modality' is empty; list one entry per image channel, e.g. {{\"0\": \"MRI\"}}")
    training: list[dict[str, Path]] = []
    for i, entry in enumerate(meta["training"]):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            problems.append(f"{path}: training[{i}] = {entry!r} needs both 'image' and 'label' paths")
            continue
        training.append({"image": _resolve(task_dir, entry["image"]), "label": _resolve(task_dir, entry["label"])})
    test = []
    for entry in meta.get("test", []):
        # Some derived datasets store test entries as {"image": ...}; accept both forms.
        rel = entry["image"] if isinstance(entry, dict) else entry
        test.append(_resolve(task_dir, rel))
    for key, items in (("numTraining", training), ("numTest", test)):
        if key in meta and isinstance(meta[key], int) and meta[key] != len(items):
            problems.append(f"{path}: {key} is {meta[key]} but {len(items)} entries are listed; "
                            f"set {key} to {len(items)}")
    info = TaskInfo(
        root=task_dir, name=str(meta.get("name", task_dir.name)), modality=modality, labels=labels,
        training=training, test=test, tensor_image_size=str(meta.get("tensorImageSize", "3D")),
        description=str(meta.get("description", "")), raw=meta,
    )
    return info, problems


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
    returned as is. Raises ``OSError``/``ValueError``-family errors on unreadable files."""
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    if channel_first and data.ndim == 4:
        data = np.moveaxis(data, -1, 0)
    return data, img.affine


def _load_checked(path: Path, what: str) -> tuple[Any, np.ndarray | None, str | None]:
    """Load the header and, for content checks, the data; return (image, data, problem)."""
    fix = "re-extract it from the archive (or regenerate the task)"
    try:
        img = nib.load(str(path))
    except _NIFTI_ERRORS as err:
        return None, None, f"{path}: {what} is not a readable NIfTI file ({type(err).__name__}: {err}); {fix}"
    try:
        data = np.asanyarray(img.dataobj)
    except _NIFTI_ERRORS as err:
        return img, None, f"{path}: {what} is truncated or corrupt ({type(err).__name__}: {err}); {fix}"
    return img, data, None


def _check_case(info: TaskInfo, case: dict[str, Path], check_contents: bool) -> list[str]:
    problems: list[str] = []
    image_path, label_path = case["image"], case["label"]
    for path, what in ((image_path, "image"), (label_path, "label")):
        if not path.is_file():
            problems.append(f"{path}: {what} file listed in dataset.json is missing; re-extract the archive "
                            "or remove the case from 'training'")
    if problems:
        return problems
    if check_contents:
        img, img_data, err_i = _load_checked(image_path, "image")
        lbl, lbl_data, err_l = _load_checked(label_path, "label")
    else:
        img, lbl, img_data, lbl_data, err_i, err_l = None, None, None, None, None, None
        try:
            img = nib.load(str(image_path))
        except _NIFTI_ERRORS as err:
            err_i = f"{image_path}: image is not a readable NIfTI file ({err}); re-extract it"
        try:
            lbl = nib.load(str(label_path))
        except _NIFTI_ERRORS as err:
            err_l = f"{label_path}: label is not a readable NIfTI file ({err}); re-extract it"
    problems += [e for e in (err_i, err_l) if e]
    if img is None or lbl is None:
        return problems
    ishape, lshape = tuple(img.shape), tuple(lbl.shape)
    n_mod = info.in_channels
    if len(ishape) == 4:
        if ishape[3] != n_mod:
            problems.append(f"{image_path}: image has {ishape[3]} channels on its last axis but dataset.json "
                            f"declares {n_mod} modalities; fix 'modality' or the image")
    elif len(ishape) == 3:
        if n_mod != 1:
            problems.append(f"{image_path}: image is 3D but dataset.json declares {n_mod} modalities; "
                            "store the modalities as a 4D image (modalities last) or fix 'modality'")
    else:
        problems.append(f"{image_path}: image has {len(ishape)} dimensions {ishape}; expected 3D or 4D "
                        "(x, y, z[, modality])")
    if len(lshape) != 3:
        problems.append(f"{label_path}: label has shape {lshape}; a label map must be 3D (x, y, z)")
    elif ishape[:3] != lshape:
        problems.append(f"{label_path}: label shape {lshape} does not match image shape {ishape[:3]} of "
                        f"{image_path.name}; resample the label onto the image grid")
    if not np.allclose(img.affine, lbl.affine, atol=_AFFINE_ATOL):
        i_sp = np.round(voxel_spacing(img.affine), 4).tolist()
        l_sp = np.round(voxel_spacing(lbl.affine), 4).tolist()
        problems.append(f"{label_path}: label affine differs from image {image_path.name} (spacing {l_sp} vs "
                        f"{i_sp}, origin {np.round(lbl.affine[:3, 3], 3).tolist()} vs "
                        f"{np.round(img.affine[:3, 3], 3).tolist()}); copy the image header into the label "
                        "or resample it")
    if lbl_data is not None:
        if lbl_data.dtype.kind == "f" and not np.all(np.isfinite(lbl_data)):
            problems.append(f"{label_path}: label contains NaN/inf; rewrite it with integer values")
        else:
            values = np.unique(lbl_data)
            if values.dtype.kind == "f" and not np.all(values == np.round(values)):
                problems.append(f"{label_path}: label has non-integer values {values[values != np.round(values)][:5].tolist()}; "
                                "it was probably resampled with linear interpolation: use nearest neighbour")
            else:
                unknown = sorted({int(v) for v in values} - set(info.labels))
                if unknown:
                    problems.append(f"{label_path}: label values {unknown} are not declared in dataset.json "
                                    f"'labels' {sorted(info.labels)}; add them to 'labels' or relabel the file")
    if img_data is not None and img_data.dtype.kind == "f" and not np.all(np.isfinite(img_data)):
        problems.append(f"{image_path}: image contains NaN/inf values; replace them (e.g. with 0) before training")
    return problems


def _check_test(info: TaskInfo, path: Path, check_contents: bool) -> list[str]:
    if not path.is_file():
        return [f"{path}: test image listed in dataset.json is missing; re-extract the archive or remove it from 'test'"]
    if not check_contents:
        return []
    _, _, err = _load_checked(path, "test image")
    return [err] if err else []


def validate_task(
    task: str | os.PathLike | TaskInfo, *, check_contents: bool = True, progress: bool = False
) -> list[str]:
    """Return every problem found in a task (empty list = ready to train), each naming the file
    and the fix. Checks dataset.json keys and counts, that every listed file exists and is a
    readable (not truncated) NIfTI, that image and label agree in shape and affine, that the
    channel count matches 'modality', and that label values are declared in 'labels'.
    ``check_contents=False`` reads headers only (fast, but misses truncation and label values)."""
    if isinstance(task, TaskInfo):
        info, problems = task, []
    else:
        task_dir = Path(task)
        meta, problems = _read_json(task_dir)
        if meta is None:
            return problems
        info, more = _parse(task_dir, meta)
        problems += more
        if info is None:
            return problems
    if not info.training:
        problems.append(f"{info.root / 'dataset.json'}: 'training' lists no cases; add at least one image/label pair")
    cases = tqdm(info.training, desc=f"validate {info.name}", unit="case", disable=not progress, leave=False)
    for case in cases:
        problems += _check_case(info, case, check_contents)
    for path in info.test:
        problems += _check_test(info, path, check_contents)
    return problems


def load_task(task_dir: str | os.PathLike, *, validate: bool = True, check_contents: bool = True,
              progress: bool = False) -> TaskInfo:
    """Read ``<task_dir>/dataset.json`` into a ``TaskInfo``. With ``validate`` (the default) the
    whole task is checked first (see ``validate_task``) and ``DatasetError`` lists every
    problem; without it only dataset.json must parse."""
    task_dir = Path(task_dir)
    meta, problems = _read_json(task_dir)
    if meta is None:
        raise DatasetError(task_dir, problems)
    info, more = _parse(task_dir, meta)
    problems += more
    if info is None:
        raise DatasetError(task_dir, problems)
    if validate:
        problems += validate_task(info, check_contents=check_contents, progress=progress)
        if problems:
            raise DatasetError(task_dir, problems)
    return info


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
    are stored under "meta". Paths are stored as strings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"train": _to_json(list(train)), "val": _to_json(list(val)), "meta": _to_json(meta)}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


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
