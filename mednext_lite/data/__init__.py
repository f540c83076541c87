"""MSD data for mednext_lite: the task catalogue, finding and downloading tasks, reading and
validating them, seeded splits, the embedded synthetic and MNI152 brain-tissue tasks, MONAI
pipelines and cached datasets, and the intensity-only baseline.

One job per module: ``catalogue`` (the ten MSD tasks, the data root), ``locate`` (a task's folder
from its name), ``download`` (fetch, verify, extract), ``transfer`` (resumable HTTP), ``archive``
(safe extraction), ``dataset`` (dataset.json and NIfTI reading), ``validate`` (checks, load_task),
``splits``, ``synthetic``, ``brain``, ``msd_writer``, ``transforms``, ``baseline``; the
command-line doors live in ``commands``."""

from .archive import ArchiveLimitError, ExtractLimits, safe_extract
from .baseline import dice_per_class, threshold_baseline
from .brain import make_brain_task
from .catalogue import (
    DATA_ENV_VAR,
    MSD_TASKS,
    MSDTask,
    get_task,
    resolve_data_dir,
    validate_task_name,
)
from .dataset import TaskInfo, read_image, voxel_spacing
from .download import download_task, fetch_archive
from .locate import resolve_task_dir
from .splits import get_or_make_split, load_split, make_split, save_split
from .synthetic import FLAVOURS, make_synthetic_task, synthesize_case
from .transfer import DownloadError, TransferLimits
from .transforms import (
    DEFAULT_CT_WINDOW,
    default_cache_dir,
    get_transforms,
    make_dataset,
)
from .validate import (
    DatasetError,
    DatasetWarning,
    TaskReport,
    check_task,
    load_task,
    validate_task,
)

__all__ = [
    "DATA_ENV_VAR",
    "DEFAULT_CT_WINDOW",
    "FLAVOURS",
    "MSD_TASKS",
    "ArchiveLimitError",
    "DatasetError",
    "DatasetWarning",
    "DownloadError",
    "ExtractLimits",
    "MSDTask",
    "TaskInfo",
    "TaskReport",
    "TransferLimits",
    "add_data_subcommands",
    "check_task",
    "default_cache_dir",
    "dice_per_class",
    "download_task",
    "fetch_archive",
    "get_or_make_split",
    "get_task",
    "get_transforms",
    "load_split",
    "load_task",
    "make_brain_task",
    "make_dataset",
    "make_split",
    "make_synthetic_task",
    "read_image",
    "resolve_data_dir",
    "resolve_task_dir",
    "safe_extract",
    "save_montage",
    "save_split",
    "summarize_task",
    "synthesize_case",
    "threshold_baseline",
    "validate_task",
    "validate_task_name",
    "voxel_spacing",
]


def __getattr__(name: str):
    # The command helpers pull in matplotlib; import them only when asked for.
    if name in ("summarize_task", "save_montage", "add_data_subcommands"):
        from . import commands

        return getattr(commands, name)
    raise AttributeError(f"module 'mednext_lite.data' has no attribute {name!r}")
