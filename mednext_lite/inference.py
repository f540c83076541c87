"""Sliding-window prediction, NIfTI output in the input's own geometry, and Dice/HD95 evaluation.

Whole volumes rarely fit the network (and must be divisible by 16), so prediction tiles the
volume with patch-sized windows (MONAI ``sliding_window_inference``) and blends overlapping
windows with a Gaussian weight that trusts window centres more than borders. A 2D model predicts
a 3D volume slice by slice through the same call: its window is ``(P, P, 1)`` and a thin wrapper
drops and restores the singleton axis. Predictions are mapped back through the inverse of the
preprocessing (MONAI ``Invertd``) so the written label map has exactly the input's shape and
affine, whatever cropping, padding or resampling the preprocessing did.

Nothing a user owns is put at risk and no bad number passes as a result: outputs are planned and
checked before any model work (never in, around or inside an input folder or a task's data
folders, no two inputs onto one output name, no existing file replaced unless asked), each input
is checked for a shape the model can take and for non-finite voxels, and evaluation refuses a
prediction whose voxel grid (shape, spacing, axis directions, origin) differs from its label's
unless asked to resample it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.metrics import compute_dice, compute_hausdorff_distance
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from torch import nn
from tqdm.auto import tqdm

from .data.dataset import voxel_spacing
from .model import MedNeXt
from .safe_io import UnsafePathError, atomic_write, nifti_header

__all__ = [
    "TASK_DATA_FOLDERS",
    "check_input_image",
    "dice_scores",
    "evaluate_folder",
    "evaluate_model",
    "grid_differences",
    "hd95_scores",
    "load_model",
    "plan_outputs",
    "predict_files",
    "predict_from_checkpoint",
    "predict_volume",
    "resample_nearest",
    "sliding_window_logits",
    "window_size",
    "write_csv",
]


def _unwrap(model: nn.Module) -> MedNeXt:
    """The MedNeXt inside a DDP/compile wrapper."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    return inner


def window_size(patch_size: Sequence[int] | int, spatial_dims: int, volume_dims: int = 3) -> tuple[int, ...]:
    """The sliding window for a ``patch_size`` and a model of ``spatial_dims`` on volumes of
    ``volume_dims`` axes: the patch itself, or ``(P, P, 1)`` when a 2D model reads 3D volumes."""
    if isinstance(patch_size, int):
        patch_size = (patch_size,) * spatial_dims
    patch = tuple(int(p) for p in patch_size)
    if len(patch) == volume_dims:
        return patch
    if len(patch) == spatial_dims and volume_dims == spatial_dims + 1:
        return patch + (1,)
    raise ValueError(f"patch_size {patch} does not fit a {spatial_dims}D model on {volume_dims}D volumes: "
                     f"give {spatial_dims} sizes, e.g. {(patch[0],) * spatial_dims}")


class _SliceModel(nn.Module):
    """Run a 2D model on ``[N, C, H, W, 1]`` windows (one slice each) and restore the last axis."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x[..., 0])[..., None]


@torch.no_grad()
def sliding_window_logits(
    model: nn.Module,
    image: torch.Tensor,
    patch_size: Sequence[int] | int,
    *,
    overlap: float = 0.5,
    blend: str = "gaussian",
    sw_batch_size: int = 2,
    device: str | torch.device | None = None,
    amp: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Logits ``[N, num_classes, *spatial]`` of ``image`` (``[N, C, *spatial]``) by sliding windows.

    Args:
        model: a MedNeXt (or DDP-wrapped one); deep-supervision heads are switched off for the call.
        image: batch of channel-first volumes (3D) or images (2D).
        patch_size: window size (each entry divisible by 16); a 2D model on 3D input gets ``(P, P, 1)``.
        overlap: fraction of overlap between neighbouring windows (0.5 = nnU-Net's default).
        blend: ``"gaussian"`` (centre-weighted) or ``"constant"`` (plain average).
        sw_batch_size: windows run through the network at once.
        device: where windows are computed; the stitched output stays on ``image``'s device.
        amp: run windows under autocast (CUDA only; ignored on CPU).
    """
    if blend not in ("gaussian", "constant"):
        raise ValueError(f"blend={blend!r}: use 'gaussian' or 'constant'")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap={overlap} must be in [0, 1), e.g. 0.5")
    net = _unwrap(model)
    spatial_dims = net.config.spatial_dims
    roi = window_size(patch_size, spatial_dims, image.ndim - 2)
    predictor: nn.Module = _SliceModel(net) if len(roi) == spatial_dims + 1 else net
    device = torch.device(device) if device is not None else next(net.parameters()).device
    use_amp = amp and device.type == "cuda"
    was_training = net.training
    net.eval()
    try:
        with net.full_resolution_only(), torch.autocast(device.type, enabled=use_amp):
            logits = sliding_window_inference(
                image, roi, sw_batch_size, predictor, overlap=overlap, mode=blend,
                sw_device=device, device=image.device, progress=progress,
            )
    finally:
        net.train(was_training)
    return logits.float()


