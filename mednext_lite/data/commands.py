"""Command-line doors of the data layer: ``download``, ``synthesize``, ``brain`` and ``inspect``.

``add_data_subcommands`` registers them on any argparse sub-parser set (the package CLI uses it
for ``mednext-lite data ...``); ``download_main``, ``synthesize_main``, ``brain_main`` and
``inspect_main`` are the standalone entry points the scripts in ``data_scripts/`` call. Both run a
command's handler through the same error boundary, :func:`mednext_lite.errors.run_command`: the
handlers raise, and it prints the one-line message (or, with ``--debug``, the traceback).
``summarize_task`` and ``save_montage`` are the reusable halves of ``inspect``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import add_debug_flag, run_command
from ..safe_io import atomic_write
from .brain import BRAIN_TASK, TEMPLATE_NOTICE, brain_grid, make_brain_task
from .catalogue import DATA_ENV_VAR, MSD_TASKS, resolve_data_dir
from .dataset import TaskInfo, read_image, voxel_spacing
from .download import download_task
from .locate import resolve_task_dir
from .synthetic import FLAVOURS, make_synthetic_task
from .validate import TaskReport, check_task

__all__ = [
    "add_data_subcommands",
    "brain_main",
    "download_main",
    "inspect_main",
    "save_montage",
    "summarize_task",
    "synthesize_main",
]

_DATA_DIR_HELP = f"data root (default: ${DATA_ENV_VAR} if set, else ./data)"


def _spacing(affine: np.ndarray) -> tuple[float, ...]:
    return tuple(round(s, 4) for s in voxel_spacing(affine))


def _stats(values: Sequence[float]) -> str:
    arr = np.asarray(values, dtype=float)
    return f"min {arr.min():g}, median {np.median(arr):g}, max {arr.max():g}"


def summarize_task(info: TaskInfo, *, max_cases: int | None = None, progress: bool = False) -> str:
    """Return a plain-text summary of a task to read before training: counts, modalities and
    labels, per-axis shape and spacing ranges, intensity percentiles per modality (over all
    voxels of the cases read) and voxel counts per label. ``max_cases`` limits how many training
    cases are read (all by default)."""
    from tqdm.auto import tqdm

    cases = info.training[:max_cases] if max_cases else info.training
    shapes, spacings, label_counts, present = [], [], {c: 0 for c in sorted(info.labels)}, {c: 0 for c in info.labels}
    samples: list[list[np.ndarray]] = [[] for _ in range(info.in_channels)]
    extremes = [[np.inf, -np.inf] for _ in range(info.in_channels)]
    rng = np.random.default_rng(0)
    for case in tqdm(cases, desc=f"inspect {info.name}", unit="case", disable=not progress, leave=False):
        img, affine = read_image(case["image"])
        lbl, _ = read_image(case["label"])
        img = img[None] if img.ndim == 3 else img
        shapes.append(img.shape[1:])
        spacings.append(_spacing(affine))
        for c in range(min(info.in_channels, img.shape[0])):
            ch = img[c].ravel()
            extremes[c][0] = min(extremes[c][0], float(ch.min()))
            extremes[c][1] = max(extremes[c][1], float(ch.max()))
            # A fixed-size random sample per case keeps the percentiles cheap on big CT volumes.
            samples[c].append(rng.choice(ch, size=min(ch.size, 20000), replace=False).astype(np.float64))
        values, counts = np.unique(np.rint(lbl).astype(np.int64), return_counts=True)
        for v, n in zip(values.tolist(), counts.tolist()):
            label_counts[v] = label_counts.get(v, 0) + n
            present[v] = present.get(v, 0) + 1
    lines = [
        f"task        {info.name}  ({info.root})",
        f"cases       {len(info.training)} training, {len(info.test)} test"
        + (f"  (statistics from the first {len(cases)})" if len(cases) < len(info.training) else ""),
        f"image       {info.tensor_image_size}, {info.in_channels} channel(s): "
        + ", ".join(f"{k}={v}" for k, v in info.modality.items()) + ("  [CT: HU window]" if info.is_ct else ""),
        "labels      " + ", ".join(f"{k}={v}" for k, v in sorted(info.labels.items())),
    ]
    if cases:
        sh, sp = np.array(shapes), np.array(spacings)
        for axis, name in enumerate("xyz"):
            lines.append(f"shape {name}     {_stats(sh[:, axis])} voxels;  spacing {_stats(sp[:, axis])} mm")
        for c, (key, name) in enumerate(info.modality.items()):
            pooled = np.concatenate(samples[c]) if samples[c] else np.zeros(1)
            p = np.percentile(pooled, [0.5, 50, 99.5])
            lines.append(f"intensity   [{key}] {name}: min {extremes[c][0]:g}, p0.5 {p[0]:.4g}, median {p[1]:.4g}, "
                         f"p99.5 {p[2]:.4g}, max {extremes[c][1]:g}, mean {pooled.mean():.4g}, std {pooled.std():.4g}")
        total = sum(label_counts.values())
        for v in sorted(label_counts):
            name = info.labels.get(v, "UNDECLARED")
            lines.append(f"label {v:<4}  {name:<14} {label_counts[v]:>12,d} voxels ({100 * label_counts[v] / total:.2f}%), "
                         f"in {present.get(v, 0)}/{len(cases)} cases")
    return "\n".join(lines)


def save_montage(info: TaskInfo, path: str | os.PathLike, *, n_cases: int = 4,
                 cases: Sequence[dict[str, Path]] = ()) -> Path:
    """Save a PNG with one row per case (``n_cases`` rows: the given ``cases`` first, e.g. those a
    validation warning names, then the first training cases): each modality on the axial slice
    through the centre of the foreground, then the first modality with the labels overlaid. The
    file is replaced atomically (a symlink there is replaced, never written through). Returns the
    path written."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cases = [*cases, *(c for c in info.training if c not in cases)][:max(1, n_cases)]
    if not cases:
        raise ValueError(f"task {info.root} has no training cases to draw")
    cols = info.in_channels + 1
    fig, axes = plt.subplots(len(cases), cols, figsize=(2.6 * cols, 2.6 * len(cases)), squeeze=False)
    names = list(info.modality.values())
    for r, case in enumerate(cases):
        img, _ = read_image(case["image"])
        lbl, _ = read_image(case["label"])
        img = img[None] if img.ndim == 3 else img
        fg = np.argwhere(lbl > 0)
        z = int(np.round(fg[:, 2].mean())) if len(fg) else lbl.shape[2] // 2
        for c in range(cols):
            ax = axes[r, c]
            ch = min(c, img.shape[0] - 1) if c < cols - 1 else 0
            ax.imshow(img[ch, :, :, z].T, cmap="gray", origin="lower")
            if c == cols - 1:
                overlay = np.ma.masked_equal(lbl[:, :, z].T, 0)
                ax.imshow(overlay, cmap="tab10", vmin=0, vmax=9, alpha=0.5, origin="lower", interpolation="nearest")
                ax.set_title(f"{Path(case['label']).name.split('.')[0]} labels", fontsize=8)
            else:
                ax.set_title(f"{names[c] if c < len(names) else c}, z={z}", fontsize=8)
            ax.set_xlabel("x (voxel)", fontsize=7)
            ax.set_ylabel("y (voxel)", fontsize=7)
            ax.tick_params(labelsize=6)
    legend = ", ".join(f"{k}={v}" for k, v in sorted(info.labels.items()) if k)
    fig.suptitle(f"{info.name}: axial slices through the foreground centre ({legend})", fontsize=9)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"), suffix=".png")
    finally:
        plt.close(fig)


