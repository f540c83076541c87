"""The files of a run directory and the rules for reusing one (resume, overwrite, metrics files).

Which files mark a run, when an earlier run may be resumed or overwritten and with which
settings, and the per-epoch metrics and curves files.

Every file is written with :func:`mednext_lite.safe_io.atomic_write`, so a kill at any moment
leaves the previous good file. The metrics files are rewritten in full from the run's history,
so they always agree with ``last.pt``, also after a crash and a resume.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checkpoint import load_checkpoint
from .safe_io import atomic_write, write_csv
from .train_config import FLAGS, TrainConfig
from .variants import preset_config

__all__ = ["RESUME_MAY_DIFFER", "RESUME_MUST_MATCH", "RUN_FILES", "clear_run_files", "load_resume_checkpoint",
           "resume_conflicts", "run_files_in", "write_config", "write_curves", "write_metrics"]

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
#: gradient checkpointing, depthwise kernels: the same maths up to float rounding), and what it reports.
#: ``upkern_from`` only initialises a new run: on resume it is ignored and the stored value kept.
RESUME_MAY_DIFFER = (
    "run_dir", "epochs", "device", "num_workers", "cache", "memory_format", "keep_freed_memory",
    "grad_checkpointing", "kernels", "val_every", "sw_batch_size", "hd95", "progress", "resume", "overwrite", "upkern_from",
)


def run_files_in(run_dir: str | os.PathLike) -> list[str]:
    """The :data:`RUN_FILES` present in ``run_dir`` (a dangling symlink counts), in that order."""
    run_dir = Path(run_dir)
    return [name for name in RUN_FILES if (run_dir / name).exists() or (run_dir / name).is_symlink()]


def clear_run_files(run_dir: str | os.PathLike, names: Sequence[str], *, delete: bool) -> None:
    """Check (and with ``delete``, remove) the earlier run's files ``names`` for ``--overwrite``:
    a symlink is removed itself, never its target; a folder of such a name is refused untouched."""
    run_dir = Path(run_dir)
    for name in names:
        target = run_dir / name
        if target.is_dir() and not target.is_symlink():
            raise ValueError(f"--overwrite: {target} is a folder, not a file this trainer wrote; move it away")
    for name in names if delete else ():
        (run_dir / name).unlink()


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
            out.append(f"{name} ({FLAGS.get(name, name)}): {old!r} -> {new!r}")
    return out


def load_resume_checkpoint(run_dir: str | os.PathLike, cfg: TrainConfig,
                           found: Sequence[str] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read ``run_dir/last.pt`` for a resume and refuse settings that would change the run; returns
    the checked checkpoint and the settings the run was trained with (``{}`` if none are stored).

    ``found`` (the run's files, :func:`run_files_in`) lets the message for a missing ``last.pt``
    say what the folder holds instead."""
    run_dir = Path(run_dir)
    last = run_dir / "last.pt"
    if not last.exists():
        others = [name for name in found if name != "last.pt"]
        held = (f" ({run_dir} holds {', '.join(others)} but no last.pt: start it again with --overwrite)"
                if others else "")
        raise ValueError(f"--resume given but {last} does not exist{held}: start without --resume "
                         "or point --run-dir at the run to continue")
    ckpt = load_checkpoint(last, map_location="cpu")
    stored = ckpt.get("train_config")
    if not isinstance(stored, dict) and (run_dir / "config.json").is_file():
        stored = json.loads((run_dir / "config.json").read_text())  # an older last.pt
    stored = stored if isinstance(stored, dict) else {}
    conflicts = resume_conflicts(stored, cfg)
    if conflicts:
        raise ValueError(
            f"--resume would change the run in {run_dir}: " + "; ".join(conflicts) + ". A resumed run "
            f"keeps its settings (stored in {last}); only {', '.join(RESUME_MAY_DIFFER)} may differ. "
            "Resume with the original flags, or start a new run with another --run-dir (or --overwrite)")
    done = int(ckpt.get("epoch", 0))
    if cfg.epochs < done:
        raise ValueError(f"epochs={cfg.epochs} (--epochs) is fewer than the {done} epochs {last} holds "
                         f"already: pass --epochs {done} or more to continue it")
    return ckpt, stored


def write_config(run_dir: str | os.PathLike, cfg: TrainConfig) -> Path:
    """``config.json``: the settings the run uses, as :meth:`TrainConfig.to_dict`."""
    return atomic_write(Path(run_dir) / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")


def write_metrics(run_dir: str | os.PathLike, history: Sequence[dict[str, Any]]) -> None:
    """``metrics.csv`` and ``metrics.json``: one row per epoch of ``history``."""
    run_dir = Path(run_dir)
    write_csv(run_dir / "metrics.csv", history)
    atomic_write(run_dir / "metrics.json", json.dumps(list(history), indent=1) + "\n")


def write_curves(run_dir: str | os.PathLike, history: Sequence[dict[str, Any]]) -> Path:
    """``curves.png``: the training loss and the validation Dice (mean and per class) per epoch,
    drawn by :func:`mednext_lite.viz.plot_curves`; validated epochs only on the Dice panel."""
    from .viz import plot_curves

    run_dir = Path(run_dir)
    found = dict.fromkeys(k for row in history for k in row if k.startswith("val_dice_"))
    dice_keys = sorted(found, key=lambda k: k != "val_dice_mean")  # the mean first, then the classes in order
    rows = [{"epoch": row["epoch"], "train loss (Dice + CE)": row["train_loss"],
             **{key.replace("val_dice_", "Dice "): row[key] for key in dice_keys if key in row}}
            for row in history]
    fig = plot_curves(rows, title=run_dir.name)
    return atomic_write(run_dir / "curves.png", lambda tmp: fig.savefig(tmp, dpi=90), suffix=".png")