def predict_volume(model: nn.Module, image: torch.Tensor, patch_size: Sequence[int] | int, **kwargs: Any) -> torch.Tensor:
    """Integer label map ``[N, 1, *spatial]`` (argmax of :func:`sliding_window_logits`)."""
    return sliding_window_logits(model, image, patch_size, **kwargs).argmax(dim=1, keepdim=True)


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
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
    with warnings.catch_warnings():  # MONAI's own internal call trips its deprecation notice
        warnings.simplefilter("ignore", FutureWarning)
        out = compute_hausdorff_distance(p, y, include_background=False, percentile=95,
                                         spacing=None if spacing is None else list(spacing))
    out = out.float()
    out[torch.isinf(out)] = float("nan")
    return out


def _spacing_of(image: Any, spatial_dims: int = 3) -> list[float] | None:
    affine = getattr(image, "affine", None)
    return None if affine is None else voxel_spacing(affine, spatial_dims)


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    dataset: Iterable[dict[str, Any]],
    patch_size: Sequence[int] | int,
    num_classes: int,
    *,
    class_names: Sequence[str] | None = None,
    hd95: bool = False,
    progress: bool = True,
    **window_kwargs: Any,
) -> dict[str, Any]:
    """Dice (and optionally HD95) of ``model`` on preprocessed ``{"image", "label"}`` items.

    Returns ``{"dice": {name: mean}, "mean_dice": float, "cases": [{"dice": [...], ...}], "n": int}``
    where Dice is averaged over foreground classes and cases; partial sums live under
    ``"_sums"`` so distributed ranks can add their shards before dividing.
    """
    names = list(class_names) if class_names is not None else [f"class{i}" for i in range(1, num_classes)]
    cases: list[dict[str, Any]] = []
    sums = _ScoreSums(num_classes, hd95)
    for item in tqdm(dataset, desc="validate", unit="case", leave=False, disable=not progress):
        image = torch.as_tensor(item["image"])[None]
        label = torch.as_tensor(item["label"])[None]
        pred = predict_volume(model, image, patch_size, **window_kwargs).cpu()
        dice, hd = sums.add(pred, label.cpu(), _spacing_of(item["image"]) if hd95 else None)
        cases.append({"dice": dice} if hd is None else {"dice": dice, "hd95": hd})
    result = sums.summary(names)
    result["cases"] = cases
    result["_sums"] = {"dice": sums.dice, "n": sums.n, "hd": sums.hd, "hd_n": sums.hd_n}
    return result


class _ScoreSums:
    """Running per-class Dice (and HD95) sums over cases. A class missing from a case's prediction
    or truth has an infinite HD95, which is left out of that class's HD95 mean and counted apart."""

    def __init__(self, num_classes: int, hd95: bool) -> None:
        self.num_classes, self.hd95, self.n = num_classes, hd95, 0
        self.dice = torch.zeros(num_classes - 1, dtype=torch.float64)
        self.hd, self.hd_n = torch.zeros_like(self.dice), torch.zeros_like(self.dice)

    def add(self, pred: torch.Tensor, label: torch.Tensor,
            spacing: Sequence[float] | None) -> tuple[list[float], list[float] | None]:
        """Score one case (``[1, 1, *spatial]`` integer maps); returns its Dice and HD95 lists."""
        d = dice_scores(pred, label, self.num_classes)[0].double()
        self.dice += d
        self.n += 1
        if not self.hd95:
            return d.tolist(), None
        h = hd95_scores(pred, label, self.num_classes, spacing)[0].double()
        ok = torch.isfinite(h)
        self.hd += torch.where(ok, h, torch.zeros_like(h))
        self.hd_n += ok.double()
        return d.tolist(), h.tolist()

    def summary(self, names: Sequence[str]) -> dict[str, Any]:
        return _summarise(self.dice, float(self.n), self.hd if self.hd95 else None,
                          self.hd_n if self.hd95 else None, names)


