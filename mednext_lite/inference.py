"""Sliding-window prediction of whole volumes, written as NIfTI label maps in the input's own geometry.

Whole volumes rarely fit the network (and must be divisible by 16), so prediction tiles the
volume with patch-sized windows (MONAI ``sliding_window_inference``) and blends overlapping
windows with a Gaussian weight that trusts window centres more than borders. A 2D model predicts
a 3D volume slice by slice through the same call: its window is ``(P, P, 1)`` and a thin wrapper
drops and restores the singleton axis. Predictions are mapped back through the inverse of the
preprocessing (MONAI ``Invertd``) so the written label map has exactly the input's shape and
affine, whatever cropping, padding or resampling the preprocessing did. What prediction refuses
before it writes lives in :mod:`mednext_lite.predict_guard`; the scores in :mod:`mednext_lite.metrics`,
the scoring of a folder of written predictions in :mod:`mednext_lite.evaluation`.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn
from tqdm.auto import tqdm

from .data.dataset import voxel_spacing
from .metrics import ScoreAccumulator
from .predict_guard import (
    check_input_image,
    check_input_voxels,
    check_loaded_voxels,
    plan_outputs,
    refuse_unreadable,
)
from .runtime import resolve_device
from .safe_io import atomic_write

__all__ = [
    "evaluate_model",
    "predict_files",
    "predict_from_checkpoint",
    "predict_volume",
    "preprocess_checked",
    "sliding_window_logits",
    "window_size",
]


def _unwrap(model: Any) -> Any:
    """The network inside a DDP/compile wrapper (anything else as it is)."""
    inner = getattr(model, "module", model)
    return getattr(inner, "_orig_mod", inner)


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


@contextlib.contextmanager
def _full_resolution_eval(net: Any) -> Iterator[None]:
    """A network module in eval mode with only its full-resolution output for the call, its
    training flag restored afterwards; any other callable as it is."""
    if not isinstance(net, nn.Module):
        yield
        return
    was_training = net.training
    net.eval()
    try:
        with net.full_resolution_only() if hasattr(net, "full_resolution_only") else contextlib.nullcontext():
            yield
    finally:
        net.train(was_training)


@torch.no_grad()
def sliding_window_logits(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    patch_size: Sequence[int] | int,
    *,
    spatial_dims: int | None = None,
    overlap: float = 0.5,
    blend: str = "gaussian",
    sw_batch_size: int = 2,
    device: str | torch.device | None = None,
    amp: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Logits ``[N, num_classes, *spatial]`` of ``image`` (``[N, C, *spatial]``) by sliding windows.

    Args:
        model: a MedNeXt (or a DDP/compiled wrapper of one), run in eval mode with its
            deep-supervision heads off for the call; or any callable mapping a batch of windows to
            their logits (an exported network's runtime, say), given with ``spatial_dims``.
        image: batch of channel-first volumes (3D) or images (2D).
        patch_size: window size (each entry divisible by 16); a 2D model on 3D input gets ``(P, P, 1)``.
        spatial_dims: 2 or 3, the dimensionality ``model`` reads; a MedNeXt's config tells it.
        overlap: fraction of overlap between neighbouring windows (0.5 = nnU-Net's default).
        blend: ``"gaussian"`` (centre-weighted) or ``"constant"`` (plain average).
        sw_batch_size: windows run through the network at once.
        device: where windows are computed (default: the model's parameters, else ``image``'s);
            the stitched output stays on ``image``'s device.
        amp: run windows under autocast (CUDA only; ignored on CPU).
    """
    if blend not in ("gaussian", "constant"):
        raise ValueError(f"blend={blend!r}: use 'gaussian' or 'constant'")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap={overlap} must be in [0, 1), e.g. 0.5")
    net = _unwrap(model)
    if spatial_dims is None:
        config = getattr(net, "config", None)
        if config is None:
            raise ValueError(f"{type(net).__name__} carries no MedNeXt config to tell its dimensionality: pass "
                             "spatial_dims=2 or spatial_dims=3")
        spatial_dims = config.spatial_dims
    roi = window_size(patch_size, spatial_dims, image.ndim - 2)
    if device is None:
        weight = next(net.parameters(), None) if isinstance(net, nn.Module) else None
        device = image.device if weight is None else weight.device
    device = torch.device(device)

    def per_slice(x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W, 1] windows through a 2D model
        return net(x[..., 0])[..., None]

    predictor = per_slice if len(roi) == spatial_dims + 1 else net
    with _full_resolution_eval(net), torch.autocast(device.type, enabled=amp and device.type == "cuda"):
        logits = sliding_window_inference(image, roi, sw_batch_size, predictor, overlap=overlap, mode=blend,
                                          sw_device=device, device=image.device, progress=progress)
    return logits.float()


