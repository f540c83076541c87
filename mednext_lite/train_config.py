"""The settings of a training run (:class:`TrainConfig`), checked when made, and each one's flag.

:data:`FLAGS` maps each setting to its ``mednext-lite train`` flag, so messages name the fix.

A ``TrainConfig`` is plain data: it is stored in ``config.json`` and in every checkpoint, and a
resumed run is checked against it (:mod:`mednext_lite.run_files`).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .fast.conv import KERNELS
from .fast.layout import MEMORY_FORMATS
from .model import CHECKPOINT_POLICIES, DIVISOR, MedNeXtConfig, checkpoint_policy
from .variants import get_preset, preset_config

__all__ = ["FLAGS", "TrainConfig"]

#: The ``mednext-lite train`` flag of each setting that has one (``num_samples`` and
#: ``poly_exponent`` are Python-only).
FLAGS = {
    "task_dir": "--task", "run_dir": "--run-dir", "variant": "--variant", "kernel_size": "--kernel",
    "spatial_dims": "--spatial-dims", "deep_supervision": "--no-deep-supervision",
    "model_overrides": "--base-width/--blocks", "epochs": "--epochs", "iters_per_epoch": "--iters",
    "batch_size": "--batch", "patch_size": "--patch", "spacing": "--spacing", "augment": "--no-augment",
    "lr": "--lr", "eps": "--eps", "weight_decay": "--weight-decay", "grad_clip": "--grad-clip", "amp": "--amp",
    "memory_format": "--memory-format", "keep_freed_memory": "--no-keep-freed-memory",
    "grad_checkpointing": "--grad-checkpointing", "kernels": "--kernels", "seed": "--seed", "fold": "--fold", "n_folds": "--n-folds",
    "val_every": "--val-every", "val_overlap": "--overlap", "val_blend": "--blend", "sw_batch_size": "--sw-batch-size",
    "hd95": "--hd95", "max_val_cases": "--max-val-cases", "num_workers": "--num-workers", "cache": "--cache",
    "device": "--device", "resume": "--resume", "overwrite": "--overwrite", "upkern_from": "--upkern-from",
    "progress": "--no-progress",
}


# -- configuration -------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainConfig:
    """Every hyper-parameter of a run, as plain data (stored in ``config.json`` and in checkpoints).

    Defaults are the paper's: MedNeXt-S k3 3D with deep supervision, 1000 epochs x 250 iterations,
    batch 2, 128^3 patches, AdamW lr 1e-3 / eps 1e-4 / wd 3e-5, poly 0.9, clip 12. For a CPU-sized
    run use :meth:`cpu_quickstart`.

    Args:
        task_dir: an MSD-layout task directory (dataset.json, imagesTr/, labelsTr/).
        run_dir: where checkpoints, metrics and the split go (default ``runs/<task>_<variant>...``).
        variant, kernel_size, spatial_dims: the preset (S/B/M/L), kernel and 2D/3D; a 2D model
            trains on single slices of the 3D volumes and predicts them slice by slice.
        model_overrides: :class:`MedNeXtConfig` fields replacing the preset's (e.g. base_width=16).
        patch_size: training patch and sliding window (each divisible by 16; 2 sizes for 2D).
        batch_size: patches per process per iteration (the global batch is this x processes).
        num_samples: patches cut from each loaded case (batch_size must be a multiple of it).
        amp: ``"auto"`` (bf16 if supported, else fp16 on CUDA; off on CPU), ``"bf16"``, ``"fp16"``, ``"off"``.
        memory_format: activation layout, ``"auto"`` (the fastest for the device), ``"channels_last"``
            or ``"contiguous"`` (see :meth:`MedNeXt.set_memory_format`); the same maths either way.
        keep_freed_memory: on CPU and without gradient checkpointing, let the process reuse freed
            tensor memory (:func:`mednext_lite.fast.allocator.keep_freed_memory`), which makes 3D
            steps faster; left off with checkpointing, whose memory saving the kept heap would eat
            (figures in docs/performance.md). Process-wide: once on, it stays on in this process.
        grad_checkpointing: ``None`` follows the preset (on for M and L); ``True``/``"block"``,
            ``"expansion"``, ``False`` or one entry per stage, as :meth:`MedNeXt.set_grad_checkpointing`.
        kernels: the depthwise kernels, ``"pytorch"`` (the default), ``"triton"`` or ``"auto"``
            (see :meth:`MedNeXt.set_kernels`); the same maths up to float rounding.
        val_every: validate every this many epochs (and always after the last).
        max_val_cases: validate on the first N validation cases only (``None`` = all).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:1"``.
        resume: continue from ``run_dir/last.pt`` with the same
            :data:`~mednext_lite.run_files.RESUME_MUST_MATCH` settings.
        overwrite: start afresh in a ``run_dir`` holding an earlier run, deleting its
            :data:`~mednext_lite.run_files.RUN_FILES`
            (and nothing else) first.
        upkern_from: initialise from a small-kernel checkpoint with UpKern (ignored on resume, which
            keeps and records the run's own value).
    """

    task_dir: str = ""
    run_dir: str = ""
    variant: str = "S"
    kernel_size: int = 3
    spatial_dims: int = 3
    deep_supervision: bool = True
    model_overrides: dict[str, Any] = field(default_factory=dict)
    epochs: int = 1000
    iters_per_epoch: int = 250
    batch_size: int = 2
    num_samples: int = 1
    patch_size: tuple[int, ...] = (128, 128, 128)
    spacing: tuple[float, ...] | None = None
    augment: bool = True
    lr: float = 1e-3
    eps: float = 1e-4
    weight_decay: float = 3e-5
    poly_exponent: float = 0.9
    grad_clip: float = 12.0
    amp: str = "auto"
    memory_format: str = "auto"
    keep_freed_memory: bool = True
    grad_checkpointing: bool | str | tuple[str | None, ...] | None = None
    kernels: str = "pytorch"
    seed: int = 0
    fold: int = 0
    n_folds: int = 5
    val_every: int = 1
    val_overlap: float = 0.5
    val_blend: str = "gaussian"
    sw_batch_size: int = 2
    hd95: bool = False
    max_val_cases: int | None = None
    num_workers: int = 0
    cache: str = "memory"
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    upkern_from: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in (
            (self.patch_size,) * self.spatial_dims if isinstance(self.patch_size, int) else self.patch_size)))
        if self.spacing is not None:
            sp = self.spacing
            object.__setattr__(self, "spacing", tuple(float(s) for s in ((sp,) * 3 if isinstance(sp, (int, float)) else sp)))
        object.__setattr__(self, "model_overrides", dict(self.model_overrides))
        get_preset(self.variant)  # raises with the list of valid names
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims={self.spatial_dims!r}: use 2 or 3")
        if len(self.patch_size) != self.spatial_dims:
            raise ValueError(f"patch_size {self.patch_size} has {len(self.patch_size)} sizes but spatial_dims="
                             f"{self.spatial_dims}: give {self.spatial_dims} sizes, e.g. {(self.patch_size[0],) * self.spatial_dims}")
        for p in self.patch_size:
            if p < DIVISOR or p % DIVISOR:
                up = max(DIVISOR, -(-p // DIVISOR) * DIVISOR)
                raise ValueError(f"patch size {p} is not a positive multiple of {DIVISOR}: use {up}")
        if math.prod(p // DIVISOR for p in self.patch_size) < 2:
            raise ValueError(f"patch_size {self.patch_size} leaves a single voxel at the 1/{DIVISOR} bottleneck, where "
                             f"GroupNorm cannot normalise in training: make at least one size {2 * DIVISOR}")
        for name in ("epochs", "iters_per_epoch", "batch_size", "num_samples", "val_every", "sw_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if self.batch_size % self.num_samples:
            raise ValueError(f"batch_size={self.batch_size} is not a multiple of num_samples={self.num_samples}: "
                             f"use batch_size={self.num_samples * max(1, self.batch_size // self.num_samples)}")
        if self.memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory_format={self.memory_format!r} (--memory-format): use one of {MEMORY_FORMATS}")
        gc = self.grad_checkpointing
        if isinstance(gc, (list, tuple)):  # a per-stage policy (a list once read back from JSON)
            object.__setattr__(self, "grad_checkpointing", checkpoint_policy(gc))
        elif not (gc is None or isinstance(gc, bool) or gc in CHECKPOINT_POLICIES):
            raise ValueError(f"grad_checkpointing={gc!r} (--grad-checkpointing): use None (the preset's), True, "
                             f"False, one of {CHECKPOINT_POLICIES} or one entry per stage")
        if self.kernels not in KERNELS:
            raise ValueError(f"kernels={self.kernels!r} (--kernels): use one of {KERNELS}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"amp={self.amp!r}: use 'auto', 'bf16', 'fp16' or 'off'")
        if self.val_blend not in ("gaussian", "constant"):
            raise ValueError(f"val_blend={self.val_blend!r}: use 'gaussian' or 'constant'")
        if not 0.0 <= self.val_overlap < 1.0:
            raise ValueError(f"val_overlap={self.val_overlap} must be in [0, 1), e.g. 0.5")
        # NaN passes every comparison and inf passes "> 0": test finiteness first.
        for name, low in (("lr", 0), ("eps", 0), ("grad_clip", 0), ("weight_decay", None), ("poly_exponent", None)):
            value = float(getattr(self, name))
            if not math.isfinite(value) or (value <= 0 if low is not None else value < 0):
                default = TrainConfig.__dataclass_fields__[name].default
                raise ValueError(f"{name}={value} ({FLAGS.get(name, name)}) must be a finite number "
                                 f"{'> 0' if low is not None else '>= 0'}: use e.g. {default} (the paper's value)")
        if self.spacing is not None and not all(math.isfinite(s) and s > 0 for s in self.spacing):
            raise ValueError(f"spacing={self.spacing} (--spacing) must hold finite sizes > 0 in mm, e.g. 1.0")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite were both asked for: --resume continues the run in the run "
                             "directory, --overwrite deletes it and starts afresh; pass one of them")
        if self.cache not in ("memory", "disk", "none"):
            raise ValueError(f"cache={self.cache!r}: use 'memory', 'disk' or 'none'")

    @classmethod
    def cpu_quickstart(cls, task_dir: str | os.PathLike = "", **overrides: Any) -> TrainConfig:
        """A run sized for a 2-core CPU on the synthetic task (minutes, not days): MedNeXt-S ratios
        at base width 16 with one block per stage, 32^3 patches, batch 2, 6 epochs x 25 iterations,
        validation every 3 epochs. Everything else keeps the paper's recipe (deep supervision,
        AdamW, poly decay, clipping); its time and Dice are in docs/performance.md
        (``benchmarks/train_synthetic.py``). ``model_overrides`` are merged into the quickstart's
        own (``grn=True`` keeps width 16)."""
        model = {"base_width": 16, "block_counts": 1, **(overrides.pop("model_overrides", None) or {})}
        base = {"task_dir": str(task_dir), "model_overrides": model,
                "epochs": 6, "iters_per_epoch": 25, "batch_size": 2, "patch_size": (32, 32, 32), "val_every": 3,
                "sw_batch_size": 4, "num_workers": 0}
        base.update(overrides)
        if "spatial_dims" in overrides and "patch_size" not in overrides:
            base["patch_size"] = (32,) * int(overrides["spatial_dims"])
        return cls(**base)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown TrainConfig field(s) {sorted(unknown)}; valid: {[f.name for f in fields(self)]}")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        def plain(v: Any) -> Any:
            if isinstance(v, tuple):
                return list(v)
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v
        return {k: plain(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        return cls().replace(**dict(data)) if data else cls()

    def model_config(self, in_channels: int, num_classes: int) -> MedNeXtConfig:
        """The network this run trains."""
        return preset_config(self.variant, in_channels, num_classes, self.kernel_size, self.spatial_dims,
                             self.deep_supervision, **self.model_overrides)

    def default_run_dir(self) -> Path:
        """Where the run goes when ``run_dir`` is empty: ``runs/<task>_<variant>k<k>_<d>d_fold<f>``."""
        task = Path(self.task_dir).name or "task"
        return Path("runs") / f"{task}_{self.variant}k{self.kernel_size}_{self.spatial_dims}d_fold{self.fold}"