def _summarise(dice_sum: torch.Tensor, n: float, hd_sum: torch.Tensor | None, hd_count: torch.Tensor | None,
               names: Sequence[str]) -> dict[str, Any]:
    mean = (dice_sum / max(n, 1.0)).tolist()
    out: dict[str, Any] = {"dice": dict(zip(names, mean)), "mean_dice": float(sum(mean) / max(len(mean), 1)), "n": int(n)}
    if hd_sum is not None and hd_count is not None:
        hd = [(s / c).item() if c > 0 else float("nan") for s, c in zip(hd_sum, hd_count)]
        out["hd95"] = dict(zip(names, hd))
        finite = [h for h in hd if math.isfinite(h)]
        out["mean_hd95"] = float(sum(finite) / len(finite)) if finite else float("nan")
    return out


# -- model loading and NIfTI prediction ---------------------------------------------------------

def load_model(checkpoint: str | os.PathLike | dict, device: str | torch.device = "cpu") -> tuple[MedNeXt, dict]:
    """Rebuild the model stored in a checkpoint; returns ``(model, checkpoint_dict)``.

    The checkpoint's ``train_config`` (when written by the trainer) tells the patch size and
    preprocessing used in training, so prediction can repeat them.
    """
    from .interop import load_checkpoint, model_from_checkpoint

    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt).to(device).eval()
    return model, ckpt


# -- where predictions may go and what may be read ----------------------------------------------

#: The folders an MSD-layout task keeps its data in by convention. A task's data folders are these
#: and the folder of every image, label and test file its dataset.json lists, whatever their names;
#: predictions are never written in any of them.
TASK_DATA_FOLDERS = ("imagesTr", "labelsTr", "imagesTs")
_DATA_FOLDER_NAMES = {name.casefold() for name in TASK_DATA_FOLDERS}


def _output_path(image_path: Path, out_dir: Path, suffix: str) -> Path:
    name = image_path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    # MSD images carry a modality suffix (_0000) in some derived layouts; labels do not.
    return out_dir / f"{name}{suffix}.nii.gz"


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


def _listing(items: Sequence[Any], limit: int = 5) -> str:
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
    """Pair each input image with the label map it will be written to, refusing any plan that
    could lose data, before anything is read or created.

    Refused with a ``ValueError`` naming the paths and the fix: an ``out_dir`` that is, contains
    or lies inside a folder holding an input image, a folder in ``protected``, or a data folder
    of a known task: one in ``task_dirs`` or any whose ``dataset.json`` lies in or above an input
    folder or ``out_dir``. A task's data folders are its imagesTr, labelsTr and imagesTs and the
    folder of every file its dataset.json lists, whatever they are called; folders are compared by
    identity (device and inode), so links, bind mounts and case-insensitive names cannot slip
    past, and a folder named like a data folder of the task above it is refused by name too. Also
    refused: two inputs that would share an output name (``a.nii`` and
    ``a.nii.gz``, or names equal but for case, which are one file on macOS and Windows); output
    files that exist already, unless ``overwrite``; and anything but a regular file or a link at an
    output path (a link is replaced, never followed). The same file named twice is predicted once.
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
        groups.setdefault(_output_path(path, out_dir, suffix).name.casefold(), []).append(path)
    clashes = [g for g in groups.values() if len(g) > 1]
    if clashes:
        listed = "; ".join(" and ".join(map(str, g)) + f" -> {_output_path(g[0], out_dir, suffix).name}" for g in clashes)
        raise ValueError(f"{len(clashes)} output name collision(s), several inputs would be written to one label map: "
                         f"{listed}; rename the inputs or predict them into separate folders")
    plan = [(path, _output_path(path, out_dir, suffix)) for path in unique]
    for _, out in plan:
        if out.exists() and not out.is_symlink() and not out.is_file():
            raise UnsafePathError(f"{out} exists and is not a regular file: move it away or choose another --output")
    existing = [out.name for _, out in plan if out.exists() or out.is_symlink()]
    if existing and not overwrite:
        raise ValueError(f"{len(existing)} output file(s) exist already in {out_dir} ({_listing(existing)}): pass "
                         "--overwrite (overwrite=True) to replace them, or choose an empty folder")
    return plan


def check_input_image(path: str | os.PathLike, spatial_dims: int = 3, in_channels: int = 1) -> Any:
    """Open ``path``'s header only and check that a model of ``spatial_dims`` and ``in_channels``
    can segment it; returns the lazy nibabel image (no voxel read).

    A header claiming an absurd size is refused before any allocation
    (:func:`mednext_lite.safe_io.nifti_header`). Both 2D and 3D models take volumes: ``(x, y, z)``
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


