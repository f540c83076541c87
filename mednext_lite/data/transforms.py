"""MONAI preprocessing and augmentation pipelines chosen by modality, and cached datasets.

One function builds the whole chain so that training, validation and inference share the same
deterministic prefix (load, channel-first, orientation, spacing, foreground crop, normalise,
pad); only training adds the random patch sampling and augmentation. MONAI's caching datasets
cache exactly that deterministic prefix, which is why the random steps come last.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)

from .catalogue import resolve_data_dir
from .dataset import TaskInfo

__all__ = ["DEFAULT_CT_WINDOW", "AboveThreshold", "get_transforms", "make_dataset"]

#: Soft-tissue window in Hounsfield units (the one MONAI's spleen tutorial uses); it keeps
#: organs, contrast-enhanced vessels and tumours, and clips air and bone.
DEFAULT_CT_WINDOW: tuple[float, float] = (-175.0, 250.0)

# Body threshold for the foreground crop of CT: anything denser than -500 HU is not air.
_CT_BODY_HU = -500.0


class AboveThreshold:
    """Picklable ``select_fn`` for ``CropForegroundd``: voxels strictly above ``threshold``
    (a lambda would break PersistentDataset hashing and multi-process loaders)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)

    def __call__(self, x: Any) -> Any:
        return x > self.threshold

    def __repr__(self) -> str:  # stable across processes, used by transform hashing
        return f"AboveThreshold({self.threshold})"


def _as_triplet(value: Sequence[float] | float, what: str) -> tuple:
    if isinstance(value, (int, float)):
        return (value,) * 3
    value = tuple(value)
    if len(value) != 3:
        raise ValueError(f"{what}={value!r} must have 3 entries (x, y, z) or be a single number")
    return value


def get_transforms(
    info: TaskInfo,
    *,
    mode: str = "train",
    patch_size: Sequence[int] | int = (48, 48, 48),
    spacing: Sequence[float] | float | None = None,
    num_samples: int = 2,
    pos_ratio: float = 0.67,
    augment: bool = True,
    ct_window: tuple[float, float] | None = None,
    orientation: str | None = "RAS",
    crop_foreground: bool = True,
) -> Compose:
    """Build the MONAI pipeline for ``mode`` "train", "val" or "infer" on dicts with keys
    "image" and "label" (no label in "infer").

    Steps: load NIfTI; make channel-first (4D images with modalities last become (C, x, y, z));
    reorient to ``orientation``; resample to ``spacing`` mm when given (None keeps the native
    grid; labels use nearest neighbour); crop to the body (MRI: non-zero voxels; CT: denser than
    -500 HU); normalise (CT: clip to ``ct_window``, default -175..250 HU, and scale to [0, 1];
    MRI: z-score per channel over non-zero voxels); pad to at least ``patch_size``. "train" then
    samples ``num_samples`` patches per case, a fraction ``pos_ratio`` centred on foreground, and
    with ``augment`` applies flips on all axes, in-plane 90-degree rotations and intensity
    scale/shift/noise. Outputs are float32 tensors; the label keeps one channel of integer class
    values stored as float32 (what MONAI's DiceCE loss with ``to_onehot_y`` expects).
    """
    if mode not in ("train", "val", "infer"):
        raise ValueError(f"mode={mode!r} is invalid: use 'train', 'val' or 'infer'")
    patch = tuple(int(p) for p in _as_triplet(patch_size, "patch_size"))
    if not 0.0 <= pos_ratio <= 1.0:
        raise ValueError(f"pos_ratio={pos_ratio} must lie in [0, 1] (fraction of patches centred on foreground)")
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1 (patches drawn per case per epoch)")
    keys = ["image"] if mode == "infer" else ["image", "label"]
    interp = ["bilinear"] if mode == "infer" else ["bilinear", "nearest"]
    steps: list[Any] = [
        LoadImaged(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),
    ]
    if orientation:
        # Explicit anatomical labels: the NIfTI convention, and it silences MONAI's default-change warning.
        steps.append(Orientationd(keys=keys, axcodes=orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))))
    if spacing is not None:
        steps.append(Spacingd(keys=keys, pixdim=_as_triplet(spacing, "spacing"), mode=interp))
    if crop_foreground:
        threshold = _CT_BODY_HU if info.is_ct else 0.0
        steps.append(CropForegroundd(keys=keys, source_key="image", select_fn=AboveThreshold(threshold),
                                     allow_smaller=True))
    if info.is_ct:
        lo, hi = ct_window or DEFAULT_CT_WINDOW
        if not lo < hi:
            raise ValueError(f"ct_window={ct_window} must be (low, high) with low < high, in Hounsfield units")
        steps.append(ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True))
    else:
        steps.append(NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True))
    steps.append(SpatialPadd(keys=keys, spatial_size=patch))
    steps.append(EnsureTyped(keys=keys, dtype=torch.float32, track_meta=mode != "train"))
    if mode == "train":
        steps.append(RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=patch, pos=pos_ratio,
                                            neg=1.0 - pos_ratio, num_samples=num_samples, image_key="image",
                                            image_threshold=0.0 if info.is_ct else -np.inf))
        if augment:
            # 90-degree turns only in a plane whose two patch sides are equal: a turn in any other
            # plane would swap the sides and the patches of one batch could no longer be stacked.
            square = next(((a, b) for a, b in ((0, 1), (1, 2), (0, 2)) if patch[a] == patch[b]), None)
            steps += [
                RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
                RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
                RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
            ]
            if square is not None:
                steps.append(RandRotate90d(keys=keys, prob=0.5, max_k=3, spatial_axes=square))
            steps += [
                RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
                RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
                RandGaussianNoised(keys="image", prob=0.15, std=0.05),
            ]
    compose = Compose(steps)
    # A stable text key of the deterministic prefix: PersistentDataset names its cache files by
    # it, and pickling the transform objects is not stable once they have been run.
    compose.cache_signature = json.dumps({
        # track_meta differs between training and validation (EnsureTyped is in the cached prefix)
        "version": 2, "track_meta": mode != "train", "is_ct": info.is_ct, "keys": keys, "orientation": orientation,
        "spacing": None if spacing is None else list(_as_triplet(spacing, "spacing")),
        "crop_foreground": crop_foreground, "ct_window": list(ct_window or DEFAULT_CT_WINDOW) if info.is_ct else None,
        "patch": list(patch), "channels": info.in_channels,
    }, sort_keys=True)
    return compose


