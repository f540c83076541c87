"""Training engine: the paper's recipe, resumable checkpoints, validation, and DDP via torchrun.

Recipe (MedNeXt / nnU-Net v1): Dice + CE with deep supervision, AdamW (lr 1e-3, eps 1e-4, weight
decay 3e-5), poly learning-rate decay (exponent 0.9) stepped once per epoch, gradient-norm
clipping at 12, epochs of a fixed number of iterations (250) rather than passes over the data,
batch 2, 128^3 patches. AMP uses bf16 where the GPU supports it, else fp16 with a gradient
scaler; on CPU it is off.

Crash safety: every file is written to a temporary file and renamed over the old one, so a
kill at any moment leaves the previous good file. ``last.pt`` holds everything needed to
continue exactly (model, optimizer, scheduler, scaler, RNG states, epoch, step, history), and
because every epoch reseeds all random number generators from ``(seed, epoch, rank)``, a resumed
run replays the very batches an uninterrupted run would have drawn.

Bad numbers are errors, never results: a NaN/inf loss, gradient norm or weight stops the run
(:class:`TrainingDiverged`) before that state reaches any file, so ``last.pt`` stays the last
finite checkpoint. A run directory holding any file of an earlier run (:data:`RUN_FILES`) is
refused unless the run resumes it or ``overwrite`` clears those files; a resume must keep every
setting in :data:`RESUME_MUST_MATCH` and may change only those in :data:`RESUME_MAY_DIFFER`.

Distributed: run the same entry point under ``torchrun --nproc_per_node N``; each process trains
on its shard (``DistributedSampler``), gradients are averaged by DDP (gloo on CPU, nccl on GPU),
validation cases are split across ranks and their Dice sums added, and rank 0 alone writes files.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .fast.allocator import keep_freed_memory
from .inference import _summarise, evaluate_model, window_size, write_csv
from .interop import (
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from .losses import make_loss
from .model import DIVISOR, MedNeXt, MedNeXtConfig
from .safe_io import atomic_write
from .variants import get_preset, preset_config

__all__ = [
    "RESUME_MAY_DIFFER",
    "RESUME_MUST_MATCH",
    "RUN_FILES",
    "CheckpointError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "build_model",
    "load_checkpoint",
    "model_from_checkpoint",
    "poly_lr",
    "resume_conflicts",
    "save_checkpoint",
    "train",
]


class TrainingDiverged(RuntimeError):
    """The loss, the gradient norm or a weight became NaN or infinite; nothing was saved from that
    state, so the checkpoint on disk is the last finite one."""


#: The files a run writes in its run directory; any one of them marks the folder as holding a run.
RUN_FILES = ("config.json", "split.json", "last.pt", "best.pt", "metrics.csv", "metrics.json", "curves.png")

#: Settings a resumed run must share with the run it continues, because each changes the maths:
#: the data seen (task, split, patches, sampling, augmentation), the network, the optimiser and its
#: schedule, the precision, or the score that picks ``best.pt``.
RESUME_MUST_MATCH = (
    "task_dir", "fold", "n_folds", "seed", "patch_size", "spacing", "augment", "batch_size", "num_samples",
    "iters_per_epoch", "variant", "kernel_size", "spatial_dims", "deep_supervision", "model_overrides",
    "lr", "eps", "weight_decay", "poly_exponent", "grad_clip", "amp", "val_overlap", "val_blend", "max_val_cases",
)

#: Settings a resume may change: how long it trains (``epochs``, to extend the run; never below the
#: epochs done), where and how fast it runs (device, workers, cache, memory layout and allocator,
#: gradient checkpointing: the same maths up to float rounding), and what it reports.
#: ``upkern_from`` only initialises a new run: on resume it is ignored and the stored value kept.
RESUME_MAY_DIFFER = (
    "run_dir", "epochs", "device", "num_workers", "cache", "channels_last", "keep_freed_memory",
    "grad_checkpointing", "val_every", "sw_batch_size", "hd95", "progress", "resume", "overwrite", "upkern_from",
)

# Command-line flag of each setting, for messages.
_FLAGS = {
    "task_dir": "--task", "fold": "--fold", "n_folds": "--n-folds", "seed": "--seed", "patch_size": "--patch",
    "spacing": "--spacing", "augment": "--no-augment", "batch_size": "--batch", "iters_per_epoch": "--iters",
    "variant": "--variant", "kernel_size": "--kernel", "spatial_dims": "--spatial-dims",
    "deep_supervision": "--no-deep-supervision", "model_overrides": "--base-width/--blocks", "lr": "--lr",
    "eps": "--eps", "weight_decay": "--weight-decay", "grad_clip": "--grad-clip", "amp": "--amp",
    "val_overlap": "--overlap", "val_blend": "--blend", "max_val_cases": "--max-val-cases", "epochs": "--epochs",
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
        keep_freed_memory: on CPU and without gradient checkpointing, let the process reuse freed
            tensor memory (:func:`mednext_lite.fast.allocator.keep_freed_memory`: 3D steps up to 2x faster;
            left off with checkpointing, whose memory saving it shrank from x0.43 to x0.69). It is
            process-wide: once on, it stays on for later runs in the same process.
        grad_checkpointing: ``None`` follows the preset (on for M and L).
        val_every: validate every this many epochs (and always after the last).
        max_val_cases: validate on the first N validation cases only (``None`` = all).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:1"``.
        resume: continue from ``run_dir/last.pt`` with the same :data:`RESUME_MUST_MATCH` settings.
        overwrite: start afresh in a ``run_dir`` holding an earlier run, deleting its :data:`RUN_FILES`
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
    channels_last: bool = False
    keep_freed_memory: bool = True
    grad_checkpointing: bool | None = None
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
                raise ValueError(f"{name}={value} ({_FLAGS.get(name, name)}) must be a finite number "
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
        """A run sized for a 2-core CPU on the synthetic task (about 3 minutes, not days):
        MedNeXt-S ratios at base width 16 with one block per stage, 32^3 patches, batch 2,
        6 epochs x 25 iterations, validation every 3 epochs. Everything else keeps the paper's
        recipe (deep supervision, AdamW, poly decay, clipping). On the default synthetic task
        this reaches a validation mean foreground Dice near 0.9 (see benchmarks/train_synthetic.py).
        ``model_overrides`` are merged into the quickstart's own (``grn=True`` keeps width 16)."""
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
        task = Path(self.task_dir).name or "task"
        return Path("runs") / f"{task}_{self.variant}k{self.kernel_size}_{self.spatial_dims}d_fold{self.fold}"


