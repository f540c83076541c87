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
import warnings
from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import SUPPORTED_PICKLE_MOD, pickle_hashing
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
from monai.utils import convert_to_tensor, look_up_option

from ..safe_io import atomic_write, refuse_symlink
from .dataset import TaskInfo

__all__ = ["DEFAULT_CT_WINDOW", "AboveThreshold", "default_cache_dir", "file_state_hash", "get_transforms",
           "make_dataset"]

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


def _file_state(value: Any) -> Any:
    # A path stands for the file as it is now: regenerating a task in place keeps the names but
    # changes mtime (and the inode, when the writer renames a new file over the old one).
    if isinstance(value, str) and os.path.isfile(value):
        st = os.stat(value)
        return [value, st.st_size, st.st_mtime_ns, st.st_ino]
    if isinstance(value, (list, tuple)):
        return [_file_state(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def file_state_hash(item: dict[str, Any]) -> bytes:
    """``hash_func`` of the disk cache: an MD5 of the item's values where each path to a file
    also carries that file's size, mtime (ns) and inode, so a file rewritten under the same name
    is a cache miss, never the old image."""
    state = {str(k): _file_state(v) for k, v in item.items()}
    return hashlib.md5(json.dumps(state, sort_keys=True).encode()).hexdigest().encode()


class _SafePersistentDataset(PersistentDataset):
    """PersistentDataset whose cache files are only ever regular files it wrote itself: a
    symlink or folder in their place is refused (MONAI would load the link's target, or copy a
    new file through it), and new files are renamed into place inside the cache folder. A miss
    returns the very object it saved, so hits and misses look alike (tensors, never NumPy arrays)
    and one batch can mix them."""

    def _cachecheck(self, item_transformed: Any) -> Any:
        name = self.hash_func(item_transformed).decode("utf-8") + self.transform_hash
        hashfile = refuse_symlink(Path(self.cache_dir) / f"{name}.pt", "cache file")
        if hashfile.is_file():
            try:
                return torch.load(hashfile, weights_only=self.weights_only)
            except (UnpicklingError, RuntimeError, EOFError) as err:
                # A torn or foreign file is recomputed and replaced, as MONAI does.
                warnings.warn(f"unreadable cache file {hashfile} ({err}); recomputing it", stacklevel=2)
        item = self._pre_transform(deepcopy(item_transformed))  # keep the original for hashing
        pickle_module = look_up_option(self.pickle_module, SUPPORTED_PICKLE_MOD)
        obj = convert_to_tensor(item, convert_numeric=False, track_meta=self.track_meta)
        atomic_write(hashfile, lambda tmp: torch.save(obj, tmp, pickle_module=pickle_module,
                                                      pickle_protocol=self.pickle_protocol), suffix=".pt")
        return obj


def default_cache_dir(files: Sequence[dict[str, Any]]) -> Path:
    """The disk cache folder for ``files``: ``<data root>/.cache/persistent``, where the data root
    is the folder holding the task that holds the first file (the nearest folder above it with a
    ``dataset.json``). Deriving it from the files means ``--data-dir`` and a task outside the
    default root are honoured; ``ValueError`` when no task folder is found (pass ``cache_dir``)."""
    first = next((v for f in files for k, v in f.items() if k == "image"), None)
    if first is None:
        raise ValueError("cannot place the disk cache: the files hold no 'image' path; pass cache_dir=")
    image = Path(os.fspath(first)).absolute()
    for folder in image.parents:
        if (folder / "dataset.json").is_file():
            return folder.parent / ".cache" / "persistent"
    raise ValueError(f"cannot place the disk cache: no folder above {image} holds a dataset.json, so its data "
                     "root is unknown; pass cache_dir= (for example a .cache folder beside your images)")


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
    ``cache_dir`` (default: ``.cache/persistent`` in the data root the task lies in, see
    ``default_cache_dir``) once and reuses it across runs; use it when RAM is short or many runs
    share a task. The cache key includes the transform chain and each file's size, mtime and
    inode, so neither a changed pipeline nor a task regenerated in place serves stale data; a
    symlink in place of a cache file is refused. Disk-cached items hold plain tensors, without
    MetaTensor metadata (reading that back would need unpickling arbitrary objects from the cache
    folder). ``cache="none"``: plain ``Dataset``, everything
    recomputed every epoch (smallest footprint, slowest).
    """
    files = _plain(files)
    if cache == "memory":
        return CacheDataset(data=files, transform=transforms, cache_rate=1.0, num_workers=num_workers,
                            progress=progress)
    if cache == "disk":
        directory = Path(cache_dir) if cache_dir is not None else default_cache_dir(files)
        directory.mkdir(parents=True, exist_ok=True)
        signature = getattr(transforms, "cache_signature", None)
        hash_fn = pickle_hashing if signature is None else _SignatureHash(signature)
        return _SafePersistentDataset(data=files, transform=transforms, cache_dir=directory,
                                      hash_func=file_state_hash, hash_transform=hash_fn)
    if cache == "none":
        return Dataset(data=files, transform=transforms)
    raise ValueError(f"cache={cache!r} is invalid: use 'memory' (RAM), 'disk' (PersistentDataset) or 'none'")
