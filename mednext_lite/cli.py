"""The ``mednext-lite`` command: train, predict, evaluate, export, profile, data.

Every subcommand is a thin door into the package: it parses flags and calls one library function.
:func:`main` runs each through the package's one error boundary,
:func:`mednext_lite.errors.run_command`: a failure ends in one line naming the file or value and
the fix, with the exit status listed in :mod:`mednext_lite.errors`; ``mednext-lite --debug ...``
shows the traceback instead. Defaults follow the paper
(MedNeXt-S k3, 3D, deep supervision, 1000 x 250 iterations, 128^3 patches); ``--quickstart``
swaps in the CPU-sized settings of :meth:`TrainConfig.cpu_quickstart`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import add_debug_flag, run_command

__all__ = ["build_parser", "main"]


def _positive_int(text: str) -> int:
    """argparse type of a count that must be a whole number >= 1 (threads, windows per pass)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number: give one >= 1, e.g. 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1, e.g. 1")
    return value


def _grad_checkpointing(text: str) -> Any:
    """argparse type of ``--grad-checkpointing``: auto (the preset's), on/block, expansion, off, or one
    of off/block/expansion per stage, comma-separated (enc0, .., bottleneck, .., dec0)."""
    from .model import NUM_STAGES

    names = {"on": True, "block": "block", "expansion": "expansion", "off": False}
    if text == "auto":
        return None
    if text in names:
        return names[text]
    entries = [e.strip() for e in text.split(",")]
    if len(entries) != NUM_STAGES or any(e not in ("off", "block", "expansion") for e in entries):
        raise argparse.ArgumentTypeError(
            f"{text!r}: use auto, on, off, block or expansion, or {NUM_STAGES} comma-separated entries of "
            "off/block/expansion, one per stage, e.g. off,off,block,block,block,block,block,off,off")
    return tuple(None if e == "off" else e for e in entries)


def _patch(values: Sequence[int] | None, spatial_dims: int) -> tuple[int, ...] | None:
    if not values:
        return None
    values = tuple(values)
    return values * spatial_dims if len(values) == 1 else values


# -- train ---------------------------------------------------------------------------------------