def _load_stage_end(transforms: Callable[[dict], dict]) -> int | None:
    """Index just past the loading step of a MONAI ``Compose`` (so voxels can be checked as read,
    before normalisation spreads one NaN over the whole image), or None for another callable."""
    from monai.transforms import Compose, LoadImaged

    if isinstance(transforms, Compose):
        for i, step in enumerate(transforms.transforms):
            if isinstance(step, LoadImaged):
                return i + 1
    return None


def _root_cause(err: BaseException) -> BaseException:
    # MONAI wraps every failing transform in a RuntimeError("applying transform ...").
    while isinstance(err, RuntimeError) and err.__cause__ is not None:
        err = err.__cause__
    return err


def _not_finite_error(path: Path, count: int, total: int) -> ValueError:
    return ValueError(f"{path}: {count} of {total} voxel value(s) are not finite (NaN or inf), which would make the "
                      "whole prediction meaningless: repair the image, or pass --nan-to-num VALUE (nan_to_num=VALUE) "
                      "to replace them, e.g. with the background intensity")


def _read_error(path: Path, err: BaseException) -> ValueError:
    cause = _root_cause(err)
    return ValueError(f"{path}: the voxels cannot be read ({type(cause).__name__}: {cause}): the file is truncated "
                      "or damaged; re-export or re-download it")


def _count_not_finite(img: Any, path: Path) -> int:
    """Read every voxel of ``img`` once (so a damaged file fails before any prediction) and count
    the values that are NaN or infinite."""
    try:
        data = np.asanyarray(img.dataobj)
    except MemoryError:
        raise
    except Exception as err:
        raise _read_error(path, err) from err
    if data.dtype.kind not in "fc":
        return 0
    return int(data.size - np.count_nonzero(np.isfinite(data)))


def _require_finite(image: torch.Tensor, path: Path, nan_to_num: float | None, report: Callable[[str], Any]) -> None:
    bad = ~torch.isfinite(image)
    count = int(bad.sum())
    if not count:
        return
    if nan_to_num is None:
        raise _not_finite_error(path, count, image.numel())
    image.masked_fill_(bad, float(nan_to_num))
    report(f"{path}: replaced {count} non-finite voxel value(s) with {nan_to_num:g} (--nan-to-num)")


def _preprocess(transforms: Callable[[dict], dict], path: Path, nan_to_num: float | None,
                report: Callable[[str], Any]) -> dict:
    """Run ``transforms`` on one file, checking (or cleaning) its voxels right after loading."""
    end = _load_stage_end(transforms)
    try:
        item = transforms({"image": str(path)}) if end is None else transforms({"image": str(path)}, end=end)
    except MemoryError:
        raise
    except Exception as err:
        raise _read_error(path, err) from err
    _require_finite(item["image"], path, nan_to_num, report)
    return item if end is None else transforms(item, start=end)


