"""Train a CPU-sized MedNeXt on the synthetic task and compare it with the thresholding baseline.

Prints three figures: the intensity-threshold baseline's mean foreground Dice on the validation
cases (an upper bound of intensity alone: head and tail share one intensity), the trained
network's mean foreground Dice on the same cases (sliding window, Gaussian blending), and the
wall time of the whole training run (data caching, training and every validation included).

    python benchmarks/train_synthetic.py                 # the README headline (3D)
    python benchmarks/train_synthetic.py --spatial-dims 2 --patch 48

The task is written once under --data-dir (default ./data) and reused; runs go to ./runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default="data", help="where the synthetic task is written/read")
    p.add_argument("--run-dir", default="runs/bench_train_synthetic", help="run directory (replaced)")
    p.add_argument("--spatial-dims", type=int, default=3, choices=(2, 3))
    p.add_argument("--variant", default="S")
    p.add_argument("--base-width", type=int, default=16)
    p.add_argument("--blocks", type=int, default=1, help="blocks per stage (preset S has 2)")
    p.add_argument("--patch", type=int, default=32, help="patch edge (cube, or square in 2D)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--iters", type=int, default=25, help="iterations per epoch")
    p.add_argument("--val-every", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (0 = torch default). 1 is the robust choice on a shared 2-core "
                        "machine: with 2 OpenMP threads and other load, each tiny conv waits on a busy core")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from mednext_lite.data.baseline import threshold_baseline
    from mednext_lite.data.splits import load_split
    from mednext_lite.data.synthetic import make_synthetic_task
    from mednext_lite.train import train
    from mednext_lite.train_config import TrainConfig

    task = Path(args.data_dir) / "Task90_SyntheticMRI"
    if not (task / "dataset.json").exists():
        task = make_synthetic_task(args.data_dir, seed=0)
    run_dir = Path(args.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = TrainConfig.cpu_quickstart(
        task, run_dir=str(run_dir), spatial_dims=args.spatial_dims, variant=args.variant,
        model_overrides={"base_width": args.base_width, "block_counts": args.blocks},
        patch_size=(args.patch,) * args.spatial_dims, batch_size=args.batch, epochs=args.epochs,
        iters_per_epoch=args.iters, val_every=args.val_every, lr=args.lr, augment=not args.no_augment,
        seed=args.seed, progress=False,
    )
    t0 = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - t0
    _, val_cases = load_split(run_dir / "split.json")
    base = threshold_baseline(task, val_cases)
    final = result.history[-1]
    figures = {
        "what": f"{args.spatial_dims}D MedNeXt-{args.variant} k3 base_width={args.base_width} blocks={args.blocks} "
                f"patch={args.patch} batch={args.batch} {args.epochs}x{args.iters} it, {torch.get_num_threads()} threads",
        "val_cases": len(val_cases),
        "threshold_baseline_mean_dice": base["mean_foreground_dice"],
        "mednext_final_mean_dice": final["val_dice_mean"],
        "mednext_best_mean_dice": result.best_mean_dice,
        "best_epoch": result.best_epoch,
        "per_class_final": {k[len("val_dice_"):]: v for k, v in final.items()
                            if k.startswith("val_dice_") and k != "val_dice_mean"},
        "train_wall_s": wall,
    }
    print(json.dumps(figures, indent=2))
    print(f"threshold baseline mean foreground Dice: {base['mean_foreground_dice']:.3f}")
    print(f"MedNeXt mean foreground Dice (final epoch): {final['val_dice_mean']:.3f} "
          f"(best {result.best_mean_dice:.3f} at epoch {result.best_epoch})")
    print(f"training wall time: {wall:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