def predict_volume(model: nn.Module, image: torch.Tensor, patch_size: Sequence[int] | int, **kwargs: Any) -> torch.Tensor:
    """Integer label map ``[N, 1, *spatial]`` (argmax of :func:`sliding_window_logits`)."""
    return sliding_window_logits(model, image, patch_size, **kwargs).argmax(dim=1, keepdim=True)


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
    scores: ScoreAccumulator | None = None,
    progress: bool = True,
    **window_kwargs: Any,
) -> dict[str, Any]:
    """Dice (and optionally HD95) of ``model`` on preprocessed ``{"image", "label"}`` items.

    Returns :meth:`ScoreAccumulator.summary <mednext_lite.metrics.ScoreAccumulator.summary>`
    (``{"dice": {name: mean}, "mean_dice", "n"}``, HD95 means with ``hd95``) plus ``"cases"``, each
    case's own scores. Each case is added into ``scores`` when given (an accumulator of the same
    classes and ``hd95``), so that distributed ranks can sum their shards afterwards; the means
    returned are then of everything ``scores`` holds.
    """
    if scores is None:
        scores = ScoreAccumulator(num_classes, hd95)
    elif (scores.num_classes, scores.hd95) != (num_classes, bool(hd95)):
        raise ValueError(f"scores hold {scores.num_classes} classes with hd95={scores.hd95} but this evaluation has "
                         f"{num_classes} with hd95={hd95}: pass ScoreAccumulator({num_classes}, hd95={hd95})")
    names = list(class_names) if class_names is not None else [f"class{i}" for i in range(1, num_classes)]
    cases: list[dict[str, Any]] = []
    for item in tqdm(dataset, desc="validate", unit="case", leave=False, disable=not progress):
        image = torch.as_tensor(item["image"])[None]
        label = torch.as_tensor(item["label"])[None]
        pred = predict_volume(model, image, patch_size, **window_kwargs).cpu()
        dice, hd = scores.add(pred, label.cpu(), _spacing_of(item["image"]) if hd95 else None)
        cases.append({"dice": dice} if hd is None else {"dice": dice, "hd95": hd})
    result = scores.summary(names)
    result["cases"] = cases
    return result


# -- NIfTI prediction ----------------------------------------------------------------------------

def _load_stage_end(transforms: Callable[[dict], dict]) -> int | None:
    """Index just past the loading step of a MONAI ``Compose`` (so voxels can be checked as read,
    before normalisation spreads one NaN over the whole image), or None for another callable."""
    from monai.transforms import Compose, LoadImaged

    if isinstance(transforms, Compose):
        for i, step in enumerate(transforms.transforms):
            if isinstance(step, LoadImaged):
                return i + 1
    return None


def preprocess_checked(transforms: Callable[[dict], dict], path: str | os.PathLike, nan_to_num: float | None,
                       report: Callable[[str], Any]) -> dict:
    """Run ``transforms`` on ``{"image": path}``, checking its voxels right after loading, before
    normalisation spreads one NaN over the whole image: a non-finite voxel is refused, or replaced
    by ``nan_to_num`` with the count passed to ``report``; an unreadable file is a ``ValueError``."""
    end = _load_stage_end(transforms)
    with refuse_unreadable(path):
        item = transforms({"image": str(path)}) if end is None else transforms({"image": str(path)}, end=end)
    check_loaded_voxels(item["image"], path, nan_to_num, report)
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
    """Segment NIfTI ``images`` with ``model`` and write one ``.nii.gz`` label map per image into
    ``out_dir``, in the input's own shape and affine.

    ``transforms`` is the validation preprocessing (e.g. ``get_transforms(info, mode="infer", ...)``),
    undone on each prediction by MONAI's ``Invertd``. Nothing is written until every input has
    passed the checks of :mod:`mednext_lite.predict_guard` (output plan, header, every voxel read
    once), so a bad last case cannot leave half a batch written; non-finite voxels are refused, or
    replaced by ``nan_to_num`` with the count sent to ``report`` (default: a line on stderr).
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
        check_input_voxels(header, path, nan_to_num)
    report = report or (lambda line: print(line, file=sys.stderr))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    inverter = Invertd(keys="pred", transform=transforms, orig_keys="image", nearest_interp=True)
    written = []
    for (path, out), original in tqdm(list(zip(plan, headers)), desc="predict", unit="case", disable=not progress):
        item = preprocess_checked(transforms, path, nan_to_num, report)
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
    checkpoint: str | os.PathLike | dict | Any,
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

    ``checkpoint`` may also be a predictor that carries ``config`` and ``train_config`` in place of
    a network, such as :class:`mednext_lite.export.OnnxPredictor`; its windows are then gathered on
    the CPU, and where it computes them is its own setting. The task (for modality-specific
    normalisation), patch size and spacing come from the checkpoint's ``train_config`` unless
    ``task_dir`` / ``patch_size`` are given; other keywords go to :func:`predict_files` (overlap,
    blend, sw_batch_size, suffix, nan_to_num, amp, progress). The output plan is checked before the
    checkpoint is read, and again against the checkpoint's task; the checkpoint itself is refused
    if unreadable or not finite.
    """
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .data.transforms import get_transforms
    from .data.validate import load_task

    suffix = kwargs.get("suffix", "")
    plan_outputs(images, out_dir, suffix=suffix, overwrite=overwrite, protected=protected,
                 task_dirs=[task_dir] if task_dir else [])
    if isinstance(checkpoint, (str, os.PathLike, dict)):
        device = resolve_device(str(device))
        ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
        model = model_from_checkpoint(ckpt).to(device).eval()
        source = "the checkpoint" if isinstance(checkpoint, dict) else f"checkpoint {checkpoint}"
    else:  # a predictor: its own runtime places the windows it is handed on the CPU
        model, device = checkpoint, torch.device("cpu")
        source = str(getattr(checkpoint, "path", type(checkpoint).__name__))
        ckpt = {"train_config": dict(checkpoint.train_config)}
    stored = _stored_training(ckpt, source)
    known_tasks = [t for t in (task_dir, stored.get("task_dir")) if t]
    if not known_tasks:
        raise ValueError(f"{source} stores no task: pass task_dir= (--task on the command line), the task whose "
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