@torch.no_grad()
def predict_files(
    model: nn.Module,
    images: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    transforms: Callable[[dict], dict],
    patch_size: Sequence[int] | int,
    *,
    suffix: str = "",
    overwrite: bool = False,
    nan_to_num: float | None = None,
    protected: Iterable[str | os.PathLike] = (),
    task_dirs: Iterable[str | os.PathLike] = (),
    report: Callable[[str], Any] | None = None,
    progress: bool = True,
    **window_kwargs: Any,
) -> list[Path]:
    """Segment NIfTI ``images`` and write one ``.nii.gz`` label map per image into ``out_dir``.

    ``transforms`` is the preprocessing used in validation (a MONAI ``Compose`` on ``{"image"}``,
    e.g. ``get_transforms(info, mode="infer", ...)``). Every check runs before any prediction:
    the output plan (:func:`plan_outputs`: never in or around an input or task data folder, no
    name collisions, no existing file unless ``overwrite``) and each input's header
    (:func:`check_input_image`), then every input's voxels, read once in full so that a damaged
    file fails before any output is written. An image with non-finite voxels is refused, or, with
    ``nan_to_num``, cleaned to that value and the count passed to ``report`` (default: a line on
    stderr). The predicted labels are mapped back with MONAI's ``Invertd`` (nearest neighbour) and
    written atomically with the input file's own affine; a shape that still differs from the
    input's is an error rather than a silently misaligned file.
    """
    from monai.transforms import Invertd

    if nan_to_num is not None and not math.isfinite(nan_to_num):
        raise ValueError(f"nan_to_num={nan_to_num} must be a finite number, e.g. 0")
    plan = plan_outputs(images, out_dir, suffix=suffix, overwrite=overwrite, protected=protected, task_dirs=task_dirs)
    config = _unwrap(model).config
    headers = [check_input_image(path, config.spatial_dims, config.in_channels) for path, _ in plan]
    for (path, _), header in zip(plan, headers):
        # One full read of each input before any prediction: a damaged file or a NaN in the last
        # case must not fail a batch half-way, leaving half of the outputs written.
        count = _count_not_finite(header, path)
        if count and nan_to_num is None:
            raise _not_finite_error(path, count, int(np.prod(header.shape)))
    report = report or (lambda line: print(line, file=sys.stderr))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    inverter = Invertd(keys="pred", transform=transforms, orig_keys="image", nearest_interp=True)
    written = []
    for (path, out), original in tqdm(list(zip(plan, headers)), desc="predict", unit="case", disable=not progress):
        item = _preprocess(transforms, path, nan_to_num, report)
        image = item["image"]
        pred = predict_volume(model, torch.as_tensor(image)[None], patch_size, **window_kwargs)[0].cpu()
        if hasattr(image, "copy_meta_from"):
            from monai.data import MetaTensor

            pred = MetaTensor(pred, meta=image.meta, applied_operations=list(image.applied_operations))
        item["pred"] = pred
        pred = inverter(item)["pred"]
        labels = np.asarray(torch.as_tensor(pred).detach().cpu().numpy())[0]
        target_shape = tuple(original.shape[:3])
        if labels.shape != target_shape:
            raise ValueError(
                f"prediction for {path} has shape {labels.shape} after undoing the preprocessing but the input "
                f"is {target_shape}: a transform in the pipeline is not invertible; make every spatial "
                "transform invertible (MONAI's dictionary transforms are) or drop it from mode='infer'"
            )
        img = nib.Nifti1Image(np.rint(labels).astype(np.uint8), original.affine, header=original.header)
        img.set_data_dtype(np.uint8)
        img.header.set_slope_inter(1, 0)
        atomic_write(out, lambda tmp, img=img: nib.save(img, str(tmp)), suffix=".nii.gz")
        written.append(out)
    return written


def predict_from_checkpoint(
    checkpoint: str | os.PathLike | dict,
    images: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    task_dir: str | os.PathLike | None = None,
    patch_size: Sequence[int] | int | None = None,
    device: str | torch.device = "auto",
    overwrite: bool = False,
    protected: Iterable[str | os.PathLike] = (),
    **kwargs: Any,
) -> list[Path]:
    """Segment ``images`` with a trainer checkpoint, repeating its training preprocessing.

    The task (for modality-specific normalisation), patch size and spacing come from the
    checkpoint's ``train_config`` unless ``task_dir`` / ``patch_size`` are given; other keywords
    go to :func:`predict_files` (overlap, blend, sw_batch_size, suffix, nan_to_num, amp, progress).
    The output plan is checked before the checkpoint is read, and again against the
    checkpoint's task; the checkpoint itself is refused if unreadable or not finite.
    """
    from .data.dataset import load_task
    from .data.transforms import get_transforms

    suffix = kwargs.get("suffix", "")
    plan_outputs(images, out_dir, suffix=suffix, overwrite=overwrite, protected=protected,
                 task_dirs=[task_dir] if task_dir else [])
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, ckpt = load_model(checkpoint, device=device)
    source = "the checkpoint" if isinstance(checkpoint, dict) else f"checkpoint {checkpoint}"
    stored = _stored_training(ckpt, source)
    known_tasks = [t for t in (task_dir, stored.get("task_dir")) if t]
    if not known_tasks:
        raise ValueError("the checkpoint stores no task: pass task_dir= (--task on the command line), the task whose "
                         "preprocessing to repeat")
    # Checked again now that the checkpoint names its task: its data folders are guarded too.
    plan_outputs(images, out_dir, suffix=suffix, overwrite=overwrite, protected=protected, task_dirs=known_tasks)
    task_dir = known_tasks[0]
    info = load_task(task_dir, validate=False)
    dims = model.config.spatial_dims
    if patch_size is None:
        patch_size = stored.get("patch_size") or (128,) * dims
    spacing = stored.get("spacing")
    tf = get_transforms(info, mode="infer", patch_size=window_size(patch_size, dims, 3),
                        spacing=tuple(spacing) if spacing else None)
    return predict_files(model, images, out_dir, tf, patch_size, device=device, overwrite=overwrite,
                         protected=protected, task_dirs=known_tasks, **kwargs)


