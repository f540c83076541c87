"""What prediction and evaluation refuse before they write: outputs that could touch an input or a
task's data, inputs the model cannot take, voxels that are damaged or not finite, and label maps
that hold anything but the task's classes.

Every check here runs before any model work or file creation, so a refused run leaves the disk
as it found it. Folders are compared by identity (device and inode), so links, bind mounts and
the case-insensitive names of macOS and Windows cannot slip past; a task's data folders are its
imagesTr, labelsTr and imagesTs and the folder of every file its dataset.json lists.
"""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from .data.dataset import label_problem, nifti_header
from .errors import root_cause
from .safe_io import UnsafePathError

__all__ = [
    "TASK_DATA_FOLDERS",
    "check_input_image",
    "check_input_voxels",
    "check_label_map",
    "check_loaded_voxels",
    "check_predictions_folder",
    "plan_outputs",
    "prediction_path",
    "refuse_unreadable",
]

#: The folders an MSD-layout task keeps its data in by convention. A task's data folders are these
#: and the folder of every image, label and test file its dataset.json lists, whatever their names;
#: predictions are never written in any of them.
TASK_DATA_FOLDERS = ("imagesTr", "labelsTr", "imagesTs")
_DATA_FOLDER_NAMES = {name.casefold() for name in TASK_DATA_FOLDERS}


