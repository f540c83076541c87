"""The kit a lesson notebook uses inside itself: its size settings, its bookkeeping, its sweep tables.

Every lesson starts with ``p = sized(size, {...})`` (the settings of one of :data:`SIZES`, with any
value set by hand or by papermill winning) and ``lesson = Lesson(output_dir, seed=seed,
device=device)`` (seeding, the device, the output folder, ``summary.json``). :func:`collect_csv`
and :func:`plot_sweep` gather the CSV results of several papermill runs into one table and one
figure. Running the notebooks themselves is :mod:`mednext_lite.notebooks`' job.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from .runtime import resolve_device, seed_everything
from .safe_io import atomic_write

__all__ = ["SIZES", "Lesson", "collect_csv", "plot_sweep", "sized"]


def collect_csv(paths: str | Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """Concatenate CSV result files (a glob pattern or a list) into one list of rows, adding a
    ``source`` column; numbers are converted back from text. This is how papermill sweeps of
    ``05_compound_scaling`` are gathered into one table."""
    files = sorted(glob.glob(paths, recursive=True)) if isinstance(paths, str) else [str(p) for p in paths]
    if not files:
        raise ValueError(f"no CSV files match {paths!r}: run the notebook (its output_dir holds results.csv) first")
    rows = []
    for f in files:
        with open(f, newline="") as handle:
            for row in csv.DictReader(handle):
                parsed: dict[str, Any] = {}
                for key, value in row.items():
                    try:
                        parsed[key] = int(value)
                    except (TypeError, ValueError):
                        try:
                            parsed[key] = float(value)
                        except (TypeError, ValueError):
                            parsed[key] = value
                parsed["source"] = f
                rows.append(parsed)
    return rows


def plot_sweep(rows: list[Mapping[str, Any]], x: str, y: str, *, group: str | None = None,
               title: str | None = None, logx: bool = False) -> Any:
    """Scatter/line plot of ``y`` against ``x`` over collected rows, one line per ``group`` value."""
    from matplotlib.figure import Figure

    missing = [k for k in (x, y, group) if k and rows and k not in rows[0]]
    if missing:
        raise ValueError(f"columns {missing} are not in the rows; available: {sorted(rows[0])}")
    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row[group] if group else y, []).append(row)
    for name, members in groups.items():
        members = sorted(members, key=lambda r: r[x])
        ax.plot([r[x] for r in members], [r[y] for r in members], marker="o", label=str(name))
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title or f"{y} vs {x}")
    ax.grid(alpha=0.3)
    if group:
        ax.legend(title=group, fontsize=8)
    return fig


#: The sizes every lesson offers in its ``size`` parameter: "ci" is what CI and ``make demo`` run
#: (a minute or less on 2 CPU cores), "class" fits a classroom (about 5 minutes on a 2-core
#: laptop), "gpu" is a real run on one GPU.
SIZES = ("ci", "class", "gpu")


def sized(size: str, table: Mapping[str, Mapping[str, Any]], **explicit: Any) -> dict[str, Any]:
    """The settings of one lesson size: ``table[size]`` with every ``explicit`` value that is not
    ``None`` put over it, so a parameter set by hand (or by papermill) always wins over the size.

    ``table`` maps each of :data:`SIZES` to the same keys; an unknown size, a row with other keys,
    or an explicit name that no row has is a ``ValueError`` naming it (a typo must not fall back to
    the size's value silently).
    """
    if size not in SIZES:
        raise ValueError(f"size={size!r} is not a lesson size: use one of {', '.join(map(repr, SIZES))}")
    missing = [name for name in SIZES if name not in table]
    if missing:
        raise ValueError(f"the size table has no row for {missing}: give every size its values")
    keys = set(table[SIZES[0]])
    for name in SIZES[1:]:
        if set(table[name]) != keys:
            raise ValueError(f"size rows differ: {name!r} has {sorted(set(table[name]) ^ keys)} that "
                             f"{SIZES[0]!r} has not (or the reverse); give every row the same keys")
    unknown = sorted(set(explicit) - keys)
    if unknown:
        raise ValueError(f"{unknown} are not sized settings (sized: {sorted(keys)}); fix the name")
    values = dict(table[size])
    values.update({k: v for k, v in explicit.items() if v is not None})
    return values


class Lesson:
    """The bookkeeping every lesson notebook shares, in one line of the notebook.

    Seeds Python, NumPy and torch and picks the device (``"auto"``: CUDA when present) exactly as
    training does (:func:`~mednext_lite.runtime.seed_everything`,
    :func:`~mednext_lite.runtime.resolve_device`, so a bad device name is a clear error) and prints
    it; creates ``output_dir``; :meth:`show` saves a figure as PNG there and displays it;
    :meth:`record` writes ``summary.json`` at once, so a crash later keeps what was measured.
    """

    def __init__(self, output_dir: str | os.PathLike, *, seed: int = 0, device: str = "auto") -> None:
        seed_everything(seed)
        self.device = resolve_device(device)
        self.seed = seed
        self.out = Path(output_dir).expanduser().resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.summary: dict[str, Any] = {}
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        print(f"device: {self.device} ({name}), torch {torch.__version__}, seed {seed}, outputs in {self.out}")

    def show(self, fig: Any, name: str) -> Path:
        """Save ``fig`` as ``output_dir/name.png`` and display it inline; returns the path."""
        path = self.out / f"{name}.png"
        fig.savefig(path, dpi=90, bbox_inches="tight")  # keep axis labels that sit past the canvas
        try:
            from IPython.display import Image, display

            display(Image(filename=str(path)))
        except ImportError:
            pass
        return path

    def run_dir(self, name: str) -> Path:
        """An EMPTY folder ``output_dir/name`` for a training run, so re-running a lesson cell starts
        that run afresh (the trainer refuses to overwrite a run it did not resume)."""
        import shutil

        path = self.out / name
        if path.exists():
            shutil.rmtree(path)
        return path

    def record(self, **values: Any) -> None:
        """Add ``values`` to ``summary.json`` (written atomically, now)."""
        self.summary.update(values)
        atomic_write(self.out / "summary.json", json.dumps(self.summary, indent=2, default=str) + "\n")

