"""``make demo``: the whole kit on a CPU in minutes (``python -m mednext_lite.demo``).

Writes the synthetic task and scores the intensity-threshold baseline on it, then executes every
lesson notebook through papermill with its ``notebooks/ci.yaml`` parameters, and prints where the
executed notebooks and figures are, how long each took, and the Dice the trained network reached
against the baseline. A failing notebook does not stop the others; the exit status says whether
all of them passed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .notebooks import NotebookError, default_build_dir, load_manifest, run_notebook

#: Figures copied by ``--figures`` (the README shows these): (notebook, file name in its output dir).
README_FIGURES = [
    ("04_train_msd", "prediction.png"),
    ("06_upkern", "upkern_curves.png"),
    ("01_mednext_block", "effective_receptive_field.png"),
    ("02_slice_viewer", "windows.png"),
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns 0 when every notebook ran and checked its claims."""
    parser = argparse.ArgumentParser(prog="python -m mednext_lite.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME",
                        help="run only these notebooks (names or number prefixes, e.g. 04 05)")
    parser.add_argument("--build-dir", default=None,
                        help="where executed notebooks and outputs go (default: ./build/notebooks)")
    parser.add_argument("--figures", default=None, metavar="DIR",
                        help="also copy the README figures into DIR (e.g. docs/figures)")
    args = parser.parse_args(argv)
    build = Path(args.build_dir).resolve() if args.build_dir else default_build_dir()

    from .data import make_synthetic_task, threshold_baseline

    print("1/2 synthetic task (MSD layout, two structures of equal intensity)")
    task_dir = make_synthetic_task(build.parent / "data", progress=False)
    baseline = threshold_baseline(task_dir)
    print(f"    {task_dir}: intensity-threshold baseline mean foreground Dice "
          f"{baseline['mean_foreground_dice']:.3f} (per class {_rounded(baseline['dice'])})")

    specs = load_manifest()
    if args.only:
        specs = [s for s in specs if any(s.name == o or s.name.startswith(o) for o in args.only)]
        if not specs:
            parser.error(f"--only {args.only} matches no notebook in notebooks/ci.yaml")
    print(f"2/2 {len(specs)} notebooks through papermill -> {build}")
    runs, failures = [], []
    start = time.perf_counter()
    for spec in specs:
        t0 = time.perf_counter()
        try:
            run = run_notebook(spec, build_dir=build)
        except NotebookError as err:
            failures.append((spec.name, str(err)))
            print(f"    {spec.name:<22} FAILED after {time.perf_counter() - t0:.0f} s", flush=True)
            continue
        runs.append(run)
        print(f"    {spec.name:<22} ok in {run.seconds:5.1f} s", flush=True)
    total = time.perf_counter() - start

    print(f"\nexecuted notebooks: {build}/<name>.ipynb; figures and CSV: {build}/<name>/")
    for run in runs:
        figures = sorted(p.name for p in run.output_dir.glob("*.png"))
        print(f"  {run.spec.name:<22} {run.seconds:6.1f} s  {', '.join(figures) or '-'}")
    print(f"  total {total:.0f} s")
    for run in runs:
        line = headline(run.spec.name, run.summary)
        if line:
            print(line)
    if args.figures:
        out = Path(args.figures)
        out.mkdir(parents=True, exist_ok=True)
        for name, file in README_FIGURES:
            source = build / name / file
            if source.is_file():
                shutil.copy2(source, out / f"{name[:2]}_{file}")
        print(f"README figures copied to {out}")
    for name, message in failures:
        print(f"\n{name} FAILED:\n{message}", file=sys.stderr)
    return 1 if failures else 0


def headline(name: str, summary: dict) -> str | None:
    """The result line ``make demo`` prints for a lesson's ``summary.json`` (None for lessons
    without one): lesson 04's held-out Dice against the baseline, lesson 06's three arms."""
    if name == "04_train_msd":
        return (f"Dice reached (04, {summary['task']}, {summary['n_test']} held-out cases, checkpoint chosen on "
                f"{summary['n_selection']} others): {summary['test_mean_dice']:.3f} {_rounded(summary['test_dice'])}; "
                f"threshold baseline fitted on the same cases {summary['baseline_test_mean_dice']:.3f}")
    if name == "06_upkern":
        return (f"UpKern (06), after the same total epochs: k5 from UpKern {summary['k5_upkern_dice']:.3f}, "
                f"k3 continued {summary['k3_continued_dice']:.3f}, k5 from scratch {summary['k5_scratch_dice']:.3f} "
                f"({summary['verdicts']['upkern_vs_k3_continued']})")
    return None


def _rounded(values: dict) -> dict:
    return {k: round(float(v), 3) for k, v in values.items()}


if __name__ == "__main__":
    sys.exit(main())
