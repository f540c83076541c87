"""Find a task's folder from its name: a path, a folder under the data root, an MSD name, or a generated task.

The command line's ``--task`` and ``data inspect`` both resolve through :func:`resolve_task_dir`,
so a name means the same folder everywhere. A name is checked by ``validate_task_name`` before
it is looked up, so nothing is ever read or written outside the data root.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..distributed import ranks_from_env
from .brain import BRAIN_TASK, make_brain_task
from .catalogue import get_task, resolve_data_dir, validate_task_name
from .synthetic import FLAVOURS, make_synthetic_task

__all__ = ["GENERATED_TASKS", "resolve_task_dir"]

#: The names of the tasks the package writes itself, each with its synthetic flavour (``None``:
#: the MNI152 brain-tissue task).
GENERATED_TASKS: dict[str, str | None] = {
    "synthetic": "mri", "synthetic-mri": "mri", "synthetic-ct": "ct", "synthetic-mri4d": "mri4d", "brain": None,
}

# How long another torchrun rank waits for rank 0 to write a generated task.
_RANK_WAIT_S = 600


def _holds_dataset_json(folder: Path) -> bool:
    # os.path.isfile answers False for a name no file system can hold (too long, a NUL) instead of raising.
    return os.path.isfile(folder / "dataset.json")


def resolve_task_dir(task: str, data_dir: str | os.PathLike | None = None, *, create: bool = True) -> Path:
    """The folder of ``task``: a folder holding dataset.json; else a folder of that name under the
    data root (``resolve_data_dir``); else a generated task (``synthetic``, ``synthetic-ct``,
    ``synthetic-mri4d``, ``brain``), written on first use when ``create`` and returned unwritten
    otherwise; else an MSD name or number ("Hippocampus", "04"), which must have been downloaded.
    Anything else is a ``ValueError`` saying what to pass instead."""
    path = Path(task).expanduser()
    if task.strip() and _holds_dataset_json(path):
        return path
    if path.is_absolute() or len(path.parts) > 1:
        what = "is a folder without dataset.json" if path.is_dir() else "does not exist"
        raise ValueError(f"task {task} {what}: pass a task folder (the one holding dataset.json), a task name "
                         "under the data root, or an MSD name such as Hippocampus")
    validate_task_name(task)
    root = resolve_data_dir(data_dir)
    if _holds_dataset_json(root / task):
        return root / task
    key = task.strip().lower()
    if key in GENERATED_TASKS:
        return _generated_task(root, GENERATED_TASKS[key], create=create)
    try:
        msd = get_task(task)
    except KeyError as err:
        raise ValueError(f"task {task!r} is neither a task folder nor a known task: {err.args[0]}") from None
    target = root / msd.name
    if not _holds_dataset_json(target):
        raise ValueError(f"task {msd.name} is not under {root}: fetch it with `mednext-lite data download "
                         f"{msd.short_name} --data-dir {root}` or pass --data-dir")
    return target


def _generated_task(root: Path, flavour: str | None, *, create: bool) -> Path:
    """The folder of a generated task under ``root``, written first when ``create`` and missing.
    Under torchrun only rank 0 writes it; the other ranks wait for its dataset.json, its last file."""
    target = root / (FLAVOURS[flavour].task_name if flavour else BRAIN_TASK)
    if _holds_dataset_json(target) or not create:
        return target
    rank = ranks_from_env().rank
    if rank != 0:
        deadline = time.monotonic() + _RANK_WAIT_S
        while not _holds_dataset_json(target):
            if time.monotonic() > deadline:
                raise ValueError(f"rank {rank} waited {_RANK_WAIT_S} s for rank 0 to write "
                                 f"{target}; write it once first: mednext-lite data "
                                 f"{f'synthesize --flavour {flavour}' if flavour else 'brain'} --data-dir {root}")
            time.sleep(1.0)
        return target
    if flavour is None:
        return make_brain_task(root, progress=True)
    return make_synthetic_task(root, flavour=flavour, progress=True)