def _add_train(sub: Any) -> None:
    from .fast.conv import KERNELS
    from .fast.layout import MEMORY_FORMATS
    from .variants import PRESETS

    p = sub.add_parser("train", help="train MedNeXt on an MSD-layout task (resumable, DDP-ready)",
                       description="Train MedNeXt with the paper's recipe. Run under `torchrun --nproc_per_node N` "
                                   "for multi-process DDP (gloo on CPU, nccl on GPU).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=None, help="data root (default: $MEDNEXT_DATA or ./data)")
    g.add_argument("--task", default="synthetic",
                   help="task directory, MSD name/number (e.g. Hippocampus, 04), synthetic[-ct|-mri4d] or brain")
    g.add_argument("--fold", type=int, default=0, help="cross-validation fold held out for validation")
    g.add_argument("--n-folds", type=int, default=5, help="number of folds of the split")
    g.add_argument("--spacing", type=float, nargs="+", default=None, help="resample to this spacing in mm (1 or 3 values)")
    g.add_argument("--cache", choices=("memory", "disk", "none"), default="memory", help="dataset cache")
    g.add_argument("--num-workers", type=int, default=0, help="data-loader worker processes")
    g.add_argument("--no-augment", action="store_true", help="disable flips/rotations/intensity augmentation")
    m = p.add_argument_group("model")
    m.add_argument("--variant", default="S", choices=tuple(PRESETS), help="MedNeXt preset")
    m.add_argument("--kernel", type=int, default=3, help="depthwise kernel size (3 or 5 in the paper)")
    m.add_argument("--spatial-dims", type=int, default=3, choices=(2, 3), help="3D, or 2D on slices")
    m.add_argument("--base-width", type=int, default=None, help="override the base width C (preset: 32)")
    m.add_argument("--blocks", type=int, default=None, help="override blocks per stage (all stages)")
    m.add_argument("--no-deep-supervision", action="store_true", help="train the full-resolution head only")
    m.add_argument("--grad-checkpointing", type=_grad_checkpointing, default="auto", metavar="POLICY",
                   help="recompute activations in backward: auto (on for M and L, as in the paper), on (= block: "
                        "whole blocks), expansion (only the wide part after each depthwise conv), off, or 9 "
                        "comma-separated off/block/expansion entries, one per stage")
    m.add_argument("--kernels", choices=KERNELS, default="pytorch",
                   help="depthwise conv kernels: PyTorch's, the Triton kernels (CUDA; needs triton), or auto "
                        "(Triton only on a GPU where they were measured faster)")
    m.add_argument("--memory-format", choices=MEMORY_FORMATS, default="auto",
                   help="activation layout (auto: the fastest for the device; the same maths in each)")
    m.add_argument("--no-keep-freed-memory", action="store_true",
                   help="on CPU, hand freed tensor memory back to the OS (slower; by default it is kept for "
                        "reuse unless gradient checkpointing is on)")
    m.add_argument("--upkern-from", default=None, help="initialise from a small-kernel checkpoint with UpKern")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=None, help="epochs (paper 1000; quickstart 6)")
    o.add_argument("--iters", type=int, default=None, help="iterations per epoch (paper 250; quickstart 25)")
    o.add_argument("--batch", type=int, default=None, help="patches per process per iteration (paper 2)")
    o.add_argument("--patch", type=int, nargs="+", default=None,
                   help="patch size, one value or one per axis, divisible by 16 (paper 128; quickstart 32)")
    o.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    o.add_argument("--weight-decay", type=float, default=3e-5, help="AdamW weight decay")
    o.add_argument("--eps", type=float, default=1e-4, help="AdamW epsilon (1e-8 gives NaNs in fp16)")
    o.add_argument("--grad-clip", type=float, default=12.0, help="gradient-norm clipping")
    o.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                   help="mixed precision (CUDA only)")
    o.add_argument("--seed", type=int, default=0, help="seed of the split, sampling and augmentation")
    v = p.add_argument_group("validation")
    v.add_argument("--val-every", type=int, default=None, help="validate every N epochs (and after the last)")
    v.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap")
    v.add_argument("--blend", choices=("gaussian", "constant"), default="gaussian", help="window blending")
    v.add_argument("--sw-batch-size", type=int, default=None, help="windows per forward pass")
    v.add_argument("--max-val-cases", type=int, default=None, help="validate on the first N cases only")
    v.add_argument("--hd95", action="store_true", help="also compute the 95th-percentile Hausdorff distance")
    r = p.add_argument_group("run")
    r.add_argument("--quickstart", action="store_true",
                   help="CPU-sized defaults (S ratios at width 16, 1 block/stage, 32^3, 6x25 it)")
    r.add_argument("--run-dir", default=None, help="output directory (default runs/<task>_<variant>k<k>_<d>d_fold<f>)")
    r.add_argument("--resume", action="store_true",
                   help="continue exactly from <run-dir>/last.pt (same settings; --epochs may grow)")
    r.add_argument("--overwrite", action="store_true",
                   help="start afresh in a run dir holding an earlier run, deleting only that run's files")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads per process (default: torch's choice; 1 is safest on a busy machine)")
    p.set_defaults(handler=_train_command)


def _train_config(args: argparse.Namespace):
    from .train_config import TrainConfig

    overrides: dict[str, Any] = {}
    if args.base_width is not None:
        overrides["base_width"] = args.base_width
    if args.blocks is not None:
        overrides["block_counts"] = args.blocks
    kw: dict[str, Any] = {
        "variant": args.variant, "kernel_size": args.kernel, "spatial_dims": args.spatial_dims,
        "deep_supervision": not args.no_deep_supervision, "fold": args.fold, "n_folds": args.n_folds,
        "spacing": tuple(args.spacing) if args.spacing else None, "cache": args.cache, "num_workers": args.num_workers,
        "augment": not args.no_augment, "memory_format": args.memory_format, "upkern_from": args.upkern_from,
        "keep_freed_memory": not args.no_keep_freed_memory,
        "lr": args.lr, "weight_decay": args.weight_decay, "eps": args.eps, "grad_clip": args.grad_clip, "amp": args.amp,
        "seed": args.seed, "val_overlap": args.overlap, "val_blend": args.blend, "max_val_cases": args.max_val_cases,
        "hd95": args.hd95, "resume": args.resume, "overwrite": args.overwrite, "device": args.device,
        "progress": not args.no_progress,
        "grad_checkpointing": args.grad_checkpointing, "kernels": args.kernels,
    }
    if args.run_dir:
        kw["run_dir"] = args.run_dir
    for flag, name in (("epochs", "epochs"), ("iters", "iters_per_epoch"), ("batch", "batch_size"),
                       ("val_every", "val_every"), ("sw_batch_size", "sw_batch_size")):
        if getattr(args, flag) is not None:
            kw[name] = getattr(args, flag)
    patch = _patch(args.patch, args.spatial_dims)
    if patch is not None:
        kw["patch_size"] = patch
    kw["model_overrides"] = overrides  # the quickstart merges them into its own
    cfg = TrainConfig.cpu_quickstart(**kw) if args.quickstart else TrainConfig(**kw)
    # Flags are checked (above) before the task is resolved, which may write the synthetic task.
    from .data.locate import resolve_task_dir

    return cfg.replace(task_dir=str(resolve_task_dir(args.task, args.data_dir)))


def _train_command(args: argparse.Namespace) -> int:
    from .distributed import ranks_from_env
    from .train import train

    cfg = _train_config(args)
    result = train(cfg)
    if ranks_from_env().is_main:
        print(json.dumps({"run_dir": str(result.run_dir), "last": str(result.last_checkpoint),
                          "best": str(result.best_checkpoint) if result.best_checkpoint else None,
                          "best_mean_dice": result.best_mean_dice, "best_epoch": result.best_epoch,
                          "seconds": round(result.seconds, 1)}, indent=2))
    return 0


# -- predict -------------------------------------------------------------------------------------

def _add_predict(sub: Any) -> None:
    p = sub.add_parser("predict", help="segment NIfTI images with a checkpoint (output in the input's geometry)",
                       description="Sliding-window prediction; writes one .nii.gz label map per input with the "
                                   "input's shape and affine (preprocessing is undone with MONAI's Invertd).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint written by `mednext-lite train` (best.pt/last.pt); with --backend onnxruntime, "
                        "the .onnx file `mednext-lite export` wrote (it stores the task, patch and spacing alike)")
    p.add_argument("--backend", choices=("pytorch", "onnxruntime"), default="pytorch",
                   help="what computes the windows: the PyTorch network, or the exported .onnx file in ONNX Runtime "
                        "(same sliding window, blending and NIfTI output)")
    p.add_argument("--input", required=True, nargs="+", help="NIfTI files and/or folders of .nii.gz files")
    p.add_argument("--output", required=True, help="folder for the predicted label maps")
    p.add_argument("--task", default=None,
                   help="task whose preprocessing to use (default: the one stored in the checkpoint)")
    p.add_argument("--data-dir", default=None, help="data root for --task names")
    p.add_argument("--patch", type=int, nargs="+", default=None, help="window size (default: training patch)")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap")
    p.add_argument("--blend", choices=("gaussian", "constant"), default="gaussian", help="window blending")
    p.add_argument("--sw-batch-size", type=_positive_int, default=4, help="windows per forward pass")
    p.add_argument("--suffix", default="", help="appended to each output file name before .nii.gz")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true", help="autocast on CUDA")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace label maps that exist already in --output")
    p.add_argument("--nan-to-num", type=float, default=None, metavar="VALUE",
                   help="replace NaN/inf voxels of the inputs with VALUE and report how many per file (default: "
                        "such an input is refused)")
    p.set_defaults(handler=_predict_command)