class _SignatureHash:
    """``hash_transform`` for PersistentDataset that ignores the transform objects and hashes
    the signature ``get_transforms`` recorded instead (stable across processes and runs)."""

    def __init__(self, signature: str) -> None:
        self.signature = signature

    def __call__(self, _transforms: Any) -> bytes:
        return hashlib.md5(self.signature.encode()).hexdigest().encode()


def _plain(files: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    # str paths hash identically in every process (PersistentDataset keys its cache on them).
    return [{k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in f.items()} for f in files]


def make_dataset(
    files: Sequence[dict[str, Any]],
    transforms: Compose,
    *,
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> torch.utils.data.Dataset:
    """Wrap ``files`` (dicts of paths) and ``transforms`` in a MONAI dataset.

    ``cache="memory"``: ``CacheDataset`` keeps every case's deterministic preprocessing in RAM;
    fastest epochs, costs RAM = cases x preprocessed size (synthetic 48^3: about 1 MB a case;
    Spleen at 1.5 mm: tens of MB a case). ``cache="disk"``: ``PersistentDataset`` writes it to
    ``cache_dir`` (default ``<data root>/.cache/persistent``) once and reuses it across runs;
    use it when RAM is short or many runs share a task; the cache key includes the transform
    chain, so changing the pipeline never serves stale data. ``cache="none"``: plain
    ``Dataset``, everything recomputed every epoch (smallest footprint, slowest).
    """
    files = _plain(files)
    if cache == "memory":
        return CacheDataset(data=files, transform=transforms, cache_rate=1.0, num_workers=num_workers,
                            progress=progress)
    if cache == "disk":
        directory = Path(cache_dir) if cache_dir is not None else resolve_data_dir() / ".cache" / "persistent"
        directory.mkdir(parents=True, exist_ok=True)
        from monai.data.utils import pickle_hashing

        signature = getattr(transforms, "cache_signature", None)
        hash_fn = pickle_hashing if signature is None else _SignatureHash(signature)
        return PersistentDataset(data=files, transform=transforms, cache_dir=directory, hash_transform=hash_fn)
    if cache == "none":
        return Dataset(data=files, transform=transforms)
    raise ValueError(f"cache={cache!r} is invalid: use 'memory' (RAM), 'disk' (PersistentDataset) or 'none'")