# ---------------------------------------------------------------- argparse wiring


def _add_download_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", help=f"MSD task: full name, short name or number (one of {', '.join(MSD_TASKS)})")
    p.add_argument("--data-dir", default=None, help=_DATA_DIR_HELP)
    p.add_argument("--url", default=None, help="download from this address instead of the catalogue's (mirror)")
    p.add_argument("--md5", default=None, help="expected MD5 of the archive (default: the catalogue's)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--retries", type=int, default=3, help="automatic resumes after a broken connection")
    p.add_argument("--no-validate", action="store_true", help="skip the dataset check after extraction")


def _add_synthesize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help=_DATA_DIR_HELP)
    p.add_argument("--flavour", choices=sorted(FLAVOURS), default="mri", help="mri (float), ct (int16 HU), mri4d")
    p.add_argument("--n-train", type=int, default=40)
    p.add_argument("--n-test", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=int, nargs=3, default=(48, 48, 48), metavar=("X", "Y", "Z"))
    p.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.25), metavar=("SX", "SY", "SZ"))
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", help="task directory, a task name under the data root, an MSD name/number, "
                                "synthetic[-ct|-mri4d] or brain")
    p.add_argument("--data-dir", default=None, help=_DATA_DIR_HELP)
    p.add_argument("--montage", default=None, help="PNG path for the montage (default: <task>/montage.png)")
    p.add_argument("--max-cases", type=int, default=None, help="read at most this many cases for statistics")
    p.add_argument("--n-montage", type=int, default=4, help="cases drawn in the montage")


def _run_download(args: argparse.Namespace) -> int:
    task_dir = download_task(args.task, args.data_dir, url=args.url, md5=args.md5, progress=not args.no_progress,
                             retries=args.retries)
    print(f"task ready: {task_dir}")
    if args.no_validate:
        return 0
    report = check_task(task_dir, check_contents=False)
    _print_findings(report)
    return 2 if report.errors else 0