def prediction_path(image_path: str | os.PathLike, out_dir: str | os.PathLike, suffix: str = "") -> Path:
    """Where the label map predicted for ``image_path`` goes in ``out_dir``: its name without the
    NIfTI extension, then ``suffix``, then ``.nii.gz`` (evaluation finds a label's prediction the same way)."""
    name = Path(image_path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    # MSD images carry a modality suffix (_0000) in some derived layouts; labels do not.
    return Path(out_dir) / f"{name}{suffix}.nii.gz"


def _real(path: str | os.PathLike) -> Path:
    # Links resolved, so an output folder that is a link to an input folder is recognised as one.
    return Path(os.path.realpath(os.fspath(path)))


def _identity(path: Path) -> tuple[int, int] | str:
    """What makes two folders one: device and inode for a folder that exists (so a link, a bind
    mount or another spelling of a name on a case-insensitive file system is the same folder),
    else its resolved path."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return str(path)
    return (st.st_dev, st.st_ino)


def _listed_paths(task: Path) -> list[str]:
    """Every path the task's dataset.json lists (training images and labels, test images), as
    written; empty when it cannot be read (the task reader reports that; this only guards)."""
    try:
        meta = json.loads((task / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    found: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, str) and value:
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    for key in ("training", "test"):
        collect(meta.get(key) if isinstance(meta, dict) else None)
    return found


def _task_data_folders(task: Path) -> list[Path]:
    """The folders holding a task's data: its imagesTr/labelsTr/imagesTs and the folder of every
    file its dataset.json lists (``./labels/x.nii.gz`` makes ``labels`` one; a path leaving the
    task, which the reader refuses, is guarded all the same)."""
    folders = {task / name for name in TASK_DATA_FOLDERS}
    for rel in _listed_paths(task):
        # The folder as listed, and where the file really lies when it is a link.
        folders |= {_real((task / rel).parent), _real(task / rel).parent}
    return sorted(folders)


def _known_tasks(folders: Iterable[Path], task_dirs: Iterable[str | os.PathLike]) -> list[Path]:
    """The tasks in ``task_dirs`` and every folder holding a dataset.json at or above one of
    ``folders`` (resolved paths)."""
    tasks = {_real(t) for t in task_dirs}
    for folder in set(folders):
        tasks.update(f for f in (folder, *folder.parents) if (f / "dataset.json").is_file())
    return sorted(tasks)


def _guarded_folders(inputs: Iterable[Path], tasks: Iterable[Path]) -> dict[Path, str]:
    """Each folder outputs must keep out of, with the words naming it in a message: the input
    folders, then the data folders of ``tasks`` (which name a folder that is both)."""
    guarded = {folder: f"the input folder {folder}" for folder in sorted(set(inputs))}
    for task in tasks:
        for folder in _task_data_folders(task):
            guarded[folder] = f"{folder}, a data folder of the task {task}"
    return guarded


def _overlap(target: Path, guarded: dict[Path, str],
             relations: Sequence[str] = ("is", "is inside", "contains")) -> tuple[str, Path, str] | None:
    """The first way the resolved folder ``target`` (existing or not) overlaps a guarded folder,
    as ``(relation, folder, words)``, folders compared by identity (:func:`_identity`)."""
    chain = [_identity(p) for p in (target, *target.parents)]
    ids = {folder: _identity(folder) for folder in guarded}
    for how in relations:
        for folder, words in guarded.items():
            if how == "contains":
                hit = chain[0] in {_identity(p) for p in folder.parents}
            else:
                hit = ids[folder] == chain[0] if how == "is" else ids[folder] in chain[1:]
            if hit:
                return how, folder, words
    return None


def _elsewhere(folder: Path, guarded: dict[Path, str]) -> Path:
    """A folder for outputs beside ``folder`` that overlaps nothing guarded (for messages)."""
    for candidate in (folder.parent / "predictions", folder.parent / f"{folder.name}_predictions"):
        if _overlap(candidate, guarded) is None:
            return candidate
    return folder.parent / f"{folder.name}_predictions"


def _first_few(items: Sequence[Any], limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def plan_outputs(
    images: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    suffix: str = "",
    overwrite: bool = False,
    protected: Iterable[str | os.PathLike] = (),
    task_dirs: Iterable[str | os.PathLike] = (),
) -> list[tuple[Path, Path]]:
    """Pair each input image with the label map it will be written to, refusing any plan that could
    lose data (a ``ValueError`` naming the paths and the fix) before anything is read or created.

    Refused: an ``out_dir`` that is, contains or lies inside an input's folder, a folder in
    ``protected``, or a data folder of a known task (one in ``task_dirs``, or any whose
    dataset.json lies in or above an input folder or ``out_dir``); two inputs sharing an output
    name (``a.nii`` and ``a.nii.gz``, or names equal but for case); an existing output unless
    ``overwrite``; anything but a file or a link at an output path (a link is replaced, never
    followed). The same file named twice is predicted once.
    """
    out_dir = Path(out_dir)
    unique: list[Path] = []
    seen: set[Path] = set()
    for path in map(Path, images):
        if _real(path) not in seen:
            seen.add(_real(path))
            unique.append(path)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output folder {out_dir} exists and is not a folder: choose another --output")
    out_real = _real(out_dir)
    for folder in (out_real, *out_real.parents):
        # By name as well as by identity: on a file system that ignores case, labelstr is labelsTr.
        if folder.name.casefold() in _DATA_FOLDER_NAMES and (folder.parent / "dataset.json").is_file():
            how = "is" if folder == out_real else "is inside"
            raise ValueError(f"output folder {out_dir} {how} {folder}, a data folder of the task {folder.parent}: "
                             "predictions there would replace its images or reference labels; write them to a "
                             f"folder of their own, e.g. {folder.parent / 'predictions'}")
    inputs = [_real(p.parent) for p in unique] + [_real(p) for p in protected]
    guarded = _guarded_folders(inputs, _known_tasks([*inputs, out_real], task_dirs))
    hit = _overlap(out_real, guarded)
    if hit is not None:
        how, folder, words = hit
        raise ValueError(f"output folder {out_dir} {how} {words}: predictions could replace the images or labels "
                         f"there; choose a folder outside every input and task data folder, e.g. "
                         f"{_elsewhere(folder, guarded)}")
    groups: dict[str, list[Path]] = {}
    for path in unique:
        groups.setdefault(prediction_path(path, out_dir, suffix).name.casefold(), []).append(path)
    clashes = [g for g in groups.values() if len(g) > 1]
    if clashes:
        listed = "; ".join(" and ".join(map(str, g)) + f" -> {prediction_path(g[0], out_dir, suffix).name}" for g in clashes)
        raise ValueError(f"{len(clashes)} output name collision(s), several inputs would be written to one label map: "
                         f"{listed}; rename the inputs or predict them into separate folders")
    plan = [(path, prediction_path(path, out_dir, suffix)) for path in unique]
    for _, out in plan:
        if out.exists() and not out.is_symlink() and not out.is_file():
            raise UnsafePathError(f"{out} exists and is not a regular file: move it away or choose another --output")
    existing = [out.name for _, out in plan if out.exists() or out.is_symlink()]
    if existing and not overwrite:
        raise ValueError(f"{len(existing)} output file(s) exist already in {out_dir} ({_first_few(existing)}): pass "
                         "--overwrite (overwrite=True) to replace them, or choose an empty folder")
    return plan


def check_predictions_folder(
    pred_dir: str | os.PathLike,
    labels: Sequence[str | os.PathLike],
    *,
    suffix: str = "",
    out_json: str | os.PathLike | None = None,
    task_dirs: Iterable[str | os.PathLike] = (),
) -> None:
    """Refuse an evaluation that would score labels against themselves or write into a task's data.

    Labels scored against themselves say Dice 1.0 whatever the model, so this is a ``ValueError``:
    a ``pred_dir`` that is (or lies inside) a data folder of a known task (one in ``task_dirs``, or
    any whose dataset.json lies above ``pred_dir`` or a label), an ``out_json`` that would land in
    such a folder, and a prediction (found by :func:`prediction_path`) that is its label's very
    file (a link, a hard link, or the label folder itself).
    """
    pred_dir = Path(pred_dir)
    label_paths = [Path(p) for p in labels]
    pred_real = _real(pred_dir)
    data = _guarded_folders((), _known_tasks([pred_real, *(_real(p.parent) for p in label_paths)], task_dirs))
    hit = _overlap(pred_real, data, ("is", "is inside"))
    if hit is not None:
        raise ValueError(f"predictions folder {pred_dir} {hit[0]} {hit[2]}: the files there are the task's own, and "
                         "labels scored against themselves give Dice 1.0 whatever the model; pass the folder "
                         "`mednext-lite predict --output` wrote")
    if out_json is not None:
        hit = _overlap(_real(Path(out_json).parent), data, ("is", "is inside"))
        if hit is not None:
            raise ValueError(f"report {out_json} would be written into {hit[2]}: a task's data folders hold its data "
                             f"only; pass --output (out_json=) outside them, e.g. {_elsewhere(hit[1], data) / 'evaluation.json'}")
    for label_path in label_paths:
        pred_path = prediction_path(label_path, pred_dir, suffix)
        if pred_path.is_file() and label_path.exists() and os.path.samefile(pred_path, label_path):
            raise ValueError(f"prediction {pred_path} is the label file {label_path} itself (the same file on disk): a "
                             "label scored against itself gives Dice 1.0 whatever the model; pass the folder "
                             "`mednext-lite predict --output` wrote")


def check_input_image(path: str | os.PathLike, spatial_dims: int = 3, in_channels: int = 1) -> Any:
    """Open ``path``'s header only and check that a model of ``spatial_dims`` and ``in_channels``
    can segment it; returns the lazy nibabel image (no voxel read).

    A header claiming an absurd size is refused before any allocation
    (:func:`mednext_lite.data.dataset.nifti_header`). Both 2D and 3D models take volumes: ``(x, y, z)``
    for one channel, ``(x, y, z, C)`` for ``C`` modalities (a 2D model segments them slice by
    slice). Anything else is a ``ValueError`` naming the file, its shape and what the model needs.
    """
    try:
        img = nifti_header(path)
    except (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: not a readable NIfTI image ({type(err).__name__}: {err}): check the path, or "
                         "re-export or re-download the file") from None
    shape = tuple(int(s) for s in img.shape)
    need = "(x, y, z)" if in_channels == 1 else f"(x, y, z, {in_channels})"
    what = f"this {spatial_dims}D model ({in_channels} input channel(s)) needs a volume {need}"
    if len(shape) < 3:
        one_slice = shape + (1,) * (3 - len(shape))
        fix = (f"save it as a one-slice volume of shape {one_slice}, which a 2D model segments as one slice"
               if spatial_dims == 2 else
               f"pass the 3D volume it was cut from, or save it as a one-slice volume {one_slice} for a 2D model")
        raise ValueError(f"{path}: shape {shape} is a {len(shape)}D image but {what}: {fix}")
    if min(shape) < 1:
        raise ValueError(f"{path}: shape {shape} has an empty axis, so the file holds no image: re-export it")
    channels = shape[3] if len(shape) == 4 else 1
    if len(shape) > 4 or channels != in_channels:
        raise ValueError(f"{path}: shape {shape} does not fit: {what}; pass images with the modalities the model "
                         "was trained on, stacked along the 4th axis")
    return img




def _not_finite_error(path: Path, count: int, total: int) -> ValueError:
    return ValueError(f"{path}: {count} of {total} voxel value(s) are not finite (NaN or inf), which would make the "
                      "whole prediction meaningless: repair the image, or pass --nan-to-num VALUE (nan_to_num=VALUE) "
                      "to replace them, e.g. with the background intensity")


def _read_error(path: Path, err: BaseException) -> ValueError:
    cause = root_cause(err)  # MONAI wraps a failing read in a RuntimeError
    return ValueError(f"{path}: the voxels cannot be read ({type(cause).__name__}: {cause}): the file is truncated "
                      "or damaged; re-export or re-download it")


def check_input_voxels(img: Any, path: str | os.PathLike, nan_to_num: float | None = None) -> int:
    """Read every voxel of the nibabel image ``img`` once, so that a damaged file fails before any
    prediction, and return how many are NaN or infinite; any such voxel is a ``ValueError`` naming
    ``path`` and the count unless ``nan_to_num`` says they will be replaced."""
    with refuse_unreadable(path):
        data = np.asanyarray(img.dataobj)
    if data.dtype.kind not in "fc":
        return 0
    count = int(data.size - np.count_nonzero(np.isfinite(data)))
    if count and nan_to_num is None:
        raise _not_finite_error(Path(path), count, data.size)
    return count


@contextlib.contextmanager
def refuse_unreadable(path: str | os.PathLike) -> Iterator[None]:
    """Within the block, any failure to read ``path`` (what nibabel, zlib or a MONAI loader raises
    on a truncated or damaged file) becomes one ``ValueError`` naming the file and the fix; running
    out of memory stays a ``MemoryError``."""
    try:
        yield
    except MemoryError:
        raise
    except Exception as err:
        raise _read_error(Path(path), err) from err


def check_loaded_voxels(image: torch.Tensor, path: str | os.PathLike, nan_to_num: float | None,
                        report: Callable[[str], Any]) -> None:
    """Refuse an image just loaded from ``path`` that holds NaN or inf, or, with ``nan_to_num``,
    replace those voxels in place and pass their count to ``report``; run it before normalisation
    spreads one NaN over the whole image."""
    bad = ~torch.isfinite(image)
    count = int(bad.sum())
    if not count:
        return
    if nan_to_num is None:
        raise _not_finite_error(Path(path), count, image.numel())
    image.masked_fill_(bad, float(nan_to_num))
    report(f"{path}: replaced {count} non-finite voxel value(s) with {nan_to_num:g} (--nan-to-num)")


def check_label_map(data: np.ndarray, path: str | os.PathLike, num_classes: int) -> None:
    """Refuse a label map read from ``path`` unless it holds the classes 0..num_classes-1 only: NaN,
    inf and fractions (:func:`~mednext_lite.data.dataset.label_problem`) and class numbers outside
    the task's would be scored as some other class or crash the scoring."""
    problem = label_problem(data)
    if problem is not None:
        raise ValueError(f"{path}: {problem}: a label map holds class numbers only; re-export it")
    outside = np.unique(data[(data < 0) | (data >= num_classes)])
    if outside.size:
        raise ValueError(f"{path}: holds label value(s) {_first_few(outside.astype(np.int64).tolist())} outside "
                         f"0..{num_classes - 1} ({num_classes} classes): check that it belongs to this task (or pass "
                         "the task's --task)")