def _stored_training(ckpt: dict, source: str) -> dict[str, Any]:
    """The task, patch size and spacing a checkpoint's ``train_config`` records, checked: a value
    of the wrong kind (hand-edited or foreign file) is a ``ValueError`` (``TypeError`` for a
    ``train_config`` that is no dict) naming ``source``, the entry and the fix, not a bare
    ``int()`` failure later."""
    tc = ckpt.get("train_config")
    if tc is None:
        return {}
    if not isinstance(tc, dict):
        raise TypeError(f"{source}: train_config is a {type(tc).__name__}, not a dict of settings: pass --task and "
                         "--patch (task_dir=, patch_size=) or re-save the checkpoint with mednext_lite")
    out: dict[str, Any] = {}
    task = tc.get("task_dir")
    if task not in (None, ""):
        if not isinstance(task, str):
            raise ValueError(f"{source}: train_config.task_dir = {task!r:.80} is not a path: pass --task (task_dir=)")
        out["task_dir"] = task
    for key, kind, flag in (("patch_size", int, "--patch (patch_size=)"), ("spacing", float, "--spacing")):
        value = tc.get(key)
        if value is None:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        ok = bool(items) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                                 and (kind is float or float(v).is_integer()) for v in items)
        if not ok:
            raise ValueError(f"{source}: train_config.{key} = {value!r:.80} is not a list of positive "
                             f"{'whole numbers' if kind is int else 'numbers'}: the file was edited or written by "
                             f"another program; pass {flag} or re-save the checkpoint")
        out[key] = tuple(kind(v) for v in items)
    return out


# -- evaluation ---------------------------------------------------------------------------------

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
        raise ValueError(f"{path}: holds label value(s) {_listing(outside.tolist())} outside 0..{num_classes - 1} "
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

    Labels scored against themselves say Dice 1.0 whatever the model, so before anything is read
    it refuses a ``pred_dir`` that is (or lies inside) a data folder of a known task (one in
    ``task_dirs``, or any whose dataset.json lies above ``pred_dir`` or a label), an ``out_json``
    that would land in such a folder, and a prediction that is its label's very file (a link, a
    hard link, or the label folder itself).
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
    names = list(class_names) if class_names is not None else [f"class{i}" for i in range(1, num_classes)]
    rows: list[dict[str, Any]] = []
    sums = _ScoreSums(num_classes, hd95)
    for label_path in label_paths:
        pred_path = _output_path(label_path, pred_dir, suffix)
        if not pred_path.is_file():
            raise ValueError(f"no prediction {pred_path} for label {label_path}: run `mednext-lite predict` "
                             f"into {pred_dir} first (or check --suffix)")
        if os.path.samefile(pred_path, label_path):
            raise ValueError(f"prediction {pred_path} is the label file {label_path} itself (the same file on disk): a "
                             "label scored against itself gives Dice 1.0 whatever the model; pass the folder "
                             "`mednext-lite predict --output` wrote")
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
        dice, hd = sums.add(torch.as_tensor(p)[None, None], torch.as_tensor(y)[None, None],
                            voxel_spacing(ref.affine) if hd95 else None)
        row: dict[str, Any] = {"case": label_path.name, **{f"dice_{n}": v for n, v in zip(names, dice)}}
        if hd is not None:
            row.update({f"hd95_{n}": v for n, v in zip(names, hd)})
        if resample:
            row["resampled"] = bool(diffs)
        rows.append(row)
    result = sums.summary(names)
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