def poly_lr(epoch: int, epochs: int, exponent: float = 0.9) -> float:
    """The poly factor ``(1 - epoch / epochs) ** exponent`` applied to the initial learning rate."""
    return max(0.0, 1.0 - epoch / epochs) ** exponent


def build_model(cfg: TrainConfig, in_channels: int, num_classes: int) -> MedNeXt:
    """The MedNeXt of a run, with the preset's gradient-checkpointing default unless overridden."""
    model = MedNeXt(cfg.model_config(in_channels, num_classes))
    gc = get_preset(cfg.variant).grad_checkpointing if cfg.grad_checkpointing is None else cfg.grad_checkpointing
    return model.set_grad_checkpointing(gc)


@dataclass
class TrainResult:
    """What a finished run left behind."""

    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    best_mean_dice: float
    best_epoch: int
    history: list[dict[str, Any]]
    seconds: float
    model: MedNeXt | None = None  # the trained network (this process's replica), in eval mode


# -- helpers -------------------------------------------------------------------------------------

def _data_api() -> Any:
    """The data package's functions (imported late so the model code never needs MONAI's I/O)."""
    import types

    from .data import dataset as ds
    from .data import transforms as tf

    return types.SimpleNamespace(load_task=ds.load_task, get_or_make_split=ds.get_or_make_split,
                                 get_transforms=tf.get_transforms,
                                 make_dataset=tf.make_dataset)


