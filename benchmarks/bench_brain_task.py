"""Train a CPU-sized MedNeXt on the MNI152 brain-tissue task and compare it with the intensity rule.

The task (Task93_MNIBrainTissue: grey matter, white matter, other brain on T1w MRI, made from
nilearn's bundled MNI152 template) is written under --data-dir when missing. The network trains
on the split's training fold; the validation fold is held out (never a gradient step, and the
LAST checkpoint is scored, so no model selection on it either). On those held-out cases it prints
MedNeXt's Dice per class and mean (sliding window, predictions written as NIfTI in the images'
geometry, scored file by file) next to the intensity-threshold baseline's, which is fitted AND
scored on the same held-out cases (an upper bound for any intensity rule), plus the wall and CPU
time of training and of prediction.

    python benchmarks/bench_brain_task.py                      # the figures in docs/data.md (2D, ~3 CPU minutes)
    python benchmarks/bench_brain_task.py --epochs 16          # longer: every class above the rule
    python benchmarks/bench_brain_task.py --spatial-dims 3 --patch 48 --batch 2

Needs nilearn (pip install nilearn). The run goes to --run-dir: an earlier run's files there (the
trainer's own, the predictions, held_out_dice.json) are replaced; nothing else in it is touched.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def _task(data_dir: Path, n_train: int, n_test: int, spacing: float, seed: int) -> Path:
    from mednext_lite.data.brain import BRAIN_TASK, make_brain_task

    task = data_dir / BRAIN_TASK
    meta_path = task / "dataset.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if (meta.get("numTraining") == n_train and meta.get("numTest") == n_test
                and f"seed={seed} spacing={float(spacing)} " in str(meta.get("release", ""))):
            return task
    return make_brain_task(data_dir, n_train=n_train, n_test=n_test, spacing=spacing, seed=seed, progress=False)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default="data", help="where the brain task is written/read")
    p.add_argument("--run-dir", default="runs/bench_brain_task",
                   help="run directory (an earlier run's files in it are replaced, nothing else)")
    p.add_argument("--n-train", type=int, default=20, help="labelled cases (the split holds out a fifth)")
    p.add_argument("--spacing", type=float, default=2.0, help="voxel size of the task in mm")
    p.add_argument("--spatial-dims", type=int, default=2, choices=(2, 3))
    p.add_argument("--variant", default="S")
    p.add_argument("--base-width", type=int, default=16)
    p.add_argument("--blocks", type=int, default=1, help="blocks per stage (preset S has 2)")
    p.add_argument("--patch", type=int, nargs="+", default=[96, 112],
                   help="patch size (one edge for a cube/square, or one per axis); 96x112 is a whole axial slice")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--iters", type=int, default=25, help="iterations per epoch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--augment", action="store_true",
                   help="add the trainer's flips, 90-degree rotations and intensity jitter (off: the cases "
                        "already vary in shape, pose, contrast, bias and noise, and at this budget the extra "
                        "variety slows learning)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (0 = torch default); 1 is robust on a shared 2-core machine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    patch = tuple(args.patch) * args.spatial_dims if len(args.patch) == 1 else tuple(args.patch)

    from mednext_lite.data.baseline import threshold_baseline
    from mednext_lite.data.splits import load_split
    from mednext_lite.data.validate import load_task
    from mednext_lite.evaluation import evaluate_folder
    from mednext_lite.inference import predict_from_checkpoint
    from mednext_lite.safe_io import atomic_write
    from mednext_lite.train import train
    from mednext_lite.train_config import TrainConfig

    t0 = time.perf_counter()
    task = _task(Path(args.data_dir), args.n_train, 2, args.spacing, args.seed)
    write_s = time.perf_counter() - t0
    info = load_task(task)
    run_dir = Path(args.run_dir)
    # overwrite deletes only the trainer's own files: --run-dir may be a folder holding other things.
    cfg = TrainConfig.cpu_quickstart(
        task, run_dir=str(run_dir), spatial_dims=args.spatial_dims, variant=args.variant,
        model_overrides={"base_width": args.base_width, "block_counts": args.blocks}, patch_size=patch,
        batch_size=args.batch, epochs=args.epochs, iters_per_epoch=args.iters, val_every=args.epochs,
        lr=args.lr, augment=args.augment, seed=args.seed, device="cpu", progress=False, overwrite=True,
    )
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = train(cfg)
    train_wall, train_cpu = time.perf_counter() - wall0, time.process_time() - cpu0

    train_cases, held_out = load_split(run_dir / "split.json")
    names = [info.labels[c] for c in sorted(info.labels) if c != 0]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    predict_from_checkpoint(result.last_checkpoint, [c["image"] for c in held_out], run_dir / "predictions",
                            task_dir=task, device="cpu", progress=False, overwrite=True)
    predict_wall, predict_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    net = evaluate_folder(run_dir / "predictions", [c["label"] for c in held_out], info.num_classes,
                          class_names=names, out_json=run_dir / "held_out_dice.json")
    base = threshold_baseline(info, held_out)

    figures = {
        "what": (f"{args.spatial_dims}D MedNeXt-{args.variant} k3 base_width={args.base_width} blocks={args.blocks} "
                 f"patch={list(patch)} batch={args.batch} {args.epochs}x{args.iters} it, "
                 f"{torch.get_num_threads()} thread(s), {info.name} at {args.spacing} mm"),
        "train_cases": len(train_cases),
        "held_out_cases": len(held_out),
        "mednext_dice": net["dice"],
        "mednext_mean_dice": net["mean_dice"],
        "baseline_dice": {info.labels[c]: d for c, d in base["dice"].items() if c != 0},
        "baseline_mean_dice": base["mean_foreground_dice"],
        "task_write_s": write_s,
        "train_wall_s": train_wall,
        "train_cpu_s": train_cpu,
        "predict_wall_s": predict_wall,
        "predict_cpu_s": predict_cpu,
    }
    print(figures["what"])
    print(f"{figures['train_cases']} training cases, {len(held_out)} held-out cases "
          "(never trained on; the last checkpoint is scored)")
    print(f"{'Dice on held-out cases':<24}" + "".join(f"{n:>14}" for n in names) + f"{'mean':>10}")
    print(f"{'MedNeXt':<24}" + "".join(f"{net['dice'][n]:>14.3f}" for n in names) + f"{net['mean_dice']:>10.3f}")
    print(f"{'threshold baseline':<24}" + "".join(f"{figures['baseline_dice'][n]:>14.3f}" for n in names)
          + f"{base['mean_foreground_dice']:>10.3f}")
    print("(baseline: per-intensity-bin majority label, fitted and scored on the held-out cases themselves)")
    print(f"task written/read in {write_s:.1f} s; training {train_wall:.0f} s wall, {train_cpu:.0f} s CPU; "
          f"prediction of {len(held_out)} cases {predict_wall:.1f} s wall, {predict_cpu:.1f} s CPU")
    if args.json:
        atomic_write(args.json, json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