def _run_synthesize(args: argparse.Namespace) -> int:
    root = resolve_data_dir(args.data_dir)
    start = time.perf_counter()
    task_dir = make_synthetic_task(root, n_train=args.n_train, n_test=args.n_test, flavour=args.flavour,
                                   seed=args.seed, shape=tuple(args.shape), spacing=tuple(args.spacing),
                                   progress=not args.no_progress)
    print(f"wrote {args.n_train} training + {args.n_test} test cases to {task_dir} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


def _add_brain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help=_DATA_DIR_HELP)
    p.add_argument("--n-train", type=int, default=20, help="labelled training cases")
    p.add_argument("--n-test", type=int, default=2, help="unlabelled test cases (imagesTs)")
    p.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm (1.5-2 suits a CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _run_brain(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    task_dir = make_brain_task(resolve_data_dir(args.data_dir), n_train=args.n_train, n_test=args.n_test,
                               spacing=args.spacing, seed=args.seed, progress=not args.no_progress)
    shape, _ = brain_grid(args.spacing)
    print(f"wrote {task_dir}: {args.n_train} training + {args.n_test} test cases, "
          f"{' x '.join(map(str, shape))} voxels of {args.spacing:g} mm, in {time.perf_counter() - start:.1f} s")
    print(f"template: {TEMPLATE_NOTICE}")
    return 0


def _print_findings(report: TaskReport) -> None:
    """Errors (on stderr) and warnings (on stdout) in two sections, one line each."""
    if report.errors:
        print(f"errors      {len(report.errors)}: the task cannot be used until they are fixed", file=sys.stderr)
        for line in report.errors:
            print(f"  error: {line}", file=sys.stderr)
    if report.warnings:
        print(f"warnings    {len(report.warnings)}: usable, but look at each")
        for line in report.warnings:
            print(f"  warning: {line}")


def _run_inspect(args: argparse.Namespace) -> int:
    task_dir = resolve_task_dir(args.task, args.data_dir, create=False)
    report = check_task(task_dir, progress=True)
    if report.errors:
        _print_findings(report)
        print(f"status      UNUSABLE: {len(report.errors)} error(s) in {task_dir}, listed above", file=sys.stderr)
        return 2
    info = report.info
    print(summarize_task(info, max_cases=args.max_cases, progress=True))
    # The cases a warning names are drawn first (a dozen at most), so the figure it points at shows them.
    rows = max(args.n_montage, min(len(report.flagged), 12))
    out = save_montage(info, args.montage or task_dir / "montage.png", n_cases=rows, cases=report.flagged)
    print(f"montage     {out}")
    _print_findings(report)
    if report.warnings:
        print(f"status      OK with {len(report.warnings)} warning(s): ready to train; look at the warnings above")
    else:
        print("status      OK: no problems found; ready to train")
    return 0


#: Each data command's help, argument wiring and handler (which returns an exit status or raises).
_COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "download": ("download, verify and extract an MSD task", _add_download_args, _run_download),
    "synthesize": ("write the synthetic task in MSD layout", _add_synthesize_args, _run_synthesize),
    "brain": (f"write {BRAIN_TASK} (MNI152 brain tissue, T1w MRI, from nilearn's bundled template) in MSD layout",
              _add_brain_args, _run_brain),
    "inspect": ("validate a task, print its summary and save a montage", _add_inspect_args, _run_inspect),
}


def add_data_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``download``, ``synthesize``, ``brain`` and ``inspect`` on ``subparsers``; each parser's
    ``handler`` default is the function to call with the parsed namespace (it returns an exit
    code)."""
    for name, (help_text, add_args, handler) in _COMMANDS.items():
        p = subparsers.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(handler=handler)


#: The script in ``data_scripts/`` that runs each command on its own: its name prefixes the script's
#: error lines, as it does argparse's usage errors when the script is run.
_SCRIPTS = {"download": "download_msd.py", "synthesize": "make_synthetic_task.py", "brain": "make_brain_task.py",
            "inspect": "inspect_task.py"}


def _standalone(name: str, argv: Sequence[str] | None) -> int:
    """Parse ``argv`` for the data command ``name`` and run it through the error boundary
    :func:`mednext_lite.errors.run_command`, like ``mednext-lite data <name>``."""
    help_text, add_args, handler = _COMMANDS[name]
    parser = argparse.ArgumentParser(prog=_SCRIPTS[name], description=help_text)
    add_args(parser)
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    return run_command(parser.prog, handler, args, debug=args.debug)


def download_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``data_scripts/download_msd.py``; returns the exit code."""
    return _standalone("download", argv)


def synthesize_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``data_scripts/make_synthetic_task.py``; returns the exit code."""
    return _standalone("synthesize", argv)


def brain_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``data_scripts/make_brain_task.py``; returns the exit code (2: nilearn missing)."""
    return _standalone("brain", argv)


def inspect_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``data_scripts/inspect_task.py``; returns the exit code."""
    return _standalone("inspect", argv)
