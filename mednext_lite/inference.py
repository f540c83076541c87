"""Sliding-window prediction, NIfTI output in the input's own geometry, and Dice/HD95 evaluation.

Whole volumes rarely fit the network (and must be divisible by 16), so prediction tiles the
volume with patch-sized windows (MONAI ``sliding_window_inference``) and blends overlapping
windows with a Gaussian weight that trusts window centres more than borders. A 2D model predicts
a 3D volume slice by slice through the same call: its window is ``(P, P, 1)`` and a thin wrapper
drops and restores the singleton axis. Predictions are mapped back through the inverse of the
preprocessing (MONAI ``Invertd``) so the written label map has exactly the input's shape and
affine, whatever cropping, padding or resampling the preprocessing did.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.metrics import compute_dice, compute_hausdorff_distance
from torch import nn
from tqdm.auto import tqdm

from .data.dataset import voxel_spacing
from .model import MedNeXt

__all__ = [
    "dice_scores",
    "evaluate_folder",
    "evaluate_model",
    "hd95_scores",
    "load_model",
    "predict_files",
    "predict_from_checkpoint",
    "predict_volume",
    "sliding_window_logits",
    "window_size",
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


def _output_path(image_path: Path, out_dir: Path, suffix: str) -> Path:
    name = image_path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    # MSD images carry a modality suffix (_0000) in some derived layouts; labels do not.
    return out_dir / f"{name}{suffix}.nii.gz"


@torch.no_grad()
def predict_files(
    model: nn.Module,
    images: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    transforms: Callable[[dict], dict],
    patch_size: Sequence[int] | int,
    *,
    suffix: str = "",
    progress: bool = True,
    **window_kwargs: Any,
) -> list[Path]:
    """Segment NIfTI ``images`` and write one ``.nii.gz`` label map per image into ``out_dir``.

    ``transforms`` is the preprocessing used in validation (a MONAI ``Compose`` on ``{"image"}``,
    e.g. ``get_transforms(info, mode="infer", ...)``). The predicted labels are mapped back with
    MONAI's ``Invertd`` (nearest neighbour) and written with the input file's own affine; a shape
    that still differs from the input's is an error rather than a silently misaligned file.
    """
    from monai.transforms import Invertd

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inverter = Invertd(keys="pred", transform=transforms, orig_keys="image", nearest_interp=True)
    written = []
    for path in tqdm([Path(p) for p in images], desc="predict", unit="case", disable=not progress):
        original = nib.load(str(path))
        item = transforms({"image": str(path)})
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
        out = _output_path(path, out_dir, suffix)
        img = nib.Nifti1Image(np.rint(labels).astype(np.uint8), original.affine, header=original.header)
        img.set_data_dtype(np.uint8)
        img.header.set_slope_inter(1, 0)
        tmp = out.with_name(out.name + ".tmp.nii.gz")
        nib.save(img, str(tmp))
        os.replace(tmp, out)
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
    **kwargs: Any,
) -> list[Path]:
    """Segment ``images`` with a trainer checkpoint, repeating its training preprocessing.

    The task (for modality-specific normalisation), patch size and spacing come from the
    checkpoint's ``train_config`` unless ``task_dir`` / ``patch_size`` are given; other keywords
    go to :func:`predict_files` (overlap, blend, sw_batch_size, suffix, amp, progress).
    """
    from .data.dataset import load_task
    from .data.transforms import get_transforms

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, ckpt = load_model(checkpoint, device=device)
    tc = ckpt.get("train_config") or {}
    task_dir = task_dir or tc.get("task_dir")
    if not task_dir:
        raise ValueError("the checkpoint stores no task: pass task_dir= (--task on the command line), the task whose "
                         "preprocessing to repeat")
    info = load_task(task_dir, validate=False)
    dims = model.config.spatial_dims
    if patch_size is None:
        patch_size = tuple(tc.get("patch_size") or (128,) * dims)
    spacing = tc.get("spacing")
    tf = get_transforms(info, mode="infer", patch_size=window_size(patch_size, dims, 3),
                        spacing=tuple(spacing) if spacing else None)
    return predict_files(model, images, out_dir, tf, patch_size, device=device, **kwargs)


def evaluate_folder(
    pred_dir: str | os.PathLike,
    labels: Sequence[str | os.PathLike],
    num_classes: int,
    *,
    class_names: Sequence[str] | None = None,
    suffix: str = "",
    hd95: bool = False,
    out_json: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Compare predictions in ``pred_dir`` with reference label files (matched by file name).

    Returns per-case and mean Dice (and HD95 in mm when asked) and writes them to ``out_json``
    plus a CSV beside it when given. A missing prediction is an error naming the file.
    """
    pred_dir = Path(pred_dir)
    names = list(class_names) if class_names is not None else [f"class{i}" for i in range(1, num_classes)]
    rows: list[dict[str, Any]] = []
    sums = _ScoreSums(num_classes, hd95)
    for label_path in [Path(p) for p in labels]:
        pred_path = _output_path(label_path, pred_dir, suffix)
        if not pred_path.is_file():
            raise ValueError(f"no prediction {pred_path} for label {label_path}: run `mednext-lite predict` "
                             f"into {pred_dir} first (or check --suffix)")
        ref = nib.load(str(label_path))
        pred_img = nib.load(str(pred_path))
        if tuple(pred_img.shape[:3]) != tuple(ref.shape[:3]):
            raise ValueError(f"{pred_path} has shape {pred_img.shape} but {label_path} has {ref.shape}: "
                             "the prediction was not written in the label's geometry")
        y = torch.as_tensor(np.rint(np.asanyarray(ref.dataobj)).astype(np.int64))[None, None]
        p = torch.as_tensor(np.rint(np.asanyarray(pred_img.dataobj)).astype(np.int64))[None, None]
        dice, hd = sums.add(p, y, voxel_spacing(ref.affine) if hd95 else None)
        row: dict[str, Any] = {"case": label_path.name, **{f"dice_{n}": v for n, v in zip(names, dice)}}
        if hd is not None:
            row.update({f"hd95_{n}": v for n, v in zip(names, hd)})
        rows.append(row)
    result = sums.summary(names)
    result["cases"] = rows
    if out_json is not None:
        out_json = Path(out_json)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(result, indent=2) + "\n")
        if rows:
            with open(out_json.with_suffix(".csv"), "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    return result
