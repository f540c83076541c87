"""The training loop: the paper's recipe, resumable and crash-safe, in one process or many.

Recipe (MedNeXt / nnU-Net v1): Dice + CE with deep supervision, AdamW (lr 1e-3, eps 1e-4, weight
decay 3e-5), poly learning-rate decay (exponent 0.9) stepped once per epoch, gradient-norm
clipping at 12, epochs of a fixed number of iterations (250) rather than passes over the data,
batch 2, 128^3 patches. AMP uses bf16 where the GPU supports it, else fp16 with a gradient
scaler; on CPU it is off. The settings are a :class:`~mednext_lite.train_config.TrainConfig`.

Crash safety: ``last.pt`` holds everything needed to continue exactly (model, optimizer,
scheduler, scaler, RNG states, epoch, step, history), every file is replaced atomically, and
because every epoch reseeds all random number generators from ``(seed, epoch, rank)``, a resumed
run replays the very batches an uninterrupted run would have drawn. The run directory's files
and the resume rules are in :mod:`mednext_lite.run_files`.

Bad numbers are errors, never results: a NaN/inf loss, gradient norm or weight stops the run
(:class:`TrainingDiverged`) before that state reaches any file, so ``last.pt`` stays the last
finite checkpoint.

Distributed: run the same entry point under ``torchrun --nproc_per_node N``; each process trains
on its shard (``DistributedSampler``), gradients are averaged by DDP (gloo on CPU, nccl on GPU),
validation cases are split across ranks and their scores added, and rank 0 alone writes files
(:mod:`mednext_lite.distributed`).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed, run_files
from .checkpoint import save_checkpoint
from .fast.allocator import keep_freed_memory
from .inference import evaluate_model, window_size
from .losses import make_loss
from .metrics import ScoreAccumulator
from .model import MedNeXt, MedNeXtConfig
from .runtime import resolve_device, rng_state, seed_everything, set_rng_state
from .train_config import TrainConfig
from .variants import get_preset

__all__ = ["TrainResult", "Trainer", "TrainingDiverged", "build_model", "poly_lr", "train"]


class TrainingDiverged(RuntimeError):
    """The loss, the gradient norm or a weight became NaN or infinite; nothing was saved from that
    state, so the checkpoint on disk is the last finite one."""


def poly_lr(epoch: int, epochs: int, exponent: float = 0.9) -> float:
    """The poly factor ``(1 - epoch / epochs) ** exponent`` applied to the initial learning rate."""
    return max(0.0, 1.0 - epoch / epochs) ** exponent


def _triton_runs_on(device: torch.device) -> bool:
    # imports triton: only for runs that ask for its kernels
    from .fast import triton_depthwise

    return triton_depthwise.available(device)


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


def _adamw(params: list[nn.Parameter], cfg: TrainConfig, *, fused: bool) -> torch.optim.AdamW:
    """The recipe's AdamW, as PyTorch's fused kernel where it has one: the same update to float
    rounding, and a faster optimizer step (figures in docs/performance.md)."""
    kwargs = {"lr": cfg.lr, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    if fused:
        try:
            return torch.optim.AdamW(params, fused=True, **kwargs)
        except RuntimeError:  # no fused kernel for this device in this PyTorch (CPU: before 2.4)
            pass
    return torch.optim.AdamW(params, **kwargs)


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``amp`` on ``device``; ``None`` (fp32) off CUDA."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _class_names(info: Any) -> list[str]:
    return [info.labels[i] for i in sorted(info.labels) if i != 0]


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
        ranks = distributed.ranks_from_env()
        self.ranks = ranks
        self.rank, self.world_size = ranks.rank, ranks.world_size
        self.distributed, self.is_main = ranks.distributed, ranks.is_main
        self.device = resolve_device(cfg.device, ranks.local_rank)
        self.run_dir = Path(cfg.run_dir) if cfg.run_dir else cfg.default_run_dir()
        self.stored_settings: dict[str, Any] = {}  # the resumed run's train_config

    # -- setup ---------------------------------------------------------------------------------
    def _log(self, msg: str) -> None:
        if self.is_main:
            tqdm.write(msg, file=sys.stderr)

    def _setup_data(self) -> None:
        from monai.data import DataLoader
        from torch.utils.data import DistributedSampler

        from .data.splits import get_or_make_split
        from .data.transforms import get_transforms, make_dataset
        from .data.validate import load_task

        cfg = self.cfg
        self.info = load_task(cfg.task_dir)
        n_folds = min(cfg.n_folds, len(self.info.training))
        if n_folds < 2:
            raise ValueError(f"task {cfg.task_dir} has {len(self.info.training)} training case(s): "
                             "at least 2 are needed to hold one out for validation")

        def split() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            return get_or_make_split(self.info.training, self.run_dir / "split.json", n_folds=n_folds,
                                     fold=cfg.fold, seed=cfg.seed)

        # Rank 0 writes the split once; the others wait and read it, so every process (and every
        # resumption) trains on exactly the same cases.
        train_cases, val_cases = split() if self.is_main else (None, None)
        distributed.barrier()
        if not self.is_main:
            train_cases, val_cases = split()
        if cfg.max_val_cases is not None:
            val_cases = val_cases[: cfg.max_val_cases]
        self.train_cases, self.val_cases = train_cases, val_cases
        # A 2D model trains on (P, P, 1) slabs of the 3D volumes; the singleton axis is dropped per batch.
        volume_patch = window_size(cfg.patch_size, cfg.spatial_dims, 3)
        self.train_tf = get_transforms(self.info, mode="train", patch_size=volume_patch, spacing=cfg.spacing,
                                       num_samples=cfg.num_samples, augment=cfg.augment)
        val_tf = get_transforms(self.info, mode="val", patch_size=volume_patch, spacing=cfg.spacing)
        self.train_ds = make_dataset(train_cases, self.train_tf, cache=cfg.cache)
        my_val = val_cases[self.rank::self.world_size]
        self.val_ds = make_dataset(my_val, val_tf, cache=cfg.cache) if my_val else []
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
        self.model.to(self.device).set_memory_format(cfg.memory_format)
        self.model.set_kernels(cfg.kernels)
        if cfg.kernels == "triton" and not _triton_runs_on(self.device):
            raise ValueError(f"kernels='triton' (--kernels triton) runs on CUDA devices, not on {self.device}: train "
                             "on a GPU (--device cuda) or with --kernels pytorch")
        if self.device.type == "cpu" and cfg.keep_freed_memory and not self.model.grad_checkpointing:
            keep_freed_memory()  # not with checkpointing: the kept heap ate most of its memory saving
        if self.device.type == "cuda":  # fixed patch size: let cuDNN time its algorithms once (process-wide)
            torch.backends.cudnn.benchmark = True
        self.net: nn.Module = self.model  # what the loop calls: the model, or its DDP wrapper
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Depthwise weights [C, 1, k, k, k] get gradients whose stride on the size-1 axis differs
            # from the bucket's; the memory layout is identical, so torch's warning is a false alarm.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.loss_fn = make_loss()
        self.amp_dtype = _amp_dtype(cfg.amp, self.device)
        # fp16's GradScaler path keeps the per-tensor kernel that benchmarks/gpu_check.sh measured
        self.optimizer = _adamw(list(self.model.parameters()), cfg, fused=self.amp_dtype != torch.float16)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda e: poly_lr(e, cfg.epochs, cfg.poly_exponent))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        if cfg.amp in ("bf16", "fp16") and self.device.type != "cuda":
            self._log(f"amp={cfg.amp} requested on {self.device}: mixed precision is CUDA-only here, training in fp32")

    # -- run directory and checkpoints -------------------------------------------------------
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
            rng=rng_state(), history=self.history, best_mean_dice=self.best_dice, best_epoch=self.best_epoch,
            class_names=_class_names(self.info),
        )

    def _claim_run_dir(self) -> dict[str, Any] | None:
        """Check the run directory before anything is written: refuse an earlier run's files unless
        resuming (then return the checked ``last.pt``) or overwriting (then delete exactly those)."""
        cfg = self.cfg
        found = run_files.run_files_in(self.run_dir)
        ckpt = self._load_resume(found) if cfg.resume else None
        if found and not cfg.resume and not cfg.overwrite:
            raise ValueError(f"{self.run_dir} already holds a run ({', '.join(found)}): pass --resume to continue "
                             "it, --overwrite to delete those files and start afresh, or choose another --run-dir")
        overwritten = found if cfg.overwrite else []
        run_files.clear_run_files(self.run_dir, overwritten, delete=False)
        distributed.barrier()  # every rank has looked before rank 0 deletes or writes anything
        if self.is_main:
            run_files.clear_run_files(self.run_dir, overwritten, delete=True)
            if overwritten:
                self._log(f"--overwrite: removed {', '.join(overwritten)} from {self.run_dir}")
            self.run_dir.mkdir(parents=True, exist_ok=True)
        return ckpt

    def _load_resume(self, found: list[str]) -> dict[str, Any]:
        """Read ``last.pt`` for a resume and refuse settings that would change the run."""
        ckpt, self.stored_settings = run_files.load_resume_checkpoint(self.run_dir, self.cfg, found)
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
        set_rng_state(ckpt["rng"])
        self.epoch, self.global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        self.history = list(ckpt.get("history", []))
        self.best_dice = float(ckpt.get("best_mean_dice", -1.0))
        self.best_epoch = int(ckpt.get("best_epoch", -1))
        self._log(f"resumed {self.last_path} at epoch {self.epoch} (step {self.global_step})")

    def _write_metrics(self) -> None:
        run_files.write_metrics(self.run_dir, self.history)
        try:
            run_files.write_curves(self.run_dir, self.history)
        except Exception as err:  # noqa: BLE001 - a figure must never kill a run
            self._log(f"could not draw curves: {err}")

    # -- loops ---------------------------------------------------------------------------------
    def _batches(self, epoch: int) -> Iterator[dict[str, Any]]:
        n_pass = 0
        while True:
            # Distinct shuffles for every pass of every epoch, all derived from the seed.
            self.sampler.set_epoch(epoch * 1000 + n_pass)
            yield from self.loader
            n_pass += 1

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x).to(self.device, non_blocking=True)
        if self.cfg.spatial_dims == 2 and x.ndim == 5:
            x = x[..., 0]
        return x

    def _train_epoch(self) -> float:
        cfg = self.cfg
        self.net.train()
        seed = cfg.seed * 1_000_003 + self.epoch * 7919 + self.rank
        seed_everything(seed)
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
            x, y = self._to_device(batch["image"]), self._to_device(batch["label"])
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
            if distributed.any_rank(bool(problem)):
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
        if weights_ok is not None and distributed.any_rank(not bool(weights_ok)):
            iters = cfg.iters_per_epoch
            self._diverged(f"{self._bad_weight()} after iteration {iters}", iters, self.global_step)
        mean = distributed.all_reduce_sum(torch.tensor([total, float(count)], dtype=torch.float64))
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
        num_classes = self.info.num_classes
        scores = ScoreAccumulator(num_classes, hd95=cfg.hd95)
        evaluate_model(self.model, self.val_ds, cfg.patch_size, num_classes, class_names=_class_names(self.info),
                       hd95=cfg.hd95, progress=self.is_main and cfg.progress, overlap=cfg.val_overlap,
                       blend=cfg.val_blend, sw_batch_size=cfg.sw_batch_size, device=self.device,
                       amp=self.amp_dtype is not None, scores=scores)
        total = ScoreAccumulator.unpack(distributed.all_reduce_sum(scores.packed()), num_classes, cfg.hd95)
        return total.summary(_class_names(self.info))

    def fit(self) -> TrainResult:
        """Train to ``cfg.epochs`` (continuing from ``last.pt`` with ``resume``); return the result."""
        cfg = self.cfg
        start = time.perf_counter()
        created_group = distributed.init_process_group(self.ranks, self.device)
        try:
            ckpt = self._claim_run_dir()
            if ckpt is not None:
                cfg = self.cfg = self._resumed_settings()
            self._setup_data()
            seed_everything(cfg.seed)  # the initial weights derive from the seed too
            self._setup_model()
            self.epoch, self.global_step, self.history = 0, 0, []
            self.best_dice, self.best_epoch = -1.0, -1
            if ckpt is not None:
                self._resume(ckpt)
                del ckpt
            if self.is_main:  # after the resume checks: it names only settings this run uses
                run_files.write_config(self.run_dir, cfg)
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
            if created_group:
                distributed.leave_process_group()
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
    :data:`~mednext_lite.run_files.RESUME_MUST_MATCH` settings, and
    :class:`~mednext_lite.checkpoint.CheckpointError` when ``last.pt`` cannot be
    read, fails its checksum or holds NaN/inf on resume.
    """
    return Trainer(cfg, on_epoch_end=on_epoch_end, on_step_end=on_step_end).fit()