def _input_files(inputs: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(q for q in path.iterdir()
                            if q.name.endswith((".nii", ".nii.gz")) and not q.name.startswith("._") and q.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"--input {item} does not exist: pass NIfTI files or folders holding .nii.gz files")
    if not files:
        raise ValueError(f"no .nii/.nii.gz files found in {list(inputs)}")
    return files


def _predict_command(args: argparse.Namespace) -> int:
    from .inference import predict_from_checkpoint

    if Path(args.checkpoint).is_dir():
        raise ValueError(f"--checkpoint {args.checkpoint} is a folder: pass the checkpoint file in it, "
                         f"e.g. {Path(args.checkpoint) / 'best.pt'}")
    from .data.locate import resolve_task_dir

    task_dir = resolve_task_dir(args.task, args.data_dir, create=False) if args.task else None
    source: Any = args.checkpoint
    if args.backend == "onnxruntime":
        if args.amp:
            raise ValueError("--amp applies to the PyTorch backend only: the .onnx file computes in float32; "
                             "drop --amp")
        from .export import OnnxPredictor

        source = OnnxPredictor(args.checkpoint, device=args.device, threads=args.threads)
    elif Path(args.checkpoint).suffix == ".onnx":
        raise ValueError(f"--checkpoint {args.checkpoint} is an ONNX file: pass --backend onnxruntime to predict "
                         "with it")
    written = predict_from_checkpoint(
        source, _input_files(args.input), args.output, task_dir=task_dir,
        patch_size=(args.patch[0] if len(args.patch) == 1 else tuple(args.patch)) if args.patch else None, device=args.device,
        suffix=args.suffix, overlap=args.overlap, blend=args.blend, sw_batch_size=args.sw_batch_size, amp=args.amp,
        overwrite=args.overwrite, nan_to_num=args.nan_to_num, protected=[p for p in args.input if Path(p).is_dir()],
        progress=not args.no_progress)
    print(f"wrote {len(written)} label map(s) to {args.output}")
    return 0


# -- evaluate ------------------------------------------------------------------------------------

def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="Dice (and HD95) of predicted label maps against reference labels",
                       description="Compare a folder of predictions (from `predict`) with reference labels matched by "
                                   "file name; prints per-class and mean Dice and writes JSON + CSV.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--predictions", required=True, help="folder of predicted .nii.gz label maps")
    p.add_argument("--labels", nargs="+", default=None, help="reference label files or folders")
    p.add_argument("--task", default=None, help="use this task's labelsTr (all cases, or the --split's val cases)")
    p.add_argument("--data-dir", default=None, help="data root for --task names")
    p.add_argument("--split", default=None, help="split.json of a run: evaluate its validation cases only")
    p.add_argument("--suffix", default="", help="suffix the predictions were written with")
    p.add_argument("--hd95", action="store_true", help="also compute HD95 (mm)")
    p.add_argument("--resample", action="store_true",
                   help="resample a prediction on another voxel grid onto its label's grid (nearest neighbour, "
                        "through the affines) instead of refusing it")
    p.add_argument("--output", default=None, help="JSON report path (default <predictions>/evaluation.json)")
    p.set_defaults(handler=_evaluate_command)