def _adamw(params: list[nn.Parameter], cfg: TrainConfig, *, fused: bool) -> torch.optim.AdamW:
    """The recipe's AdamW, as PyTorch's fused kernel where it has one: the same update to float
    rounding (3e-8 to 1.2e-7 after five steps), 2.7-4.1x faster than the per-tensor loop over
    MedNeXt-S's 236 tensors on 2 CPU cores (``benchmarks/bench_ops.py --only adamw``)."""
    kwargs = {"lr": cfg.lr, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    if fused:
        try:
            return torch.optim.AdamW(params, fused=True, **kwargs)
        except RuntimeError:  # no fused kernel for this device in this PyTorch (CPU: before 2.4)
            pass
    return torch.optim.AdamW(params, **kwargs)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    # Plain containers only, so the checkpoint loads with weights_only=True.
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples -> lists, as stored in config.json and checkpoints


def _network(settings: dict[str, Any]) -> dict[str, Any]:
    """The network a settings dict builds (channel counts fixed): ``{}`` and ``{"base_width": 32}``
    are the same S model."""
    return preset_config(settings.get("variant", "S"), 1, 2, settings.get("kernel_size", 3),
                         settings.get("spatial_dims", 3), settings.get("deep_supervision", True),
                         **settings.get("model_overrides", {})).to_dict()


def resume_conflicts(stored: dict[str, Any], asked: TrainConfig) -> list[str]:
    """The :data:`RESUME_MUST_MATCH` settings in which ``asked`` differs from the settings a run
    was trained with (``stored``: the ``train_config`` of its ``last.pt``), as lines
    ``"name (--flag): stored -> asked"``; a setting missing from ``stored`` (an older file) is skipped."""
    now = asked.to_dict()
    out = []
    for name in RESUME_MUST_MATCH:
        if name not in stored:
            continue
        old, new = _plain(stored[name]), _plain(now[name])
        if name == "task_dir":
            same = os.path.realpath(str(old)) == os.path.realpath(str(new))
        elif name == "model_overrides":
            same = _network(stored) == _network(now)
        else:
            same = old == new
        if not same:
            out.append(f"{name} ({_FLAGS.get(name, name)}): {old!r} -> {new!r}")
    return out


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but CUDA is not available: use --device cpu (or auto)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


# -- the trainer ---------------------------------------------------------------------------------

class Trainer:
    """One training run; ``Trainer(cfg).fit()`` or the :func:`train` shortcut.

    Callbacks (optional, called on rank 0 only): ``on_epoch_end(metrics: dict)`` after each epoch
    (for live curves in notebooks) and ``on_step_end(info: dict)`` after each iteration, where
    ``info`` holds epoch, step, global_step, loss, lr and the model.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
        on_step_end: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not cfg.task_dir:
            raise ValueError("TrainConfig.task_dir is empty: point it at an MSD task directory "
                             "(e.g. write the synthetic one with `mednext-lite data synthesize`)")
        self.cfg = cfg
        self.on_epoch_end = on_epoch_end
        self.on_step_end = on_step_end
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = _resolve_device(cfg.device, self.local_rank)
        self.distributed = self.world_size > 1
        self.is_main = self.rank == 0
        self.run_dir = Path(cfg.run_dir) if cfg.run_dir else cfg.default_run_dir()
        self.stored_settings: dict[str, Any] = {}  # the resumed run's train_config, read by _load_resume

    # -- setup ---------------------------------------------------------------------------------
    def _init_distributed(self) -> None:
        if self.distributed and not dist.is_initialized():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    def _log(self, msg: str) -> None:
        if self.is_main:
            tqdm.write(msg, file=sys.stderr)

    def _setup_data(self) -> None:
        cfg, api = self.cfg, _data_api()
        self.info = api.load_task(cfg.task_dir)
        split_path = self.run_dir / "split.json"
        n_folds = min(cfg.n_folds, len(self.info.training))
        if n_folds < 2:
            raise ValueError(f"task {cfg.task_dir} has {len(self.info.training)} training case(s): "
                             "at least 2 are needed to hold one out for validation")
        split = functools.partial(api.get_or_make_split, self.info.training, split_path, n_folds=n_folds,
                                  fold=cfg.fold, seed=cfg.seed)
        # Rank 0 writes the split once; the others wait and read it, so every process (and every
        # resumption) trains on exactly the same cases.
        train_cases, val_cases = split() if self.is_main else (None, None)
        if self.distributed:
            dist.barrier()
        if not self.is_main:
            train_cases, val_cases = split()
        if cfg.max_val_cases is not None:
            val_cases = val_cases[: cfg.max_val_cases]
        self.train_cases, self.val_cases = train_cases, val_cases
        # A 2D model trains on (P, P, 1) slabs of the 3D volumes; the singleton axis is dropped per batch.
        self.volume_patch = window_size(cfg.patch_size, cfg.spatial_dims, 3)
        self.train_tf = api.get_transforms(self.info, mode="train", patch_size=self.volume_patch, spacing=cfg.spacing,
                                           num_samples=cfg.num_samples, augment=cfg.augment)
        self.val_tf = api.get_transforms(self.info, mode="val", patch_size=self.volume_patch, spacing=cfg.spacing)
        self.train_ds = api.make_dataset(train_cases, self.train_tf, cache=cfg.cache)
        my_val = val_cases[self.rank::self.world_size]
        self.val_ds = api.make_dataset(my_val, self.val_tf, cache=cfg.cache) if my_val else []
        from monai.data import DataLoader
        from torch.utils.data import DistributedSampler

        # One sampler for 1 or N processes: it shards by rank and reshuffles per epoch from the seed.
        self.sampler = DistributedSampler(self.train_ds, num_replicas=self.world_size, rank=self.rank,
                                          shuffle=True, seed=cfg.seed, drop_last=False)
        self.loader = DataLoader(self.train_ds, batch_size=cfg.batch_size // cfg.num_samples, sampler=self.sampler,
                                 num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda",
                                 drop_last=len(self.sampler) >= cfg.batch_size // cfg.num_samples)

    def _setup_model(self) -> None:
        cfg = self.cfg
        self.model = build_model(cfg, self.info.in_channels, self.info.num_classes)
        if cfg.upkern_from and not cfg.resume:
            from .upkern import upkern

            report = upkern(self.model, cfg.upkern_from)
            self._log(f"UpKern from {cfg.upkern_from}: {report}")
        self.model.to(self.device).set_memory_format("channels_last" if cfg.channels_last else "auto")
        if self.device.type == "cpu" and cfg.keep_freed_memory and not self.model.grad_checkpointing:
            keep_freed_memory()  # not with checkpointing: the kept heap ate most of its memory saving
        if self.device.type == "cuda":  # fixed patch size: let cuDNN time its algorithms once (process-wide)
            torch.backends.cudnn.benchmark = True
        self.net: nn.Module = self.model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Depthwise weights [C, 1, k, k, k] get gradients whose stride on the size-1 axis differs
            # from the bucket's; the memory layout is identical, so torch's warning is a false alarm.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.loss_fn = make_loss()
        self.amp_dtype = _amp_dtype(cfg.amp, self.device)
        # fp16's GradScaler path keeps the per-tensor kernel that the GPU check ran
        self.optimizer = _adamw(list(self.model.parameters()), cfg, fused=self.amp_dtype != torch.float16)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda e: poly_lr(e, cfg.epochs, cfg.poly_exponent))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        if cfg.amp in ("bf16", "fp16") and self.device.type != "cuda":
            self._log(f"amp={cfg.amp} requested on {self.device}: mixed precision is CUDA-only here, training in fp32")

    # -- checkpoints ---------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"

    def _save(self, path: Path) -> None:
        save_checkpoint(
            path, self.model,
            train_config=self.cfg.to_dict(), epoch=self.epoch, global_step=self.global_step,
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            rng=_rng_state(), history=self.history, best_mean_dice=self.best_dice, best_epoch=self.best_epoch,
            class_names=[self.info.labels[i] for i in sorted(self.info.labels) if i != 0],
        )

    def _claim_run_dir(self) -> dict[str, Any] | None:
        """Check the run directory before anything is written: refuse an earlier run's files unless
        resuming (then return the checked ``last.pt``) or overwriting (then delete exactly those)."""
        cfg = self.cfg
        found = [name for name in RUN_FILES if (self.run_dir / name).exists() or (self.run_dir / name).is_symlink()]
        ckpt = self._load_resume(found) if cfg.resume else None
        if found and not cfg.resume and not cfg.overwrite:
            raise ValueError(f"{self.run_dir} already holds a run ({', '.join(found)}): pass --resume to continue "
                             "it, --overwrite to delete those files and start afresh, or choose another --run-dir")
        for name in found if cfg.overwrite else []:
            target = self.run_dir / name
            if target.is_dir() and not target.is_symlink():
                raise ValueError(f"--overwrite: {target} is a folder, not a file this trainer wrote; move it away")
        if self.distributed:
            dist.barrier()  # every rank has looked before rank 0 deletes or writes anything
        if self.is_main:
            for name in found if cfg.overwrite else []:
                (self.run_dir / name).unlink()  # a symlink itself, never its target
            if cfg.overwrite and found:
                self._log(f"--overwrite: removed {', '.join(found)} from {self.run_dir}")
            self.run_dir.mkdir(parents=True, exist_ok=True)
        return ckpt

    def _load_resume(self, found: list[str]) -> dict[str, Any]:
        """Read ``last.pt`` for a resume and refuse settings that would change the run."""
        cfg = self.cfg
        if not self.last_path.exists():
            others = [name for name in found if name != "last.pt"]
            held = (f" ({self.run_dir} holds {', '.join(others)} but no last.pt: start it again with --overwrite)"
                    if others else "")
            raise ValueError(f"--resume given but {self.last_path} does not exist{held}: start without --resume "
                             "or point --run-dir at the run to continue")
        ckpt = load_checkpoint(self.last_path, map_location="cpu")
        stored = ckpt.get("train_config")
        if not isinstance(stored, dict) and (self.run_dir / "config.json").is_file():
            stored = json.loads((self.run_dir / "config.json").read_text())  # an older last.pt
        self.stored_settings = stored if isinstance(stored, dict) else {}
        conflicts = resume_conflicts(stored, cfg) if isinstance(stored, dict) else []
        if conflicts:
            raise ValueError(
                f"--resume would change the run in {self.run_dir}: " + "; ".join(conflicts) + ". A resumed run "
                f"keeps its settings (stored in {self.last_path}); only {', '.join(RESUME_MAY_DIFFER)} may differ. "
                "Resume with the original flags, or start a new run with another --run-dir (or --overwrite)")
        done = int(ckpt.get("epoch", 0))
        if cfg.epochs < done:
            raise ValueError(f"epochs={cfg.epochs} (--epochs) is fewer than the {done} epochs {self.last_path} holds "
                             f"already: pass --epochs {done} or more to continue it")
        return ckpt

    def _resumed_settings(self) -> TrainConfig:
        """The settings a resumed run really uses: those asked for (the resume checks passed),
        except ``upkern_from``, which only initialises a new run: the run's own stored value is
        kept, so config.json and the checkpoints never record an initialisation that never happened."""
        stored = self.stored_settings.get("upkern_from")
        if self.cfg.upkern_from is not None and self.cfg.upkern_from != stored:
            self._log(f"--upkern-from {self.cfg.upkern_from} is ignored on resume: the run keeps its own "
                      f"initialisation ({stored or 'no UpKern'}), as recorded in {self.run_dir / 'config.json'}")
        return self.cfg.replace(upkern_from=stored)

    def _resume(self, ckpt: dict[str, Any] | None = None) -> None:
        """Load model, optimizer, scheduler, scaler, RNG and history from ``ckpt`` (by default the
        checked ``last.pt``)."""
        if ckpt is None:
            ckpt = self._load_resume([])
        stored = MedNeXtConfig.from_dict(ckpt["config"])
        if stored != self.model.config:
            raise ValueError(f"{self.last_path} holds a different network ({stored}) than this run builds "
                             f"({self.model.config}): resume with the run's original flags (see {self.run_dir / 'config.json'})")
        self.model.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler") is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        self.epoch, self.global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        self.history = list(ckpt.get("history", []))
        self.best_dice = float(ckpt.get("best_mean_dice", -1.0))
        self.best_epoch = int(ckpt.get("best_epoch", -1))
        self._log(f"resumed {self.last_path} at epoch {self.epoch} (step {self.global_step})")

    # -- metrics files -------------------------------------------------------------------------
    def _write_metrics(self) -> None:
        # Rewritten in full from the history each epoch (atomically), so the files always agree
        # with last.pt, including after a crash and resume.
        write_csv(self.run_dir / "metrics.csv", self.history)
        atomic_write(self.run_dir / "metrics.json", json.dumps(self.history, indent=1) + "\n")
        try:
            self._plot()
        except Exception as err:  # noqa: BLE001 - a figure must never kill a run
            self._log(f"could not draw curves: {err}")

    def _plot(self) -> None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10, 3.6), layout="constrained")
        ax_loss, ax_dice = fig.subplots(1, 2)
        epochs = [r["epoch"] for r in self.history]
        ax_loss.plot(epochs, [r["train_loss"] for r in self.history], marker=".", label="train loss (Dice + CE)")
        ax_loss.set(title=f"{self.run_dir.name}: training loss", xlabel="epoch", ylabel="loss")
        # Validation runs every val_every epochs: plot the epochs that have it, joined by lines.
        keys = [k for k in self.history[-1] if k.startswith("val_dice")]
        for key in sorted(keys, key=lambda k: k != "val_dice_mean"):
            pts = [(r["epoch"], r[key]) for r in self.history if key in r]
            ax_dice.plot(*zip(*pts), marker="o", linewidth=2.5 if key == "val_dice_mean" else 1,
                         label=key.replace("val_dice_", "Dice "))
        ax_dice.set(title="validation Dice (sliding window)", xlabel="epoch", ylabel="Dice", ylim=(0, 1))
        for ax in (ax_loss, ax_dice):
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
        atomic_write(self.run_dir / "curves.png", lambda tmp: fig.savefig(tmp, dpi=90), suffix=".png")

    # -- loops ---------------------------------------------------------------------------------
    def _batches(self, epoch: int) -> Iterator[dict[str, Any]]:
        n_pass = 0
        while True:
            # Distinct shuffles for every pass of every epoch, all derived from the seed.
            self.sampler.set_epoch(epoch * 1000 + n_pass)
            yield from self.loader
            n_pass += 1

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x).to(self.device, non_blocking=True)
        if self.cfg.spatial_dims == 2 and x.ndim == 5:
            x = x[..., 0]
        return x

    def _any_rank(self, flag: bool) -> bool:
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def _train_epoch(self) -> float:
        cfg = self.cfg
        self.net.train()
        seed = cfg.seed * 1_000_003 + self.epoch * 7919 + self.rank
        _seed_all(seed)
        self.train_tf.set_random_state(seed=seed % 2**32)
        lr = self.optimizer.param_groups[0]["lr"]
        total, count, start = 0.0, 0, time.perf_counter()
        bar = tqdm(range(cfg.iters_per_epoch), desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="it",
                   leave=False, disable=not (self.is_main and cfg.progress), dynamic_ncols=True)
        batches = self._batches(self.epoch)
        params = list(self.model.parameters())
        weights_ok = None  # were the weights finite after the previous iteration? (read with the next sync)
        for step in bar:
            batch = next(batches)
            x, y = self._prepare(batch["image"]), self._prepare(batch["label"])
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                outputs = self.net(x)
            loss = self.loss_fn(outputs, y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            # One host sync per step: the loss value, the gradient norm and the previous iteration's weight
            # check travel together. With fp16 an inf gradient norm is routine (the scaler skips that
            # step); otherwise it is divergence.
            watched = [loss.detach().float(), grad_norm.detach().float()]
            watched += [] if weights_ok is None else [weights_ok.float()]
            values = torch.stack(watched).tolist()
            loss_value = values[0]
            problem = ""
            if weights_ok is not None and values[2] != 1.0:
                problem = f"{self._bad_weight()} after iteration {step}"
            elif not math.isfinite(loss_value):
                problem = f"the loss became {loss_value}"
            elif not math.isfinite(values[1]) and not self.scaler.is_enabled():
                problem = f"the gradient norm became {values[1]}"
            if self._any_rank(bool(problem)):
                self._diverged(problem or "another process diverged", step + 1, self.global_step + 1)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.global_step += 1
            total += loss_value
            count += 1
            if self.is_main:
                rate = count / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{total / count:.4f}", lr=f"{lr:.2e}", its=f"{rate:.2f}")
                if self.on_step_end is not None:
                    self.on_step_end({"epoch": self.epoch, "step": step, "global_step": self.global_step,
                                      "loss": loss_value, "lr": lr, "model": self.model})
            with torch.no_grad():  # after the callback, which may touch the weights
                # Each tensor's largest |value| in one multi-tensor kernel (no overflow, NaN propagates),
                # instead of two small kernels per parameter tensor.
                weights_ok = torch.isfinite(torch.stack(torch._foreach_norm(params, float("inf")))).all()
        bar.close()
        # The last iteration's update has no next step to be checked with: check it before anything is saved.
        if weights_ok is not None and self._any_rank(not bool(weights_ok)):
            iters = cfg.iters_per_epoch
            self._diverged(f"{self._bad_weight()} after iteration {iters}", iters, self.global_step)
        mean = torch.tensor([total, float(count)], dtype=torch.float64)
        if self.distributed:
            mean = mean.to(self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(mean)
        return float(mean[0] / max(mean[1].item(), 1.0))

    def _bad_weight(self) -> str:
        for name, p in self.model.named_parameters():
            bad = int((~torch.isfinite(p.detach())).sum())
            if bad:
                return f"weight {name!r} got {bad} NaN/inf value(s) of {p.numel()}"
        return "the weights of another process became NaN/inf"

    def _diverged(self, problem: str, iteration: int, global_step: int) -> None:
        cfg = self.cfg
        kept = (f"{self.last_path} (epoch {self.epoch}) is still the last checkpoint, every tensor in it finite"
                if self.last_path.exists() else "no checkpoint had been written yet")
        raise TrainingDiverged(
            f"training diverged at epoch {self.epoch + 1}, iteration {iteration} of {cfg.iters_per_epoch} (global "
            f"step {global_step}): {problem}. Nothing was saved from that state: {kept}. Lower --lr (now "
            f"{cfg.lr:g}) and start again with --overwrite (a resumed run keeps its settings), and check the "
            "training images for NaN/inf voxels")

    def validate(self) -> dict[str, Any]:
        """Dice (and HD95 when configured) on this rank's share of the validation cases, summed
        over ranks; every rank returns the same numbers."""
        cfg = self.cfg
        names = [self.info.labels[i] for i in sorted(self.info.labels) if i != 0]
        res = evaluate_model(self.model, self.val_ds, cfg.patch_size, self.info.num_classes, class_names=names,
                             hd95=cfg.hd95, progress=self.is_main and cfg.progress, overlap=cfg.val_overlap,
                             blend=cfg.val_blend, sw_batch_size=cfg.sw_batch_size, device=self.device,
                             amp=self.amp_dtype is not None)
        if not self.distributed:
            return res
        s = res["_sums"]
        packed = torch.cat([s["dice"], s["hd"], s["hd_n"], torch.tensor([float(s["n"])], dtype=torch.float64)])
        packed = packed.to(self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(packed)
        packed = packed.cpu()
        k = len(names)
        return _summarise(packed[:k], packed[-1].item(), packed[k:2 * k] if cfg.hd95 else None,
                          packed[2 * k:3 * k] if cfg.hd95 else None, names)

    def fit(self) -> TrainResult:
        """Train to ``cfg.epochs`` (continuing from ``last.pt`` with ``resume``); return the result."""
        cfg = self.cfg
        start = time.perf_counter()
        self._init_distributed()
        try:
            ckpt = self._claim_run_dir()
            if ckpt is not None:
                cfg = self.cfg = self._resumed_settings()
            self._setup_data()
            _seed_all(cfg.seed)  # the initial weights derive from the seed too
            self._setup_model()
            self.epoch, self.global_step, self.history = 0, 0, []
            self.best_dice, self.best_epoch = -1.0, -1
            if ckpt is not None:
                self._resume(ckpt)
                del ckpt
            if self.is_main:  # after the resume checks: it names only settings this run uses
                atomic_write(self.run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
                name = f"MedNeXt-{cfg.variant}" if not cfg.model_overrides else (
                    f"MedNeXt ({cfg.variant} ratios, overrides {cfg.model_overrides})")
                self._log(f"run {self.run_dir}: {self.model.config.spatial_dims}D {name} k{cfg.kernel_size}, "
                          f"{sum(p.numel() for p in self.model.parameters()):,} parameters, "
                          f"{len(self.train_cases)} train / {len(self.val_cases)} val cases, device {self.device}"
                          f"{f', {self.world_size} processes' if self.distributed else ''}")
            while self.epoch < cfg.epochs:
                t0 = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                train_loss = self._train_epoch()
                self.scheduler.step()
                self.epoch += 1
                row: dict[str, Any] = {"epoch": self.epoch, "step": self.global_step, "lr": lr, "train_loss": train_loss}
                if self.epoch % cfg.val_every == 0 or self.epoch == cfg.epochs:
                    val = self.validate()
                    row["val_dice_mean"] = val["mean_dice"]
                    row.update({f"val_dice_{k}": v for k, v in val["dice"].items()})
                    if cfg.hd95:
                        row["val_hd95_mean"] = val["mean_hd95"]
                    if val["mean_dice"] > self.best_dice:
                        self.best_dice, self.best_epoch = val["mean_dice"], self.epoch
                row["seconds"] = time.perf_counter() - t0
                row["it_per_s"] = cfg.iters_per_epoch / max(row["seconds"], 1e-9)
                self.history.append(row)
                if self.is_main:
                    self._save(self.last_path)
                    if self.best_epoch == self.epoch:
                        self._save(self.best_path)
                    self._write_metrics()
                    dice = f", val Dice {row['val_dice_mean']:.4f}" if "val_dice_mean" in row else ""
                    self._log(f"epoch {self.epoch}/{cfg.epochs}: loss {train_loss:.4f}{dice}, lr {lr:.2e}, "
                              f"{row['seconds']:.1f}s")
                    if self.on_epoch_end is not None:
                        self.on_epoch_end(dict(row))
        finally:
            if self.distributed and dist.is_initialized():
                dist.destroy_process_group()
        return TrainResult(run_dir=self.run_dir, last_checkpoint=self.last_path,
                           best_checkpoint=self.best_path if self.best_path.exists() else None,
                           best_mean_dice=self.best_dice, best_epoch=self.best_epoch, history=self.history,
                           seconds=time.perf_counter() - start, model=self.model.eval())


def train(
    cfg: TrainConfig,
    *,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    on_step_end: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Run (or, with ``cfg.resume``, continue) a training run and return its :class:`TrainResult`.

    Works the same in one process and under ``torchrun --nproc_per_node N``. Raises
    :class:`TrainingDiverged` on a NaN/inf loss, gradient norm or weight (nothing is saved from
    that state; the last checkpoint on disk stays the last finite one), ``ValueError`` for a run
    directory holding an earlier run (without ``resume``/``overwrite``) or a resume that changes
    :data:`RESUME_MUST_MATCH` settings, and :class:`CheckpointError` when ``last.pt`` cannot be
    read, fails its checksum or holds NaN/inf on resume.
    """
    return Trainer(cfg, on_epoch_end=on_epoch_end, on_step_end=on_step_end).fit()