def _evaluate_command(args: argparse.Namespace) -> int:
    from .data.locate import resolve_task_dir
    from .data.splits import load_split
    from .data.validate import load_task
    from .evaluation import evaluate_folder

    names, num_classes, labels, task_dirs = None, None, None, []
    if args.task:
        task_dirs = [resolve_task_dir(args.task, args.data_dir, create=False)]
        info = load_task(task_dirs[0], validate=False)
        names = [info.labels[i] for i in sorted(info.labels) if i != 0]
        num_classes = info.num_classes
        labels = [c["label"] for c in info.training]
    if args.split:
        _, val = load_split(args.split)
        labels = [c["label"] for c in val]
    if args.labels:
        labels = _input_files(args.labels)
    if not labels:
        raise ValueError("no reference labels: pass --labels FILES/FOLDERS, --task, or --split")
    if num_classes is None:
        import numpy as np

        from .data.dataset import nifti_header

        num_classes = 1 + max(int(np.nanmax(np.asanyarray(nifti_header(path).dataobj))) for path in labels)
        num_classes = max(num_classes, 2)
    out = Path(args.output) if args.output else Path(args.predictions) / "evaluation.json"
    res = evaluate_folder(args.predictions, labels, num_classes, class_names=names, suffix=args.suffix,
                          hd95=args.hd95, resample=args.resample, out_json=out, task_dirs=task_dirs)
    for name, d in res["dice"].items():
        hd = f"  HD95 {res['hd95'][name]:.2f} mm" if args.hd95 else ""
        print(f"{name:>16}: Dice {d:.4f}{hd}")
    print(f"{'mean':>16}: Dice {res['mean_dice']:.4f} over {res['n']} case(s); report {out}")
    return 0


# -- entry point ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The full ``mednext-lite`` parser (profile and data subcommands come from their modules)."""
    parser = argparse.ArgumentParser(prog="mednext-lite", description="MedNeXt for 2D/3D medical segmentation: "
                                     "train, predict, evaluate, export, profile, data.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    _add_predict(sub)
    _add_evaluate(sub)
    from .profile import add_profile_subcommand

    add_profile_subcommand(sub)
    from .export import add_export_subcommand

    add_export_subcommand(sub)
    data = sub.add_parser("data", help="download, synthesize or inspect MSD-layout tasks",
                          description="Data tools: download an MSD task, write the synthetic task, inspect a task.")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    from .data.commands import add_data_subcommands

    add_data_subcommands(data_sub)
    data.set_defaults(handler=lambda a, _p=data: (_p.print_help(), 2)[1])
    add_debug_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status (listed in :mod:`mednext_lite.errors`).
    A failure ends in one line on stderr naming the (sub)command, e.g. ``mednext-lite data inspect:
    error: ...`` (:func:`mednext_lite.errors.run_command`); with ``--debug`` the exception
    propagates with its traceback instead."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    command = args.command
    if command == "data" and getattr(args, "data_command", None):
        command = f"data {args.data_command}"
    threads = None
    try:
        if getattr(args, "threads", None):
            import torch

            threads = torch.get_num_threads()  # restored after the command, for callers in this process
            torch.set_num_threads(args.threads)
        return run_command(f"mednext-lite {command}", handler, args, debug=getattr(args, "debug", False))
    finally:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())
